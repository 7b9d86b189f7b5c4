package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// config is one configuration to measure.
type config struct {
	kind      string // "rpm" or "tpm"
	limit     int64  // per minute
	slots     int
	processes int
	period    time.Duration
	duration  time.Duration
	offer     float64
	latency   time.Duration
	tolerance time.Duration
	verbose   bool
}

// result is what one configuration measured.
type result struct {
	cfg         config
	perPeriod   int64   // the configured limit per period
	offeredRate float64 // requests per second
	sent        int     // requests offered
	calls       int     // calls that reached the upstream
	achieved    float64
	busiest     int64
	dispatches  int
	// inversions: strict, and ignoring requests enqueued less than the
	// tolerance before; overtaken: the distinct requests the latter went ahead of
	inversionsStrict, inversionsTol, overtaken int
	meanTokens                                 float64
}

func (r *result) layout() string {
	per := r.cfg.slots / r.cfg.processes
	extra := r.cfg.slots % r.cfg.processes
	if extra == 0 {
		return fmt.Sprintf("%d × %d", r.cfg.processes, per)
	}
	return fmt.Sprintf("%d × %d and %d × %d", extra, per+1, r.cfg.processes-extra, per)
}

func (r *result) summary() string {
	return fmt.Sprintf("offered %d (%.1f/s), %d calls upstream; achieved %.3f of the limit; busiest window %d of %d (%.3f); inversions %d strict, %d beyond %v (overtaking %d requests), of %d dispatches",
		r.sent, r.offeredRate, r.calls, r.achieved, r.busiest, r.perPeriod, float64(r.busiest)/float64(r.perPeriod),
		r.inversionsStrict, r.inversionsTol, r.cfg.tolerance, r.overtaken, r.dispatches)
}

// group and deployment of the benchmark's config.
const (
	group      = "bench"
	deployment = "bench-0"
)

// reply is the fake upstream's answer text: 5 words, so 5 completion tokens.
const reply = "hello from the fake upstream"

// completionTokens is what the tpm run asks for (max_tokens) and what the
// fake reports: the words of reply.
const completionTokens = 5

// tpmWords bounds the prompt of a tpm-run request, in three-character words.
const minWords, maxWords = 50, 150

func runConfig(ctx context.Context, exe string, c config) (*result, error) {
	dir, err := os.MkdirTemp("", "llmq-bench-limits-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	fake := fakeupstream.New(fakeupstream.Options{Latency: c.latency, Reply: reply})
	defer fake.Close()

	perPeriod := max(1, int64(math.Round(float64(c.limit)*c.period.Seconds()/60)))
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := writeConfig(cfgPath, c.kind, perPeriod, c.period, fake.URL); err != nil {
		return nil, err
	}
	srv, err := natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: filepath.Join(dir, "nats"), Name: "llmq-bench-limits"})
	if err != nil {
		return nil, fmt.Errorf("start NATS: %w", err)
	}
	defer srv.Shutdown()
	natsURL := srv.ClientURL()

	var procs []*workerProc
	stopWorkers := func() error {
		var errs []error
		for _, p := range procs {
			errs = append(errs, p.stop())
		}
		procs = nil
		return errors.Join(errs...)
	}
	defer stopWorkers()
	for i := range c.processes {
		slots := c.slots / c.processes
		if i < c.slots%c.processes {
			slots++
		}
		p, err := startWorker(ctx, exe, cfgPath, natsURL, slots, c.verbose)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}

	nc, err := nats.Connect(natsURL, nats.Name("llmq-bench-limits-load"))
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	cl, err := client.New(nc, client.Options{})
	if err != nil {
		return nil, err
	}
	defer cl.Close()

	// Enqueue times: the stream republishes the headers of every stored
	// request as a wake-up hint.
	var mu sync.Mutex
	enqueued := map[string]time.Time{}
	sub, err := nc.Subscribe("llmq.wake.>", func(m *nats.Msg) {
		at := time.Now()
		id := m.Header.Get(messages.HeaderRequestID)
		mu.Lock()
		if _, ok := enqueued[id]; !ok {
			enqueued[id] = at
		}
		mu.Unlock()
	})
	if err != nil {
		return nil, err
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		return nil, err
	}

	// The load: open loop at offer × the limit.
	meanTokens := float64(minWords+maxWords)/2 + completionTokens
	rate := c.offer * float64(perPeriod) / c.period.Seconds()
	if c.kind == "tpm" {
		rate /= meanTokens
	}
	rnd := rand.New(rand.NewPCG(1, uint64(c.slots)))
	type sentReq struct {
		priority int
	}
	var sent []sentReq
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var wg sync.WaitGroup
	var failures sync.Map // outcome -> count, for the summary
	start := time.Now()
	end := start.Add(c.duration)
	for i := 0; ; i++ {
		at := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		if !at.Before(end) {
			break
		}
		if d := time.Until(at); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		prio := rnd.IntN(10)
		req := &client.Request{ID: requestID(i), Group: group, Priority: int64(prio)}
		if c.kind == "tpm" {
			req.Kind = messages.KindCompletion
			req.Body = completionBody(i, minWords+rnd.IntN(maxWords-minWords+1))
		} else {
			req.Kind = messages.KindChat
			req.Body = chatBody(req.ID)
		}
		sent = append(sent, sentReq{priority: prio})
		wg.Go(func() {
			_, _, err := cl.Do(loadCtx, req)
			if err != nil && loadCtx.Err() == nil {
				v, _ := failures.LoadOrStore(err.Error(), new(int))
				mu.Lock()
				*v.(*int)++
				mu.Unlock()
			}
		})
	}
	offerEnd := time.Now()
	// Let the calls in flight finish, so that every dispatch before the
	// horizon is complete, then abandon the backlog.
	quiet := time.Now().Add(10 * time.Second)
	for fake.InFlight() > 0 && time.Now().Before(quiet) {
		time.Sleep(10 * time.Millisecond)
	}
	horizon := time.Now()
	stopLoad()
	waited := make(chan struct{})
	go func() { wg.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		return nil, errors.New("requests still waiting 30 s after their context was cancelled")
	}
	if err := stopWorkers(); err != nil {
		fmt.Fprintln(os.Stderr, "limits: stopping the workers:", err)
	}
	failures.Range(func(k, v any) bool {
		fmt.Fprintf(os.Stderr, "limits:   %d requests failed: %s\n", *v.(*int), k)
		return true
	})

	// What the upstream saw.
	r := &result{cfg: c, perPeriod: perPeriod, offeredRate: rate, sent: len(sent), meanTokens: meanTokens}
	reqs := make([]tracked, len(sent))
	for i, s := range sent {
		reqs[i].priority = s.priority
	}
	mu.Lock()
	for id, at := range enqueued {
		if i, ok := parseID(id); ok && i < len(reqs) {
			reqs[i].enqueued = at
		}
	}
	mu.Unlock()
	var events []event
	for _, call := range fake.Requests() {
		r.calls++
		units := int64(1)
		if c.kind == "tpm" {
			units = reportedTokens(call.Content)
		}
		if call.Status == 200 {
			events = append(events, event{at: call.Received, units: units})
		}
		if i, ok := idOfContent(c.kind, call.Content); ok && i < len(reqs) && reqs[i].dispatched.IsZero() {
			reqs[i].dispatched = call.Received
		}
	}
	measured := offerEnd.Sub(start) - c.period
	r.achieved = float64(sumIn(events, start.Add(c.period), offerEnd)) / (float64(perPeriod) * measured.Seconds() / c.period.Seconds())
	r.busiest = busiest(events, c.period)
	r.inversionsStrict, r.dispatches, _ = inversions(reqs, 0, horizon)
	r.inversionsTol, _, r.overtaken = inversions(reqs, c.tolerance, horizon)
	return r, nil
}

// writeConfig writes the benchmark's config: one group with one deployment
// limited to perPeriod requests (rpm run) or tokens (tpm run) per period.
func writeConfig(path, kind string, perPeriod int64, period time.Duration, api string) error {
	params := map[string]any{"model": "openai/bench-upstream", "api_base": api, "api_key": "bench", "timeout": 30}
	params[kind] = perPeriod
	cfg := map[string]any{
		"model_list": []any{map[string]any{
			"model_name": group, "litellm_params": params, "model_info": map[string]any{"id": deployment},
		}},
		"router_settings": map[string]any{"timeout": 3600, "num_retries": 0},
		"llmq_settings":   map[string]any{"limits_period": period.Seconds(), "default_completion_tokens": completionTokens},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// requestID is the id of the i-th request; chat requests carry it as their
// content, completions as their first two words (six digits).
func requestID(i int) string { return fmt.Sprintf("r%06d", i) }

func parseID(id string) (int, bool) {
	if len(id) != 7 || id[0] != 'r' {
		return 0, false
	}
	n, err := strconv.Atoi(id[1:])
	return n, err == nil
}

func chatBody(content string) []byte {
	return fmt.Appendf(nil, `{"model":%q,"messages":[{"role":"user","content":%q}]}`, group, content)
}

// completionBody is a completion of words three-character words, the first
// two the request's number: llmq estimates one token a word plus max_tokens,
// and the fake reports ceil(characters/4) = one a word plus its reply's
// words, so the reservation equals the reported usage.
func completionBody(i, words int) []byte {
	var b strings.Builder
	fmt.Fprintf(&b, "%03d %03d", i/1000%1000, i%1000)
	for range words - 2 {
		b.WriteString(" abc")
	}
	return fmt.Appendf(nil, `{"model":%q,"prompt":%q,"max_tokens":%d}`, group, b.String(), completionTokens)
}

func idOfContent(kind, content string) (int, bool) {
	if kind != "tpm" {
		return parseID(content)
	}
	if len(content) < 7 || content[3] != ' ' {
		return 0, false
	}
	hi, err1 := strconv.Atoi(content[:3])
	lo, err2 := strconv.Atoi(content[4:7])
	return hi*1000 + lo, err1 == nil && err2 == nil
}

// reportedTokens is the total_tokens the fake reports for a call with this
// prompt: ceil(characters/4), at least 1, plus its reply's words.
func reportedTokens(content string) int64 {
	return int64(max((utf8.RuneCountInString(content)+3)/4, 1) + max(len(strings.Fields(reply)), 1))
}
