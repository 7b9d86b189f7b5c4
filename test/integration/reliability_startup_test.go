package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/app"
)

// TestReliabilityStartBeforeNATS: a gateway and a worker started while
// their NATS server is down wait for it instead of exiting. Meanwhile the
// gateway serves HTTP: liveliness 200, readiness 503 saying what it waits
// for, requests 503 broker_unavailable with Retry-After. Once the server is
// up, both come up by themselves and serve. A gateway and a worker stopped
// while they wait stop cleanly (no error).
func TestReliabilityStartBeforeNATS(t *testing.T) {
	fake := newFake(t)
	const group = "late"
	cfg := relOneGroup(t, group, fake, 2, nil) // with limits: the bucket is waited for too
	n := relStartNATS(t)
	n.Stop()

	env := relEnv(cfg, n.URL())
	env.Listen = fmt.Sprintf("127.0.0.1:%d", relFreePorts(t, 1)[0])
	base := "http://" + env.Listen
	type startEnd struct {
		g   *app.Gateway
		err error
	}
	started := make(chan startEnd, 1)
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	go func() {
		g, err := app.StartGateway(ctx, env, noEnv, newTestLog(t))
		started <- startEnd{g, err}
	}()
	var end *startEnd // once StartGateway returned
	t.Cleanup(func() {
		cancel()
		if end == nil {
			e := <-started
			end = &e
		}
		if end.g != nil {
			_ = end.g.Wait()
		}
	})
	relStartWorker(t, relEnv(cfg, n.URL()))

	// While NATS is down: alive, not ready, requests refused with 503.
	var ready *result
	if !relPoll(relWait, func() bool {
		r, err := get(t.Context(), base+"/health/readiness", "")
		ready = r
		return err == nil
	}) {
		t.Fatal("the gateway does not serve HTTP while it waits for NATS")
	}
	if ready.Status != http.StatusServiceUnavailable || !strings.Contains(string(ready.Body), "waiting for a connection to NATS") {
		t.Errorf("readiness while NATS is down: %s, want 503 saying it waits for NATS", ready)
	}
	if r := mustGet(t, base+"/health/liveliness", ""); r.Status != http.StatusOK {
		t.Errorf("liveliness while NATS is down: %s, want 200", r)
	}
	r := mustPost(t, base+"/v1/chat/completions", "", chatBody(group, "too early"))
	checkError(t, r, http.StatusServiceUnavailable, "")
	if relErrorCode(r.Body) != "broker_unavailable" || r.Header.Get("Retry-After") == "" {
		t.Errorf("a request while the gateway waits for NATS: %s, want 503 broker_unavailable with Retry-After", r)
	}
	select {
	case e := <-started:
		end = &e
		t.Fatalf("StartGateway returned while NATS was down: %v", e.err)
	default:
	}

	// A second gateway and a worker, stopped while they wait, stop cleanly.
	early := relEnv(cfg, n.URL())
	early.Listen = "127.0.0.1:0"
	sctx, stop := context.WithCancel(t.Context())
	gone := make(chan error, 1)
	lines := newLogLines()
	go func() {
		g2, err := app.StartGateway(sctx, early, noEnv, io.MultiWriter(newTestLog(t), lines))
		if err == nil {
			err = g2.Wait()
		}
		gone <- err
	}()
	w := relStartWorker(t, relEnv(cfg, n.URL()), lines)
	lines.waitFor(t, "msg=waiting", "component=gateway", "a connection to NATS")
	lines.waitFor(t, "msg=waiting", "component=worker", "a connection to NATS")
	stop()
	if err := w.Stop(); err != nil {
		t.Errorf("a worker stopped while it waited for NATS returned %v, want nil", err)
	}
	select {
	case err := <-gone:
		if err != nil {
			t.Errorf("a gateway stopped while it waited for NATS returned %v, want nil", err)
		}
	case <-time.After(relWait):
		t.Fatal("a gateway stopped while it waited for NATS did not return")
	}

	n.Start()
	select {
	case e := <-started:
		end = &e
		if e.err != nil {
			t.Fatalf("start gateway: %v", e.err)
		}
	case <-time.After(relWait):
		t.Fatal("the gateway did not come up after NATS did")
	}
	if r := mustGet(t, base+"/health/readiness", ""); r.Status != http.StatusOK {
		t.Errorf("readiness after NATS came up: %s, want 200", r)
	}
	checkServed(t, mustPost(t, base+"/v1/chat/completions", "", chatBody(group, "after NATS came up")))
}
