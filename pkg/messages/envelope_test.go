package messages_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// testNow is the "now" of the envelope tests; it has sub-millisecond digits on purpose.
var testNow = time.Date(2025, 3, 4, 5, 6, 7, 891_234_567, time.UTC)

const chatBody = `{"model":"openai/gpt-4.1","messages":[{"role":"user","content":"hi"}],"stream":true}`

func validRequest() *messages.Request {
	return &messages.Request{
		ID:       "req-1",
		Kind:     messages.KindChat,
		Group:    "openai/gpt-4.1",
		Band:     3,
		Priority: 3,
		ReplyTo:  "_INBOX.abc.req-1",
		Deadline: testNow.Add(5 * time.Second),
		// the gateway's answer deadline: the queue deadline plus the call's
		AnswerDeadline: testNow.Add(95 * time.Second),
		Stream:         true,
		Tenant:         "team-a",
		Body:           []byte(chatBody),
	}
}

// sameRequest reports the first difference between two requests, or "".
func sameRequest(got, want *messages.Request) string {
	switch {
	case got.ID != want.ID:
		return "ID " + got.ID + " != " + want.ID
	case got.Kind != want.Kind:
		return "Kind " + string(got.Kind) + " != " + string(want.Kind)
	case got.Group != want.Group:
		return "Group " + got.Group + " != " + want.Group
	case got.Band != want.Band:
		return "Band differs"
	case got.Priority != want.Priority:
		return "Priority differs"
	case got.ReplyTo != want.ReplyTo:
		return "ReplyTo " + got.ReplyTo + " != " + want.ReplyTo
	case !got.Deadline.Equal(want.Deadline):
		return "Deadline " + got.Deadline.String() + " != " + want.Deadline.String()
	case got.Deadline.IsZero() != want.Deadline.IsZero():
		return "Deadline zero-ness differs"
	case !got.AnswerDeadline.Equal(want.AnswerDeadline):
		return "AnswerDeadline " + got.AnswerDeadline.String() + " != " + want.AnswerDeadline.String()
	case got.AnswerDeadline.IsZero() != want.AnswerDeadline.IsZero():
		return "AnswerDeadline zero-ness differs"
	case got.Stream != want.Stream:
		return "Stream differs"
	case got.CallerAcks != want.CallerAcks:
		return "CallerAcks differs"
	case !got.NotifyUntil.Equal(want.NotifyUntil) || got.NotifyUntil.IsZero() != want.NotifyUntil.IsZero():
		return "NotifyUntil " + got.NotifyUntil.String() + " != " + want.NotifyUntil.String()
	case got.Tenant != want.Tenant:
		return "Tenant " + got.Tenant + " != " + want.Tenant
	case !bytes.Equal(got.Body, want.Body):
		return "Body " + string(got.Body) + " != " + string(want.Body)
	}
	return ""
}

func TestRequestRoundTrip(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct {
		name string
		edit func(r *messages.Request)
	}{
		{"chat stream", func(r *messages.Request) {}},
		{"completion no stream", func(r *messages.Request) {
			r.Kind, r.Stream, r.Body = messages.KindCompletion, false, []byte(`{"model":"m","prompt":"hi"}`)
		}},
		{"no deadline", func(r *messages.Request) { r.Deadline = time.Time{} }},
		{"deadline in the past", func(r *messages.Request) { r.Deadline = testNow.Add(-time.Hour) }},
		{"no answer deadline", func(r *messages.Request) { r.AnswerDeadline = time.Time{} }},
		{"only an answer deadline", func(r *messages.Request) { r.Deadline = time.Time{} }},
		{"negative priority", func(r *messages.Request) { r.Priority, r.Band = -1<<62, 0 }},
		{"huge priority", func(r *messages.Request) { r.Priority, r.Band = 1<<62, 9 }},
		{"empty group", func(r *messages.Request) { r.Group = "" }},
		{"group with subject characters", func(r *messages.Request) { r.Group = "a.b *>/=" }},
		{"unicode id", func(r *messages.Request) { r.ID = "réq-ü" }},
		{"tenant with spaces and punctuation", func(r *messages.Request) { r.Tenant = "Team A/eu-west:1" }},
		{"caller acks, may start unasked", func(r *messages.Request) {
			r.CallerAcks, r.NotifyUntil = true, testNow.Add(messages.NotifyWindow)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest()
			tt.edit(r)
			m := s.Msg(r, testNow)
			if want := s.RequestLane(r.Band, r.Group, messages.Lane(r.Tenant)); m.Subject != want {
				t.Errorf("subject %q, want %q", m.Subject, want)
			}
			if got := m.Header.Get(messages.HeaderMsgID); got != r.ID {
				t.Errorf("%s = %q, want the request id %q", messages.HeaderMsgID, got, r.ID)
			}
			got, err := s.DecodeRequest(m.Subject, m.Header, m.Data)
			if err != nil {
				t.Fatalf("DecodeRequest: %v", err)
			}
			want := *r
			if !r.Deadline.IsZero() {
				// The deadline travels in Unix milliseconds.
				want.Deadline = time.UnixMilli(r.Deadline.UnixMilli())
			}
			if !r.AnswerDeadline.IsZero() {
				want.AnswerDeadline = time.UnixMilli(r.AnswerDeadline.UnixMilli())
			}
			if !r.NotifyUntil.IsZero() {
				want.NotifyUntil = time.UnixMilli(r.NotifyUntil.UnixMilli())
			}
			if d := sameRequest(got, &want); d != "" {
				t.Errorf("round trip: %s", d)
			}
		})
	}
}

func TestRequestDeadlineMilliseconds(t *testing.T) {
	s := mustSubjects(t, "")
	r := validRequest()
	r.Deadline = time.Date(2025, 3, 4, 5, 6, 12, 345_999_999, time.UTC)
	m := s.Msg(r, testNow)
	if got, want := m.Header.Get(messages.HeaderDeadline), "1741064772345"; got != want {
		t.Errorf("%s = %q, want %q", messages.HeaderDeadline, got, want)
	}
	got, err := s.DecodeRequest(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2025, 3, 4, 5, 6, 12, 345_000_000, time.UTC); !got.Deadline.Equal(want) {
		t.Errorf("Deadline = %v, want %v", got.Deadline, want)
	}
}

func TestRequestTTL(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct {
		name     string
		deadline time.Duration // from testNow
		ttl      string
	}{
		{"whole seconds", 5 * time.Second, "5s"},
		{"rounded down", 5*time.Second + 499*time.Millisecond, "5s"},
		{"rounded up", 4*time.Second + 500*time.Millisecond, "5s"},
		{"an hour", time.Hour, "3600s"},
		{"under a second", 200 * time.Millisecond, "1s"},
		{"now", 0, "1s"},
		{"in the past", -time.Minute, "1s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := validRequest()
			r.Deadline = testNow.Add(tt.deadline)
			m := s.Msg(r, testNow)
			if got := m.Header.Get(messages.HeaderTTL); got != tt.ttl {
				t.Errorf("%s = %q, want %q", messages.HeaderTTL, got, tt.ttl)
			}
		})
	}
	r := validRequest()
	r.Deadline = time.Time{}
	m := s.Msg(r, testNow)
	for _, h := range []string{messages.HeaderTTL, messages.HeaderDeadline} {
		if v, ok := m.Header[h]; ok {
			t.Errorf("without a deadline, header %s = %q, want none", h, v)
		}
	}
}

func TestRequestHeaders(t *testing.T) {
	s := mustSubjects(t, "")
	m := s.Msg(validRequest(), testNow)
	want := map[string]string{
		messages.HeaderVersion:        messages.Version,
		messages.HeaderRequestID:      "req-1",
		messages.HeaderMsgID:          "req-1",
		messages.HeaderKind:           "chat",
		messages.HeaderPriority:       "3",
		messages.HeaderReply:          "_INBOX.abc.req-1",
		messages.HeaderStream:         "1",
		messages.HeaderDeadline:       "1741064772891",
		messages.HeaderTTL:            "5s",
		messages.HeaderAnswerDeadline: "1741064862891",
		messages.HeaderTenant:         "team-a",
	}
	got := make(map[string]string)
	for k, v := range m.Header {
		if len(v) != 1 {
			t.Errorf("header %s has %d values", k, len(v))
			continue
		}
		got[k] = v[0]
	}
	if !maps.Equal(got, want) {
		t.Errorf("headers\n got %v\nwant %v", got, want)
	}
}

func TestDecodeRequestErrors(t *testing.T) {
	s := mustSubjects(t, "")
	tests := []struct {
		name    string
		subject string            // "" = the valid subject
		header  map[string]string // replaces headers; "" deletes
		body    *string           // nil = the valid body
	}{
		{name: "foreign subject", subject: "other.req.3.gpt"},
		{name: "bad band", subject: "llmq.req.x.gpt"},
		{name: "bad group token", subject: "llmq.req.3.a=ZZ"},
		{name: "missing version", header: map[string]string{messages.HeaderVersion: ""}},
		{name: "future version", header: map[string]string{messages.HeaderVersion: "2"}},
		{name: "missing id", header: map[string]string{messages.HeaderRequestID: ""}},
		{name: "missing kind", header: map[string]string{messages.HeaderKind: ""}},
		{name: "unknown kind", header: map[string]string{messages.HeaderKind: "embedding"}},
		{name: "kind in upper case", header: map[string]string{messages.HeaderKind: "CHAT"}},
		{name: "missing reply", header: map[string]string{messages.HeaderReply: ""}},
		{name: "priority not a number", header: map[string]string{messages.HeaderPriority: "high"}},
		{name: "priority fraction", header: map[string]string{messages.HeaderPriority: "1.5"}},
		{name: "priority overflow", header: map[string]string{messages.HeaderPriority: "9223372036854775808"}},
		{name: "deadline not a number", header: map[string]string{messages.HeaderDeadline: "soon"}},
		{name: "deadline RFC 3339", header: map[string]string{messages.HeaderDeadline: "2025-03-04T05:06:07Z"}},
		{name: "answer deadline not a number", header: map[string]string{messages.HeaderAnswerDeadline: "later"}},
		{name: "answer deadline in seconds with a fraction", header: map[string]string{messages.HeaderAnswerDeadline: "1741064862.891"}},
		{name: "notify time not a number", header: map[string]string{messages.HeaderNotifyUntil: "now"}},
		{name: "empty body", body: new("")},
		{name: "truncated body", body: new(`{"model":"m"`)},
		{name: "non-JSON body", body: new("hello")},
		{name: "two JSON values", body: new(`{} {}`)},
		{name: "tenant with a control byte", header: map[string]string{messages.HeaderTenant: "a\tb"}},
		{name: "tenant not ASCII", header: map[string]string{messages.HeaderTenant: "équipe"}},
		{name: "tenant too long", header: map[string]string{messages.HeaderTenant: strings.Repeat("t", messages.MaxTenantBytes+1)}},
		{name: "tenant with a leading space", header: map[string]string{messages.HeaderTenant: " a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := s.Msg(validRequest(), testNow)
			subject := m.Subject
			if tt.subject != "" {
				subject = tt.subject
			}
			for k, v := range tt.header {
				if v == "" {
					delete(m.Header, k)
				} else {
					m.Header[k] = []string{v}
				}
			}
			body := m.Data
			if tt.body != nil {
				body = []byte(*tt.body)
			}
			r, err := s.DecodeRequest(subject, m.Header, body)
			if err == nil {
				t.Fatalf("DecodeRequest = %+v, want an error", r)
			}
			if !errors.Is(err, messages.ErrInvalidRequest) {
				t.Errorf("error %q does not wrap ErrInvalidRequest", err)
			}
			if r != nil {
				t.Errorf("DecodeRequest returned a request with its error: %+v", r)
			}
		})
	}
}

// TestDecodeRequestRejectsNonObjectBody: the wire body is an OpenAI request
// body, a JSON object, and DecodeRequest's own error says "body is not a JSON
// object"; but it only checks json.Valid, so arrays, strings, numbers and null
// pass.
func TestDecodeRequestRejectsNonObjectBody(t *testing.T) {
	s := mustSubjects(t, "")
	for _, body := range []string{`[]`, `[{"model":"m"}]`, `"x"`, `1`, `null`, `true`} {
		m := s.Msg(validRequest(), testNow)
		r, err := s.DecodeRequest(m.Subject, m.Header, []byte(body))
		if err == nil {
			t.Errorf("DecodeRequest with body %s = request %q, want an error wrapping ErrInvalidRequest", body, r.ID)
		} else if !errors.Is(err, messages.ErrInvalidRequest) {
			t.Errorf("DecodeRequest with body %s: %v does not wrap ErrInvalidRequest", body, err)
		}
	}
}

func TestDecodeRequestOptionalHeaders(t *testing.T) {
	s := mustSubjects(t, "")
	m := s.Msg(validRequest(), testNow)
	for _, h := range []string{messages.HeaderPriority, messages.HeaderDeadline, messages.HeaderAnswerDeadline, messages.HeaderStream, messages.HeaderTTL, messages.HeaderMsgID} {
		delete(m.Header, h)
	}
	r, err := s.DecodeRequest(m.Subject, m.Header, m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if r.Priority != 0 || !r.Deadline.IsZero() || !r.AnswerDeadline.IsZero() || r.Stream {
		t.Errorf("without optional headers: priority %d, deadline %v, answer deadline %v, stream %v; want 0, zero, zero, false", r.Priority, r.Deadline, r.AnswerDeadline, r.Stream)
	}
	// A publisher that names no tenant (one older than Llmq-Tenant) sends
	// for the anonymous tenant.
	delete(m.Header, messages.HeaderTenant)
	if r, err = s.DecodeRequest(m.Subject, m.Header, m.Data); err != nil || r.Tenant != messages.TenantAnonymous {
		t.Errorf("without %s: tenant %q, err %v; want %q", messages.HeaderTenant, r.Tenant, err, messages.TenantAnonymous)
	}
	// Only "1" means a stream.
	m.Header[messages.HeaderStream] = []string{"true"}
	if r, err = s.DecodeRequest(m.Subject, m.Header, m.Data); err != nil || r.Stream {
		t.Errorf(`%s "true": stream %v, err %v; want false, nil`, messages.HeaderStream, r != nil && r.Stream, err)
	}
	// Band and group come from the subject, also for wake and dead-letter subjects.
	r, err = s.DecodeRequest(s.DeadLetter(s.Request(7, "x/y")), m.Header, m.Data)
	if err != nil || r.Band != 7 || r.Group != "x/y" {
		t.Errorf("dead-letter subject: %+v, %v", r, err)
	}
}

func TestReplyRoundTrip(t *testing.T) {
	tests := []struct {
		name  string
		reply messages.Reply
	}{
		{"served", messages.Reply{Outcome: messages.OutcomeServed, Status: 200, Deployment: "gpt-4o-openai", Body: []byte(`{"id":"chatcmpl-1"}`)}},
		{"stream end", messages.Reply{Seq: 42, Outcome: messages.OutcomeServed, Status: 200, Deployment: "d"}},
		{"queue full", messages.Reply{Outcome: messages.OutcomeQueueFull, Status: 429, RetryAfter: "3", Body: []byte(`{"error":{"message":"full"}}`)}},
		{"provider 400", messages.Reply{Outcome: messages.OutcomeProviderError, Status: 400, Deployment: "d", Body: []byte(`{"error":{"message":"bad"}}`)}},
		{"served, caller acks", messages.Reply{Outcome: messages.OutcomeServed, Status: 200, Deployment: "d",
			Ack: "$JS.ACK.LLMQ_REQUESTS.c.1.2.3.4.5", Body: []byte(`{}`)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := messages.ReplyMsg("_INBOX.x.1", &tt.reply)
			if m.Subject != "_INBOX.x.1" {
				t.Errorf("subject %q", m.Subject)
			}
			if got := m.Header.Get(messages.HeaderEvent); got != messages.EventReply {
				t.Errorf("%s = %q, want %q", messages.HeaderEvent, got, messages.EventReply)
			}
			if got := m.Header.Get(messages.HeaderVersion); got != messages.Version {
				t.Errorf("%s = %q", messages.HeaderVersion, got)
			}
			got, err := messages.DecodeReply(m.Header, m.Data)
			if err != nil {
				t.Fatal(err)
			}
			if got.Seq != tt.reply.Seq || got.Outcome != tt.reply.Outcome || got.Status != tt.reply.Status ||
				got.Deployment != tt.reply.Deployment || got.RetryAfter != tt.reply.RetryAfter || !bytes.Equal(got.Body, tt.reply.Body) ||
				got.Ack != tt.reply.Ack {
				t.Errorf("DecodeReply = %+v, want %+v", got, tt.reply)
			}
		})
	}
}

func TestDecodeReplyErrors(t *testing.T) {
	tests := []struct {
		name            string
		outcome, status string
	}{
		{"missing outcome", "", "200"},
		{"unknown outcome", "great", "200"},
		{"missing status", "served", ""},
		{"status not a number", "served", "OK"},
		{"status too small", "served", "99"},
		{"status too large", "served", "600"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := nats.Header{}
			if tt.outcome != "" {
				h.Set(messages.HeaderOutcome, tt.outcome)
			}
			if tt.status != "" {
				h.Set(messages.HeaderStatus, tt.status)
			}
			r, err := messages.DecodeReply(h, nil)
			if err == nil {
				t.Fatalf("DecodeReply = %+v, want an error", r)
			}
			if !errors.Is(err, messages.ErrInternal) {
				t.Errorf("error %v does not match ErrInternal", err)
			}
		})
	}
}

func TestReplyErr(t *testing.T) {
	served := &messages.Reply{Outcome: messages.OutcomeServed, Status: 200, Body: []byte(`{"id":"x"}`)}
	if err := served.Err(); err != nil {
		t.Fatalf("served reply: Err() = %v, want nil", err)
	}
	for _, o := range messages.Outcomes()[1:] {
		t.Run(o.String(), func(t *testing.T) {
			sent := messages.Errorf(o, "messages", "what went wrong with %s", o)
			sent.RetryAfter = "2"
			m := messages.ReplyMsg("_INBOX.x.1", &messages.Reply{Outcome: o, Status: sent.HTTPStatus(), RetryAfter: sent.RetryAfter, Body: messages.ErrorBody(sent)})
			reply, err := messages.DecodeReply(m.Header, m.Data)
			if err != nil {
				t.Fatal(err)
			}
			err = reply.Err()
			if !errors.Is(err, o.Sentinel()) {
				t.Fatalf("Err() = %v does not match %v", err, o.Sentinel())
			}
			if o != messages.OutcomeInternal && errors.Is(err, messages.ErrInternal) {
				t.Errorf("Err() = %v also matches ErrInternal", err)
			}
			var e *messages.Error
			if !errors.As(err, &e) {
				t.Fatalf("Err() = %T, want *messages.Error", err)
			}
			if e.Outcome != o || e.Message != sent.Message || e.Param != "messages" || e.Code != o.String() ||
				e.RetryAfter != "2" || e.HTTPStatus() != o.Status() || !bytes.Equal(e.Body, m.Data) {
				t.Errorf("Err() = %+v", e)
			}
			if got := messages.OutcomeOf(err); got != o {
				t.Errorf("OutcomeOf(Err()) = %v, want %v", got, o)
			}
		})
	}
}

func TestReplyErrProviderBodies(t *testing.T) {
	tests := []struct {
		name                 string
		body                 string
		message, param, code string
	}{
		{"openai error", `{"error":{"message":"Invalid 'messages'","type":"invalid_request_error","param":"messages","code":"invalid_value"}}`, "Invalid 'messages'", "messages", "invalid_value"},
		{"null param and code", `{"error":{"message":"Rate limited","type":"requests","param":null,"code":null}}`, "Rate limited", "", ""},
		{"numeric code", `{"error":{"message":"busy","code":429}}`, "busy", "", ""},
		{"no error key", `{"detail":"Not Found"}`, "provider_error", "", ""},
		{"not JSON", `<html>Bad Gateway</html>`, "provider_error", "", ""},
		{"empty", ``, "provider_error", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &messages.Reply{Outcome: messages.OutcomeProviderError, Status: 400, Body: []byte(tt.body)}
			var e *messages.Error
			if err := r.Err(); !errors.As(err, &e) || !errors.Is(err, messages.ErrProvider) {
				t.Fatalf("Err() = %v, want a *messages.Error matching ErrProvider", err)
			}
			if e.Message != tt.message || e.Param != tt.param || e.Code != tt.code {
				t.Errorf("Err() message %q param %q code %q; want %q %q %q", e.Message, e.Param, e.Code, tt.message, tt.param, tt.code)
			}
			if e.HTTPStatus() != 400 {
				t.Errorf("HTTPStatus() = %d, want the provider's 400", e.HTTPStatus())
			}
			if !bytes.Equal(messages.ErrorBody(e), []byte(tt.body)) && tt.body != "" {
				t.Errorf("ErrorBody does not return the provider's body unchanged")
			}
		})
	}
}

func TestErrorBodyShape(t *testing.T) {
	tests := []struct {
		name  string
		err   *messages.Error
		param any
		code  any
	}{
		{"with param", messages.Errorf(messages.OutcomeInvalidRequest, "priority", "priority must be an integer"), "priority", "invalid_request"},
		{"without param", messages.Errorf(messages.OutcomeQueueFull, "", "the queue is full"), nil, "queue_full"},
		{"with code", &messages.Error{Outcome: messages.OutcomeUnknownModel, Param: "model", Code: "model_not_found", Message: "no such model"}, "model", "model_not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := messages.ErrorBody(tt.err)
			var top map[string]json.RawMessage
			if err := json.Unmarshal(b, &top); err != nil {
				t.Fatalf("ErrorBody = %s: %v", b, err)
			}
			if keys := slices.Sorted(maps.Keys(top)); !slices.Equal(keys, []string{"error"}) {
				t.Fatalf("top-level keys %v, want [error]", keys)
			}
			var detail map[string]any
			if err := json.Unmarshal(top["error"], &detail); err != nil {
				t.Fatal(err)
			}
			if keys := slices.Sorted(maps.Keys(detail)); !slices.Equal(keys, []string{"code", "message", "param", "type"}) {
				t.Fatalf("error keys %v, want [code message param type]", keys)
			}
			want := map[string]any{"message": tt.err.Message, "type": tt.err.Outcome.ErrorType(), "param": tt.param, "code": tt.code}
			if !maps.Equal(detail, want) {
				t.Errorf("error = %v, want %v", detail, want)
			}
		})
	}
	own := []byte(`{"error":{"message":"from the provider"}}`)
	if got := messages.ErrorBody(&messages.Error{Outcome: messages.OutcomeProviderError, Body: own}); !bytes.Equal(got, own) {
		t.Errorf("ErrorBody with Body = %s, want it unchanged", got)
	}
}

func TestEventMsg(t *testing.T) {
	m := messages.EventMsg("_INBOX.x.1", messages.EventChunk, 3, []byte(`{"choices":[]}`))
	if m.Header.Get(messages.HeaderEvent) != messages.EventChunk || m.Header.Get(messages.HeaderSeq) != "3" ||
		m.Header.Get(messages.HeaderVersion) != messages.Version || string(m.Data) != `{"choices":[]}` {
		t.Errorf("EventMsg = %v %q", m.Header, m.Data)
	}
	m = messages.EventMsg("ctl", messages.EventCancel, 0, nil)
	if _, ok := m.Header[messages.HeaderSeq]; ok {
		t.Errorf("EventMsg with seq 0 has %s", messages.HeaderSeq)
	}
}

func TestKindPath(t *testing.T) {
	if got := messages.KindChat.Path(); got != "chat/completions" {
		t.Errorf("KindChat.Path() = %q", got)
	}
	if got := messages.KindCompletion.Path(); got != "completions" {
		t.Errorf("KindCompletion.Path() = %q", got)
	}
}

func FuzzDecodeRequest(f *testing.F) {
	// subject, version, id, kind, reply, priority, deadline, stream, body, answer deadline, tenant
	f.Add("llmq.req.3.openai=2Fgpt-4=2E1", "1", "req-1", "chat", "_INBOX.a.b", "3", "1741064772891", "1", []byte(chatBody), "1741064862891", "")
	f.Add("llmq.req.0.gpt-4o", "1", "x", "completion", "_INBOX.a.b", "", "", "", []byte(`{"model":"gpt-4o","prompt":["a","b"]}`), "", "")
	f.Add("llmq.wake.9.=", "1", "x", "chat", "r", "-9223372036854775808", "-62135596800000", "0", []byte(`{}`), "-62135596800000", "")
	f.Add("llmq.dead.62.a=20b", "1", "x", "chat", "r", "+7", "0", "1", []byte(`{"a":[1,2,{"b":null}]}`), "0", "")
	f.Add("llmq.req.007.a", "1", "id", "chat", "r", "9223372036854775807", "9223372036854775807", "1", []byte(`{"x":"\u00e9\ud800"}`), "9223372036854775807", "")
	f.Add("llmq.req.0.a", "2", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "embedding", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1.5", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "soon", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte{}, "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte("\xff"), "", "")
	f.Add("llmq.req.-1.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a=Z", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a.b", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("other.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "later", "")
	f.Add("", "", "", "", "", "", "", "", []byte(nil), "", "")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "team a")
	f.Add("llmq.req.0.a", "1", "id", "chat", "r", "1", "1", "", []byte(`{}`), "", "a\x00")

	s := mustSubjects(f, "")
	f.Fuzz(func(t *testing.T, subject, version, id, kind, reply, priority, deadline, stream string, body []byte, answerDeadline, tenant string) {
		h := nats.Header{}
		for k, v := range map[string]string{
			messages.HeaderVersion:        version,
			messages.HeaderRequestID:      id,
			messages.HeaderKind:           kind,
			messages.HeaderReply:          reply,
			messages.HeaderPriority:       priority,
			messages.HeaderDeadline:       deadline,
			messages.HeaderStream:         stream,
			messages.HeaderAnswerDeadline: answerDeadline,
			messages.HeaderTenant:         tenant,
		} {
			if v != "" {
				h.Set(k, v)
			}
		}
		r, err := s.DecodeRequest(subject, h, body)
		if err != nil {
			if r != nil {
				t.Fatalf("DecodeRequest returned a request with error %v", err)
			}
			if !errors.Is(err, messages.ErrInvalidRequest) {
				t.Fatalf("error %v does not wrap ErrInvalidRequest", err)
			}
			return
		}
		if !json.Valid(r.Body) {
			t.Fatalf("accepted a body that is not JSON: %q", r.Body)
		}
		m := s.Msg(r, testNow)
		if strings.Contains(m.Subject, "..") || strings.HasSuffix(m.Subject, ".") {
			t.Fatalf("re-encoded subject %q has an empty token", m.Subject)
		}
		again, err := s.DecodeRequest(m.Subject, m.Header, m.Data)
		if err != nil {
			t.Fatalf("decoding the re-encoded request (%q, %v): %v", m.Subject, m.Header, err)
		}
		if d := sameRequest(again, r); d != "" {
			t.Fatalf("re-encoded request differs: %s\nfirst  %+v\nsecond %+v", d, r, again)
		}
	})
}

func BenchmarkEncodeDecodeRequest(b *testing.B) {
	s := mustSubjects(b, "")
	content := strings.Repeat("The quick brown fox jumps over the lazy dog. ", 20) // ~900 bytes
	body, err := json.Marshal(map[string]any{
		"model":       "openai/gpt-4.1",
		"messages":    []map[string]string{{"role": "system", "content": "You are terse."}, {"role": "user", "content": content}},
		"temperature": 0.2,
		"max_tokens":  256,
	})
	if err != nil {
		b.Fatal(err)
	}
	r := validRequest()
	r.Body = body
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		m := s.Msg(r, testNow)
		got, err := s.DecodeRequest(m.Subject, m.Header, m.Data)
		if err != nil || got.ID != r.ID {
			b.Fatalf("DecodeRequest: %v", err)
		}
	}
}

func TestRedeliverIn(t *testing.T) {
	for _, tt := range []struct {
		name string
		set  *time.Duration // nil: the header is written raw
		raw  string
		want time.Duration
		ok   bool
	}{
		{name: "ack wait", set: new(30 * time.Second), want: 30 * time.Second, ok: true},
		{name: "rounded down to milliseconds", set: new(1500*time.Microsecond + 999), want: time.Millisecond, ok: true},
		{name: "past written as zero", set: new(-time.Second), want: 0, ok: true},
		{name: "missing", raw: ""},
		{name: "not a number", raw: "soon"},
		{name: "negative", raw: "-5"},
		{name: "a duration string", raw: "30s"},
		{name: "beyond a year", raw: "99999999999999"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := messages.EventMsg("_INBOX.a.b", messages.EventAlive, 0, nil)
			if tt.set != nil {
				messages.SetRedeliverIn(m, *tt.set)
			} else if tt.raw != "" {
				m.Header.Set(messages.HeaderRedeliverIn, tt.raw)
			}
			d, ok := messages.RedeliverIn(m.Header)
			if d != tt.want || ok != tt.ok {
				t.Errorf("RedeliverIn = %v, %v; want %v, %v", d, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestValidAck(t *testing.T) {
	for subject, want := range map[string]bool{
		"$JS.ACK.LLMQ_REQUESTS.llmq_0_gpt.1.42.42.1700000000000000000.0":          true,
		"$JS.ACK.hub.ACCOUNTHASH.LLMQ_REQUESTS.c.1.42.42.1700000000000000000.0.x": true,
		"llmq.req.0.gpt":           false,
		"$JS.API.STREAM.DELETE.X":  false,
		"$JS.ACK.>":                false,
		"$JS.ACK.a b":              false,
		"":                         false,
		"_INBOX.abc.$JS.ACK.x.y.z": false,
	} {
		if got := messages.ValidAck(subject); got != want {
			t.Errorf("ValidAck(%q) = %v, want %v", subject, got, want)
		}
	}
}
