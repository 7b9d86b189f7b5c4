package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// TestReliabilityNATSRestart: a standalone JetStream server with a file
// store is restarted (shut down, then started again on the same port with
// the same store) while requests wait in the queue and one call is held at
// the provider. While NATS is down, the gateway answers new requests with 503
// broker_unavailable and Retry-After at once (without waiting for the
// publish timeout). After the restart the gateway and the worker reconnect
// by themselves, every queued request is served (200), each reached the
// provider once, and new requests are served too.
func TestReliabilityNATSRestart(t *testing.T) {
	fake := newFake(t)
	const group = "restart"
	cfg := relOneGroup(t, group, fake, 1, nil) // one call at a time: the rest wait in the queue
	n := relStartNATS(t)
	g := startRemoteGateway(t, cfg, n.URL())
	relStartWorker(t, relEnv(cfg, n.URL()))
	_, js := relJS(t, n.URL())

	fake.Hold()
	const queued = 4
	var answers []<-chan relAnswer
	for i := range queued {
		answers = append(answers, relPostAsync(t, fmt.Sprint("queued-", i), g.URL+"/v1/chat/completions",
			chatBody(group, fmt.Sprint("before-restart-", i), fmt.Sprintf(`"priority":%d`, i%3)), relWait))
		if i == 0 {
			waitUpstream(t, fake, 1) // the first one is at the provider, held
		}
	}
	relWaitStreamMsgs(t, js, requestStream, queued) // one delivered and held, the rest waiting

	n.Stop()
	// While NATS is down: fast 503 with Retry-After, nothing hangs.
	for i := range 3 {
		start := time.Now()
		r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, fmt.Sprint("while-down-", i)))
		took := time.Since(start)
		checkError(t, r, http.StatusServiceUnavailable, "")
		if r.Header.Get("Retry-After") == "" {
			t.Errorf("503 while NATS is down has no Retry-After: %s", r)
		}
		if code := relErrorCode(r.Body); code != "broker_unavailable" {
			t.Errorf("503 while NATS is down has code %q, want broker_unavailable: %s", code, r)
		}
		// Fast: from the connection's state, not after waiting out the
		// publish timeout (client.Options.PublishTimeout, 5 s).
		if took >= 5*time.Second {
			t.Errorf("the 503 while NATS is down took %s: it waited for the publish timeout", took.Round(time.Millisecond))
		}
	}
	if rd := mustGet(t, g.URL+"/health/readiness", ""); rd.Status != http.StatusServiceUnavailable {
		t.Errorf("readiness while NATS is down: %s, want 503", rd)
	}

	n.Start()
	// The gateway reconnects by itself: readiness comes back.
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), g.URL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusOK
	}) {
		t.Fatal("the gateway is not ready again after the NATS restart")
	}
	fake.Release()
	for _, ch := range answers {
		a := relAwait(t, ch)
		if a.err != nil {
			t.Errorf("queued before the restart, not answered: %v", a)
			continue
		}
		checkServed(t, a.r)
	}
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "after-restart")))
	waitIdle(t, fake)
	relWaitStreamMsgs(t, js, requestStream, 0)

	got := contents(fake)
	want := []string{"after-restart"}
	for i := range queued {
		want = append(want, fmt.Sprint("before-restart-", i))
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the upstream received %q, want each of %q once (nothing sent while NATS was down)", got, want)
	}
}

// TestReliabilityEmbeddedNATSRestart: the gateway that embeds NATS is
// restarted (same listen address, same data directory) while an external
// worker and an internal service (pkg/client over TCP) stay up. The service's
// requests queued before the restart are served after it; the worker and the
// service reconnect by themselves.
func TestReliabilityEmbeddedNATSRestart(t *testing.T) {
	fake := newFake(t)
	const group = "embedded"
	cfg := relOneGroup(t, group, fake, 1, nil)
	env := baseEnv(cfg)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = 0
	g1 := relStartGateway(t, env)
	natsURL := g1.NATSURL()
	env.EmbeddedNATSListen = natsURL[len("nats://"):] // the same port after the restart

	relStartWorker(t, relEnv(cfg, natsURL))
	cl := relClient(t, natsURL)

	fake.Hold()
	type done struct {
		content string
		err     error
	}
	const queued = 3
	results := make(chan done, queued)
	ctx, cancel := context.WithTimeout(t.Context(), relWait)
	defer cancel()
	for i := range queued {
		content := fmt.Sprint("service-", i)
		go func() {
			_, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: 1,
				Body: []byte(chatBody(group, content))})
			results <- done{content, err}
		}()
		if i == 0 {
			waitUpstream(t, fake, 1)
		}
	}
	q := observeQueue(t, natsURL)
	q.waitMsgs(t, queued)

	if err := g1.Stop(); err != nil {
		t.Errorf("the gateway stopped with: %v", err)
	}
	g2 := relStartGateway(t, env)
	if g2.NATSURL() != natsURL {
		t.Fatalf("the restarted gateway's NATS URL is %s, want %s", g2.NATSURL(), natsURL)
	}
	fake.Release()
	for range queued {
		select {
		case d := <-results:
			if d.err != nil {
				t.Errorf("%s, queued before the restart: %v", d.content, d.err)
			}
		case <-ctx.Done():
			t.Fatalf("not every request queued before the restart was answered; upstream saw %q", contents(fake))
		}
	}
	checkServed(t, mustPost(t, g2.URL+"/v1/chat/completions", "", chatBody(group, "after-restart")))
	q2 := observeQueue(t, natsURL)
	q2.waitMsgs(t, 0)
	waitIdle(t, fake)
	got := contents(fake)
	slices.Sort(got)
	// The call held at the provider during the restart is made once more
	// after it only if its ack was lost; every request reaches it at least once.
	for _, c := range []string{"after-restart", "service-0", "service-1", "service-2"} {
		if !slices.Contains(got, c) {
			t.Errorf("the upstream never received %q: %q", c, got)
		}
	}
	t.Logf("the upstream received %q", got)
}

// TestReliabilityGatewayReconnectKeepsAnswers: NATS stays up, but the
// gateway's own connection to it drops (a network blip, a NATS node
// restart, a cluster failover) while a worker finishes a call and while the
// worker picks up the next queued request. When the gateway is connected
// again, both callers must still get their answers: an answer or a pickup
// sent while the gateway was away must not be lost.
func TestReliabilityGatewayReconnectKeepsAnswers(t *testing.T) {
	fake := newFake(t)
	const group = "blip"
	cfg := relWriteConfig(t, relConfig{
		ModelList:      []deployment{fakeDeployment(group, group+"-0", fake, 1)},
		RouterSettings: map[string]any{"timeout": 8}, // a request nobody picks up ends with 408 after 8 s
		LLMQ:           map[string]any{"ack_wait": 2},
	})
	natsURL := startNATS(t)
	proxy := relStartProxy(t, natsURL)
	g := startRemoteGateway(t, cfg, proxy.URL()) // only the gateway goes through the proxy
	relStartWorker(t, relEnv(cfg, natsURL))
	q := observeQueue(t, natsURL)

	fake.Hold()
	inFlight := relPostAsync(t, "in-flight", g.URL+"/v1/chat/completions", chatBody(group, "in-flight"), relWait)
	waitUpstream(t, fake, 1)
	queued := relPostAsync(t, "queued", g.URL+"/v1/chat/completions", chatBody(group, "queued"), relWait)
	q.waitMsgs(t, 2)

	proxy.Cut() // the gateway loses NATS; the worker does not
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), g.URL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusServiceUnavailable
	}) {
		t.Fatal("the gateway did not notice that its NATS connection dropped")
	}
	fake.Release() // the worker answers "in-flight", then tries to pick up "queued"
	waitIdle(t, fake)
	// The worker now tries to deliver the answer and to pick up the next
	// request while nobody listens on the gateway's inbox. It keeps both
	// requests (unacknowledged) and tries again for about five seconds; a
	// blip shorter than that must lose nothing. Stay cut off for a second.
	time.Sleep(time.Second)
	proxy.Restore()
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), g.URL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusOK
	}) {
		t.Fatal("the gateway did not reconnect")
	}

	for _, ch := range []<-chan relAnswer{inFlight, queued} {
		a := relAwait(t, ch)
		switch {
		case a.err != nil:
			t.Errorf("LOST: %v", a)
		case a.r.Status != http.StatusOK:
			t.Errorf("%v; want 200", a)
		}
	}
	t.Logf("the upstream received %q", contents(fake))
}

// TestReliabilityGatewayLongOutageKeepsAnswers: the gateway's connection to
// NATS stays cut for 15 s (a NATS node restart, a failover) while two
// requests are at the provider and two wait in the queue; the worker stays
// connected. The calls go on although the worker's heartbeats find nobody
// on the gateway's inbox; the worker finishes them and tries to pick up the
// queued requests while nobody listens there. It must hold both
// answers and both pickups for as long as the callers still wait (their
// answer and queue deadlines, a minute here), not for a few seconds: once
// the gateway is back, every caller gets its answer (200), and the provider
// saw each request exactly once (nothing was served twice, nothing dropped).
func TestReliabilityGatewayLongOutageKeepsAnswers(t *testing.T) {
	const outage = 15 * time.Second
	const callerWait = outage + 45*time.Second
	fake := newFake(t)
	const group = "outage"
	cfg := relWriteConfig(t, relConfig{
		ModelList:      []deployment{fakeDeployment(group, group+"-0", fake, 2)},
		RouterSettings: map[string]any{"timeout": callerWait.Seconds()}, // the queue deadline
		LLMQ:           map[string]any{"ack_wait": 5},
	})
	natsURL := startNATS(t)
	proxy := relStartProxy(t, natsURL)
	g := startRemoteGateway(t, cfg, proxy.URL()) // only the gateway goes through the proxy
	relStartWorker(t, relEnv(cfg, natsURL))
	q := observeQueue(t, natsURL)

	// ask sends one request bounded by callerWait (relPostAsync's bound is
	// shorter than the outage).
	ask := func(content string) <-chan relAnswer {
		ch := make(chan relAnswer, 1)
		ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), callerWait)
		go func() {
			defer cancel()
			start := time.Now()
			r, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody(group, content))
			ch <- relAnswer{name: content, r: r, err: err, took: time.Since(start)}
		}()
		return ch
	}
	fake.Hold()
	var answers []<-chan relAnswer
	for _, c := range []string{"in-flight-0", "in-flight-1"} {
		answers = append(answers, ask(c))
	}
	waitUpstream(t, fake, 2)
	for _, c := range []string{"queued-0", "queued-1"} {
		answers = append(answers, ask(c))
	}
	q.waitMsgs(t, 4)

	proxy.Cut() // the gateway loses NATS; the worker does not
	cut := time.Now()
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), g.URL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusServiceUnavailable
	}) {
		t.Fatal("the gateway did not notice that its NATS connection dropped")
	}
	// The outage itself: 15 s, three times what the worker used to hold.
	// For its first half the calls go on at the provider while the worker's
	// heartbeats find nobody on the gateway's inbox (which must not cancel
	// them); then they answer, and the worker tries to deliver the answers
	// and to pick up the queued requests.
	wait := func(until time.Time) {
		select {
		case <-time.After(time.Until(until)):
		case <-t.Context().Done():
			t.Fatal("the test ended during the outage")
		}
	}
	wait(cut.Add(outage / 2))
	for _, r := range fake.Requests() {
		if !r.Finished.IsZero() {
			t.Errorf("the call %q ended (cancelled %v) while the gateway was away, before the provider answered", r.Content, r.Cancelled)
		}
	}
	fake.Release()
	wait(cut.Add(outage))
	if n := fake.Count(); n != 2 {
		t.Errorf("the provider was called %d times while the gateway was away, want 2 (no queued request may start while its caller cannot answer the pickup)", n)
	}
	proxy.Restore()
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), g.URL+"/health/readiness", "")
		return err == nil && r.Status == http.StatusOK
	}) {
		t.Fatal("the gateway did not reconnect")
	}

	for _, ch := range answers {
		var a relAnswer
		select {
		case a = <-ch:
		case <-time.After(callerWait + time.Second):
			t.Fatal("a caller's HTTP request did not end")
		}
		switch {
		case a.err != nil:
			t.Errorf("LOST: %v", a)
		case a.r.Status != http.StatusOK:
			t.Errorf("%v; want 200", a)
		}
	}
	q.waitMsgs(t, 0)
	waitIdle(t, fake)
	got := contents(fake)
	slices.Sort(got)
	if want := []string{"in-flight-0", "in-flight-1", "queued-0", "queued-1"}; !slices.Equal(got, want) {
		t.Errorf("the upstream received %q, want each of %q once", got, want)
	}
}
