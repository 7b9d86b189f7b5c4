package integration

import (
	"context"
	"errors"
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

// TestClientLeavesRequestStartedUnasked: a request picked up in its first
// second is started without a pickup check (once the worker has heard from
// its caller), and the worker tells its caller with a "started" event; a caller that leaves then stops the call
// at once. A caller that leaves a request in its first second while it
// waits announces it, and the worker then asks (a pickup check) before it
// starts it: the provider never sees it.
func TestClientLeavesRequestStartedUnasked(t *testing.T) {
	fake := newFake(t)
	const group = "unasked"
	g := startEmbeddedGateway(t, relOneGroup(t, group, fake, 1, nil), 1)
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
			} else if m.Subject == subjects.Left() {
				events <- "left"
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	await := func(want string) {
		t.Helper()
		ctx := waitCtx(t)
		for {
			select {
			case e := <-events:
				if e == want {
					return
				}
				t.Errorf("%q came before %q", e, want)
			case <-ctx.Done():
				t.Fatalf("no %q event", want)
			}
		}
	}
	do := func(ctx context.Context, content string) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Body: []byte(chatBody(group, content))})
			done <- err
		}()
		return done
	}

	// The worker asks a caller it has not heard from yet.
	if err := <-do(t.Context(), "hello"); err != nil {
		t.Fatal(err)
	}
	await(messages.EventPickup)

	fake.Hold()
	ctx, cancel := context.WithCancel(t.Context())
	first := do(ctx, "started")
	await(messages.EventStarted) // not a pickup check
	waitUpstream(t, fake, 2)
	// The one slot is busy: this one waits, and its caller leaves.
	lctx, leave := context.WithCancel(t.Context())
	left := do(lctx, "left")
	q := observeQueue(t, g.NATSURL())
	q.waitMsgs(t, 2)
	leave()
	if err := <-left; !errors.Is(err, messages.ErrCancelled) {
		t.Errorf("the request left: Do returned %v, want cancelled", err)
	}
	await("left")
	cancel()
	if err := <-first; !errors.Is(err, messages.ErrCancelled) {
		t.Errorf("the started request: Do returned %v, want cancelled", err)
	}
	waitIdle(t, fake)
	if rs := fake.Requests(); len(rs) != 2 || !rs[1].Cancelled {
		t.Fatalf("the upstream saw %+v, want hello and the started call, cancelled", rs)
	}
	fake.Release()
	// The slot is free: the left request is taken, and asked for.
	await(messages.EventPickup)
	q.waitDrained(t)
	if got := contents(fake); len(got) != 2 {
		t.Errorf("the provider got %q, want hello and the started call only", got)
	}
}
