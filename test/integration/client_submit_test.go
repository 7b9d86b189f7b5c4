package integration

import (
	"context"
	"errors"
	"testing"

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
