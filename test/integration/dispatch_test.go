package integration

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"
)

// TestIdleWorkersPickUpAtOnce: with idle worker slots and a deployment with
// no limit, every request is picked up by its own wake-up hint. The
// worker's safety-net poll is an hour apart here: a request whose hint was
// lost would wait for it, and its POST would fail at waitLimit. No clock
// decides the outcome, so a loaded machine makes the test slower, not red.
//
// One request at a time, so nothing else is in flight: each is woken by its
// own wake-up hint only. The count is high because the lost wake-up this
// guards against is a race that hit about one request in a hundred.
func TestIdleWorkersPickUpAtOnce(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("idle", "idle-0", fake, 0)}})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	relStartRawWorker(t, natsURL, "idle", "idle-0", fake, 30*time.Second, 4, relHintsOnly)

	const n = 800
	var worst time.Duration
	for i := range n {
		path, body := "/v1/chat/completions", chatBody("idle", fmt.Sprintf("r%d", i), fmt.Sprintf(`"priority":%d`, i%3))
		if i%2 == 1 {
			path, body = "/v1/completions", completionBody("idle", fmt.Sprintf("r%d", i), fmt.Sprintf(`"priority":%d`, i%3))
		}
		start := time.Now()
		r, err := post(waitCtx(t), g.URL+path, "", body)
		if err != nil {
			t.Fatalf("request %d of %d, alone in an idle pipeline, was not served within %s (after %d served): %v; its wake-up hint was lost",
				i+1, n, waitLimit, i, err)
		}
		checkServed(t, r)
		worst = max(worst, time.Since(start))
	}
	t.Logf("%d requests, slowest %v", n, worst)
}

// TestRateLimitedRequestKeepsItsPlace: when the provider answers 429, the
// worker cools the deployment down and, as its policy promises (429: "It
// keeps its place (the slot holds it) and spends no retry", internal/worker
// Policy), tries the same request again as soon as the deployment is
// available — before any request of lower priority that arrived during the
// cooldown.
//
// Which goroutine takes the deployment when the cooldown ends is a race, so
// the scenario runs several rounds; one inversion fails the test.
func TestRateLimitedRequestKeepsItsPlace(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList:      []deployment{fakeDeployment("limited", "limited-0", fake, 1)},
		RouterSettings: &routerSettings{CooldownTime: 0.5}, // a 429 without Retry-After cools for 0.5 s
	})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	const rounds, later = 6, 3
	for round := range rounds {
		fake.Reset()
		base := q.state(t).LastSeq
		ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
		results := make(chan *result, later+1)
		send := func(content string, priority int) {
			r, err := post(ctx, url, "", chatBody("limited", content, fmt.Sprintf(`"priority":%d`, priority)))
			if err != nil {
				r = &result{Body: []byte(content + ": " + err.Error())}
			}
			results <- r
		}
		urgent := fmt.Sprintf("r%d-urgent", round)
		fake.FailNext(1, 429, "")
		go send(urgent, 0)
		waitUpstream(t, fake, 1) // answered 429: the deployment cools down
		want := []string{urgent, urgent}
		for i := range later {
			content := fmt.Sprintf("r%d-later-%d", round, i)
			want = append(want, content)
			go send(content, 5)
			q.waitStored(t, base+uint64(i+2))
		}
		for range later + 1 {
			checkServed(t, <-results)
		}
		cancel()
		waitIdle(t, fake)
		if got := contents(fake); !slices.Equal(got, want) {
			t.Fatalf("round %d: the upstream saw %q, want %q: the priority-0 request that got a 429 lost its place to priority-5 requests queued after it",
				round, got, want)
		}
	}
}
