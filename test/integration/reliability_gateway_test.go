package integration

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestReliabilityGatewayRestartAbandonsItsRequests: a gateway stops (as on
// SIGTERM) while requests it waits for sit in the queue and no worker
// runs. It stops within its shutdown bound and its callers are not left
// hanging. When a worker starts afterwards, it finds nobody waiting for
// those requests: it makes no provider call for them and they leave the
// stream. A gateway started again on the same NATS serves new requests.
func TestReliabilityGatewayRestartAbandonsItsRequests(t *testing.T) {
	fake := newFake(t)
	const group = "abandoned"
	cfg := relOneGroup(t, group, fake, 0, nil)
	natsURL := startNATS(t)
	env := relEnv(cfg, natsURL)
	env.ShutdownTimeout = time.Second
	g := relStartGateway(t, env)
	q := observeQueue(t, natsURL)

	const queued = 3
	var answers []<-chan relAnswer
	for i := range queued {
		answers = append(answers, relPostAsync(t, fmt.Sprint("abandoned-", i), g.URL+"/v1/chat/completions",
			chatBody(group, fmt.Sprint("abandoned-", i)), relWait))
	}
	q.waitMsgs(t, queued)

	start := time.Now()
	err := g.Stop() // bounded by relWait: an error if the gateway does not stop
	t.Logf("the gateway stopped after %s with %v", time.Since(start).Round(time.Millisecond), err)
	if err != nil {
		t.Errorf("the gateway's Wait returned %v after a shutdown with requests still queued; want nil (an unfinished caller is expected at shutdown, not a failure)", err)
	}
	// Its callers: the stopped gateway has no HTTP server left, so each gets
	// an answer or a closed connection rather than waiting for its deadline.
	for i, ch := range answers {
		select {
		case a := <-ch:
			t.Logf("caller %d after the stop: %v", i, a)
			if errors.Is(a.err, context.DeadlineExceeded) {
				t.Errorf("caller %d waited until its own timeout: the stopped gateway left the HTTP request open", i)
			}
		case <-time.After(relWait + time.Second):
			t.Errorf("caller %d still waits %s after its gateway stopped: the stopped gateway left the HTTP request open",
				i, time.Since(start).Round(time.Millisecond))
		}
	}

	relStartWorker(t, relEnv(cfg, natsURL))
	q.waitMsgs(t, 0)
	if n := fake.Count(); n != 0 {
		t.Errorf("the worker called the provider %d times for requests whose caller had gone: %q", n, contents(fake))
	}

	g2 := relStartGateway(t, env)
	checkServed(t, mustPost(t, g2.URL+"/v1/chat/completions", "", chatBody(group, "after-restart")))
	if got := contents(fake); len(got) != 1 || got[0] != "after-restart" {
		t.Errorf("the upstream received %q, want only the request made after the restart", got)
	}
	q.waitDrained(t)
	if err := g2.Stop(); err != nil {
		t.Errorf("the restarted gateway stopped with: %v", err)
	}
}
