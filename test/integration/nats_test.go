package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// TestTwoGatewaysOneNATS: two gateway processes and one worker process share
// a standalone NATS server. Under concurrent load each caller gets the answer
// to its own request, through the gateway it asked, and every request is
// served exactly once.
func TestTwoGatewaysOneNATS(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("shared", "shared-0", fake, 0)}})
	natsURL := startNATS(t)
	gws := []*gateway{startRemoteGateway(t, cfg, natsURL), startRemoteGateway(t, cfg, natsURL)}
	startWorker(t, cfg, natsURL, 8)

	const perGateway = 20
	type answer struct {
		gateway int
		content string
		r       *result
		err     error
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	answers := make(chan answer, 2*perGateway)
	var wg sync.WaitGroup
	for gi, g := range gws {
		for i := range perGateway {
			content := fmt.Sprintf("gw%d-req%02d", gi, i)
			wg.Go(func() {
				r, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("shared", content, fmt.Sprintf(`"priority":%d`, i%4)))
				answers <- answer{gi, content, r, err}
			})
		}
	}
	wg.Wait()
	close(answers)

	waitIdle(t, fake)
	bySeq := map[int]string{} // upstream sequence -> content it received
	for _, r := range fake.Requests() {
		bySeq[r.Seq] = r.Content
	}
	ids := map[string]string{}
	for a := range answers {
		if a.err != nil {
			t.Errorf("%s: %v", a.content, a.err)
			continue
		}
		c := checkServed(t, a.r)
		id := a.r.Header.Get("x-llmq-request-id")
		if id == "" {
			t.Errorf("%s: no x-llmq-request-id", a.content)
		} else if other, dup := ids[id]; dup {
			t.Errorf("%s and %s got the same request id %s", a.content, other, id)
		}
		ids[id] = a.content
		// The fake numbers its answers "chatcmpl-fake-<seq>": the answer this
		// caller got must be the one the upstream gave to this caller's request.
		seq, err := strconv.Atoi(strings.TrimPrefix(c.ID, "chatcmpl-fake-"))
		if err != nil {
			t.Errorf("%s: answer id %q is not the fake's", a.content, c.ID)
			continue
		}
		if bySeq[seq] != a.content {
			t.Errorf("gateway %d answered %q with the upstream's answer to %q", a.gateway, a.content, bySeq[seq])
		}
	}
	if len(ids) != 2*perGateway {
		t.Errorf("%d distinct request ids for %d requests", len(ids), 2*perGateway)
	}
	got := contents(fake)
	slices.Sort(got)
	if len(got) != 2*perGateway || len(slices.Compact(slices.Clone(got))) != len(got) {
		t.Errorf("the upstream received %d requests (%d distinct), want %d distinct: %q", len(got), len(slices.Compact(slices.Clone(got))), 2*perGateway, got)
	}
}

// TestQueuedBeforeAnyWorker: requests accepted while no worker exists wait
// in JetStream and are served, in priority order, once a worker starts.
func TestQueuedBeforeAnyWorker(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("later", "later-0", fake, 1)}})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	q := observeQueue(t, natsURL)

	subs := []submission{
		{content: "p3", priority: 3},
		{content: "p1-first", priority: 1},
		{content: "p7", priority: 7},
		{content: "p0", priority: 0},
		{content: "p1-second", priority: 1},
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	results := make(chan *result, len(subs))
	for i, s := range subs {
		go func() {
			r, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("later", s.content, fmt.Sprintf(`"priority":%d`, s.priority)))
			if err != nil {
				r = &result{Body: []byte(s.content + ": " + err.Error())}
			}
			results <- r
		}()
		q.waitStored(t, uint64(i+1))
	}
	q.waitMsgs(t, uint64(len(subs))) // all waiting, none taken
	if n := fake.Count(); n != 0 {
		t.Fatalf("with no worker, the upstream received %q", contents(fake))
	}

	startWorker(t, cfg, natsURL, 4)
	for range subs {
		select {
		case r := <-results:
			if r.Status != http.StatusOK {
				t.Errorf("queued request: %s", r)
			}
		case <-ctx.Done():
			t.Fatalf("not every queued request was answered; upstream saw %q", contents(fake))
		}
	}
	want := []string{"p0", "p1-first", "p1-second", "p3", "p7"}
	if got := contents(fake); !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q", got, want)
	}
	q.waitMsgs(t, 0)
}
