package messages

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// Version is the wire version this package writes and reads.
const Version = "1"

// Header names. Nats-Msg-Id and Nats-TTL are JetStream's own.
const (
	HeaderVersion   = "Llmq-Version"
	HeaderRequestID = "Llmq-Request-Id"
	HeaderKind      = "Llmq-Kind"
	HeaderPriority  = "Llmq-Priority"
	HeaderReply     = "Llmq-Reply"
	HeaderDeadline  = "Llmq-Deadline"
	// HeaderAnswerDeadline is when the caller stops waiting for the answer
	// (Unix milliseconds; optional): a worker holds an answer or a pickup
	// that finds nobody on the caller's inbox until then.
	HeaderAnswerDeadline = "Llmq-Answer-Deadline"
	// HeaderRedeliverIn, on pickup and alive events, is how long (in
	// milliseconds, from the event's sending) JetStream waits before it
	// redelivers the request if the worker sends nothing more: its last
	// in-progress ack plus the ack wait. Optional.
	HeaderRedeliverIn = "Llmq-Redeliver-In"
	HeaderStream      = "Llmq-Stream"
	HeaderEvent       = "Llmq-Event"
	HeaderStatus      = "Llmq-Status"
	HeaderOutcome     = "Llmq-Outcome"
	HeaderDeployment  = "Llmq-Deployment"
	HeaderRetryAfter  = "Llmq-Retry-After"
	HeaderSeq         = "Llmq-Seq"
	HeaderControl     = "Llmq-Control"
	HeaderDeadReason  = "Llmq-Dead-Reason"
	// HeaderTenant names the tenant a request is for (see ValidTenant);
	// absent means TenantAnonymous.
	HeaderTenant = "Llmq-Tenant"
	// HeaderTokens, on a served-tokens hint, is the prompt plus completion
	// tokens a worker served to a tenant's requests of a band and group
	// since its last hint; HeaderWorker names that worker.
	HeaderTokens = "Llmq-Tokens"
	HeaderWorker = "Llmq-Worker"
	// HeaderCallerAcks, "1" on a request, says its caller acknowledges the
	// request in JetStream itself when its served answer arrives: the
	// worker sends that answer with HeaderAck, the request's ack subject,
	// and waits for no confirmation.
	HeaderCallerAcks = "Llmq-Caller-Acks"
	HeaderAck        = "Llmq-Ack"
	// HeaderNotifyUntil, on a request, is until when (Unix milliseconds) a
	// worker that takes it on its first delivery may start it without a
	// pickup check, sending EventStarted instead (see the package doc).
	HeaderNotifyUntil = "Llmq-Notify-Until"
	HeaderMsgID       = "Nats-Msg-Id"
	HeaderTTL         = "Nats-TTL"
)

// Events carried in HeaderEvent on messages to a caller's inbox.
const (
	EventPickup = "pickup" // a worker asks whether the caller still waits
	// EventStarted tells the caller that a worker started its request
	// without asking (before Llmq-Notify-Until); a caller that no longer
	// waits sends EventCancel to its Llmq-Control.
	EventStarted = "started"
	EventChunk   = "chunk" // one streamed event, numbered by HeaderSeq from 1
	EventAlive   = "alive" // the worker still works on the request (every HeartbeatInterval)
	EventReply   = "reply" // the final answer; for a stream, numbered after the last chunk
	// EventRequeue tells the caller that its worker handed the request back
	// to the queue (shutting down) without answering: another worker may
	// pick it up at once.
	EventRequeue = "requeue"
	// EventCancel goes from the caller to the worker's HeaderControl subject:
	// stop the provider call, nobody reads the answer.
	EventCancel = "cancel"
)

// NotifyWindow is the longest Llmq-Notify-Until a worker honours, counted
// from the request's store time: past it, it asks the caller (a pickup),
// however long the caller said. It bounds what a worker must remember of
// the requests callers left (Subjects.Left).
const NotifyWindow = time.Second

// HeartbeatInterval is how often a worker sends EventAlive while it serves a
// request. A streaming caller that hears nothing for StreamSilence assumes
// the worker died.
const (
	HeartbeatInterval = time.Second
	StreamSilence     = 5 * time.Second
)

// EventMsg builds a chunk, alive or cancel message to subject. seq is 0 for
// events that are not numbered.
func EventMsg(subject, event string, seq int, data []byte) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Header[HeaderVersion] = []string{Version}
	m.Header[HeaderEvent] = []string{event}
	if seq > 0 {
		m.Header[HeaderSeq] = []string{strconv.Itoa(seq)}
	}
	m.Data = data
	return m
}

// Pickup answers a caller sends back to a worker's pickup message.
const (
	PickupAccept = "go"   // still waiting: call the provider
	PickupReject = "gone" // abandoned: drop the request
)

// Kind is the OpenAI endpoint a request is for.
type Kind string

// The request kinds.
const (
	KindChat       Kind = "chat"       // /v1/chat/completions
	KindCompletion Kind = "completion" // /v1/completions
)

// Path returns the provider path of the kind, relative to the API base.
func (k Kind) Path() string {
	if k == KindCompletion {
		return "completions"
	}
	return "chat/completions"
}

// Request is one queued request, as published to a request subject.
type Request struct {
	ID       string
	Kind     Kind
	Group    string
	Band     int
	Priority int64
	ReplyTo  string    // the caller's inbox subject
	Deadline time.Time // queue deadline; zero means none
	// AnswerDeadline is when the caller stops waiting for the answer; zero
	// means the caller did not say.
	AnswerDeadline time.Time
	Stream         bool // the caller asked for server-sent events
	// CallerAcks says the caller acks the request when its served answer
	// arrives (HeaderCallerAcks).
	CallerAcks bool
	// NotifyUntil is until when a worker may start the request on its first
	// delivery without asking the caller (HeaderNotifyUntil); zero: always ask.
	NotifyUntil time.Time
	// Tenant is who the request is for; DecodeRequest sets TenantAnonymous
	// when the message names none, and Msg leaves the header out when it is
	// empty.
	Tenant string
	Body   []byte // the OpenAI request body without llmq-only fields
}

// Msg builds the JetStream message for r on the subjects s. The TTL is the
// time from now to the deadline, at least one second.
func (s Subjects) Msg(r *Request, now time.Time) *nats.Msg {
	m := nats.NewMsg(s.RequestLane(r.Band, r.Group, Lane(r.Tenant)))
	h := m.Header
	h[HeaderVersion] = []string{Version}
	h[HeaderRequestID] = []string{r.ID}
	h[HeaderMsgID] = []string{r.ID}
	h[HeaderKind] = []string{string(r.Kind)}
	h[HeaderPriority] = []string{strconv.FormatInt(r.Priority, 10)}
	h[HeaderReply] = []string{r.ReplyTo}
	if r.Stream {
		h[HeaderStream] = []string{"1"}
	}
	if r.CallerAcks {
		h[HeaderCallerAcks] = []string{"1"}
	}
	if !r.NotifyUntil.IsZero() {
		h[HeaderNotifyUntil] = []string{strconv.FormatInt(r.NotifyUntil.UnixMilli(), 10)}
	}
	if r.Tenant != "" {
		h[HeaderTenant] = []string{r.Tenant}
	}
	if !r.Deadline.IsZero() {
		h[HeaderDeadline] = []string{strconv.FormatInt(r.Deadline.UnixMilli(), 10)}
		ttl := max(r.Deadline.Sub(now).Round(time.Second), time.Second)
		h[HeaderTTL] = []string{strconv.FormatInt(int64(ttl/time.Second), 10) + "s"}
	}
	if !r.AnswerDeadline.IsZero() {
		h[HeaderAnswerDeadline] = []string{strconv.FormatInt(r.AnswerDeadline.UnixMilli(), 10)}
	}
	m.Data = r.Body
	return m
}

// DecodeRequest reads a request from a message received on a request
// subject. Every error wraps ErrInvalidRequest and says what is wrong, so a
// worker can terminate the message with that reason.
func (s Subjects) DecodeRequest(subject string, h nats.Header, body []byte) (*Request, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
	}
	band, group, err := s.ParseRequest(subject)
	if err != nil {
		return nil, bad("%v", err)
	}
	if v := h.Get(HeaderVersion); v != Version {
		return nil, bad("header %s is %q, want %q", HeaderVersion, v, Version)
	}
	r := &Request{Band: band, Group: group, Body: body}
	if r.ID = h.Get(HeaderRequestID); r.ID == "" {
		return nil, bad("header %s is missing", HeaderRequestID)
	}
	switch k := Kind(h.Get(HeaderKind)); k {
	case KindChat, KindCompletion:
		r.Kind = k
	default:
		return nil, bad("header %s is %q, want %q or %q", HeaderKind, k, KindChat, KindCompletion)
	}
	if r.ReplyTo = h.Get(HeaderReply); r.ReplyTo == "" {
		return nil, bad("header %s is missing", HeaderReply)
	}
	if p := h.Get(HeaderPriority); p != "" {
		if r.Priority, err = strconv.ParseInt(p, 10, 64); err != nil {
			return nil, bad("header %s is %q, not an integer", HeaderPriority, p)
		}
	}
	if d := h.Get(HeaderDeadline); d != "" {
		ms, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			return nil, bad("header %s is %q, not Unix milliseconds", HeaderDeadline, d)
		}
		r.Deadline = time.UnixMilli(ms)
	}
	if d := h.Get(HeaderAnswerDeadline); d != "" {
		ms, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			return nil, bad("header %s is %q, not Unix milliseconds", HeaderAnswerDeadline, d)
		}
		r.AnswerDeadline = time.UnixMilli(ms)
	}
	r.Stream = h.Get(HeaderStream) == "1"
	r.CallerAcks = h.Get(HeaderCallerAcks) == "1"
	if d := h.Get(HeaderNotifyUntil); d != "" {
		ms, err := strconv.ParseInt(d, 10, 64)
		if err != nil {
			return nil, bad("header %s is %q, not Unix milliseconds", HeaderNotifyUntil, d)
		}
		r.NotifyUntil = time.UnixMilli(ms)
	}
	switch r.Tenant = h.Get(HeaderTenant); {
	case r.Tenant == "":
		r.Tenant = TenantAnonymous
	case ValidTenant(r.Tenant) != nil:
		return nil, bad("header %s: %v", HeaderTenant, ValidTenant(r.Tenant))
	}
	if trimmed := bytes.TrimLeft(body, " \t\r\n"); len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(body) {
		return nil, bad("body is not a JSON object")
	}
	return r, nil
}

// Reply is the final answer to a request.
type Reply struct {
	Seq        int // for streams: the number after the last chunk
	Outcome    Outcome
	Status     int    // HTTP status to answer with
	Deployment string // model_info.id of the deployment that served it
	RetryAfter string // Retry-After value, for 429 and 503
	Body       []byte // provider response or OpenAI error body
	// Ack, on a served answer to a request with CallerAcks, is the
	// request's JetStream ack subject: the caller publishes AckToken there.
	Ack string
}

// AckToken is what a caller publishes to a reply's Ack subject: JetStream's
// acknowledgement, which removes the request from the stream.
var AckToken = []byte("+ACK")

// ValidAck reports whether subject may be a reply's Ack subject: a
// JetStream ack subject. A caller publishes nowhere else on a worker's word.
func ValidAck(subject string) bool {
	return strings.HasPrefix(subject, "$JS.ACK.") && !strings.ContainsAny(subject, " \t\r\n*>")
}

// ReplyMsg builds the message that carries r to the caller's inbox.
func ReplyMsg(inbox string, r *Reply) *nats.Msg {
	m := nats.NewMsg(inbox)
	m.Header[HeaderVersion] = []string{Version}
	m.Header[HeaderEvent] = []string{EventReply}
	m.Header[HeaderOutcome] = []string{r.Outcome.String()}
	m.Header[HeaderStatus] = []string{strconv.Itoa(r.Status)}
	if r.Deployment != "" {
		m.Header[HeaderDeployment] = []string{r.Deployment}
	}
	if r.RetryAfter != "" {
		m.Header[HeaderRetryAfter] = []string{r.RetryAfter}
	}
	if r.Seq > 0 {
		m.Header[HeaderSeq] = []string{strconv.Itoa(r.Seq)}
	}
	if r.Ack != "" {
		m.Header[HeaderAck] = []string{r.Ack}
	}
	m.Data = r.Body
	return m
}

// DecodeReply reads a reply message.
func DecodeReply(h nats.Header, body []byte) (*Reply, error) {
	o, ok := ParseOutcome(h.Get(HeaderOutcome))
	if !ok {
		return nil, fmt.Errorf("%w: reply outcome %q", ErrInternal, h.Get(HeaderOutcome))
	}
	st, err := strconv.Atoi(h.Get(HeaderStatus))
	if err != nil || st < 100 || st > 599 {
		return nil, fmt.Errorf("%w: reply status %q", ErrInternal, h.Get(HeaderStatus))
	}
	seq, _ := strconv.Atoi(h.Get(HeaderSeq))
	return &Reply{Outcome: o, Status: st, Seq: seq, Deployment: h.Get(HeaderDeployment), RetryAfter: h.Get(HeaderRetryAfter), Ack: h.Get(HeaderAck), Body: body}, nil
}

// Err returns the reply as an *Error, or nil when it was served.
func (r *Reply) Err() error {
	if r.Outcome == OutcomeServed {
		return nil
	}
	e := &Error{Outcome: r.Outcome, Status: r.Status, Body: r.Body, RetryAfter: r.RetryAfter}
	var eb errorBody
	if json.Unmarshal(r.Body, &eb) == nil && eb.Error != nil {
		e.Message = eb.Error.Message
		if eb.Error.Param != nil {
			e.Param = *eb.Error.Param
		}
		if c, ok := eb.Error.Code.(string); ok {
			e.Code = c
		}
	}
	if e.Message == "" {
		e.Message = r.Outcome.String()
	}
	return e
}

type errorBody struct {
	Error *errorDetail `json:"error"`
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    any     `json:"code"`
}

// ErrorBody returns e as an OpenAI error body: {"error":{"message","type","param","code"}}.
// A provider's own body (e.Body) is returned unchanged.
func ErrorBody(e *Error) []byte {
	if len(e.Body) > 0 {
		return e.Body
	}
	d := errorDetail{Message: e.Message, Type: e.Outcome.ErrorType()}
	if e.Param != "" {
		d.Param = &e.Param
	}
	if e.Code != "" {
		d.Code = e.Code
	} else {
		d.Code = e.Outcome.String()
	}
	b, _ := json.Marshal(errorBody{Error: &d})
	return b
}

// SetRedeliverIn writes HeaderRedeliverIn on an event message: JetStream
// redelivers its request d from now unless the worker acks it again.
func SetRedeliverIn(m *nats.Msg, d time.Duration) {
	m.Header[HeaderRedeliverIn] = []string{strconv.FormatInt(max(d, 0).Milliseconds(), 10)}
}

// RedeliverIn reads HeaderRedeliverIn; ok is false when it is missing or
// not a non-negative number of milliseconds.
func RedeliverIn(h nats.Header) (d time.Duration, ok bool) {
	ms, err := strconv.ParseInt(h.Get(HeaderRedeliverIn), 10, 64)
	if err != nil || ms < 0 || ms > int64(365*24*time.Hour/time.Millisecond) {
		return 0, false
	}
	return time.Duration(ms) * time.Millisecond, true
}
