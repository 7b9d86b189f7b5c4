package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// TestUpstreamSeesCleanRequestOnce: every request reaches the provider
// exactly once, on the right path, with the provider model (prefix
// "openai/" removed), the deployment's key, the caller's other fields
// unchanged, and without llmq's own fields "priority" and "timeout", which
// providers would reject.
func TestUpstreamSeesCleanRequestOnce(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("smart", "smart-0", fake, 0)}})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())

	type sent struct {
		path, content string
		extra         map[string]any // fields that must arrive unchanged
	}
	var reqs []sent
	for i := range 8 {
		content := fmt.Sprintf("chat %d", i)
		extra := map[string]any{"temperature": 0.5, "max_tokens": float64(7 + i), "user": fmt.Sprintf("u%d", i)}
		body := chatBody("smart", content, fmt.Sprintf(`"priority":%d`, i%3), `"timeout":30`,
			`"temperature":0.5`, fmt.Sprintf(`"max_tokens":%d`, 7+i), fmt.Sprintf(`"user":"u%d"`, i))
		reqs = append(reqs, sent{"/v1/chat/completions", content, extra})
		if i%2 == 1 { // some without any llmq field
			body = chatBody("smart", content, `"temperature":0.5`, fmt.Sprintf(`"max_tokens":%d`, 7+i), fmt.Sprintf(`"user":"u%d"`, i))
		}
		checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", body))
	}
	for i := range 3 {
		prompt := fmt.Sprintf("complete %d", i)
		reqs = append(reqs, sent{"/v1/completions", prompt, map[string]any{"max_tokens": float64(5)}})
		checkServed(t, mustPost(t, g.URL+"/v1/completions", "", completionBody("smart", prompt, `"priority":1`, `"timeout":45.5`, `"max_tokens":5`)))
	}

	// All acked, nothing pending or redelivered: no second delivery can come.
	q.waitDrained(t)
	waitIdle(t, fake)
	got := fake.Requests()
	if len(got) != len(reqs) {
		t.Errorf("the upstream received %d requests for %d sent: %q", len(got), len(reqs), contents(fake))
	}
	seen := map[string]int{}
	for _, r := range got {
		seen[r.Content]++
	}
	for _, s := range reqs {
		if seen[s.content] != 1 {
			t.Errorf("%q reached the upstream %d times, want once", s.content, seen[s.content])
			continue
		}
		for _, r := range got {
			if r.Content != s.content {
				continue
			}
			if r.Path != s.path {
				t.Errorf("%q: upstream path %q, want %q", s.content, r.Path, s.path)
			}
			if auth := r.Header.Get("Authorization"); auth != "Bearer test" {
				t.Errorf("%q: upstream Authorization %q, want the deployment's key", s.content, auth)
			}
			var body map[string]any
			if err := json.Unmarshal(r.Body, &body); err != nil {
				t.Errorf("%q: upstream body is not JSON: %s", s.content, r.Body)
				continue
			}
			if body["model"] != upstreamModel("smart") {
				t.Errorf("%q: upstream model %v, want %q (provider prefix removed)", s.content, body["model"], upstreamModel("smart"))
			}
			for _, f := range []string{"priority", "timeout"} {
				if v, ok := body[f]; ok {
					t.Errorf("%q: the upstream body has %q = %v: %s", s.content, f, v, r.Body)
				}
			}
			for k, v := range s.extra {
				if body[k] != v {
					t.Errorf("%q: upstream %s = %v, want %v", s.content, k, body[k], v)
				}
			}
		}
	}
}

// TestRejectedBeforeQueueing: with a master_key, a missing or wrong key is
// answered 401 and an unknown model 404, with OpenAI error bodies, and none
// of them is queued or sent to the provider; the right key is served.
func TestRejectedBeforeQueueing(t *testing.T) {
	const key = "sk-llmq-test-master"
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList:       []deployment{fakeDeployment("guarded", "guarded-0", fake, 0)},
		GeneralSettings: &generalSettings{MasterKey: key},
	})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())
	chat, completions := g.URL+"/v1/chat/completions", g.URL+"/v1/completions"

	for _, tc := range []struct {
		name, url, key, body string
		status               int
		param                string
	}{
		{"chat without a key", chat, "", chatBody("guarded", "no key"), http.StatusUnauthorized, ""},
		{"chat with a wrong key", chat, "sk-wrong", chatBody("guarded", "wrong key"), http.StatusUnauthorized, ""},
		{"completion without a key", completions, "", completionBody("guarded", "no key"), http.StatusUnauthorized, ""},
		{"key as a prefix of the master key", chat, key[:len(key)-1], chatBody("guarded", "prefix"), http.StatusUnauthorized, ""},
		{"unknown model without a key", chat, "", chatBody("nope", "unknown no key"), http.StatusUnauthorized, ""},
		{"unknown model", chat, key, chatBody("nope", "unknown"), http.StatusNotFound, "model"},
		{"unknown model, completion", completions, key, completionBody("nope", "unknown"), http.StatusNotFound, "model"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustPost(t, tc.url, tc.key, tc.body)
			checkError(t, r, tc.status, tc.param)
			if tc.status == http.StatusUnauthorized && r.Header.Get("x-llmq-request-id") != "" {
				t.Errorf("a 401 carries a request id: it was submitted")
			}
		})
	}
	if r := mustGet(t, g.URL+"/v1/models", ""); r.Status != http.StatusUnauthorized {
		t.Errorf("GET /v1/models without a key: %s, want 401", r)
	}
	if st := q.state(t); st.LastSeq != 0 {
		t.Errorf("rejected requests were queued: stream last sequence %d", st.LastSeq)
	}
	if n := fake.Count(); n != 0 {
		t.Errorf("rejected requests reached the upstream: %q", contents(fake))
	}

	checkServed(t, mustPost(t, chat, key, chatBody("guarded", "right key")))
	if r := mustGet(t, g.URL+"/v1/models", key); r.Status != http.StatusOK {
		t.Errorf("GET /v1/models with the key: %s", r)
	}
	waitIdle(t, fake)
	if got := contents(fake); len(got) != 1 || got[0] != "right key" {
		t.Errorf("the upstream saw %q, want only the authenticated request", got)
	}
	if st := q.state(t); st.LastSeq != 1 {
		t.Errorf("stream last sequence %d, want 1", st.LastSeq)
	}
}

// TestSaturatedGroupDoesNotBlockOthers: a model group whose only deployment
// is busy, with higher-priority requests waiting, does not delay a
// lower-priority request for another group (no head-of-line blocking).
func TestSaturatedGroupDoesNotBlockOthers(t *testing.T) {
	fakeA, fakeB := newFake(t), newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{
		fakeDeployment("group-a", "a-0", fakeA, 1),
		fakeDeployment("group-b", "b-0", fakeB, 1),
	}})
	g := startEmbeddedGateway(t, cfg, 4)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	const queuedA = 4
	answersA := make(chan *result, queuedA+1)
	sendA := func(content string) {
		r, err := post(ctx, url, "", chatBody("group-a", content, `"priority":0`))
		if err != nil {
			r = &result{Body: []byte(err.Error())}
		}
		answersA <- r
	}
	fakeA.Hold()
	go sendA("a-held")
	waitUpstream(t, fakeA, 1)
	for i := range queuedA {
		go sendA(fmt.Sprintf("a-%d", i))
		q.waitStored(t, uint64(i+2))
	}

	// Group A's one slot stays held until after B's answer: any answer to B
	// shows that B did not wait behind A, however long it took.
	start := time.Now()
	r, err := post(waitCtx(t), url, "", chatBody("group-b", "b", `"priority":9`))
	if err != nil {
		t.Fatalf("group B was not answered while group A is saturated: %v", err)
	}
	checkServed(t, r)
	t.Logf("group B answered in %v while group A had %d requests waiting", time.Since(start), queuedA)
	if n := fakeA.Count(); n != 1 {
		t.Errorf("group A's upstream received %d requests while its one slot was held: %q", n, contents(fakeA))
	}
	if got := contents(fakeB); len(got) != 1 || got[0] != "b" {
		t.Errorf("group B's upstream saw %q", got)
	}

	fakeA.Release()
	for range queuedA + 1 {
		select {
		case r := <-answersA:
			checkServed(t, r)
		case <-ctx.Done():
			t.Fatalf("group A's requests were not all answered after the release; upstream saw %q", contents(fakeA))
		}
	}
}
