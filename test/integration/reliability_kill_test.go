package integration

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

// relKillAckWait is the consumers' ack wait in the worker-kill tests: a
// killed worker's request is redelivered this long after its last
// in-progress ack.
const relKillAckWait = 2 * time.Second

// TestReliabilityWorkerSIGKILLMidCall: a worker process (the built
// cmd/worker binary) is killed with SIGKILL while the provider holds its
// call. Its request is redelivered after the ack wait and served by another
// worker; the caller gets exactly one answer (one HTTP response, and one
// reply message on NATS); the provider saw the request twice but never at two
// places at once: the kill closed the first call before the second began.
func TestReliabilityWorkerSIGKILLMidCall(t *testing.T) {
	bin := relBuild(t, "cmd/worker")
	fake := newFake(t)
	const group = "killed"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	nc, _ := relJS(t, natsURL)
	replies := relSniffReplies(t, nc)
	q := observeQueue(t, natsURL)

	fake.Hold()
	doomed := relStartProc(t, bin, relWorkerVars(cfg, natsURL, 2))
	answer := relPostAsync(t, "request", g.URL+"/v1/chat/completions", chatBody(group, "survive-the-kill"), relWait)
	waitUpstream(t, fake, 1) // the doomed worker called the provider, which holds the call
	killedAt := time.Now()
	doomed.Kill(t)
	// The kernel closed the dead process's sockets: its call ended at the
	// provider. Only now may the request go out again.
	waitIdle(t, fake)
	fake.Release()
	relStartWorker(t, relEnv(cfg, natsURL))

	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("the caller got no answer: %v", a)
	}
	c := checkServed(t, a.r)
	if c.ID != "chatcmpl-fake-2" {
		t.Errorf("the caller got answer %q, want the second call's (chatcmpl-fake-2)", c.ID)
	}
	q.waitDrained(t)
	waitIdle(t, fake)

	recs := fake.Requests()
	if len(recs) != 2 {
		t.Fatalf("the upstream received %d calls, want 2 (the killed one and the redelivery): %q", len(recs), contents(fake))
	}
	for _, r := range recs {
		if r.Content != "survive-the-kill" {
			t.Errorf("the upstream received %q", r.Content)
		}
	}
	if !recs[0].Cancelled {
		t.Errorf("the killed worker's call was not cut off at the provider (status %d)", recs[0].Status)
	}
	if !recs[0].Finished.Before(recs[1].Received) {
		t.Errorf("the request was in flight at the provider twice at once: the first call ended at %s, the second began at %s",
			recs[0].Finished.Format(time.StampMicro), recs[1].Received.Format(time.StampMicro))
	}
	t.Logf("redelivered %s after the SIGKILL (ack wait %s)", recs[1].Received.Sub(killedAt).Round(time.Millisecond), relKillAckWait)
	id := a.r.Header.Get("x-llmq-request-id")
	if n := replies.count(id); n != 1 {
		t.Errorf("%d reply messages went to the caller's inbox for request %s, want exactly 1", n, id)
	}
}

// TestReliabilityWorkerConnectionDiesMidCall is the in-process variant: a
// worker built from internal/worker on its own NATS connection loses that
// connection abruptly while the provider holds its call, so its acks stop as
// if it had been killed. Another worker serves the request after the ack
// wait; when the provider finally answers the dead worker's call, that
// answer goes nowhere: the caller gets exactly one answer and one reply
// message. (The dead worker's process lives on, so its call is still open at
// the provider while the second one runs; the SIGKILL test shows that a real
// kill ends it first.)
func TestReliabilityWorkerConnectionDiesMidCall(t *testing.T) {
	fake := newFake(t)
	const group = "cut"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	nc, _ := relJS(t, natsURL)
	replies := relSniffReplies(t, nc)
	q := observeQueue(t, natsURL)

	fake.Hold()
	doomed := relStartRawWorker(t, natsURL, group, "doomed-0", fake, relKillAckWait, 2)
	answer := relPostAsync(t, "request", g.URL+"/v1/chat/completions", chatBody(group, "survive-the-cut"), relWait)
	waitUpstream(t, fake, 1)
	doomed.Kill()
	relStartWorker(t, relEnv(cfg, natsURL))
	waitUpstream(t, fake, 2) // redelivered to the live worker after the ack wait
	fake.Release()           // both calls answer; only the live worker can pass its answer on

	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("the caller got no answer: %v", a)
	}
	checkServed(t, a.r)
	if d := a.r.Header.Get("x-llmq-deployment"); d != group+"-0" {
		t.Errorf("answered by deployment %q, want the live worker's %q", d, group+"-0")
	}
	q.waitDrained(t)
	waitIdle(t, fake)
	if got := contents(fake); fmt.Sprint(got) != "[survive-the-cut survive-the-cut]" {
		t.Errorf("the upstream received %q, want the request twice", got)
	}
	id := a.r.Header.Get("x-llmq-request-id")
	if n := replies.count(id); n != 1 {
		t.Errorf("%d reply messages went to the caller's inbox for request %s, want exactly 1", n, id)
	}
}

// TestReliabilityStreamWorkerLostBeforeFirstEvent: a streaming request whose
// worker dies before it relayed any event cannot be restarted by another
// worker (the caller refuses a stream's second pickup), so the caller gets
// an error once the worker has been silent for messages.StreamSilence. It
// must be the same named outcome as a stream that loses its worker after
// some events: 502 with code worker_lost (a provider-side failure the caller
// may retry), not 500 internal_error (a bug in llmq).
func TestReliabilityStreamWorkerLostBeforeFirstEvent(t *testing.T) {
	fake := newFake(t)
	const group = "lost-stream"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)

	fake.Hold()
	doomed := relStartRawWorker(t, natsURL, group, "doomed-0", fake, relKillAckWait, 2)
	answer := relPostAsync(t, "stream", g.URL+"/v1/chat/completions", chatBody(group, "never-streamed", `"stream":true`), relWait)
	waitUpstream(t, fake, 1)
	doomed.Kill()

	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("the streaming caller got no answer: %v", a)
	}
	t.Logf("the caller got %v", a)
	checkError(t, a.r, http.StatusBadGateway, "")
	if code := relErrorCode(a.r.Body); code != "worker_lost" {
		t.Errorf("error code %q, want worker_lost", code)
	}
}

// TestReliabilityLongCallOutlastsAckWait: a provider call three times as
// long as the ack wait is kept alive by its worker's in-progress acks, so
// JetStream never redelivers the request (the consumer delivered it once),
// and the provider is called once.
func TestReliabilityLongCallOutlastsAckWait(t *testing.T) {
	fake := newFake(t)
	const group = "long"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	g := startEmbeddedGateway(t, cfg, 2) // a second slot would take a redelivery
	_, js := relJS(t, g.NATSURL())
	fake.SetLatency(3 * relKillAckWait)

	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, "long call", `"priority":0`))
	checkServed(t, r)
	if n := fake.Count(); n != 1 {
		t.Errorf("the provider was called %d times, want once", n)
	}
	subjects, err := messages.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(waitCtx(t), subjects.RequestStream(), subjects.Consumer(bandOf(0), group))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(waitCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if d := info.Delivered.Consumer; d != 1 {
		t.Errorf("the consumer delivered %d times, want once: the in-progress acks did not hold the request", d)
	}
}

// TestReliabilityWorkerDiesPastTheDeadline: a request whose worker died
// mid-call cannot be served again once its queue deadline has passed (it
// left the stream then, by its Nats-TTL, and a worker drops a redelivery
// past it). Its caller gets 502 worker_lost when the redelivery would have
// come, rather than waiting for its answer deadline (which binds the
// provider call it saw start), and no other worker calls the provider.
func TestReliabilityWorkerDiesPastTheDeadline(t *testing.T) {
	fake := newFake(t)
	const group = "late"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": relKillAckWait.Seconds()})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)

	fake.Hold()
	doomed := relStartRawWorker(t, natsURL, group, "doomed-0", fake, relKillAckWait, 2)
	// The queue deadline (0.2 s) passes while the doomed worker holds it.
	answer := relPostAsync(t, "request", g.URL+"/v1/chat/completions", chatBody(group, "too-late", `"timeout":0.2`), relWait)
	waitUpstream(t, fake, 1)
	doomed.Kill()
	relStartWorker(t, relEnv(cfg, natsURL))

	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("the caller got no answer: %v", a)
	}
	if a.r.Status != http.StatusBadGateway || relErrorCode(a.r.Body) != "worker_lost" {
		t.Errorf("answer %s, want 502 worker_lost", a.r)
	}
	fake.Release()
	waitIdle(t, fake)
	if n := fake.Count(); n != 1 {
		t.Errorf("the upstream saw %d calls, want only the dead worker's", n)
	}
}
