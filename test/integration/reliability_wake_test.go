package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// TestReliabilityIdleWorkersTakeEveryRequestAtOnce: with idle worker slots,
// every request must be picked up within a fraction of a second of being
// queued. Requests are submitted one at a time through pkg/client (the
// gateway's own path, without HTTP, so that many fit in the time bound),
// up to 2,000 of them or 10 s. A request that waits for the workers'
// 5-second safety-net poll means a wake-up hint was lost.
//
// The race it guards against: the stream republishes the hint as it stores
// the message, but the consumer counts the new message a moment later, so a
// no-wait fetch made at once can answer "no messages"; a worker that then
// clears the pair's pending flag leaves the request to the next poll (this
// happened to about 1 request in 100 before the dispatch loop retried such
// an empty fetch).
func TestReliabilityIdleWorkersTakeEveryRequestAtOnce(t *testing.T) {
	fake := newFake(t)
	const group = "prompt"
	cfg := relOneGroup(t, group, fake, 0, nil)
	g := startEmbeddedGateway(t, cfg, 2)
	cl := relClient(t, g.NATSURL())

	const n, bound = 2000, 10 * time.Second
	deadline := time.Now().Add(bound)
	sent := 0
	for i := 0; i < n && time.Now().Before(deadline); i++ {
		sent++
		ctx, cancel := context.WithTimeout(t.Context(), relWait)
		_, info, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: int64(i % 10),
			Body: []byte(chatBody(group, fmt.Sprint("prompt-", i)))})
		cancel()
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		if info.QueueWait >= time.Second {
			t.Fatalf("request %d of %d, sent to idle workers, waited %s in the queue: its wake-up hint was lost and it waited for the safety-net poll",
				i+1, n, info.QueueWait.Round(time.Millisecond))
		}
	}
	t.Logf("%d requests, each picked up at once", sent)
}
