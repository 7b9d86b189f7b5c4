package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// startServer runs an embedded NATS server with JetStream, stored in a
// temporary directory.
func startServer(tb testing.TB) *server.Server {
	tb.Helper()
	srv, err := server.NewServer(&server.Options{
		Host:      "127.0.0.1",
		Port:      -1,
		JetStream: true,
		StoreDir:  tb.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	})
	if err != nil {
		tb.Fatalf("nats server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		tb.Fatal("nats server not ready")
	}
	tb.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	return srv
}

// process is one "worker process": its own connection and its own Set.
type process struct {
	nc  *nats.Conn
	set *Set
}

func startProcess(tb testing.TB, srv *server.Server, opts Options) *process {
	tb.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	set, err := Open(ctx, js, opts)
	if err != nil {
		tb.Fatalf("open: %v", err)
	}
	tb.Cleanup(func() {
		_ = set.Close()
		nc.Close()
	})
	return &process{nc: nc, set: set}
}

func testOptions(bucket string) Options {
	return Options{Bucket: bucket, Period: 2 * time.Second, SlotTTL: 2 * time.Second}
}

// waitLimited waits for the refusal's Until, a Changed signal or ctx, and at
// most 100 ms: Changed wakes only one waiter of a process.
func waitLimited(ctx context.Context, set *Set, err error) {
	var le *LimitedError
	if !errors.As(err, &le) {
		return
	}
	t := time.NewTimer(min(max(time.Until(le.Until), 0), 100*time.Millisecond))
	defer t.Stop()
	select {
	case <-t.C:
	case <-set.Changed():
	case <-ctx.Done():
	}
}

// TestSharedLimitsAcrossProcesses hammers one deployment from three processes
// and checks rpm, tpm and max_parallel over every sliding window.
func TestSharedLimitsAcrossProcesses(t *testing.T) {
	srv := startServer(t)
	const (
		rpm, tpm, parallel = 20, 2000, 4
		period             = 2 * time.Second
		run                = 3 * period
	)
	limits := Limits{RPM: rpm, TPM: tpm, MaxParallel: parallel}
	var procs []*process
	// No process crashes here: a slot TTL far above any call (even on a
	// loaded machine) keeps a slow call's slot from expiring under it.
	opts := testOptions("llmq_limits")
	opts.SlotTTL = time.Minute
	for range 3 {
		procs = append(procs, startProcess(t, srv, opts))
	}

	var (
		mu       sync.Mutex
		reqs     []admission // admission time, 1 request
		toks     []admission // admission time, settled tokens
		inflight atomic.Int64
		peak     atomic.Int64
		limited  atomic.Int64
	)
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for p, proc := range procs {
		lim := proc.set.Deployment("openai/gpt-4o mini", limits)
		for g := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(p), uint64(g)))
				for ctx.Err() == nil {
					est := 50 + rng.Int64N(100)
					r, err := lim.Reserve(ctx, est)
					if err != nil {
						if !errors.Is(err, ErrLimited) && ctx.Err() == nil {
							t.Errorf("reserve: %v", err)
							return
						}
						limited.Add(1)
						waitLimited(ctx, proc.set, err)
						continue
					}
					n := inflight.Add(1)
					for {
						old := peak.Load()
						if n <= old || peak.CompareAndSwap(old, n) {
							break
						}
					}
					// Calls of 50-550 ms: at the rpm limit about 3 overlap on
					// average, often more than 4 without max_parallel.
					time.Sleep(50*time.Millisecond + time.Duration(rng.Int64N(int64(500*time.Millisecond))))
					used := rng.Int64N(est + 1)
					inflight.Add(-1)
					mu.Lock()
					reqs = append(reqs, admission{t: r.At().UnixNano(), units: 1})
					toks = append(toks, admission{t: r.At().UnixNano(), units: used})
					mu.Unlock()
					sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
					if err := r.Settle(sctx, used); err != nil {
						t.Errorf("settle: %v", err)
					}
					scancel()
				}
			}()
		}
	}
	wg.Wait()

	if got := maxWindow(reqs, int64(period)); got > rpm {
		t.Errorf("busiest window holds %d requests, limit %d", got, rpm)
	}
	if got := maxWindow(toks, int64(period)); got > tpm {
		t.Errorf("busiest window holds %d tokens, limit %d", got, tpm)
	}
	if got := peak.Load(); got > parallel {
		t.Errorf("%d calls in flight at once, max_parallel %d", got, parallel)
	}
	// How close to the limit it gets depends on the machine's load:
	// BenchmarkAchievedRate reports it; TestGCRASaturation checks it with
	// explicit time. Here, only that the limiter admits at all.
	if len(reqs) == 0 {
		t.Errorf("no request admitted in %v (rpm %d per %v)", run, rpm, period)
	}
	t.Logf("%d admitted, %d refusals, peak in flight %d, busiest window %d requests / %d tokens",
		len(reqs), limited.Load(), peak.Load(), maxWindow(reqs, int64(period)), maxWindow(toks, int64(period)))
}

// offerRate offers far more than the rpm limit from three processes that
// wait exactly until the time the refusal names, for run, and returns the
// admissions.
func offerRate(tb testing.TB, srv *server.Server, bucket string, rpm int64, period, run time.Duration) []admission {
	opts := testOptions(bucket)
	opts.Period = period
	var (
		mu   sync.Mutex
		reqs []admission
	)
	ctx, cancel := context.WithTimeout(context.Background(), run)
	defer cancel()
	var wg sync.WaitGroup
	for range 3 {
		p := startProcess(tb, srv, opts)
		lim := p.set.Deployment("d", Limits{RPM: rpm})
		for range 2 {
			wg.Go(func() {
				for ctx.Err() == nil {
					r, err := lim.Reserve(ctx, 0)
					if err != nil {
						var le *LimitedError
						if !errors.As(err, &le) {
							if ctx.Err() == nil {
								tb.Errorf("reserve: %v", err)
							}
							return
						}
						select {
						case <-time.After(time.Until(le.Until)):
						case <-ctx.Done():
						}
						continue
					}
					mu.Lock()
					reqs = append(reqs, admission{t: r.At().UnixNano(), units: 1})
					mu.Unlock()
					_ = r.Settle(context.Background(), 0)
				}
			})
		}
	}
	wg.Wait()
	return reqs
}

// TestAchievedRate offers far more than the rpm limit from three processes
// and checks that the limit is never exceeded: not in any sliding window,
// not over the run. (How close to the limit the rate gets depends on the
// machine's load; BenchmarkAchievedRate reports it.)
func TestAchievedRate(t *testing.T) {
	srv := startServer(t)
	const (
		rpm    = 50
		period = time.Second
		run    = 3 * period
	)
	reqs := offerRate(t, srv, "rate", rpm, period, run)
	if got := maxWindow(reqs, int64(period)); got > rpm {
		t.Errorf("busiest window holds %d requests, limit %d", got, rpm)
	}
	achieved := float64(len(reqs)) / (float64(rpm) * float64(run) / float64(period))
	t.Logf("achieved ÷ configured = %.3f (%d requests in %v at %d per %v)", achieved, len(reqs), run, rpm, period)
	if achieved > 1.0+1.0/(3*rpm) {
		t.Errorf("achieved ÷ configured = %.3f, over the limit", achieved)
	}
	if len(reqs) == 0 {
		t.Error("no request admitted")
	}
}

// BenchmarkAchievedRate reports how close to an rpm limit three processes
// get when they offer far more (achieved/configured; about 0.9 to 1 on an
// idle machine): far less means the limiter refuses wrongly or wakes its
// waiters late. A floor on it would depend on the machine's load, so it is
// reported, not asserted. Each iteration runs three periods of one second.
func BenchmarkAchievedRate(b *testing.B) {
	srv := startServer(b)
	const (
		rpm    = 50
		period = time.Second
		run    = 3 * period
	)
	var ratio float64
	i := 0
	for b.Loop() {
		reqs := offerRate(b, srv, fmt.Sprintf("rate%d", i), rpm, period, run)
		i++
		ratio += float64(len(reqs)) / (float64(rpm) * float64(run) / float64(period))
	}
	b.ReportMetric(ratio/float64(i), "achieved/configured")
}

// TestNoThunderingHerd starts many reservations at once across processes:
// exactly the capacity is admitted.
func TestNoThunderingHerd(t *testing.T) {
	srv := startServer(t)
	tests := []struct {
		name   string
		limits Limits
	}{
		{"max_parallel 3", Limits{MaxParallel: 3}},
		{"rpm, one admission at a time", Limits{RPM: 1}},
		{"tpm, one admission at a time", Limits{TPM: 1000, MaxParallel: 10}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			opts := testOptions(fmt.Sprintf("herd%d", i))
			opts.Period = time.Minute
			// Slots admit MaxParallel at once; rates pace admissions one at
			// a time (1 request per minute; 400 tokens then 24 s).
			want := int64(1)
			if tc.limits.RPM == 0 && tc.limits.TPM == 0 {
				want = int64(tc.limits.MaxParallel)
			}
			var procs []*process
			for range 3 {
				procs = append(procs, startProcess(t, srv, opts))
			}
			var ok, refused atomic.Int64
			var wg sync.WaitGroup
			start := make(chan struct{})
			for _, p := range procs {
				lim := p.set.Deployment("dep", tc.limits)
				for range 10 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						<-start
						_, err := lim.Reserve(context.Background(), 400)
						switch {
						case err == nil:
							ok.Add(1)
						case errors.Is(err, ErrLimited):
							refused.Add(1)
						default:
							t.Errorf("reserve: %v", err)
						}
					}()
				}
			}
			close(start)
			wg.Wait()
			if ok.Load() != want {
				t.Errorf("%d reservations admitted, want %d (%d refused)", ok.Load(), want, refused.Load())
			}
		})
	}
}

// TestSlotKeepAliveAndExpiry: a refreshed slot stays held; a crashed
// holder's slot frees itself after SlotTTL and Changed fires.
func TestSlotKeepAliveAndExpiry(t *testing.T) {
	srv := startServer(t)
	opts := testOptions("slots")
	a := startProcess(t, srv, opts)
	b := startProcess(t, srv, opts)
	limits := Limits{MaxParallel: 1}
	la, lb := a.set.Deployment("d", limits), b.set.Deployment("d", limits)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Second)
	defer cancel()

	// Held with KeepAlive for twice the TTL: b never gets it. (Keep-alives
	// a tenth of the TTL apart: a loaded machine would have to stall one
	// for the whole TTL to let the slot expire.)
	r, err := la.Reserve(ctx, 0)
	if err != nil {
		t.Fatalf("reserve: %v", err)
	}
	deadline := time.Now().Add(2 * opts.SlotTTL)
	for time.Now().Before(deadline) {
		if err := r.KeepAlive(ctx); err != nil {
			t.Fatalf("keepalive: %v", err)
		}
		var le *LimitedError
		if _, err := lb.Reserve(ctx, 0); !errors.As(err, &le) || le.Reason != ReasonParallel {
			t.Fatalf("reserve while held elsewhere: %v, want %s refusal", err, ReasonParallel)
		}
		time.Sleep(opts.SlotTTL / 10)
	}
	if err := r.Settle(ctx, 0); err != nil {
		t.Fatalf("settle: %v", err)
	}
	rb := waitReserve(ctx, t, b.set, lb)
	if err := rb.Cancel(ctx); err != nil {
		t.Fatalf("cancel: %v", err)
	}

	// a takes it (once its mirror has seen the cancel) and crashes: no
	// settle, no keepalive, its Set and connection close.
	r = waitReserve(ctx, t, a.set, la)
	taken := time.Now()
	_ = a.set.Close()
	a.nc.Close()
	rb = waitReserve(ctx, t, b.set, lb)
	freed := time.Since(taken)
	if freed < opts.SlotTTL-200*time.Millisecond {
		t.Errorf("slot free after %v, before its TTL %v", freed, opts.SlotTTL)
	}
	t.Logf("crashed holder's slot freed after %v (TTL %v)", freed, opts.SlotTTL)
	if err := r.KeepAlive(ctx); err == nil {
		t.Errorf("keepalive after expiry on a closed connection succeeded")
	}
	_ = rb.Settle(ctx, 0)
}

// waitReserve retries Reserve, waking on Changed or Until, until it succeeds.
func waitReserve(ctx context.Context, t *testing.T, set *Set, l *Limiter) *Reservation {
	t.Helper()
	for {
		r, err := l.Reserve(ctx, 0)
		if err == nil {
			return r
		}
		if !errors.Is(err, ErrLimited) || ctx.Err() != nil {
			t.Fatalf("reserve: %v", err)
		}
		waitLimited(ctx, set, err)
	}
}

// TestCooldownSeenEverywhere: a cooldown set in one process refuses in
// another, and Changed fires there when it ends.
func TestCooldownSeenEverywhere(t *testing.T) {
	srv := startServer(t)
	opts := testOptions("cool")
	a := startProcess(t, srv, opts)
	b := startProcess(t, srv, opts)
	limits := Limits{RPM: 1000}
	la, lb := a.set.Deployment("d", limits), b.set.Deployment("d", limits)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// Long enough that the checks below run while it lasts, even when the
	// other process sees it late on a loaded machine.
	const d = 3 * time.Second
	set := time.Now()
	if err := la.Cooldown(ctx, d, "provider 429"); err != nil {
		t.Fatalf("cooldown: %v", err)
	}
	for {
		if _, ok := lb.CoolingDown(time.Now()); ok {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("cooldown never seen by the other process")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("cooldown seen after %v", time.Since(set))
	if lb.Headroom(time.Now(), 1) {
		t.Error("headroom during cooldown")
	}
	_, err := lb.Reserve(ctx, 1)
	var le *LimitedError
	if !errors.As(err, &le) || le.Reason != ReasonCooldown || le.Detail != "provider 429" {
		t.Fatalf("reserve during cooldown: %v, want a cooldown refusal", err)
	}
	// A shorter cooldown does not cut it short.
	if err := lb.Cooldown(ctx, 100*time.Millisecond, "short"); err != nil {
		t.Fatalf("cooldown: %v", err)
	}
	if until, _ := la.CoolingDown(time.Now()); until.Before(set.Add(d - 50*time.Millisecond)) {
		t.Errorf("shorter cooldown replaced a longer one: until %v", until)
	}
	for len(b.set.Changed()) > 0 {
		<-b.set.Changed()
	}
	for {
		select {
		case <-b.set.Changed():
		case <-ctx.Done():
			t.Fatal("Changed did not fire when the cooldown ended")
		}
		if _, ok := lb.CoolingDown(time.Now()); !ok {
			break
		}
	}
	// Changed fired for the end (the loop above waits on it, bounded by
	// ctx); the end must not come early.
	if ended := time.Since(set); ended < d-50*time.Millisecond {
		t.Errorf("cooldown of %v ended after %v", d, ended)
	}
	r, err := lb.Reserve(ctx, 1)
	if err != nil {
		t.Fatalf("reserve after cooldown: %v", err)
	}
	_ = r.Settle(ctx, 1)
}

// manualClock is a settable clock.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

// TestTPMSettle: the real usage replaces the estimate, moving the next
// admission time earlier or later; another process sees the same.
func TestTPMSettle(t *testing.T) {
	srv := startServer(t)
	t0 := time.Now().Truncate(time.Second)
	clock := &manualClock{t: t0}
	opts := Options{Bucket: "tpm", Period: 10 * time.Second, Clock: clock.Now}
	a := startProcess(t, srv, opts)
	b := startProcess(t, srv, opts)
	limits := Limits{TPM: 1000} // 10 ms per token
	la, lb := a.set.Deployment("d", limits), b.set.Deployment("d", limits)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ms := time.Millisecond

	expectUntil := func(l *Limiter, at time.Time, tokens int64, want time.Time) {
		t.Helper()
		clock.Set(at)
		_, err := l.Reserve(ctx, tokens)
		var le *LimitedError
		if !errors.As(err, &le) || le.Reason != ReasonTPM {
			t.Fatalf("reserve %d at +%v: %v, want a tpm refusal", tokens, at.Sub(t0), err)
		}
		if !le.Until.Equal(want) {
			t.Fatalf("reserve %d at +%v: until +%v, want +%v", tokens, at.Sub(t0), le.Until.Sub(t0), want.Sub(t0))
		}
	}
	reserve := func(l *Limiter, at time.Time, tokens int64) *Reservation {
		t.Helper()
		clock.Set(at)
		r, err := l.Reserve(ctx, tokens)
		if err != nil {
			t.Fatalf("reserve %d at +%v: %v", tokens, at.Sub(t0), err)
		}
		return r
	}

	// The first admission after idle starts its pacing slot the tolerance
	// (Period/60) early.
	start := t0.Add(-opts.Period / 60)
	r := reserve(la, t0, 100) // paced to start + 1 s
	expectUntil(la, t0, 10, start.Add(1000*ms))
	if err := r.Settle(ctx, 40); err != nil { // lower: paced to start + 400 ms
		t.Fatalf("settle: %v", err)
	}
	expectUntil(la, t0.Add(100*ms), 10, start.Add(400*ms))
	r = reserve(la, t0.Add(400*ms), 100)       // paced to start + 1.4 s
	if err := r.Settle(ctx, 300); err != nil { // higher: paced to start + 3.4 s
		t.Fatalf("settle: %v", err)
	}
	expectUntil(la, t0.Add(2000*ms), 10, start.Add(3400*ms))
	// The other process agrees once its mirror has the update (ctx bounds
	// the wait).
	for {
		clock.Set(t0.Add(2000 * ms))
		_, err := lb.Reserve(ctx, 10)
		var le *LimitedError
		if errors.As(err, &le) && le.Until.Equal(start.Add(3400*ms)) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("other process: %v, want a refusal until start + 3.4s", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// 40 + 300 tokens are in the window.
	if u := lb.Usage(t0.Add(3400 * ms)); u.Tokens != 340 {
		t.Errorf("usage tokens = %d, want 340", u.Tokens)
	}
	// Window: 340 used, so 700 tokens wait until the first bucket leaves: one
	// period and the margin (the default, 250 ms) after it ends.
	w := int64(opts.Period / windowBuckets)
	first := time.Unix(0, (t0.UnixNano()/w+1)*w).Add(opts.Period + DefaultMargin)
	expectUntil(lb, t0.Add(3400*ms), 700, first)
	r = reserve(lb, t0.Add(3400*ms), 660)
	if err := r.Cancel(ctx); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	// The cancelled reservation gave everything back, as the other process
	// sees once its mirror has the update.
	clock.Set(t0.Add(3400 * ms))
	for {
		_, err := la.Reserve(ctx, 660)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("reserve 660 after the cancel: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTPMResize: a reservation made on a guess is resized once the real size
// is known. A shrink gives the difference back to the pacing at once; a
// growth that does not fit is refused and leaves the reservation as it was;
// one that fits replaces it.
func TestTPMResize(t *testing.T) {
	srv := startServer(t)
	t0 := time.Now().Truncate(time.Second)
	clock := &manualClock{t: t0}
	opts := Options{Bucket: "resize", Period: 10 * time.Second, Clock: clock.Now}
	a := startProcess(t, srv, opts)
	l := a.set.Deployment("d", Limits{TPM: 1000}) // 10 ms per token
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ms := time.Millisecond
	start := t0.Add(-opts.Period / 60) // the first pacing slot starts the tolerance early

	until := func(tokens int64) time.Time {
		t.Helper()
		_, err := l.Reserve(ctx, tokens)
		var le *LimitedError
		if !errors.As(err, &le) || le.Reason != ReasonTPM {
			t.Fatalf("reserve %d: %v, want a tpm refusal", tokens, err)
		}
		return le.Until
	}
	r, err := l.Reserve(ctx, 300) // a guess: paced to start + 3 s
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Resize(ctx, 100); err != nil { // the real size: paced to start + 1 s
		t.Fatalf("shrink: %v", err)
	}
	if r.Tokens() != 100 {
		t.Errorf("after the shrink the reservation holds %d tokens, want 100", r.Tokens())
	}
	if got, want := until(10), start.Add(1000*ms); !got.Equal(want) {
		t.Errorf("after the shrink the next 10 tokens wait until +%v, want +%v", got.Sub(t0), want.Sub(t0))
	}
	// A second admission makes the first one no longer the latest; growing
	// the first beyond what the window holds is refused and changes nothing.
	clock.Set(t0.Add(1000 * ms))
	r2, err := l.Reserve(ctx, 800)
	if err != nil {
		t.Fatalf("second reservation: %v", err)
	}
	var le *LimitedError
	if err := r.Resize(ctx, 250); !errors.As(err, &le) {
		t.Fatalf("growing past the limit: %v, want a refusal", err)
	}
	if r.Tokens() != 100 {
		t.Errorf("a refused growth changed the reservation to %d tokens", r.Tokens())
	}
	if u := l.Usage(t0.Add(1000 * ms)); u.Tokens != 900 {
		t.Errorf("after a refused growth the window holds %d tokens, want 900", u.Tokens)
	}
	if err := r2.Cancel(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Resize(ctx, 250); err != nil {
		t.Fatalf("growing within the limit: %v", err)
	}
	if err := r.Settle(ctx, 250); err != nil {
		t.Fatal(err)
	}
	if u := l.Usage(t0.Add(1000 * ms)); u.Tokens != 250 {
		t.Errorf("after the growth and its settle the window holds %d tokens, want 250", u.Tokens)
	}
}

// TestUnlimitedCostsNothing: a deployment without limits never touches NATS.
func TestUnlimitedCostsNothing(t *testing.T) {
	srv := startServer(t)
	p := startProcess(t, srv, testOptions("free"))
	l := p.set.Deployment("d", Limits{})
	p.nc.Close() // any NATS call would fail now
	ctx := context.Background()
	for range 3 {
		r, err := l.Reserve(ctx, 1<<40)
		if err != nil {
			t.Fatalf("reserve: %v", err)
		}
		if err := r.KeepAlive(ctx); err != nil {
			t.Fatalf("keepalive: %v", err)
		}
		if err := r.Settle(ctx, 5); err != nil {
			t.Fatalf("settle: %v", err)
		}
	}
	if !l.Headroom(time.Now(), 1<<40) {
		t.Error("no headroom without limits")
	}
}

// TestReserveErrors covers the refusals that are not about waiting.
func TestReserveErrors(t *testing.T) {
	srv := startServer(t)
	p := startProcess(t, srv, testOptions("errs"))
	l := p.set.Deployment("d", Limits{TPM: 100})
	ctx := context.Background()
	if _, err := l.Reserve(ctx, 101); !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrLimited) {
		t.Errorf("reserve above tpm: %v, want ErrTooLarge", err)
	}
	if l.Headroom(time.Now(), 101) {
		t.Error("headroom for a reservation above tpm")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Reserve(cctx, 1); !errors.Is(err, context.Canceled) {
		t.Errorf("reserve with a cancelled context: %v", err)
	}
	if p.set.Deployment("d", Limits{TPM: 200}) != l || l.Limits().TPM != 200 {
		t.Error("Deployment is not idempotent per id or did not update the limits")
	}
	_ = p.set.Close()
	if _, err := l.Reserve(ctx, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("reserve after close: %v, want ErrClosed", err)
	}
	if err := p.set.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		ok   bool
	}{
		{"minimal", Options{Bucket: "llmq_limits"}, true},
		{"full", Options{Bucket: "b-1", Replicas: 3, SlotTTL: time.Second, Period: time.Second}, true},
		{"empty bucket", Options{}, false},
		{"dotted bucket", Options{Bucket: "a.b"}, false},
		{"replicas", Options{Bucket: "b", Replicas: 7}, false},
		{"negative TTL", Options{Bucket: "b", SlotTTL: -1}, false},
		{"tiny period", Options{Bucket: "b", Period: time.Microsecond}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.opts.Validate()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrInvalidOptions)) {
				t.Errorf("Validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestKeys(t *testing.T) {
	for _, id := range []string{"", "gpt-4o", "azure/gpt 4.1*>", "日本語", "a.b.c"} {
		tok := depToken(id)
		for _, key := range []string{rateKey(tok), coolKey(tok), slotKey(tok, 7)} {
			if !validKey(key) {
				t.Errorf("id %q: invalid key %q", id, key)
			}
			gotTok, _, _, ok := parseKey(key)
			if !ok || gotTok != tok {
				t.Errorf("parseKey(%q) = %q, %v", key, gotTok, ok)
			}
		}
	}
	if _, kind, i, ok := parseKey(slotKey(depToken("x"), 12)); !ok || kind != kindSlot || i != 12 {
		t.Errorf("slot key parsed as %s %d %v", kind, i, ok)
	}
	for _, bad := range []string{"rate", "d_00", "d_00.slot", "d_00.slot.-1", "x_00.rate", "d_00.what"} {
		if _, _, _, ok := parseKey(bad); ok {
			t.Errorf("parseKey(%q) accepted", bad)
		}
	}
}

// validKey mirrors the KV key rule of nats.go.
func validKey(k string) bool {
	if k == "" || k[0] == '.' || k[len(k)-1] == '.' {
		return false
	}
	for _, c := range k {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '/' || c == '=' || c == '.') {
			return false
		}
	}
	return true
}

func TestStateEncoding(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for range 50 {
		var s rateState
		for _, g := range []*gcraState{&s.rpm, &s.tpm} {
			g.tat = rng.Int64() - rng.Int64()
			g.seq = rng.Uint64()
			g.width = rng.Int64N(1 << 40)
			idx := rng.Int64N(1<<50) - 1<<49
			for range rng.IntN(130) {
				idx += 1 + rng.Int64N(5)
				g.log = append(g.log, bucket{idx: idx, units: 1 + rng.Int64N(1<<40)})
			}
		}
		b := encodeRate(s)
		got, err := decodeRate(b)
		if err != nil || !got.equal(s) {
			t.Fatalf("round trip: %v", err)
		}
		for cut := range len(b) - 1 {
			if _, err := decodeRate(b[:cut+1]); err == nil && cut+1 < len(b) {
				t.Fatalf("truncated state (%d of %d bytes) decoded", cut+1, len(b))
			}
		}
	}
	c := cooldown{until: 12345, reason: "provider 429"}
	if got, err := decodeCool(encodeCool(c)); err != nil || got != c {
		t.Errorf("cooldown round trip: %v %v", got, err)
	}
}

func BenchmarkReserveSettle(b *testing.B) {
	srv := startServer(b)
	for _, goroutines := range []int{1, 8} {
		b.Run(fmt.Sprintf("goroutines=%d", goroutines), func(b *testing.B) {
			p := startProcess(b, srv, Options{Bucket: fmt.Sprintf("bench%d", goroutines)})
			l := p.set.Deployment("d", Limits{RPM: 1 << 40, TPM: 1 << 50, MaxParallel: 64})
			ctx := context.Background()
			var next atomic.Int64
			var wg sync.WaitGroup
			b.ResetTimer()
			for range goroutines {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						for {
							r, err := l.Reserve(ctx, 100)
							if errors.Is(err, ErrLimited) {
								continue // contention: retry at once
							}
							if err != nil {
								b.Errorf("reserve: %v", err)
								return
							}
							if err := r.Settle(ctx, 50); err != nil {
								b.Errorf("settle: %v", err)
							}
							break
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

// TestRestamp: a reservation older than half the margin when its call goes
// out is moved to the present, so the window counts it when the provider
// sees it; a younger one is left alone; one that no longer fits (others
// were admitted after it) is refused and left as it was.
func TestRestamp(t *testing.T) {
	srv := startServer(t)
	t0 := time.Now().Truncate(time.Second)
	clock := &manualClock{t: t0}
	opts := Options{Bucket: "restamp", Period: 10 * time.Second, Clock: clock.Now} // margin 250 ms
	a := startProcess(t, srv, opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ms := time.Millisecond

	l := a.set.Deployment("rpm", Limits{RPM: 1})
	r, err := l.Reserve(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(t0.Add(100 * ms))
	if err := r.Restamp(ctx); err != nil || !r.At().Equal(t0) {
		t.Fatalf("restamp 100 ms after the admission: %v, at +%v; want nothing done", err, r.At().Sub(t0))
	}
	clock.Set(t0.Add(300 * ms))
	if err := r.Restamp(ctx); err != nil || !r.At().Equal(t0.Add(300*ms)) {
		t.Fatalf("restamp 300 ms after the admission: %v, at +%v; want +300ms", err, r.At().Sub(t0))
	}
	// The request counts from +300 ms now: at +10.5 s (the period and the
	// margin after +250 ms) it still does; at +0 it would no longer.
	if u := l.Usage(t0.Add(10500 * ms)); u.Requests != 1 {
		t.Errorf("at +10.5 s the window holds %d requests, want the restamped one", u.Requests)
	}
	if err := r.Settle(ctx, -1); err != nil {
		t.Fatal(err)
	}

	// tpm 1000 per 10 s: 300 tokens at +0, then 700 at +3 s fill the
	// window; moving the first to +3.3 s does not fit the pacing.
	lt := a.set.Deployment("tpm", Limits{TPM: 1000})
	clock.Set(t0)
	r1, err := lt.Reserve(ctx, 300)
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(t0.Add(3000 * ms))
	if _, err := lt.Reserve(ctx, 700); err != nil {
		t.Fatalf("second reservation: %v", err)
	}
	clock.Set(t0.Add(3300 * ms))
	var le *LimitedError
	if err := r1.Restamp(ctx); !errors.As(err, &le) || le.Reason != ReasonTPM {
		t.Fatalf("restamp with the window full: %v, want a tpm refusal", err)
	}
	if !r1.At().Equal(t0) {
		t.Errorf("a refused restamp moved the reservation to +%v", r1.At().Sub(t0))
	}
	if u := lt.Usage(t0.Add(3300 * ms)); u.Tokens != 1000 {
		t.Errorf("after a refused restamp the window holds %d tokens, want 1000", u.Tokens)
	}
}
