package integration

import (
	"context"
	"errors"
	"net"
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// relTwoWorkerConfigs writes two configs for the same group on fake whose
// deployments differ only in their id ("a-0" and "b-0"), so the
// x-llmq-deployment header tells which worker served a request.
func relTwoWorkerConfigs(t *testing.T, group string) (a, b string, fake *fakeupstream.Server) {
	t.Helper()
	fake = newFake(t)
	llmq := map[string]any{"ack_wait": 2}
	a = relWriteConfig(t, relConfig{ModelList: []deployment{fakeDeployment(group, "a-0", fake, 0)}, LLMQ: llmq})
	b = relWriteConfig(t, relConfig{ModelList: []deployment{fakeDeployment(group, "b-0", fake, 0)}, LLMQ: llmq})
	return a, b, fake
}

// TestReliabilityWorkerGracefulShutdown: a worker (app.RunWorker, shutdown
// timeout 1 s) holds a call at the provider when its context is cancelled,
// as SIGTERM does. It stops taking work at once (a request sent then goes to
// the other worker), it gives its call the drain timeout, then cancels it
// and hands the request back; RunWorker returns nil. Another worker serves
// the handed-back request and the caller gets 200. The provider never has
// the request twice at once.
func TestReliabilityWorkerGracefulShutdown(t *testing.T) {
	const group = "drain"
	cfgA, cfgB, fake := relTwoWorkerConfigs(t, group)
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfgA, natsURL)
	envA := relEnv(cfgA, natsURL)
	envA.ShutdownTimeout = time.Second
	a := relStartWorker(t, envA)

	fake.Hold()
	first := relPostAsync(t, "first", g.URL+"/v1/chat/completions", chatBody(group, "first"), relWait)
	waitUpstream(t, fake, 1)

	a.cancel() // SIGTERM
	stopping := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- a.Stop() }()
	relStartWorker(t, relEnv(cfgB, natsURL))
	second := relPostAsync(t, "second", g.URL+"/v1/chat/completions", chatBody(group, "second"), relWait)

	select {
	case err := <-stopped:
		took := time.Since(stopping)
		if err != nil {
			t.Errorf("the worker stopped with: %v", err)
		}
		// The provider still holds the call, so only the drain timeout can
		// have ended it (and the select bounds how long that may take).
		if took < envA.ShutdownTimeout {
			t.Errorf("the worker stopped after %s, before its drain timeout %s", took.Round(time.Millisecond), envA.ShutdownTimeout)
		}
		t.Logf("the worker stopped %s after SIGTERM (drain timeout %s)", took.Round(time.Millisecond), envA.ShutdownTimeout)
	case <-time.After(relWait):
		t.Fatal("the worker did not stop")
	}
	waitUpstream(t, fake, 3) // second (by b), first again (by b)
	fake.Release()

	for _, ch := range []<-chan relAnswer{first, second} {
		a := relAwait(t, ch)
		if a.err != nil {
			t.Errorf("no answer: %v", a)
			continue
		}
		checkServed(t, a.r)
		if d := a.r.Header.Get("x-llmq-deployment"); d != "b-0" {
			t.Errorf("%s served by %q, want the running worker's b-0", a.name, d)
		}
	}
	waitIdle(t, fake)
	recs := fake.Requests()
	var firsts []int
	for i, r := range recs {
		if r.Content == "first" {
			firsts = append(firsts, i)
		}
	}
	if len(recs) != 3 || len(firsts) != 2 {
		t.Fatalf("the upstream received %q, want first twice and second once", contents(fake))
	}
	cut, again := recs[firsts[0]], recs[firsts[1]]
	if !cut.Cancelled {
		t.Errorf("the stopping worker's call was not cancelled at the provider")
	}
	if !cut.Finished.Before(again.Received) {
		t.Errorf("the request was at the provider twice at once")
	}
	t.Logf("handed back: the cancelled call ended %s after the stop began; the next worker called %s later",
		cut.Finished.Sub(stopping).Round(time.Millisecond), again.Received.Sub(cut.Finished).Round(time.Millisecond))
	if gap := again.Received.Sub(cut.Finished); gap > 2*time.Second {
		t.Errorf("the handed-back request waited %s for the idle worker (the worker package promises another worker serves it at once)", gap.Round(time.Millisecond))
	}
}

// TestReliabilityWorkerSIGTERM is the real-process variant: the built
// cmd/worker binary gets SIGTERM while it holds a call; it exits with status
// 0 after its drain timeout (LLMQ_SHUTDOWN_TIMEOUT=1s), and the request it
// handed back is served by another worker.
func TestReliabilityWorkerSIGTERM(t *testing.T) {
	bin := relBuild(t, "cmd/worker")
	const group = "sigterm"
	cfgA, cfgB, fake := relTwoWorkerConfigs(t, group)
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfgA, natsURL)

	fake.Hold()
	p := relStartProc(t, bin, relWorkerVars(cfgA, natsURL, 2))
	answer := relPostAsync(t, "request", g.URL+"/v1/chat/completions", chatBody(group, "terminated"), relWait)
	waitUpstream(t, fake, 1)
	sent := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	err, exited := p.Exited(5 * time.Second)
	if !exited {
		t.Fatal("the worker did not exit within 5s of SIGTERM (drain timeout 1s)")
	}
	if err != nil {
		t.Errorf("the worker exited with %v after SIGTERM, want status 0", err)
	}
	t.Logf("the worker exited %s after SIGTERM", time.Since(sent).Round(time.Millisecond))
	p.Log.waitFor(t, "drain timeout")

	relStartWorker(t, relEnv(cfgB, natsURL))
	waitUpstream(t, fake, 2)
	fake.Release()
	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("no answer: %v", a)
	}
	checkServed(t, a.r)
	if d := a.r.Header.Get("x-llmq-deployment"); d != "b-0" {
		t.Errorf("served by %q, want b-0", d)
	}
	if recs := fake.Requests(); !recs[0].Cancelled {
		t.Errorf("the terminated worker's call was not cancelled")
	}
}

// relRefusing reports whether nothing accepts TCP connections at addr.
func relRefusing(addr net.Addr) bool {
	c, err := net.DialTimeout("tcp", addr.String(), 200*time.Millisecond)
	if err != nil {
		return true
	}
	_ = c.Close()
	return false
}

// TestReliabilityGatewayGracefulShutdown: when its context is cancelled (as
// SIGTERM does), the gateway stops accepting connections at once but waits
// for the answer it is waiting for: the request being served completes with
// 200, and the gateway then stops cleanly, at once: its shutdown timeout (a
// minute, longer than any wait here) is not what ends it.
func TestReliabilityGatewayGracefulShutdown(t *testing.T) {
	fake := newFake(t)
	const group = "inflight"
	cfg := relOneGroup(t, group, fake, 0, nil)
	env := baseEnv(cfg)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = 2
	env.ShutdownTimeout = time.Minute
	g := relStartGateway(t, env)

	fake.Hold()
	answer := relPostAsync(t, "in-flight", g.URL+"/v1/chat/completions", chatBody(group, "in-flight"), relWait)
	waitUpstream(t, fake, 1)
	stopped := make(chan error, 1)
	go func() { stopped <- g.Stop() }()
	if !relPoll(relWait, func() bool { return relRefusing(g.Addr()) }) {
		t.Error("the stopping gateway still accepts connections")
	}
	select {
	case err := <-stopped:
		t.Fatalf("the gateway stopped (%v) before its in-flight request was answered", err)
	case <-time.After(300 * time.Millisecond):
	}
	fake.Release()
	a := relAwait(t, answer)
	if a.err != nil {
		t.Fatalf("the in-flight request got no answer: %v", a)
	}
	checkServed(t, a.r)
	select {
	case err := <-stopped:
		// relGateway.Stop gives up after relWait, well before the shutdown
		// timeout: nil means the gateway stopped once its answer was out.
		if err != nil {
			t.Errorf("the gateway stopped with: %v", err)
		}
	case <-time.After(relWait + time.Second):
		t.Fatal("the gateway did not stop after its last answer")
	}
}

// TestReliabilityGatewayShutdownBound: an answer that never comes does not
// hold a stopping gateway beyond its bound. With the provider holding the
// call forever and a shutdown timeout of 1 s, the gateway stops (the held
// call can't end it: only its bound, the HTTP drain plus the in-process
// workers' drain, can), returns no error, and its caller is not left waiting
// on an open connection.
func TestReliabilityGatewayShutdownBound(t *testing.T) {
	fake := newFake(t)
	const group = "stuck"
	cfg := relOneGroup(t, group, fake, 0, nil)
	env := baseEnv(cfg)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = 2
	env.ShutdownTimeout = time.Second
	g := relStartGateway(t, env)

	fake.Hold()
	answer := relPostAsync(t, "stuck", g.URL+"/v1/chat/completions", chatBody(group, "stuck"), relWait)
	waitUpstream(t, fake, 1)
	start := time.Now()
	err := g.Stop() // bounded by relWait: an error if the gateway does not stop
	t.Logf("the gateway stopped after %s with %v", time.Since(start).Round(time.Millisecond), err)
	if err != nil {
		t.Errorf("the gateway's Wait returned %v after an unfinished request was cut off at shutdown; want nil", err)
	}
	// The stopped gateway has no HTTP server left: the caller's request
	// ends (with an error or a closed connection), it is not left open.
	select {
	case a := <-answer:
		t.Logf("the caller got: %v", a)
		if a.err == nil && a.r.Status == http.StatusOK {
			t.Errorf("the caller got 200 although the provider never answered")
		}
		if errors.Is(a.err, context.DeadlineExceeded) {
			t.Error("the caller waited until its own timeout: the stopped gateway left the HTTP request open")
		}
	case <-time.After(relWait + time.Second):
		t.Errorf("the caller still waits %s after its gateway stopped: the stopped gateway left the HTTP request open", time.Since(start).Round(time.Millisecond))
	}
}
