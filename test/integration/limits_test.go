package integration

// Deployment limits and routing across a pool of worker processes (issue 3):
// a standalone NATS server, a gateway without workers of its own and three
// worker processes (app.RunWorker, each with its own NATS connection) share
// the limits through pkg/limiter. Every check is made where a provider would
// make it: at the fake upstream, from the times it received each call.
//
// rpm and tpm count per llmq_settings.limits_period, which these tests set
// to a few seconds so that several windows fit in one test.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// limPeriod is llmq_settings.limits_period of these tests.
const limPeriod = 3 * time.Second

// ---------------------------------------------------------------------------
// Config file with the limit and routing keys the harness's configFile lacks.

type limConfig struct {
	ModelList      []limDeployment    `yaml:"model_list"`
	RouterSettings *limRouterSettings `yaml:"router_settings,omitempty"`
	LLMQ           limLLMQSettings    `yaml:"llmq_settings"`
}

type limDeployment struct {
	ModelName string     `yaml:"model_name"`
	Params    limParams  `yaml:"litellm_params"`
	ModelInfo *modelInfo `yaml:"model_info,omitempty"`
}

type limParams struct {
	Model               string  `yaml:"model"`
	APIBase             string  `yaml:"api_base"`
	APIKey              string  `yaml:"api_key"`
	Timeout             float64 `yaml:"timeout,omitempty"`
	RPM                 int64   `yaml:"rpm,omitempty"`
	TPM                 int64   `yaml:"tpm,omitempty"`
	MaxParallelRequests int     `yaml:"max_parallel_requests,omitempty"`
	Weight              float64 `yaml:"weight,omitempty"`
	Order               int     `yaml:"order,omitempty"`
}

type limRouterSettings struct {
	RoutingStrategy string                `yaml:"routing_strategy,omitempty"`
	NumRetries      *int                  `yaml:"num_retries,omitempty"`
	CooldownTime    float64               `yaml:"cooldown_time,omitempty"`
	AllowedFails    int                   `yaml:"allowed_fails,omitempty"`
	Fallbacks       []map[string][]string `yaml:"fallbacks,omitempty"`
}

type limLLMQSettings struct {
	LimitsPeriod            float64 `yaml:"limits_period"`
	DefaultCompletionTokens int64   `yaml:"default_completion_tokens,omitempty"`
}

// limDeploy is deployment id of group on fake (the upstream sees the model
// "<id>-upstream", so one fake can tell deployments apart), with limits set
// by the caller.
func limDeploy(group, id string, fake *fakeupstream.Server, p limParams) limDeployment {
	p.Model = "openai/" + id + "-upstream"
	p.APIBase = fake.URL
	p.APIKey = "test"
	p.Timeout = 30
	return limDeployment{ModelName: group, Params: p, ModelInfo: &modelInfo{ID: id}}
}

// limWriteConfig writes cfg, with limits_period limPeriod unless set, into a
// fresh temporary directory and returns its path.
func limWriteConfig(t *testing.T, cfg limConfig) string {
	t.Helper()
	if cfg.LLMQ.LimitsPeriod == 0 {
		cfg.LLMQ.LimitsPeriod = limPeriod.Seconds()
	}
	return writeYAMLConfig(t, cfg)
}

// ---------------------------------------------------------------------------
// The pool: standalone NATS, a gateway without workers, worker processes.

type limPool struct {
	chatURL string
	natsURL string
	q       *queue
}

// limStartPool starts NATS, a gateway and workers worker processes with
// slots slots each, and returns once every worker serves.
func limStartPool(t *testing.T, cfg limConfig, workers, slots int) *limPool {
	t.Helper()
	path := limWriteConfig(t, cfg)
	natsURL := startNATS(t)
	g := startRemoteGateway(t, path, natsURL)
	for range workers {
		limStartWorker(t, path, natsURL, slots)
	}
	return &limPool{chatURL: g.URL + "/v1/chat/completions", natsURL: natsURL, q: observeQueue(t, natsURL)}
}

// watchRate records when the shared rate state of deployment id is stored
// (read-only: a KV watcher on the limits bucket). For a deployment with only
// an rpm limit every stored revision is an admission, or the cancel of one
// whose call was not made.
func (p *limPool) watchRate(t *testing.T, id string) func() []limEvent {
	t.Helper()
	return p.watchKey(t, id, "rate")
}

// watchKey records when key kind ("rate", "cool") of deployment id is
// stored in the limits bucket.
func (p *limPool) watchKey(t *testing.T, id, kind string) func() []limEvent {
	t.Helper()
	nc, err := nats.Connect(p.natsURL, nats.Name("llmq-test-limits-observer"))
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(waitCtx(t), "llmq_limits")
	if err != nil {
		t.Fatalf("the limits bucket: %v", err)
	}
	w, err := kv.Watch(t.Context(), "d_"+hex.EncodeToString([]byte(id))+"."+kind, jetstream.UpdatesOnly())
	if err != nil {
		t.Fatalf("watch the %s state of %s: %v", kind, id, err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	var mu sync.Mutex
	var writes []limEvent
	go func() {
		for e := range w.Updates() {
			if e != nil && e.Operation() == jetstream.KeyValuePut {
				mu.Lock()
				writes = append(writes, limEvent{at: time.Now(), units: 1})
				mu.Unlock()
			}
		}
	}()
	return func() []limEvent {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(writes)
	}
}

// limStartWorker is startWorker that also waits until the worker's slots run.
func limStartWorker(t *testing.T, cfgPath, natsURL string, slots int) {
	t.Helper()
	env := baseEnv(cfgPath)
	env.NATSURL = natsURL
	env.WorkerSlots = slots
	env.LogLevel = "info"
	lines := newLogLines()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- app.RunWorker(ctx, env, noEnv, io.MultiWriter(newTestLog(t), lines)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker stopped with: %v", err)
		}
	})
	lines.waitFor(t, "worker slots started")
}

// ---------------------------------------------------------------------------
// Load

// limAnswer is how one request ended.
type limAnswer struct {
	content string
	r       *result
	err     error
	took    time.Duration
}

// limLoad is requests sent in the background.
type limLoad struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	answers []limAnswer
	sent    chan struct{} // closed when every request was sent, or ctx ended first
}

// limFlood sends n requests, one every gap (open loop: it does not wait for
// answers), each made by body(i) and posted to url in its own goroutine, all
// bounded by ctx.
func limFlood(ctx context.Context, url string, n int, gap time.Duration, body func(i int) (content, body string)) *limLoad {
	l := &limLoad{sent: make(chan struct{})}
	go func() {
		defer close(l.sent)
		tick := time.NewTicker(gap)
		defer tick.Stop()
		for i := range n {
			if i > 0 {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
			content, b := body(i)
			l.wg.Go(func() { l.add(limPostTimed(ctx, url, content, b)) })
		}
	}()
	return l
}

func limPostTimed(ctx context.Context, url, content, body string) limAnswer {
	start := time.Now()
	r, err := post(ctx, url, "", body)
	return limAnswer{content: content, r: r, err: err, took: time.Since(start)}
}

func (l *limLoad) add(a limAnswer) {
	l.mu.Lock()
	l.answers = append(l.answers, a)
	l.mu.Unlock()
}

// waitSent waits until every request was sent.
func (l *limLoad) waitSent(t *testing.T, bound time.Duration) {
	t.Helper()
	select {
	case <-l.sent:
	case <-time.After(bound):
		t.Fatalf("the load was not sent within %v", bound)
	}
}

// wait waits (bounded) for every request sent to end and returns the answers.
func (l *limLoad) wait(t *testing.T) []limAnswer {
	t.Helper()
	<-l.sent // ends with ctx at the latest
	done := make(chan struct{})
	go func() {
		l.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-waitCtx(t).Done():
		t.Fatal("requests still running long after their context ended")
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.answers)
}

// limCheckAnswers checks that every answer is a 200 or ended by the test's
// own cancellation, and returns how many were served.
func limCheckAnswers(t *testing.T, what string, answers []limAnswer) int {
	t.Helper()
	served := 0
	for _, a := range answers {
		switch {
		case a.err != nil:
			if !errors.Is(a.err, context.Canceled) {
				t.Errorf("%s: %s: %v", what, a.content, a.err)
			}
		case a.r.Status == http.StatusOK:
			served++
		default:
			t.Errorf("%s: %s answered %s: requests over the limit must wait, not fail", what, a.content, a.r)
		}
	}
	return served
}

// ---------------------------------------------------------------------------
// Measuring at the upstream

// limEvent is one call the upstream received and the units it costs.
type limEvent struct {
	at    time.Time
	units int64
}

// limBusiest returns the largest sum of units of the events in any half-open
// window [s, s+period), and where that window starts. Any window can slide
// right to start at its first event without losing one, so trying the event
// times as starts is enough.
func limBusiest(events []limEvent, period time.Duration) (sum int64, start time.Time) {
	ev := slices.Clone(events)
	sort.Slice(ev, func(i, j int) bool { return ev[i].at.Before(ev[j].at) })
	var cur int64
	j := 0
	for i := range ev {
		for j < len(ev) && ev[j].at.Before(ev[i].at.Add(period)) {
			cur += ev[j].units
			j++
		}
		if cur > sum {
			sum, start = cur, ev[i].at
		}
		cur -= ev[i].units
	}
	return sum, start
}

// limOffsets lists the events from start to one period after it (and the
// one after), as offsets from start, for a failure message.
func limOffsets(events []limEvent, start time.Time, period time.Duration) []string {
	var out []string
	for _, e := range events {
		if d := e.at.Sub(start); d >= 0 && d < period+period/4 {
			out = append(out, fmt.Sprintf("+%dms(%d)", d.Milliseconds(), e.units))
		}
	}
	return out
}

// limCalls is one event per call f received, each costing one request.
func limCalls(f *fakeupstream.Server) []limEvent {
	var out []limEvent
	for _, r := range f.Requests() {
		out = append(out, limEvent{at: r.Received, units: 1})
	}
	return out
}

// limTokens is one event per call f answered, costing the total_tokens the
// fake reported for it: prompt_tokens = ceil(characters/4) of the message
// contents (one message here), completion_tokens = the words of its reply.
func limTokens(f *fakeupstream.Server) []limEvent {
	completion := int64(max(len(strings.Fields(fakeReply)), 1))
	var out []limEvent
	for _, r := range f.Requests() {
		if r.Status != http.StatusOK {
			continue
		}
		prompt := int64(max((utf8.RuneCountInString(r.Content)+3)/4, 1))
		out = append(out, limEvent{at: r.Received, units: prompt + completion})
	}
	return out
}

// limTpmContent is a message of 15 three-character words: the fake reports
// ceil(59/4) = 15 prompt tokens and 5 completion tokens (its reply's words),
// 20 in all; llmq estimates 15 for the text, 8 for the chat framing, plus
// default_completion_tokens 5: 28 reserved, settled to 20.
func limTpmContent(i int) string {
	return fmt.Sprintf("%03d", i%1000) + strings.Repeat(" abc", 14)
}

// limTpmUsage is the total_tokens the fake reports for limTpmContent.
const limTpmUsage = 20

// ---------------------------------------------------------------------------
// Tests

// TestLimitsCombinedDispatchOfThreeWorkers: three worker processes, twelve
// slots in all, flooded with three times what a deployment allows for three
// periods, together never send it more than its rpm or tpm in any sliding
// window of one period, nor more than its max_parallel_requests at once, as
// the upstream counts them. And they do not stall (a limiter that stalls
// never exceeds anything): calls keep going out after the first period, and
// max_parallel_requests is filled. How close to the limit they get depends
// on the machine's load, so it is logged here and measured by
// bench/cmd/limitsbench (achieved ÷ configured, BENCHMARKS.md) and
// BenchmarkAchievedRate in pkg/limiter, not asserted.
//
// Each limit has a pool of its own, so that the traffic of one deployment
// cannot wake the waiters of another.
func TestLimitsCombinedDispatchOfThreeWorkers(t *testing.T) {
	const periods = 3
	// flood offers three times perPeriod calls a period for three periods,
	// and returns when it started and ended; the backlog is then abandoned.
	flood := func(t *testing.T, p *limPool, group string, perPeriod int, content func(i int) string) (start, end time.Time) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		start = time.Now()
		l := limFlood(ctx, p.chatURL, 3*perPeriod*periods, limPeriod/time.Duration(3*perPeriod), func(i int) (string, string) {
			c := content(i)
			return c, chatBody(group, c)
		})
		l.waitSent(t, periods*limPeriod+waitLimit)
		end = time.Now()
		cancel()
		t.Logf("%s: %d served", group, limCheckAnswers(t, group, l.wait(t)))
		return start, end
	}
	// sum adds the units of the events in [from, to).
	sum := func(events []limEvent, from, to time.Time) int64 {
		var n int64
		for _, e := range events {
			if !e.at.Before(from) && e.at.Before(to) {
				n += e.units
			}
		}
		return n
	}
	check := func(t *testing.T, what string, limit int64, events []limEvent, start, end time.Time, admissions []limEvent) {
		t.Helper()
		busiest, at := limBusiest(events, limPeriod)
		measured := end.Sub(start) - limPeriod
		achieved := float64(sum(events, start.Add(limPeriod), end)) / (float64(limit) * measured.Seconds() / limPeriod.Seconds())
		t.Logf("%s %d per %v: busiest window %d (from %v); after the first period %.2f of the limit",
			what, limit, limPeriod, busiest, at.Format("15:04:05.000"), achieved)
		if busiest > limit {
			msg := fmt.Sprintf("%s %d per %v: the upstream received %d in the window from %v, at %v",
				what, limit, limPeriod, busiest, at.Format("15:04:05.000"), limOffsets(events, at, limPeriod))
			if admissions != nil {
				a, aat := limBusiest(admissions, limPeriod)
				msg += fmt.Sprintf("; the busiest window of stored admissions holds %d (from %v, at %v)",
					a, aat.Format("15:04:05.000"), limOffsets(admissions, aat, limPeriod))
			}
			t.Error(msg)
		}
		if sum(events, start.Add(limPeriod), end) == 0 {
			t.Errorf("%s %d per %v, offered three times that: nothing went out after the first period (calls at %v)",
				what, limit, limPeriod, limOffsets(events, start, end.Sub(start)))
		}
	}

	t.Run("rpm", func(t *testing.T) {
		const rpm = 12 // per limPeriod: one call every 250 ms
		fake := newFake(t)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-rpm", "lim-rpm-0", fake, limParams{RPM: rpm}),
		}}, 3, 4)
		admissions := p.watchRate(t, "lim-rpm-0")
		start, end := flood(t, p, "lim-rpm", rpm, func(i int) string { return fmt.Sprintf("rpm-%d", i) })
		waitIdle(t, fake)
		check(t, "rpm", rpm, limCalls(fake), start, end, admissions())
	})
	t.Run("tpm", func(t *testing.T) {
		const tpm = 240 // per limPeriod: 12 calls of 20 tokens
		fake := newFake(t)
		p := limStartPool(t, limConfig{
			ModelList: []limDeployment{limDeploy("lim-tpm", "lim-tpm-0", fake, limParams{TPM: tpm})},
			LLMQ:      limLLMQSettings{DefaultCompletionTokens: 5},
		}, 3, 4)
		start, end := flood(t, p, "lim-tpm", tpm/limTpmUsage, limTpmContent)
		waitIdle(t, fake)
		// (Admissions are paced by the estimate (28) while the window holds
		// the usage (20): about half the tpm goes out in reported usage.)
		check(t, "tpm", tpm, limTokens(fake), start, end, nil)
	})
	t.Run("max_parallel_requests", func(t *testing.T) {
		const parallel = 2
		fake := newFake(t)
		fake.SetLatency(300 * time.Millisecond) // 6.7 calls/s at most
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-par", "lim-par-0", fake, limParams{MaxParallelRequests: parallel}),
		}}, 3, 4)
		start, end := flood(t, p, "lim-par", 20, func(i int) string { return fmt.Sprintf("par-%d", i) })
		waitIdle(t, fake)
		calls := sum(limCalls(fake), start.Add(limPeriod), end)
		capacity := float64(parallel) * (end.Sub(start) - limPeriod).Seconds() / 0.3
		t.Logf("max_parallel_requests %d: at most %d calls in flight at the upstream; after the first period %d calls, %.2f of the capacity",
			parallel, fake.MaxInFlight(), calls, float64(calls)/capacity)
		if n := fake.MaxInFlight(); n != parallel {
			t.Errorf("max_parallel_requests %d, flooded: at most %d calls were in flight at the upstream, want exactly %d", parallel, n, parallel)
		}
	})
}

// limPrioritised is one request of an ordered-release scenario.
type limPrioritised struct {
	content  string
	priority int64
}

// limExpectedOrder is subs sorted by priority, equal priorities in the order
// sent.
func limExpectedOrder(subs []limPrioritised) []string {
	s := slices.Clone(subs)
	slices.SortStableFunc(s, func(a, b limPrioritised) int { return int(a.priority - b.priority) })
	var out []string
	for _, x := range s {
		out = append(out, x.content)
	}
	return out
}

// limBatch is a batch of mixed priorities with ties, each in its own band.
var limBatch = []limPrioritised{
	{"b0-p5", 5}, {"b1-p2", 2}, {"b2-p7", 7}, {"b3-p2", 2},
	{"b4-p0", 0}, {"b5-p9", 9}, {"b6-p5", 5}, {"b7-p2", 2},
}

// limQueueBatch sends subs one at a time, each stored in the stream before the
// next is sent, after base messages; the answers arrive on the returned channel.
func limQueueBatch(ctx context.Context, t *testing.T, p *limPool, base uint64, subs []limPrioritised) <-chan limAnswer {
	t.Helper()
	out := make(chan limAnswer, len(subs))
	for i, s := range subs {
		go func() {
			out <- limPostTimed(ctx, p.chatURL, s.content, chatBody("lim-prio", s.content, fmt.Sprintf(`"priority":%d`, s.priority)))
		}()
		p.q.waitStored(t, base+uint64(i+1))
	}
	return out
}

// limAwait waits for n answers, each a 200.
func limAwait(ctx context.Context, t *testing.T, answers <-chan limAnswer, n int, upstream *fakeupstream.Server) {
	t.Helper()
	for i := range n {
		select {
		case a := <-answers:
			if a.err != nil {
				t.Errorf("%s: %v", a.content, a.err)
			} else {
				checkServed(t, a.r)
			}
		case <-ctx.Done():
			t.Fatalf("only %d of %d requests were answered; the upstream saw %q", i, n, contents(upstream))
		}
	}
}

// TestLimitsSaturatedReleaseFollowsPriority: while a deployment is at its
// limit, a batch of requests of mixed priorities queues up; as capacity
// frees, three worker processes together release it in priority order,
// equal priorities first come, first served.
func TestLimitsSaturatedReleaseFollowsPriority(t *testing.T) {
	t.Run("rpm", func(t *testing.T) {
		const rpm = 4 // per 3 s: one call every 750 ms
		fake := newFake(t)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-prio", "lim-prio-0", fake, limParams{RPM: rpm}),
		}}, 3, 2)
		ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
		defer cancel()

		// The opener takes the pacing slot: the next call may leave 700 ms
		// after it, and the batch is queued well before that.
		checkServed(t, mustPost(t, p.chatURL, "", chatBody("lim-prio", "opener", `"priority":0`)))
		answers := limQueueBatch(ctx, t, p, 1, limBatch)
		queued := time.Now()
		limAwait(ctx, t, answers, len(limBatch), fake)

		reqs := fake.Requests()
		if len(reqs) < 2 || !reqs[1].Received.After(queued) {
			t.Fatalf("the deployment was not saturated while the batch was queued (the first call after the opener came before the last request was stored): %q", contents(fake))
		}
		want := append([]string{"opener"}, limExpectedOrder(limBatch)...)
		if got := contents(fake); !slices.Equal(got, want) {
			t.Errorf("under a saturated rpm limit the upstream saw\n %q\nwant\n %q", got, want)
		}
	})
	t.Run("max_parallel_requests", func(t *testing.T) {
		fake := newFake(t)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-prio", "lim-prio-0", fake, limParams{MaxParallelRequests: 1}),
		}}, 3, 2)
		ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
		defer cancel()

		fake.Hold()
		opener := make(chan limAnswer, 1)
		go func() {
			opener <- limPostTimed(ctx, p.chatURL, "opener", chatBody("lim-prio", "opener", `"priority":0`))
		}()
		waitUpstream(t, fake, 1)
		answers := limQueueBatch(ctx, t, p, 1, limBatch)
		if n := fake.Count(); n != 1 {
			t.Fatalf("with max_parallel_requests 1 and the first call held, the upstream received %d calls: %q", n, contents(fake))
		}
		fake.Release()
		limAwait(ctx, t, opener, 1, fake)
		limAwait(ctx, t, answers, len(limBatch), fake)

		want := append([]string{"opener"}, limExpectedOrder(limBatch)...)
		if got := contents(fake); !slices.Equal(got, want) {
			t.Errorf("under a saturated max_parallel_requests the upstream saw\n %q\nwant\n %q", got, want)
		}
	})
}

// TestLimitsCooldownOn429IsSharedByEveryWorker: the upstream answers a 429
// with Retry-After: 2. The deployment then cools down for every worker
// process: none calls it for two seconds, although requests queue up meanwhile
// and two other processes have idle slots. The request that got the 429 is
// served afterwards with num_retries 0: the 429 did not spend a retry.
func TestLimitsCooldownOn429IsSharedByEveryWorker(t *testing.T) {
	fake := newFake(t)
	p := limStartPool(t, limConfig{
		ModelList: []limDeployment{
			// A limit far above this test's traffic: it makes the deployment's
			// state shared (a deployment without limits has no shared state).
			limDeploy("lim-cool", "lim-cool-0", fake, limParams{RPM: 10000}),
		},
		RouterSettings: &limRouterSettings{NumRetries: ptr(0), CooldownTime: 30},
	}, 3, 2)
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()

	cooling := p.watchKey(t, "lim-cool-0", "cool")
	fake.FailNext(1, http.StatusTooManyRequests, "2")
	answers := make(chan limAnswer, 8)
	go func() {
		answers <- limPostTimed(ctx, p.chatURL, "limited", chatBody("lim-cool", "limited", `"priority":0`))
	}()
	waitUpstream(t, fake, 1)
	waitIdle(t, fake) // the 429 is answered: Finished is set
	first := fake.Requests()[0]
	if first.Status != http.StatusTooManyRequests {
		t.Fatalf("the first call was answered %d, want the injected 429", first.Status)
	}
	// The worker that got the 429 records the cooldown in the shared state
	// (a request sent before that may still go out); from then on no worker
	// process may call the deployment until it ends.
	limPoll(t, func() bool { return len(cooling()) > 0 })
	const later = 6
	for i := range later {
		go func() {
			c := fmt.Sprintf("later-%d", i)
			answers <- limPostTimed(ctx, p.chatURL, c, chatBody("lim-cool", c, `"priority":5`))
		}()
		p.q.waitStored(t, uint64(i+2))
	}
	limAwait(ctx, t, answers, later+1, fake)

	reqs := fake.Requests()
	cooledUntil := first.Finished.Add(2 * time.Second)
	for _, r := range reqs[1:] {
		if r.Received.Before(cooledUntil) {
			t.Errorf("%s reached the upstream %v after its 429 with Retry-After: 2", r.Content, r.Received.Sub(first.Finished))
		}
	}
	var limited []int
	for _, r := range reqs {
		if r.Content == "limited" {
			limited = append(limited, r.Status)
		}
	}
	if !slices.Equal(limited, []int{http.StatusTooManyRequests, http.StatusOK}) {
		t.Errorf("the upstream answered the rate-limited request %v, want [429 200]: one 429, then served with num_retries 0", limited)
	}
	if len(reqs) != later+2 {
		t.Errorf("the upstream received %d calls, want %d: %q", len(reqs), later+2, contents(fake))
	}
	if len(reqs) > 1 {
		t.Logf("the first call after the 429 came %v after it", reqs[1].Received.Sub(first.Finished))
	}
}

// TestLimitsFallbackAttempts: the primary group's upstream answers 401 (not
// retried), so the request goes to the fallback group at once; the caller
// gets the fallback's answer, and the upstream calls are exactly [primary,
// fallback].
func TestLimitsFallbackAttempts(t *testing.T) {
	fPrimary, fBackup := newFake(t), newFake(t)
	p := limStartPool(t, limConfig{
		ModelList: []limDeployment{
			limDeploy("primary", "primary-0", fPrimary, limParams{}),
			limDeploy("backup", "backup-0", fBackup, limParams{}),
		},
		RouterSettings: &limRouterSettings{Fallbacks: []map[string][]string{{"primary": {"backup"}}}},
	}, 3, 2)

	fPrimary.FailNext(1, http.StatusUnauthorized, "")
	r := mustPost(t, p.chatURL, "", chatBody("primary", "fall back"))
	checkServed(t, r)
	if d := r.Header.Get("x-llmq-deployment"); d != "backup-0" {
		t.Errorf("x-llmq-deployment %q, want backup-0", d)
	}
	waitIdle(t, fPrimary)
	waitIdle(t, fBackup)
	var attempts []string
	var times []time.Time
	for _, f := range []*fakeupstream.Server{fPrimary, fBackup} {
		for _, rq := range f.Requests() {
			attempts = append(attempts, fmt.Sprintf("%s:%d", rq.Model, rq.Status))
			times = append(times, rq.Received)
		}
	}
	want := []string{"primary-0-upstream:401", "backup-0-upstream:200"}
	if !slices.Equal(attempts, want) {
		t.Errorf("upstream attempts %q, want %q", attempts, want)
	} else if !times[0].Before(times[1]) {
		t.Errorf("the fallback was called before the primary")
	}
}

// TestLimitsWeightsAndOrderShareTheLoad: the deployments of one group share
// its load as configured.
func TestLimitsWeightsAndOrderShareTheLoad(t *testing.T) {
	// simple-shuffle with weights 1 and 3: 400 requests split about 1:3.
	t.Run("weight", func(t *testing.T) {
		fLight, fHeavy := newFake(t), newFake(t)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-w", "lim-w-light", fLight, limParams{Weight: 1}),
			limDeploy("lim-w", "lim-w-heavy", fHeavy, limParams{Weight: 3}),
		}, RouterSettings: &limRouterSettings{RoutingStrategy: "simple-shuffle"}}, 3, 4)
		const n = 400
		answers := limClosedLoop(t, p.chatURL, "lim-w", n, 16)
		if served := limCheckAnswers(t, "weight", answers); served != n {
			t.Fatalf("%d of %d served", served, n)
		}
		light, heavy := fLight.Count(), fHeavy.Count()
		t.Logf("weight 1: %d, weight 3: %d", light, heavy)
		// Binomial(400, 3/4): sd 8.7; ±10% of the expected 300 is 3.5 sd.
		if light+heavy != n || heavy < 270 || heavy > 330 {
			t.Errorf("weights 1 and 3 split %d requests %d:%d, want about 100:300 (±30)", n, light, heavy)
		}
	})
	// least-busy, max_parallel_requests 1 and 3: both used, neither exceeded.
	t.Run("least-busy", func(t *testing.T) {
		fOne, fThree := newFake(t), newFake(t)
		fOne.SetLatency(100 * time.Millisecond)
		fThree.SetLatency(100 * time.Millisecond)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-lb", "lim-lb-1", fOne, limParams{MaxParallelRequests: 1}),
			limDeploy("lim-lb", "lim-lb-3", fThree, limParams{MaxParallelRequests: 3}),
		}, RouterSettings: &limRouterSettings{RoutingStrategy: "least-busy"}}, 3, 4)
		const n = 40
		answers := limClosedLoop(t, p.chatURL, "lim-lb", n, 8)
		if served := limCheckAnswers(t, "least-busy", answers); served != n {
			t.Fatalf("%d of %d served", served, n)
		}
		t.Logf("max_parallel 1: %d calls (at most %d at once), max_parallel 3: %d calls (at most %d at once)",
			fOne.Count(), fOne.MaxInFlight(), fThree.Count(), fThree.MaxInFlight())
		if fOne.Count() == 0 || fThree.Count() == 0 {
			t.Errorf("least-busy used only one deployment: %d and %d calls", fOne.Count(), fThree.Count())
		}
		if fOne.MaxInFlight() > 1 || fThree.MaxInFlight() > 3 {
			t.Errorf("max_parallel_requests 1 and 3 exceeded: %d and %d in flight", fOne.MaxInFlight(), fThree.MaxInFlight())
		}
		if fThree.Count() < fOne.Count() {
			t.Errorf("the deployment with three parallel slots took fewer calls (%d) than the one with one (%d)", fThree.Count(), fOne.Count())
		}
	})
	// order: the order-1 deployment takes everything while it has capacity;
	// the order-2 one only what does not fit.
	t.Run("order", func(t *testing.T) {
		fFirst, fSecond := newFake(t), newFake(t)
		p := limStartPool(t, limConfig{ModelList: []limDeployment{
			limDeploy("lim-o", "lim-o-2", fSecond, limParams{Order: 2}),
			limDeploy("lim-o", "lim-o-1", fFirst, limParams{Order: 1, MaxParallelRequests: 2}),
		}}, 3, 4)
		const sequential = 100
		var wrong []int
		for i := range sequential {
			r := mustPost(t, p.chatURL, "", chatBody("lim-o", fmt.Sprintf("seq-%d", i)))
			checkServed(t, r)
			if d := r.Header.Get("x-llmq-deployment"); d != "lim-o-1" {
				wrong = append(wrong, i)
			}
		}
		if len(wrong) > 0 {
			t.Errorf("%d of %d requests sent one at a time were served by the order-2 deployment although the order-1 one had capacity: %v",
				len(wrong), sequential, wrong)
		}
		// Fill the order-1 deployment: hold its calls until two are in flight
		// (a request it does not take, the order-2 one answers at once).
		ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
		defer cancel()
		fFirst.Hold()
		fills := make(chan limAnswer, 10)
		sent := 0
		for fFirst.InFlight() < 2 {
			if sent == cap(fills) {
				t.Fatalf("%d requests sent, yet the order-1 deployment holds only %d calls", sent, fFirst.InFlight())
			}
			first, second := fFirst.Count(), fSecond.Count()
			c := fmt.Sprintf("fill-%d", sent)
			sent++
			go func() { fills <- limPostTimed(ctx, p.chatURL, c, chatBody("lim-o", c)) }()
			limPoll(t, func() bool { return fFirst.Count() > first || fSecond.Count() > second })
		}
		for i := range 3 {
			c := fmt.Sprintf("overflow-%d", i)
			r, err := post(waitCtx(t), p.chatURL, "", chatBody("lim-o", c))
			if err != nil {
				t.Fatalf("%s, with the order-1 deployment full: %v", c, err)
			}
			checkServed(t, r)
			if d := r.Header.Get("x-llmq-deployment"); d != "lim-o-2" {
				t.Errorf("%s, with the order-1 deployment full, was served by %q, want lim-o-2", c, d)
			}
		}
		fFirst.Release()
		limAwait(ctx, t, fills, sent, fFirst)
		t.Logf("order 1: %q; order 2: %q", contents(fFirst), contents(fSecond))
	})
}

// limPoll waits (bounded by waitLimit) until cond holds, checking every 5 ms.
func limPoll(t *testing.T, cond func() bool) {
	t.Helper()
	ctx := waitCtx(t)
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatal("condition not met within the wait limit")
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// limClosedLoop sends n requests to group, conc at a time, and returns the
// answers (bounded by three waitLimits).
func limClosedLoop(t *testing.T, url, group string, n, conc int) []limAnswer {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	var mu sync.Mutex
	var out []limAnswer
	var wg sync.WaitGroup
	sem := make(chan struct{}, conc)
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c := fmt.Sprintf("%s-%d", group, i)
			a := limPostTimed(ctx, url, c, chatBody(group, c))
			mu.Lock()
			out = append(out, a)
			mu.Unlock()
		})
	}
	wg.Wait()
	return out
}

// TestLimitsSaturatedGroupDoesNotDelayFreeGroup: group A is at its limit and
// flooded with requests more important than group B's; three worker
// processes of one slot each serve both. Every request of B sent over two
// periods is answered while A's backlog still waits (A's limit lets 30
// requests through in 45 s at the least): a request of A waiting for
// capacity must not keep the slots from B.
func TestLimitsSaturatedGroupDoesNotDelayFreeGroup(t *testing.T) {
	cases := []struct {
		name   string
		limits limParams
	}{
		{"rpm", limParams{RPM: 2}},  // per 3 s: one call every 1.5 s
		{"tpm", limParams{TPM: 60}}, // per 3 s: 28 reserved per call, one every 1.4 s
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fA, fB := newFake(t), newFake(t)
			p := limStartPool(t, limConfig{
				ModelList: []limDeployment{
					limDeploy("lim-sat-a", "lim-sat-a-0", fA, tc.limits),
					limDeploy("lim-sat-b", "lim-sat-b-0", fB, limParams{}),
				},
				LLMQ: limLLMQSettings{DefaultCompletionTokens: 5},
			}, 3, 1)

			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			const floodA = 30
			loadA := limFlood(ctx, p.chatURL, floodA, time.Millisecond, func(i int) (string, string) {
				c := limTpmContent(i)
				return c, chatBody("lim-sat-a", c, `"priority":0`)
			})
			loadA.waitSent(t, waitLimit)
			p.q.waitStored(t, floodA)

			var worst time.Duration
			deadline := time.Now().Add(2 * limPeriod) // how long group B sends, not a bound on an answer
			for i := 0; time.Now().Before(deadline); i++ {
				c := fmt.Sprintf("b-%d", i)
				a := limPostTimed(waitCtx(t), p.chatURL, c, chatBody("lim-sat-b", c, `"priority":9`))
				if a.err != nil {
					t.Fatalf("%s was not answered while group A is saturated (%d calls of A so far): %v", c, fA.Count(), a.err)
				}
				checkServed(t, a.r)
				// Not behind A: A still had requests waiting when B's came back.
				if n := fA.Count(); n >= floodA {
					t.Fatalf("%s was answered only once group A's backlog was served (%d calls of A): it waited behind A", c, n)
				}
				worst = max(worst, a.took)
			}
			t.Logf("group B: %d requests, slowest %v; group A: %d calls", fB.Count(), worst, fA.Count())
			if fA.Count() == 0 {
				t.Errorf("group A was not served at all")
			}
			cancel()
			limCheckAnswers(t, "group A", loadA.wait(t))
		})
	}
}

// TestLimitsRequestAboveTPMIsRefused: a request whose token estimate is above
// the tpm of every deployment of its group can never be served: it gets 400
// (param max_tokens) at once, not a wait until its queue deadline, and the
// upstream never sees it. The worker process that refused it keeps serving
// the group's requests that fit (one process, so no other can stand in).
func TestLimitsRequestAboveTPMIsRefused(t *testing.T) {
	fake := newFake(t)
	p := limStartPool(t, limConfig{ModelList: []limDeployment{
		limDeploy("lim-big", "lim-big-0", fake, limParams{TPM: 1000}),
	}}, 1, 2)
	r := mustPost(t, p.chatURL, "", chatBody("lim-big", "too big", `"max_tokens":5000`, `"timeout":20`))
	checkError(t, r, http.StatusBadRequest, "max_tokens")
	checkServed(t, mustPost(t, p.chatURL, "", chatBody("lim-big", "fits", `"max_tokens":50`, `"timeout":20`)))
	if got := contents(fake); !slices.Equal(got, []string{"fits"}) {
		t.Errorf("the upstream saw %q, want only the request that fits", got)
	}
}
