package integration

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// TestClientAnswerDeadline: a request picked up at once whose provider call
// outlasts Request.AnswerDeadline ends with provider_timeout at that
// deadline (not at the queue deadline, which passes meanwhile), and its
// worker stops the call; a request nobody picks up ends with queue_timeout
// at its queue deadline even though its answer deadline is later.
func TestClientAnswerDeadline(t *testing.T) {
	fake := newFake(t)
	const group = "prompt"
	g := startEmbeddedGateway(t, relOneGroup(t, group, fake, 0, nil), 1)
	cl := relClient(t, g.NATSURL())
	ctx, cancel := context.WithTimeout(t.Context(), relWait)
	defer cancel()

	fake.Hold() // the call never ends by itself
	start := time.Now()
	_, info, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: 1,
		Body:     []byte(chatBody(group, "held")),
		Deadline: start.Add(300 * time.Millisecond), AnswerDeadline: start.Add(time.Second)})
	took := time.Since(start)
	if !errors.Is(err, messages.ErrProviderTimeout) {
		t.Fatalf("a held call ended with %v, want provider_timeout", err)
	}
	if !info.Picked {
		t.Error("the result does not say the request was picked up")
	}
	// provider_timeout (not queue_timeout, whose deadline passed first)
	// says which deadline ended it; it must not come before that deadline.
	if took < time.Second {
		t.Errorf("provider_timeout after %s, before the answer deadline (1s)", took.Round(time.Millisecond))
	}
	waitIdle(t, fake) // the worker stopped the call
	if rs := fake.Requests(); len(rs) != 1 || !rs[0].Cancelled {
		t.Errorf("upstream saw %+v, want one cancelled call", rs)
	}

	// The one slot is busy with a held call: the next request is never
	// picked up, and its queue deadline decides.
	go func() {
		_, _, _ = cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Body: []byte(chatBody(group, "busy"))})
	}()
	waitUpstream(t, fake, 2)
	start = time.Now()
	_, info, err = cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: 1,
		Body:     []byte(chatBody(group, "never picked")),
		Deadline: start.Add(300 * time.Millisecond), AnswerDeadline: start.Add(time.Second)})
	took = time.Since(start)
	if !errors.Is(err, messages.ErrQueueTimeout) || info.Picked {
		t.Fatalf("an unpicked request ended with %v (picked %v), want queue_timeout", err, info.Picked)
	}
	// queue_timeout, not provider_timeout: the queue deadline ended it,
	// not the later answer deadline; and not before the queue deadline.
	if took < 300*time.Millisecond {
		t.Errorf("queue_timeout after %s, before the queue deadline (300ms)", took.Round(time.Millisecond))
	}
}
