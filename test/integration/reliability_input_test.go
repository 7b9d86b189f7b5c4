package integration

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// relPoisonMsg is a request message as an internal service would publish
// it straight to JetStream, with the headers given (nil values are left out).
func relPoisonMsg(subject string, headers map[string]string, body string) *nats.Msg {
	m := nats.NewMsg(subject)
	for k, v := range headers {
		m.Header.Set(k, v)
	}
	m.Data = []byte(body)
	return m
}

// TestReliabilityPoisonMessages: requests published straight to JetStream by
// a service that got the contract wrong (a body that is not JSON, a missing
// Llmq-Version or Llmq-Request-Id header) are terminated, copied to the
// LLMQ_DEAD stream with a Llmq-Dead-Reason header, and counted; the worker
// keeps serving. A request that fails every retry (router_settings
// num_retries: 1, the provider answers 500) also ends in LLMQ_DEAD with its
// error, and its caller gets that error (502).
func TestReliabilityPoisonMessages(t *testing.T) {
	fake := newFake(t)
	const group = "poison"
	cfg := relWriteConfig(t, relConfig{
		ModelList:      []deployment{fakeDeployment(group, group+"-0", fake, 0)},
		RouterSettings: map[string]any{"num_retries": 1},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	nc, js := relJS(t, g.NATSURL())
	subject := relSubjects.Request(0, group)
	valid := map[string]string{
		messages.HeaderVersion:   messages.Version,
		messages.HeaderRequestID: "poison-id",
		messages.HeaderKind:      string(messages.KindChat),
		messages.HeaderReply:     nc.NewRespInbox() + ".poison-id", // nobody listens
	}
	without := func(drop string) map[string]string {
		h := map[string]string{}
		for k, v := range valid {
			if k != drop {
				h[k] = v
			}
		}
		h[messages.HeaderRequestID] = "poison-" + strings.ToLower(drop)
		if drop == messages.HeaderRequestID {
			delete(h, messages.HeaderRequestID)
		}
		return h
	}
	poisons := []struct {
		name    string
		msg     *nats.Msg
		because string // expected in Llmq-Dead-Reason
	}{
		{"body not JSON", relPoisonMsg(subject, valid, "this is not JSON"), "JSON"},
		{"no Llmq-Version", relPoisonMsg(subject, without(messages.HeaderVersion), chatBody(group, "x")), messages.HeaderVersion},
		{"no Llmq-Request-Id", relPoisonMsg(subject, without(messages.HeaderRequestID), chatBody(group, "x")), messages.HeaderRequestID},
	}
	for i, p := range poisons {
		if _, err := js.PublishMsg(relCtx(t, relWait), p.msg); err != nil {
			t.Fatalf("%s: publish: %v", p.name, err)
		}
		relWaitStreamMsgs(t, js, relDeadStream, uint64(i+1))
	}
	dead := relDeadLetters(t, js)
	if len(dead) != len(poisons) {
		t.Fatalf("%d dead letters, want %d", len(dead), len(poisons))
	}
	for i, p := range poisons {
		d := dead[i]
		reason := d.Header.Get(messages.HeaderDeadReason)
		if !strings.Contains(reason, p.because) {
			t.Errorf("%s: dead-letter reason %q does not mention %q", p.name, reason, p.because)
		}
		if d.Subject != relSubjects.DeadLetter(subject) {
			t.Errorf("%s: dead letter on %q, want %q", p.name, d.Subject, relSubjects.DeadLetter(subject))
		}
		if !bytes.Equal(d.Data, p.msg.Data) {
			t.Errorf("%s: the dead letter's body is %q, want the original %q", p.name, d.Data, p.msg.Data)
		}
	}
	relWaitStreamMsgs(t, js, requestStream, 0)
	if n := fake.Count(); n != 0 {
		t.Errorf("poison messages reached the provider: %q", contents(fake))
	}

	// The worker keeps serving.
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "after-poison")))

	// A request that fails every retry.
	fake.FailNext(10, http.StatusInternalServerError, "")
	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "always-fails"))
	checkError(t, r, http.StatusBadGateway, "")
	fake.Reset()
	if got := contents(fake); len(got) != 0 {
		t.Errorf("after Reset the upstream lists %q", got)
	}
	relWaitStreamMsgs(t, js, relDeadStream, uint64(len(poisons)+1))
	dead = relDeadLetters(t, js)
	last := dead[len(dead)-1]
	reason := last.Header.Get(messages.HeaderDeadReason)
	if !strings.HasPrefix(reason, "provider_error") || !strings.Contains(reason, "500") {
		t.Errorf("the failed request's dead-letter reason is %q, want its error (provider_error, status 500)", reason)
	}
	if !strings.Contains(string(last.Data), "always-fails") {
		t.Errorf("the failed request's dead letter holds %q", last.Data)
	}

	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "after-failure")))
	relWaitStreamMsgs(t, js, requestStream, 0)
	if v := relMetric(t, g.URL+"/metrics", "llmq_dead_letters_total", `reason="undecodable"`); v != float64(len(poisons)) {
		t.Errorf("llmq_dead_letters_total{reason=undecodable} = %v, want %d", v, len(poisons))
	}
	if v := relMetric(t, g.URL+"/metrics", "llmq_dead_letters_total", `reason="failed"`); v != 1 {
		t.Errorf("llmq_dead_letters_total{reason=failed} = %v, want 1", v)
	}
}

// TestReliabilityFailedRequestTriedNumRetriesPlusOne: the request that fails
// for good was tried 1 + num_retries times, no more.
func TestReliabilityFailedRequestTriedNumRetriesPlusOne(t *testing.T) {
	fake := newFake(t)
	const group = "retried"
	cfg := relWriteConfig(t, relConfig{
		ModelList:      []deployment{fakeDeployment(group, group+"-0", fake, 0)},
		RouterSettings: map[string]any{"num_retries": 1},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	fake.FailNext(10, http.StatusInternalServerError, "")
	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "always-fails"))
	checkError(t, r, http.StatusBadGateway, "")
	q := observeQueue(t, g.NATSURL())
	q.waitMsgs(t, 0)
	waitIdle(t, fake)
	if n := fake.Count(); n != 2 {
		t.Errorf("the provider was called %d times, want 2 (1 + num_retries 1): %q", n, contents(fake))
	}
}

// TestReliabilityStrayRequestSubjects: a service that got the contract wrong
// publishes well-formed requests to subjects no worker serves: a model group
// that does not exist, and a band beyond the band table. Such a message must
// not sit in the work-queue stream forever (it has no TTL); it must be
// terminated and dead-lettered like any other poison message.
func TestReliabilityStrayRequestSubjects(t *testing.T) {
	fake := newFake(t)
	const group = "known"
	cfg := relOneGroup(t, group, fake, 0, nil)
	g := startEmbeddedGateway(t, cfg, 2)
	nc, js := relJS(t, g.NATSURL())
	strays := []string{relSubjects.Request(0, "no-such-group"), relSubjects.Request(42, group)}
	for i, subj := range strays {
		id := fmt.Sprint("stray-", i)
		m := relPoisonMsg(subj, map[string]string{
			messages.HeaderVersion: messages.Version, messages.HeaderRequestID: id, messages.HeaderKind: string(messages.KindChat),
			messages.HeaderReply: nc.NewRespInbox() + "." + id,
		}, chatBody(group, id))
		if _, err := js.PublishMsg(relCtx(t, relWait), m); err != nil {
			t.Fatalf("publish to %s: %v", subj, err)
		}
	}
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "normal")))
	// The workers' safety-net poll (every 5 s) sees every subject that holds
	// messages; allow it two rounds.
	ok := relPoll(12*time.Second, func() bool {
		info := relStreamInfo(t, js, requestStream)
		return info.State.Msgs == 0
	})
	if !ok {
		info := relStreamInfo(t, js, requestStream)
		t.Errorf("after 12s the request stream still holds %d stray messages %v that no worker will ever take (no TTL, no consumer): they are neither dead-lettered nor removed",
			info.State.Msgs, info.State.Subjects)
	}
}

// TestReliabilityOverload: with llmq_settings.max_queued 3 and no worker,
// the fourth request of band 9 gets 429 queue_full with Retry-After, and
// nothing is stored for it (the subject still holds 3, the stream's last
// sequence did not move), while a band-0 request is still accepted: a full
// low band never refuses a high-priority request. Once a worker starts,
// every accepted request is served.
func TestReliabilityOverload(t *testing.T) {
	fake := newFake(t)
	const group = "full"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"max_queued": 3})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	_, js := relJS(t, natsURL)

	var accepted []<-chan relAnswer
	for i := range 3 {
		accepted = append(accepted, relPostAsync(t, fmt.Sprint("band9-", i), g.URL+"/v1/chat/completions",
			chatBody(group, fmt.Sprint("band9-", i), `"priority":9`), relWait))
		relWaitStreamMsgs(t, js, requestStream, uint64(i+1))
	}
	before := relStreamInfo(t, js, requestStream).State

	start := time.Now()
	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "band9-refused", `"priority":9`))
	took := time.Since(start)
	checkError(t, r, http.StatusTooManyRequests, "")
	if r.Header.Get("Retry-After") == "" {
		t.Errorf("429 without Retry-After: %s", r)
	}
	if code := relErrorCode(r.Body); code != "queue_full" {
		t.Errorf("429 code %q, want queue_full: %s", code, r)
	}
	if r.Header.Get("x-llmq-band") != "9" {
		t.Errorf("x-llmq-band %q, want 9", r.Header.Get("x-llmq-band"))
	}
	after := relStreamInfo(t, js, requestStream).State
	if n := after.Subjects[relSubjects.Request(9, group)]; n != 3 {
		t.Errorf("band 9 holds %d requests after the refusal, want 3", n)
	}
	if after.LastSeq != before.LastSeq || after.Msgs != before.Msgs {
		t.Errorf("the refused request was stored: last sequence %d -> %d, messages %d -> %d", before.LastSeq, after.LastSeq, before.Msgs, after.Msgs)
	}
	t.Logf("429 after %s", took.Round(time.Millisecond))

	accepted = append(accepted, relPostAsync(t, "band0", g.URL+"/v1/chat/completions", chatBody(group, "band0", `"priority":0`), relWait))
	relWaitStreamMsgs(t, js, requestStream, 4)
	if n := relStreamInfo(t, js, requestStream).State.Subjects[relSubjects.Request(0, group)]; n != 1 {
		t.Errorf("band 0 holds %d requests, want 1", n)
	}

	relStartWorker(t, relEnv(cfg, natsURL))
	for _, ch := range accepted {
		a := relAwait(t, ch)
		if a.err != nil {
			t.Errorf("accepted request not answered: %v", a)
			continue
		}
		checkServed(t, a.r)
	}
	relWaitStreamMsgs(t, js, requestStream, 0)
	got := contents(fake)
	slices.Sort(got)
	if want := []string{"band0", "band9-0", "band9-1", "band9-2"}; !slices.Equal(got, want) {
		t.Errorf("the upstream received %q, want each of %q once and never the refused request", got, want)
	}
}

// TestReliabilityBadInput: every malformed request gets an OpenAI-style
// error with the right status, and nothing is queued for it (the request
// stream's last sequence and the provider's count do not move).
func TestReliabilityBadInput(t *testing.T) {
	fake := newFake(t)
	const group = "strict"
	cfg := relOneGroup(t, group, fake, 0, nil)
	env := baseEnv(cfg)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = 2
	env.MaxBodyBytes = 2048
	g := startGateway(t, env)
	q := observeQueue(t, g.NATSURL())
	chat, completions := g.URL+"/v1/chat/completions", g.URL+"/v1/completions"
	big := chatBody(group, strings.Repeat("x", 3000))
	const msgs = `"messages":[{"role":"user","content":"hi"}]`

	type tc struct {
		name        string
		method, url string
		contentType string
		body        string
		chunked     bool // send without Content-Length
		status      int
		param       string
	}
	cases := []tc{
		{name: "malformed JSON", body: `{"model":"strict","messages":[`, status: 400},
		{name: "JSON not an object", body: `[1,2,3]`, status: 400},
		{name: "empty body", body: ``, status: 400},
		{name: "whitespace body", body: " \n\t ", status: 400},
		{name: "wrong content type", contentType: "text/plain", body: chatBody(group, "hi"), status: 415},
		{name: "form content type", contentType: "application/x-www-form-urlencoded", body: "model=strict", status: 415},
		{name: "missing model", body: `{` + msgs + `}`, status: 400, param: "model"},
		{name: "null model", body: `{"model":null,` + msgs + `}`, status: 400, param: "model"},
		{name: "model a number", body: `{"model":5,` + msgs + `}`, status: 400, param: "model"},
		{name: "model an object", body: `{"model":{"name":"strict"},` + msgs + `}`, status: 400, param: "model"},
		{name: "model empty", body: `{"model":"",` + msgs + `}`, status: 400, param: "model"},
		{name: "missing messages", body: `{"model":"strict"}`, status: 400, param: "messages"},
		{name: "messages a string", body: `{"model":"strict","messages":"hi"}`, status: 400, param: "messages"},
		{name: "messages an object", body: `{"model":"strict","messages":{"role":"user"}}`, status: 400, param: "messages"},
		{name: "messages empty", body: `{"model":"strict","messages":[]}`, status: 400, param: "messages"},
		{name: "messages of strings", body: `{"model":"strict","messages":["hi"]}`, status: 400, param: "messages"},
		{name: "completions missing prompt", url: completions, body: `{"model":"strict"}`, status: 400, param: "prompt"},
		{name: "completions prompt a number", url: completions, body: `{"model":"strict","prompt":5}`, status: 400, param: "prompt"},
		{name: "unknown model", body: chatBody("no-such-model", "hi"), status: 404, param: "model"},
		{name: "max_tokens 0", body: chatBody(group, "hi", `"max_tokens":0`), status: 400, param: "max_tokens"},
		{name: "max_tokens negative", body: chatBody(group, "hi", `"max_tokens":-1`), status: 400, param: "max_tokens"},
		{name: `max_tokens "10"`, body: chatBody(group, "hi", `"max_tokens":"10"`), status: 400, param: "max_tokens"},
		{name: "max_tokens 1.5", body: chatBody(group, "hi", `"max_tokens":1.5`), status: 400, param: "max_tokens"},
		{name: "max_tokens over int32", body: chatBody(group, "hi", `"max_tokens":2147483648`), status: 400, param: "max_tokens"},
		{name: "max_completion_tokens 0", body: chatBody(group, "hi", `"max_completion_tokens":0`), status: 400, param: "max_completion_tokens"},
		{name: "stream not a boolean", body: chatBody(group, "hi", `"stream":"yes"`), status: 400, param: "stream"},
		{name: "timeout negative", body: chatBody(group, "hi", `"timeout":-1`), status: 400, param: "timeout"},
		{name: "body over the maximum", body: big, status: 413},
		{name: "body over the maximum, chunked", body: big, chunked: true, status: 413},
		{name: "invalid UTF-8", body: "{\"model\":\"strict\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", status: 400},
		{name: "unknown path", url: g.URL + "/v1/embeddings", body: chatBody(group, "hi"), status: 404},
		{name: "unknown path GET", method: http.MethodGet, url: g.URL + "/v1/nothing", status: 404},
		{name: "GET chat completions", method: http.MethodGet, url: chat, status: 405},
		{name: "PUT completions", method: http.MethodPut, url: completions, body: completionBody(group, "hi"), status: 405},
		{name: "DELETE chat completions", method: http.MethodDelete, url: chat, status: 405},
	}
	for _, p := range []string{`"high"`, `"1"`, `1.5`, `1e2`, `1.0`, `true`, `[]`, `{}`, `[1]`, `9223372036854775808`, `-9223372036854775809`, `"-"`, `""`} {
		cases = append(cases, tc{name: "priority " + p, body: chatBody(group, "hi", `"priority":`+p), status: 400, param: "priority"})
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.method == "" {
				c.method = http.MethodPost
			}
			if c.url == "" {
				c.url = chat
			}
			if c.contentType == "" && c.method == http.MethodPost {
				c.contentType = "application/json"
			}
			beforeSeq, beforeCalls := q.state(t).LastSeq, fake.Count()
			var body io.Reader = strings.NewReader(c.body)
			if c.chunked {
				body = io.MultiReader(strings.NewReader(c.body)) // unknown length: sent chunked
			}
			r := relSend(t, c.method, c.url, c.contentType, body)
			checkError(t, r, c.status, c.param)
			if c.status == http.StatusMethodNotAllowed && r.Header.Get("Allow") == "" {
				t.Errorf("405 without an Allow header")
			}
			if seq := q.state(t).LastSeq; seq != beforeSeq {
				t.Errorf("a request was queued: the stream's last sequence moved from %d to %d", beforeSeq, seq)
			}
			if n := fake.Count(); n != beforeCalls {
				t.Errorf("the provider was called: %q", contents(fake))
			}
		})
	}

	// The same gateway queues and serves a good request: the checks above
	// would have seen a queued one.
	beforeSeq := q.state(t).LastSeq
	checkServed(t, mustPost(t, chat, "", chatBody(group, "good", `"priority":3`, `"max_tokens":10`)))
	if seq := q.state(t).LastSeq; seq != beforeSeq+1 {
		t.Errorf("a good request moved the last sequence from %d to %d, want +1", beforeSeq, seq)
	}
}
