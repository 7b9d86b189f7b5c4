package integration

// Issue 14's figures: tenants sharing one band and model group across two
// worker pools, and aging under a band-0 flood. Run with
//
//	LLMQ_BENCH_TENANT_SECONDS=10 go test -run '^$' -bench BenchmarkTenants -benchtime 1x ./test/integration/
//
// (without the variable each measurement lasts 1 s: enough for CI to keep
// it working, not for the figures).
// Everything on loopback: a standalone JetStream server, two worker pools
// (app.RunWorker, each with its own NATS connection, in this process), one
// pkg/client submitting for both tenants, a fake upstream with a fixed
// latency and max_parallel_requests shared by both pools (the shared
// limiter), so the group's capacity is parallel/latency requests per second.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

const (
	benchParallel = 4
	benchLatency  = 50 * time.Millisecond
	benchCapacity = float64(benchParallel) / 0.050 // requests per second
	tenantA       = "team-a"                       // lane 22
	tenantB       = "team-b"                       // lane 3
)

// benchSystem is NATS, two worker pools and a client.
type benchSystem struct {
	cl   *client.Client
	fake *fakeupstream.Server
}

func startBenchSystem(b *testing.B, llmq map[string]any) *benchSystem {
	b.Helper()
	srv, err := natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: b.TempDir(), Name: "llmq-bench"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Shutdown)
	fake := fakeupstream.New(fakeupstream.Options{Reply: fakeReply, Latency: benchLatency})
	b.Cleanup(fake.Close)
	cfg := writeYAMLConfig(b, relConfig{ModelList: []deployment{fakeDeployment("shared", "shared-0", fake, benchParallel)}, LLMQ: llmq})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	b.Cleanup(func() { cancel(); wg.Wait() })
	for range 2 {
		env := baseEnv(cfg)
		env.NATSURL = srv.ClientURL()
		env.WorkerSlots = 16
		env.MetricsListen = ""
		wg.Go(func() {
			if err := app.RunWorker(ctx, env, noEnv, io.Discard); err != nil && !errors.Is(err, context.Canceled) {
				b.Errorf("worker: %v", err)
			}
		})
	}
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("llmq-bench-client"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	cl, err := client.New(nc, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cl.Close() })
	// Wait until the workers serve (they create the topology).
	deadline := time.Now().Add(30 * time.Second)
	for {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		_, _, err := cl.Do(wctx, &client.Request{Kind: messages.KindChat, Group: "shared", Priority: 3, Body: []byte(chatBody("shared", "warm"))})
		wcancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("the workers do not serve: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &benchSystem{cl: cl, fake: fake}
}

// served is one answered request.
type served struct {
	tenant string
	band   int
	done   time.Time
	wait   time.Duration
	tokens int64
	ok     bool
}

// recorder collects what was served.
type recorder struct {
	mu  sync.Mutex
	all []served
}

func (r *recorder) add(s served) {
	r.mu.Lock()
	r.all = append(r.all, s)
	r.mu.Unlock()
}

func (r *recorder) list() []served {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.all)
}

// submit sends one request and records it.
func (s *benchSystem) submit(ctx context.Context, rec *recorder, tenant string, priority int64, content string, deadline time.Duration) {
	resp, info, err := s.cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: "shared", Priority: priority, Tenant: tenant,
		Body: []byte(chatBody("shared", content)), Deadline: time.Now().Add(deadline)})
	out := served{tenant: tenant, band: info.Band, done: time.Now(), wait: info.QueueWait, ok: err == nil}
	if err == nil {
		var c struct {
			Usage struct {
				Total int64 `json:"total_tokens"`
			} `json:"usage"`
		}
		if json.Unmarshal(resp.Body, &c) == nil {
			out.tokens = c.Usage.Total
		}
	}
	rec.add(out)
}

// openLoop submits at rate per second until ctx ends.
func (s *benchSystem) openLoop(ctx context.Context, wg *sync.WaitGroup, rec *recorder, tenant string, priority int64, rate float64, content string, deadline time.Duration) {
	t := time.NewTicker(time.Duration(float64(time.Second) / rate))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		wg.Go(func() { s.submit(context.WithoutCancel(ctx), rec, tenant, priority, content, deadline) })
	}
}

// closedLoop keeps n requests of tenant outstanding until ctx ends.
func (s *benchSystem) closedLoop(ctx context.Context, wg *sync.WaitGroup, rec *recorder, tenant string, priority int64, n int, content string) {
	for range n {
		wg.Go(func() {
			for ctx.Err() == nil {
				s.submit(ctx, rec, tenant, priority, content, time.Minute)
			}
		})
	}
}

// tokensIn sums the tokens of tenant's requests served in [from, to).
func tokensIn(all []served, tenant string, from, to time.Time) (tokens float64, n int) {
	for _, s := range all {
		if s.ok && s.tenant == tenant && !s.done.Before(from) && s.done.Before(to) {
			tokens += float64(s.tokens)
			n++
		}
	}
	return tokens, n
}

func jain(xs ...float64) float64 {
	var sum, sq float64
	for _, x := range xs {
		sum += x
		sq += x * x
	}
	return sum * sum / (float64(len(xs)) * sq)
}

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	return ds[min(len(ds)-1, int(p*float64(len(ds))))]
}

// benchMeasure is how long each scenario is measured:
// LLMQ_BENCH_TENANT_SECONDS, or 1 s; benchWarmup a fifth of it.
func benchMeasure(b *testing.B) time.Duration {
	return time.Duration(benchEnv(b, "LLMQ_BENCH_TENANT_SECONDS", 1, "seconds")) * time.Second
}

// BenchmarkTenants measures the shares. Each sub-benchmark runs once per
// iteration (use -benchtime 1x).
func BenchmarkTenants(b *testing.B) {
	measure := benchMeasure(b)
	warmup := measure / 5
	b.Run("flood10x-quiet0.3x", func(b *testing.B) {
		for b.Loop() {
			s := startBenchSystem(b, map[string]any{})
			rec := &recorder{}
			ctx, cancel := context.WithTimeout(context.Background(), measure)
			var wg sync.WaitGroup
			go s.openLoop(ctx, &wg, rec, tenantA, 3, 10*benchCapacity, "flood", 2*time.Second)
			s.openLoop(ctx, &wg, rec, tenantB, 3, 0.3*benchCapacity, "quiet", 2*time.Second)
			cancel()
			wg.Wait()
			var waits []time.Duration
			offered, ok := 0, 0
			for _, r := range rec.list() {
				if r.tenant != tenantB {
					continue
				}
				offered++
				if r.ok {
					ok++
					waits = append(waits, r.wait)
				}
			}
			b.ReportMetric(float64(percentile(waits, 0.5).Microseconds())/1000, "B-p50-wait-ms")
			b.ReportMetric(float64(percentile(waits, 0.99).Microseconds())/1000, "B-p99-wait-ms")
			b.ReportMetric(float64(ok)/float64(max(offered, 1)), "B-served/offered")
			b.ReportMetric(float64(benchLatency.Milliseconds()), "service-ms")
		}
	})
	for _, tt := range []struct {
		name         string
		tenants      []map[string]any
		sizeA, sizeB int // prompt characters (4 per token)
		want         float64
	}{
		{"backlogged-equal", nil, 400, 400, 1},
		{"backlogged-weights-3to1", []map[string]any{{"name": tenantA, "weight": 3}}, 400, 400, 3},
		{"backlogged-4000-vs-100-tokens", nil, 16000, 400, 1},
	} {
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				llmq := map[string]any{}
				if tt.tenants != nil {
					llmq["tenants"] = tt.tenants
				}
				s := startBenchSystem(b, llmq)
				rec := &recorder{}
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), warmup+measure)
				var wg sync.WaitGroup
				s.closedLoop(ctx, &wg, rec, tenantA, 3, 24, strings.Repeat("a", tt.sizeA))
				s.closedLoop(ctx, &wg, rec, tenantB, 3, 24, strings.Repeat("b", tt.sizeB))
				<-ctx.Done()
				cancel()
				wg.Wait()
				all := rec.list()
				from, to := start.Add(warmup), start.Add(warmup+measure)
				ta, na := tokensIn(all, tenantA, from, to)
				tb, nb := tokensIn(all, tenantB, from, to)
				b.ReportMetric(jain(ta/tt.want, tb), "jain-of-weighted-tokens")
				b.ReportMetric(ta/max(tb, 1), "A/B-tokens")
				b.ReportMetric(tt.want, "A/B-want")
				b.ReportMetric(float64(na), "A-requests")
				b.ReportMetric(float64(nb), "B-requests")
			}
		})
	}
	b.Run("aging-band9-under-band0-flood", func(b *testing.B) {
		const step = 200 * time.Millisecond
		for b.Loop() {
			s := startBenchSystem(b, map[string]any{"aging": map[string]any{"step": step.Seconds(), "limit_band": 0}})
			rec := &recorder{}
			ctx, cancel := context.WithTimeout(context.Background(), measure)
			var wg sync.WaitGroup
			s.closedLoop(ctx, &wg, rec, tenantA, 0, 24, "flood")
			s.openLoop(ctx, &wg, rec, tenantB, 9, 2, "low", time.Minute)
			cancel()
			wg.Wait()
			var waits, waits0 []time.Duration
			for _, r := range rec.list() {
				switch {
				case !r.ok:
				case r.band == 9:
					waits = append(waits, r.wait)
				case r.band == 0:
					waits0 = append(waits0, r.wait)
				}
			}
			b.ReportMetric(float64(percentile(waits, 1).Microseconds())/1000, "band9-max-wait-ms")
			b.ReportMetric(float64(percentile(waits, 0.5).Microseconds())/1000, "band9-p50-wait-ms")
			b.ReportMetric(float64(percentile(waits0, 0.5).Microseconds())/1000, "band0-p50-wait-ms")
			b.ReportMetric(float64((9*step + benchLatency).Milliseconds()), "bound-ms-if-band0-wait-below-9-steps")
			b.ReportMetric(float64(len(waits)), "band9-served")
		}
	})
}
