package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// submission is one request of an ordered-release scenario.
type submission struct {
	content  string
	priority int64
	viaNATS  bool // published straight to JetStream by pkg/client instead of HTTP
}

// outcome is how one submission ended.
type outcome struct {
	content string
	status  int
	band    string // x-llmq-band (HTTP) or client.Response.Band (NATS)
	text    string // the answer's text
	err     error
}

// runOrderedRelease holds the only upstream slot of a group with one held
// request, queues subs one at a time (each is in the stream before the next
// is sent), releases the upstream and returns the order in which the
// upstream saw the requests, and how each ended.
func runOrderedRelease(t *testing.T, subs []submission) (order []string, outs map[string]outcome) {
	t.Helper()
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("ordered", "ordered-0", fake, 1)}})
	g := startEmbeddedGateway(t, cfg, 4) // several slots: max_parallel_requests, not the slot count, serialises
	q := observeQueue(t, g.NATSURL())

	var cl *client.Client
	if slices.ContainsFunc(subs, func(s submission) bool { return s.viaNATS }) {
		nc, err := nats.Connect(g.NATSURL(), nats.Name("llmq-test-internal-service"))
		if err != nil {
			t.Fatalf("connect to %s: %v", g.NATSURL(), err)
		}
		t.Cleanup(nc.Close)
		if cl, err = client.New(nc, client.Options{}); err != nil {
			t.Fatalf("client.New: %v", err)
		}
		t.Cleanup(func() { _ = cl.Close() })
	}

	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	results := make(chan outcome, len(subs)+1)
	send := func(s submission) {
		o := outcome{content: s.content}
		defer func() { results <- o }()
		if s.viaNATS {
			resp, _, err := cl.Do(ctx, &client.Request{
				Kind: messages.KindChat, Group: "ordered", Priority: s.priority,
				Body: []byte(chatBody("ordered", s.content)),
			})
			if err != nil {
				o.err = err
				return
			}
			o.status, o.band = http.StatusOK, strconv.Itoa(resp.Band)
			var c chatCompletion
			if err := json.Unmarshal(resp.Body, &c); err == nil && len(c.Choices) > 0 {
				o.text = c.Choices[0].Message.Content
			}
			return
		}
		r, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("ordered", s.content, fmt.Sprintf(`"priority":%d`, s.priority)))
		if err != nil {
			o.err = err
			return
		}
		o.status, o.band = r.Status, r.Header.Get("x-llmq-band")
		var c chatCompletion
		if err := json.Unmarshal(r.Body, &c); err == nil && len(c.Choices) > 0 {
			o.text = c.Choices[0].Message.Content
		}
	}

	fake.Hold()
	go send(submission{content: "held", priority: 5})
	waitUpstream(t, fake, 1)
	for i, s := range subs {
		go send(s)
		q.waitStored(t, uint64(i+2))
	}
	// Every request is queued and four worker slots are free, yet the
	// deployment's single parallel slot is taken: nothing else went out.
	if n := fake.Count(); n != 1 {
		t.Fatalf("with max_parallel_requests 1 and the first call held, the upstream received %d requests: %q", n, contents(fake))
	}
	fake.Release()

	outs = make(map[string]outcome)
	for range len(subs) + 1 {
		select {
		case o := <-results:
			outs[o.content] = o
		case <-ctx.Done():
			t.Fatalf("only %d of %d requests were answered; upstream saw %q", len(outs), len(subs)+1, contents(fake))
		}
	}
	for _, s := range append([]submission{{content: "held", priority: 5}}, subs...) {
		o := outs[s.content]
		switch {
		case o.err != nil:
			t.Errorf("%s: %v", s.content, o.err)
		case o.status != http.StatusOK || o.text != fakeReply:
			t.Errorf("%s: status %d, text %q; want 200 and %q", s.content, o.status, o.text, fakeReply)
		case o.band != strconv.Itoa(bandOf(s.priority)):
			t.Errorf("%s: band %q, want %d (priority %d)", s.content, o.band, bandOf(s.priority), s.priority)
		}
	}
	waitIdle(t, fake)
	return contents(fake), outs
}

// TestOrderedRelease is the core promise: while a deployment is saturated,
// queued requests wait, and when it frees up they reach the provider in
// priority order (lower first), equal priorities first come, first served.
func TestOrderedRelease(t *testing.T) {
	order, _ := runOrderedRelease(t, []submission{
		{content: "p2", priority: 2},
		{content: "p0", priority: 0},
		{content: "p1", priority: 1},
		{content: "a", priority: 3},
		{content: "b", priority: 3},
		{content: "c", priority: 3},
	})
	want := []string{"held", "p0", "p1", "p2", "a", "b", "c"}
	if !slices.Equal(order, want) {
		t.Errorf("the upstream saw %q, want %q", order, want)
	}
}

// TestOrderedReleaseMixedWithNATSClient shows that requests an internal
// service publishes straight to JetStream with pkg/client share one priority
// order with HTTP traffic: within a band, arrival order decides, whichever
// way a request came in.
func TestOrderedReleaseMixedWithNATSClient(t *testing.T) {
	order, _ := runOrderedRelease(t, []submission{
		{content: "http-4", priority: 4},
		{content: "nats-1", priority: 1, viaNATS: true},
		{content: "http-2", priority: 2},
		{content: "nats-0", priority: 0, viaNATS: true},
		{content: "http-1", priority: 1},
		{content: "nats-4", priority: 4, viaNATS: true},
		{content: "http-0", priority: 0},
	})
	want := []string{"held", "nats-0", "http-0", "nats-1", "http-1", "http-2", "http-4", "nats-4"}
	if !slices.Equal(order, want) {
		t.Errorf("the upstream saw %q, want %q", order, want)
	}
}

// TestPriorityValidation covers which "priority" values are accepted and the
// band each one lands in, and that a rejected request is answered 400 with
// an OpenAI error naming the param, before anything is queued or sent on.
func TestPriorityValidation(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList:      []deployment{fakeDeployment("v", "v-0", fake, 0)},
		RouterSettings: &routerSettings{DefaultPriority: ptr(int64(3))},
	})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	valid := []struct {
		name     string
		body     string
		priority int64
		band     int
	}{
		{"negative", chatBody("v", "negative", `"priority":-5`), -5, 0},
		{"zero", chatBody("v", "zero", `"priority":0`), 0, 0},
		{"two to the 40", chatBody("v", "big", `"priority":1099511627776`), 1099511627776, 9},
		{"null takes default_priority", chatBody("v", "null", `"priority":null`), 3, 3},
		{"absent takes default_priority", chatBody("v", "absent"), 3, 3},
		{"duplicate key: the last wins", `{"model":"v","priority":9,"messages":[{"role":"user","content":"dup"}],"priority":0}`, 0, 0},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			r := mustPost(t, url, "", tc.body)
			checkServed(t, r)
			if got := r.Header.Get("x-llmq-priority"); got != strconv.FormatInt(tc.priority, 10) {
				t.Errorf("x-llmq-priority %q, want %d", got, tc.priority)
			}
			if got := r.Header.Get("x-llmq-band"); got != strconv.Itoa(tc.band) {
				t.Errorf("x-llmq-band %q, want %d", got, tc.band)
			}
		})
	}

	waitIdle(t, fake)
	upstreamBefore, queuedBefore := fake.Count(), q.state(t).LastSeq
	if upstreamBefore != len(valid) || queuedBefore != uint64(len(valid)) {
		t.Fatalf("after %d valid requests: upstream %d, stream last sequence %d", len(valid), upstreamBefore, queuedBefore)
	}
	invalid := []struct{ name, value string }{
		{"string of digits", `"1"`},
		{"fraction", `1.5`},
		{"boolean", `true`},
		{"array", `[1]`},
		{"object", `{}`},
		{"empty string", `""`},
		{"above int64", `9223372036854775808`},
	}
	for _, tc := range invalid {
		t.Run("rejects "+tc.name, func(t *testing.T) {
			r := mustPost(t, url, "", chatBody("v", "invalid "+tc.name, `"priority":`+tc.value))
			if typ := checkError(t, r, http.StatusBadRequest, "priority"); typ != "" && typ != "invalid_request_error" {
				t.Errorf("error type %q, want invalid_request_error", typ)
			}
		})
	}
	// Nothing was published and nothing reached the upstream.
	if st := q.state(t); st.LastSeq != queuedBefore || st.Msgs != 0 {
		t.Errorf("invalid requests were queued: stream last sequence %d (was %d), %d messages", st.LastSeq, queuedBefore, st.Msgs)
	}
	if n := fake.Count(); n != upstreamBefore {
		t.Errorf("invalid requests reached the upstream: %d requests (was %d): %q", n, upstreamBefore, contents(fake))
	}
}

// TestPriorityBands checks the priority → band mapping of a custom
// llmq_settings.priority_bands table, both in the response headers and in
// the NATS subject the request was actually queued on.
func TestPriorityBands(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList: []deployment{fakeDeployment("banded", "banded-0", fake, 0)},
		LLMQ:      &llmqSettings{PriorityBands: []int64{10, 20}},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	q := observeQueue(t, g.NATSURL())

	// The stream republishes a headers-only copy of every stored request to
	// llmq.wake.<band>.<group>: it shows the subject each request was stored on.
	wakes := make(chan *nats.Msg, 64)
	sub, err := q.nc.ChanSubscribe("llmq.wake.>", wakes)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := q.nc.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		priority int64
		band     int
	}{
		{-100, 0}, {10, 0}, {11, 1}, {20, 1}, {21, 2}, {1 << 40, 2},
	} {
		t.Run(strconv.FormatInt(tc.priority, 10), func(t *testing.T) {
			r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("banded", "p", fmt.Sprintf(`"priority":%d`, tc.priority)))
			checkServed(t, r)
			if got := r.Header.Get("x-llmq-band"); got != strconv.Itoa(tc.band) {
				t.Errorf("x-llmq-band %q, want %d", got, tc.band)
			}
			id := r.Header.Get("x-llmq-request-id")
			ctx := waitCtx(t)
			for {
				select {
				case m := <-wakes:
					if m.Header.Get(messages.HeaderRequestID) != id {
						continue
					}
					if want := fmt.Sprintf("llmq.wake.%d.banded", tc.band); m.Subject != want {
						t.Errorf("queued on %s, want %s", m.Subject, want)
					}
					if got := m.Header.Get(messages.HeaderPriority); got != strconv.FormatInt(tc.priority, 10) {
						t.Errorf("queued with %s %q, want %d", messages.HeaderPriority, got, tc.priority)
					}
				case <-ctx.Done():
					t.Fatalf("no wake-up hint for request %s", id)
				}
				break
			}
		})
	}
}

// TestQueueDeadline: a request whose "timeout" passes while it waits in the
// queue is answered 408 with an OpenAI error, and it never reaches the
// provider, not even after the provider frees up.
func TestQueueDeadline(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("slow", "slow-0", fake, 1)}})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	fake.Hold()
	held := make(chan *result, 1)
	go func() {
		r, err := post(t.Context(), url, "", chatBody("slow", "held"))
		if err != nil {
			r = &result{Body: []byte(err.Error())}
		}
		held <- r
	}()
	waitUpstream(t, fake, 1)

	start := time.Now()
	r := mustPost(t, url, "", chatBody("slow", "too late", `"timeout":1`))
	waited := time.Since(start)
	if typ := checkError(t, r, http.StatusRequestTimeout, ""); typ != "" && typ != "timeout_error" {
		t.Errorf("error type %q, want timeout_error", typ)
	}
	if waited < 900*time.Millisecond {
		t.Errorf("the 408 came after %v, before the 1 s queue timeout", waited)
	}
	if r.Header.Get("x-llmq-request-id") == "" {
		t.Error("the 408 has no x-llmq-request-id")
	}

	fake.Release()
	if hr := <-held; hr.Status != http.StatusOK {
		t.Errorf("held request: %s", hr)
	}
	// A later request of the same band is served after the expired one
	// would have been, so by then the expired one has been dropped.
	checkServed(t, mustPost(t, url, "", chatBody("slow", "control")))
	waitIdle(t, fake)
	q.waitMsgs(t, 0)
	if got, want := contents(fake), []string{"held", "control"}; !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q (never the timed-out request)", got, want)
	}
}

// TestAbandonedRequestNeverSent: a caller that hangs up while its request
// waits in the queue costs nothing: when a worker reaches the request, it
// finds the caller gone and drops it without calling the provider.
func TestAbandonedRequestNeverSent(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("busy", "busy-0", fake, 1)}})
	env := baseEnv(cfg)
	env.DataDir, env.EmbeddedNATSListen, env.EmbeddedWorkers = t.TempDir(), "127.0.0.1:-1", 4
	env.LogLevel = "debug" // the gateway logs each request's outcome
	logs := newLogLines()
	g := startGateway(t, env, logs)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	fake.Hold()
	held := make(chan *result, 1)
	go func() {
		r, err := post(t.Context(), url, "", chatBody("busy", "held"))
		if err != nil {
			r = &result{Body: []byte(err.Error())}
		}
		held <- r
	}()
	waitUpstream(t, fake, 1)

	ctx, hangUp := context.WithCancel(t.Context())
	gone := make(chan error, 1)
	go func() {
		_, err := post(ctx, url, "", chatBody("busy", "abandoned", `"priority":0`))
		gone <- err
	}()
	q.waitStored(t, 2)
	hangUp()
	if err := <-gone; err == nil {
		t.Fatal("the abandoned request was answered")
	}
	logs.waitFor(t, "msg=request", "outcome=cancelled") // the gateway noticed the hang-up

	fake.Release()
	if r := <-held; r.Status != http.StatusOK {
		t.Errorf("held request: %s", r)
	}
	checkServed(t, mustPost(t, url, "", chatBody("busy", "control", `"priority":0`)))
	waitIdle(t, fake)
	q.waitMsgs(t, 0)
	if got, want := contents(fake), []string{"held", "control"}; !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q (never the abandoned request)", got, want)
	}
}
