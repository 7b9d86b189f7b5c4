package integration

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// TestClientSubmit: Submit returns once the request is queued and Wait gets
// its answer; several handles are waited for in any order; a handle
// abandoned before its pickup never reaches the provider; Wait after
// Abandon, and a second Wait, fail.
func TestClientSubmit(t *testing.T) {
	fake := newFake(t)
	const group = "submit"
	g := startEmbeddedGateway(t, relOneGroup(t, group, fake, 1, nil), 2)
	cl := relClient(t, g.NATSURL())
	ctx, cancel := context.WithTimeout(t.Context(), relWait)
	defer cancel()
	submit := func(content string) *client.Handle {
		t.Helper()
		h, err := cl.Submit(ctx, &client.Request{Kind: messages.KindChat, Group: group, Body: []byte(chatBody(group, content))})
		if err != nil {
			t.Fatalf("submit %s: %v", content, err)
		}
		return h
	}

	fake.Hold()
	first := submit("first")
	waitUpstream(t, fake, 1) // the one parallel call is taken
	second, dropped := submit("second"), submit("dropped")
	dropped.Abandon()
	fake.Release()
	for _, h := range []*client.Handle{second, first} {
		resp, info, err := h.Wait(ctx)
		if err != nil || !info.Picked || resp.ID != h.ID() {
			t.Fatalf("wait %s: %v, %+v", h.ID(), err, info)
		}
		checkServed(t, &result{Status: 200, Body: resp.Body})
	}
	if _, _, err := first.Wait(ctx); err == nil {
		t.Error("a second Wait succeeded")
	}
	if _, _, err := dropped.Wait(ctx); !errors.Is(err, messages.ErrCancelled) {
		t.Errorf("Wait after Abandon: %v, want cancelled", err)
	}
	q := observeQueue(t, g.NATSURL())
	q.waitDrained(t) // the abandoned request's pickup was refused
	if got := contents(fake); len(got) != 2 || got[0] != "first" || got[1] != "second" {
		t.Errorf("the provider got %q, want first and second only", got)
	}
}

// TestClientLeavesCallStartedUnasked: a request picked up in its first
// second is started without a pickup check; a caller that leaves then
// stops the call at once: before the worker told it of the start (it
// announces the request it left, and the worker stops the call) or after
// ("started" came, and it cancels the call on the worker's control
// subject).
func TestClientLeavesCallStartedUnasked(t *testing.T) {
	fake := newFake(t)
	const group = "unasked"
	g := startEmbeddedGateway(t, relOneGroup(t, group, fake, 0, nil), 1)
	cl := relClient(t, g.NATSURL())
	// The test's own view of what goes over NATS.
	nc, _ := relJS(t, g.NATSURL())
	subjects, err := messages.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	events := make(chan string, 64)
	for _, subject := range []string{"_INBOX.>", subjects.Left()} {
		sub, err := nc.Subscribe(subject, func(m *nats.Msg) {
			if e := m.Header.Get(messages.HeaderEvent); e == messages.EventStarted || e == messages.EventPickup {
				events <- e
			} else if strings.HasSuffix(m.Subject, ".left") {
				events <- "left"
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	_ = nc.Flush()
	await := func(want string) {
		t.Helper()
		ctx := waitCtx(t)
		for {
			select {
			case e := <-events:
				if e == want {
					return
				}
				t.Logf("event %q", e)
			case <-ctx.Done():
				t.Fatalf("no %q event", want)
			}
		}
	}

	fake.Hold()
	for i, beforeStarted := range []bool{true, false} {
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			_, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Body: []byte(chatBody(group, fmt.Sprint("call ", i)))})
			done <- err
		}()
		waitUpstream(t, fake, i+1)
		if !beforeStarted {
			await(messages.EventStarted)
		}
		cancel()
		if err := <-done; !errors.Is(err, messages.ErrCancelled) {
			t.Errorf("call %d: Do returned %v, want cancelled", i, err)
		}
		if beforeStarted {
			await("left")
		}
		waitIdle(t, fake)
		if rs := fake.Requests(); len(rs) != i+1 || !rs[i].Cancelled {
			t.Fatalf("call %d: the upstream saw %+v, want call %d cancelled", i, rs, i)
		}
		if beforeStarted && len(events) > 0 && <-events == messages.EventStarted {
			t.Error("the call went on until its started event: the request left did not stop it")
		}
	}
	for drained := false; !drained; {
		select {
		case e := <-events:
			if e == messages.EventPickup {
				t.Error("a request in its first second was picked up with a pickup check")
			}
		default:
			drained = true
		}
	}
}
