package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// TestReliabilityIdleWorkersTakeEveryRequestAtOnce: with idle worker slots,
// every request must be picked up by its own wake-up hint. Requests are
// submitted one at a time through pkg/client (the gateway's own path,
// without HTTP, so that many fit in the test's time), up to 2,000 of them or
// 10 s. The worker's safety-net poll is an hour apart: a request whose hint
// was lost would wait for it, and its Do would fail at relWait. No clock
// decides the outcome.
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
	natsURL := startNATS(t)
	startRemoteGateway(t, cfg, natsURL) // the topology
	relStartRawWorker(t, natsURL, group, group+"-0", fake, 30*time.Second, 2, relHintsOnly)
	cl := relClient(t, natsURL)

	const n, budget = 2000, 10 * time.Second
	stop := time.Now().Add(budget) // bounds the test's length, not a request's
	sent := 0
	var worst time.Duration
	for i := 0; i < n && time.Now().Before(stop); i++ {
		sent++
		ctx, cancel := context.WithTimeout(t.Context(), relWait)
		_, info, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: group, Priority: int64(i % 10),
			Body: []byte(chatBody(group, fmt.Sprint("prompt-", i)))})
		cancel()
		if err != nil {
			t.Fatalf("request %d, sent to idle workers, was not served within %s: %v; its wake-up hint was lost", i+1, relWait, err)
		}
		worst = max(worst, info.QueueWait)
	}
	t.Logf("%d requests, each picked up by its hint; longest queue wait %s", sent, worst.Round(time.Millisecond))
}

// TestReliabilityRedeliveryWakesWorkers: a worker dies (its NATS connection
// is closed) while it holds a band-0 request at the provider; a live worker
// is busy and a band-9 request waits behind it. When JetStream redelivers
// the band-0 request (after the ack wait), nothing republishes it as a
// wake-up hint; the caller's client, which heard the dead worker's
// heartbeats announce when that would be, publishes one. So when the live
// worker is free it takes the redelivered band-0 request before the band-9
// one. The live worker's safety-net poll is an hour apart: without the hint
// it would serve band 9 first, and the band-0 request would wait for the
// poll.
func TestReliabilityRedeliveryWakesWorkers(t *testing.T) {
	fake := newFake(t)
	const group = "redelivered"
	const ackWait = 3 * time.Second
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"ack_wait": ackWait.Seconds()})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	nc, _ := relJS(t, natsURL)
	q := observeQueue(t, natsURL)

	// The hints for band 0 that name no stream sequence: not the stream's
	// republished copies but the client's.
	hints := make(chan struct{}, 16)
	sub, err := nc.Subscribe(relSubjects.Wake(bandOf(0), group), func(m *nats.Msg) {
		if m.Header.Get(jetstream.SequenceHeader) == "" {
			select {
			case hints <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()

	fake.Hold()
	doomed := relStartRawWorker(t, natsURL, group, "doomed-0", fake, ackWait, 1)
	high := relPostAsync(t, "high", g.URL+"/v1/chat/completions", chatBody(group, "high", `"priority":0`), relWait)
	waitUpstream(t, fake, 1) // the doomed worker holds it at the provider
	relStartRawWorker(t, natsURL, group, "live-0", fake, ackWait, 1, func(o *worker.Options) { o.PollInterval = time.Hour })
	blocker := relPostAsync(t, "blocker", g.URL+"/v1/chat/completions", chatBody(group, "blocker", `"priority":0`), relWait)
	waitUpstream(t, fake, 2) // the live worker holds it at the provider
	low := relPostAsync(t, "low", g.URL+"/v1/chat/completions", chatBody(group, "low", `"priority":9`), relWait)
	q.waitMsgs(t, 3) // high and blocker held, low waiting

	doomed.Kill()
	select {
	case <-hints:
	case <-relCtx(t, relWait).Done():
		t.Fatalf("no wake-up hint for band 0 within %s of the worker's death (ack wait %s)", relWait, ackWait)
	}
	fake.Release() // the live worker finishes blocker, then sweeps the bands

	for _, ch := range []<-chan relAnswer{high, blocker, low} {
		if a := relAwait(t, ch); a.err != nil {
			t.Errorf("no answer: %v", a)
		} else {
			checkServed(t, a.r)
		}
	}
	got := contents(fake)
	if want := []string{"high", "blocker", "high", "low"}; !slices.Equal(got, want) {
		t.Errorf("the upstream received %q, want %q: the redelivered band-0 request must be served before the band-9 one", got, want)
	}
}
