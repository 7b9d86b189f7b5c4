package router_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/llmq/llmq/internal/router"
)

// hook counts release-hook calls per group.
type hook struct {
	mu    sync.Mutex
	calls map[string]int
}

func (h *hook) fn(group string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.calls == nil {
		h.calls = make(map[string]int)
	}
	h.calls[group]++
}

func (h *hook) count(group string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.calls[group]
}

// acquire takes a lease on group and fails the test if there is none.
func acquire(t *testing.T, r *router.Router, group string) *router.Lease {
	t.Helper()
	l, ok := r.TryAcquire(group)
	if !ok || l == nil {
		t.Fatalf("TryAcquire(%q) found no capacity", group)
	}
	return l
}

// noCapacity fails the test if group has capacity.
func noCapacity(t *testing.T, r *router.Router, group string) {
	t.Helper()
	if l, ok := r.TryAcquire(group); ok {
		t.Fatalf("TryAcquire(%q) leased %s, want no capacity", group, l.Deployment().ID)
	}
	if r.HasHeadroom(group) {
		t.Fatalf("HasHeadroom(%q) = true, want false", group)
	}
}

func TestParseStrategy(t *testing.T) {
	for in, want := range map[string]router.Strategy{
		"":                       router.SimpleShuffle,
		"simple-shuffle":         router.SimpleShuffle,
		"least-busy":             router.LeastBusy,
		"usage-based-routing":    router.LeastBusy,
		"usage-based-routing-v2": router.LeastBusy,
		"latency-based-routing":  router.LeastBusy,
	} {
		if got := router.ParseStrategy(in); got != want {
			t.Errorf("ParseStrategy(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestHas(t *testing.T) {
	r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g"}}, nil)
	if !r.Has("g") || r.Has("h") {
		t.Errorf("Has(g) = %v, Has(h) = %v; want true, false", r.Has("g"), r.Has("h"))
	}
	if _, ok := r.TryAcquire("h"); ok {
		t.Errorf("TryAcquire of an unknown group succeeded")
	}
	if r.HasHeadroom("h") {
		t.Errorf("HasHeadroom of an unknown group")
	}
}

func TestTryAcquireRespectsMaxParallel(t *testing.T) {
	for _, s := range []router.Strategy{router.SimpleShuffle, router.LeastBusy} {
		t.Run(string(s), func(t *testing.T) {
			r := router.New(s, []router.Deployment{
				{ID: "a", Group: "g", MaxParallel: 2},
				{ID: "b", Group: "g", MaxParallel: 1},
				{ID: "other", Group: "h", MaxParallel: 1},
			}, nil)
			got := make(map[string]int)
			var leases []*router.Lease
			for range 3 {
				l := acquire(t, r, "g")
				got[l.Deployment().ID]++
				leases = append(leases, l)
			}
			if got["a"] != 2 || got["b"] != 1 {
				t.Errorf("leases %v, want a:2 b:1", got)
			}
			noCapacity(t, r, "g")
			// Another group has its own capacity.
			acquire(t, r, "h")
			noCapacity(t, r, "h")

			leases[0].Release()
			if !r.HasHeadroom("g") {
				t.Fatalf("no headroom after a release")
			}
			l := acquire(t, r, "g")
			if l.Deployment().ID != leases[0].Deployment().ID {
				t.Errorf("after releasing %s, leased %s", leases[0].Deployment().ID, l.Deployment().ID)
			}
			noCapacity(t, r, "g")
		})
	}
}

func TestUnlimitedDeployment(t *testing.T) {
	r := router.New(router.LeastBusy, []router.Deployment{{ID: "a", Group: "g"}}, nil)
	for range 1000 {
		acquire(t, r, "g")
	}
	if !r.HasHeadroom("g") {
		t.Errorf("an unlimited deployment ran out of headroom")
	}
}

func TestReleaseCallsHookOnce(t *testing.T) {
	var h hook
	r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 2}}, h.fn)
	l1 := acquire(t, r, "g")
	l2 := acquire(t, r, "g")
	noCapacity(t, r, "g")
	if n := h.count("g"); n != 0 {
		t.Fatalf("hook called %d times before any release", n)
	}
	l1.Release()
	if n := h.count("g"); n != 1 {
		t.Errorf("hook called %d times after one release, want 1", n)
	}
	// A second Release of the same lease frees nothing more.
	l1.Release()
	if n := h.count("g"); n != 1 {
		t.Errorf("hook called %d times after a repeated release, want 1", n)
	}
	acquire(t, r, "g")
	noCapacity(t, r, "g")
	l2.Release()
	if n := h.count("g"); n != 2 {
		t.Errorf("hook called %d times after two releases, want 2", n)
	}
}

func TestSetOnRelease(t *testing.T) {
	var h hook
	r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 1}}, nil)
	r.SetOnRelease(h.fn)
	acquire(t, r, "g").Release()
	if n := h.count("g"); n != 1 {
		t.Errorf("hook set with SetOnRelease called %d times, want 1", n)
	}
}

// A release that cannot let a refused admission through (the deployment
// has no limit and nobody waits) wakes nobody: waking the dispatcher for it
// would have idle slots sweep and fetch for nothing.
func TestReleaseWithoutLimitWakesNobody(t *testing.T) {
	var h hook
	r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g"}, {ID: "b", Group: "g", MaxParallel: 2}}, h.fn)
	for range 4 {
		acquire(t, r, "g").Release()
	}
	// b below its limit: releasing frees nothing anyone was refused.
	l1 := acquire(t, r, "g")
	l1.Release()
	if n := h.count("g"); n != 0 {
		t.Errorf("hook called %d times for releases below every limit, want 0", n)
	}
	// A held request waiting for the group is woken by any release.
	l2 := acquire(t, r, "g")
	done := r.Waiting("g")
	if n := h.count("g"); n != 0 {
		t.Fatalf("hook called %d times by Waiting, want 0", n)
	}
	l2.Release()
	if n := h.count("g"); n != 1 {
		t.Errorf("hook called %d times for a release while a request waits, want 1", n)
	}
	done()
}

func TestOrder(t *testing.T) {
	for _, s := range []router.Strategy{router.SimpleShuffle, router.LeastBusy} {
		t.Run(string(s), func(t *testing.T) {
			r := router.New(s, []router.Deployment{
				{ID: "backup", Group: "g", Order: 2, MaxParallel: 10},
				{ID: "primary", Group: "g", Order: 1, MaxParallel: 2},
				{ID: "last", Group: "g", Order: 3},
			}, nil)
			var primary []*router.Lease
			for range 2 {
				l := acquire(t, r, "g")
				if l.Deployment().ID != "primary" {
					t.Fatalf("leased %s while primary has capacity", l.Deployment().ID)
				}
				primary = append(primary, l)
			}
			for range 10 {
				if l := acquire(t, r, "g"); l.Deployment().ID != "backup" {
					t.Fatalf("leased %s while primary is full and backup has capacity", l.Deployment().ID)
				}
			}
			if l := acquire(t, r, "g"); l.Deployment().ID != "last" {
				t.Fatalf("leased %s, want last once the others are full", l.Deployment().ID)
			}
			primary[0].Release()
			if l := acquire(t, r, "g"); l.Deployment().ID != "primary" {
				t.Errorf("leased %s after primary freed a slot", l.Deployment().ID)
			}
		})
	}
}

func TestOrderZeroCountsAsOne(t *testing.T) {
	r := router.New(router.LeastBusy, []router.Deployment{
		{ID: "two", Group: "g", Order: 2},
		{ID: "zero", Group: "g", Order: 0, MaxParallel: 2},
		{ID: "one", Group: "g", Order: 1, MaxParallel: 2},
	}, nil)
	got := make(map[string]int)
	for range 4 {
		got[acquire(t, r, "g").Deployment().ID]++
	}
	if got["zero"] != 2 || got["one"] != 2 {
		t.Errorf("first four leases %v, want zero:2 one:2 (order 0 is order 1)", got)
	}
	if l := acquire(t, r, "g"); l.Deployment().ID != "two" {
		t.Errorf("fifth lease on %s, want two", l.Deployment().ID)
	}
}

func TestLeastBusy(t *testing.T) {
	r := router.New(router.LeastBusy, []router.Deployment{
		{ID: "a", Group: "g", MaxParallel: 4},
		{ID: "b", Group: "g", MaxParallel: 4},
	}, nil)
	// Equal capacity: leases alternate, so neither is ever two ahead.
	leases := map[string][]*router.Lease{}
	for i := range 8 {
		l := acquire(t, r, "g")
		id := l.Deployment().ID
		leases[id] = append(leases[id], l)
		if d := len(leases["a"]) - len(leases["b"]); d > 1 || d < -1 {
			t.Fatalf("after %d leases: a has %d, b has %d", i+1, len(leases["a"]), len(leases["b"]))
		}
	}
	noCapacity(t, r, "g")
	// a frees three slots, b one: a has the most headroom by any measure.
	for _, l := range leases["a"][:3] {
		l.Release()
	}
	leases["b"][0].Release()
	for i, want := range []string{"a", "a", "a", "b"} {
		// a: 3 free, b: 1 free; after two leases on a they are equal (1 and 1),
		// and the tie goes to the first in config order.
		if got := acquire(t, r, "g").Deployment().ID; got != want {
			t.Errorf("lease %d after releases on %s, want %s", i+1, got, want)
		}
	}
	noCapacity(t, r, "g")
}

func TestLeastBusyPrefersMostHeadroom(t *testing.T) {
	r := router.New(router.LeastBusy, []router.Deployment{
		{ID: "small", Group: "g", MaxParallel: 2},
		{ID: "big", Group: "g", MaxParallel: 8},
	}, nil)
	for range 4 {
		acquire(t, r, "g")
	}
	// Whatever the measure of headroom (free slots or their share), big has
	// more once small has one call in flight.
	for range 20 {
		l := acquire(t, r, "g")
		if l.Deployment().ID == "small" {
			l.Release()
			t.Fatalf("leased small (2 slots) over big (8 slots)")
		}
		l.Release()
	}
}

func TestSimpleShuffleWeights(t *testing.T) {
	const picks = 10000
	tests := []struct {
		name  string
		a, b  router.Deployment
		share float64 // expected share of a
	}{
		{"weight", router.Deployment{ID: "a", Group: "g", Weight: 1}, router.Deployment{ID: "b", Group: "g", Weight: 3}, 0.25},
		{"rpm", router.Deployment{ID: "a", Group: "g", RPM: 100}, router.Deployment{ID: "b", Group: "g", RPM: 300}, 0.25},
		{"tpm", router.Deployment{ID: "a", Group: "g", TPM: 3000}, router.Deployment{ID: "b", Group: "g", TPM: 1000}, 0.75},
		{"weight wins over rpm", router.Deployment{ID: "a", Group: "g", Weight: 1, RPM: 1000}, router.Deployment{ID: "b", Group: "g", Weight: 3, RPM: 1}, 0.25},
		{"even", router.Deployment{ID: "a", Group: "g"}, router.Deployment{ID: "b", Group: "g"}, 0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := router.New(router.SimpleShuffle, []router.Deployment{tt.a, tt.b}, nil)
			n := 0
			for range picks {
				l := acquire(t, r, "g")
				if l.Deployment().ID == "a" {
					n++
				}
				l.Release()
			}
			// ±3 percentage points is about seven standard deviations.
			if got := float64(n) / picks; math.Abs(got-tt.share) > 0.03 {
				t.Errorf("a got %.3f of %d picks, want %.2f±0.03", got, picks, tt.share)
			}
		})
	}
}

func TestCooldown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var h hook
		r := router.New(router.SimpleShuffle, []router.Deployment{
			{ID: "a", Group: "g", MaxParallel: 1},
			{ID: "b", Group: "g", MaxParallel: 1},
		}, h.fn)
		r.Cooldown("a", 10*time.Second, "test")
		r.Cooldown("unknown", time.Second, "test") // no deployment: nothing happens
		for range 50 {
			l := acquire(t, r, "g")
			if l.Deployment().ID != "a" && l.Deployment().ID != "b" {
				t.Fatalf("leased %s", l.Deployment().ID)
			}
			if l.Deployment().ID == "a" {
				t.Fatalf("leased a during its cooldown")
			}
			l.Release()
		}
		held := acquire(t, r, "g") // b, now full
		noCapacity(t, r, "g")
		released := h.count("g")

		time.Sleep(10*time.Second - time.Millisecond)
		synctest.Wait()
		if n := h.count("g"); n != released {
			t.Errorf("hook fired %d times before the cooldown ended", n-released)
		}
		noCapacity(t, r, "g")

		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := h.count("g"); n != released+1 {
			t.Errorf("hook fired %d times when the cooldown ended, want 1", n-released)
		}
		if l := acquire(t, r, "g"); l.Deployment().ID != "a" {
			t.Errorf("leased %s after the cooldown, want a", l.Deployment().ID)
		}
		held.Release()
	})
}

func TestCooldownDoesNotShorten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g"}}, nil)
		r.Cooldown("a", time.Minute, "test")
		r.Cooldown("a", time.Second, "test")
		time.Sleep(30 * time.Second)
		noCapacity(t, r, "g")
		time.Sleep(30 * time.Second)
		acquire(t, r, "g")
	})
}

func TestFailed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			allowed  = 2
			window   = time.Minute
			cooldown = 30 * time.Second
		)
		var h hook
		r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g"}}, h.fn)
		if r.Failed("unknown", allowed, window, cooldown) {
			t.Errorf("Failed of an unknown deployment tripped")
		}

		// Failures spread over more than the window never trip.
		for i := range 5 {
			if r.Failed("a", allowed, window, cooldown) {
				t.Fatalf("failure %d, %v apart, tripped", i+1, window/2+time.Second)
			}
			time.Sleep(window/2 + time.Second)
		}
		acquire(t, r, "g").Release()

		time.Sleep(window) // forget them
		for i := range allowed {
			if r.Failed("a", allowed, window, cooldown) {
				t.Fatalf("failure %d of %d allowed tripped", i+1, allowed)
			}
			time.Sleep(time.Second)
			acquire(t, r, "g").Release()
		}
		before := h.count("g")
		if !r.Failed("a", allowed, window, cooldown) {
			t.Fatalf("failure %d within %v did not trip", allowed+1, window)
		}
		noCapacity(t, r, "g")

		time.Sleep(cooldown)
		synctest.Wait()
		if n := h.count("g") - before; n != 1 {
			t.Errorf("hook fired %d times when the cooldown ended, want 1", n)
		}
		acquire(t, r, "g").Release()

		// Tripping starts the count afresh.
		for i := range allowed {
			if r.Failed("a", allowed, window, cooldown) {
				t.Fatalf("after a trip, failure %d tripped again", i+1)
			}
		}
		if !r.Failed("a", allowed, window, cooldown) {
			t.Errorf("after a trip, failure %d did not trip", allowed+1)
		}
	})
}

func TestFailedZeroAllowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.SimpleShuffle, []router.Deployment{{ID: "a", Group: "g"}}, nil)
		if !r.Failed("a", 0, time.Minute, time.Second) {
			t.Fatalf("with allowed 0, the first failure did not trip")
		}
		noCapacity(t, r, "g")
		time.Sleep(time.Second)
		acquire(t, r, "g")
	})
}

func TestAcquireWaitsForRelease(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.LeastBusy, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 1}}, nil)
		held := acquire(t, r, "g")
		got := make(chan *router.Lease)
		go func() {
			l, err := r.Acquire(context.Background(), "g")
			if err != nil {
				t.Errorf("Acquire: %v", err)
			}
			got <- l
		}()
		synctest.Wait()
		select {
		case l := <-got:
			t.Fatalf("Acquire returned %v while the only slot is held", l)
		default:
		}
		held.Release()
		l := <-got
		if l == nil || l.Deployment().ID != "a" {
			t.Fatalf("Acquire = %v after a release", l)
		}
		noCapacity(t, r, "g")
	})
}

func TestAcquireWaitsForCooldown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.LeastBusy, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 1}}, nil)
		r.Cooldown("a", 5*time.Second, "test")
		start := time.Now()
		l, err := r.Acquire(context.Background(), "g")
		if err != nil {
			t.Fatal(err)
		}
		if waited := time.Since(start); waited != 5*time.Second {
			t.Errorf("Acquire returned after %v, want when the cooldown ended (5s)", waited)
		}
		l.Release()
	})
}

func TestAcquireContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.LeastBusy, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 1}}, nil)
		held := acquire(t, r, "g")

		// A context that is already done.
		cause := errors.New("shutting down")
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(cause)
		if l, err := r.Acquire(ctx, "g"); err != cause || l != nil {
			t.Errorf("Acquire with a cancelled context = %v, %v; want nil, its cause", l, err)
		}

		// A deadline that passes while waiting.
		ctx, stop := context.WithTimeoutCause(context.Background(), 3*time.Second, cause)
		defer stop()
		start := time.Now()
		if l, err := r.Acquire(ctx, "g"); err != cause || l != nil {
			t.Errorf("Acquire past its deadline = %v, %v; want nil, its cause", l, err)
		}
		if waited := time.Since(start); waited != 3*time.Second {
			t.Errorf("Acquire gave up after %v, want 3s", waited)
		}

		// Cancelled while waiting.
		ctx, cancelWait := context.WithCancel(context.Background())
		done := make(chan error)
		go func() {
			_, err := r.Acquire(ctx, "g")
			done <- err
		}()
		synctest.Wait()
		cancelWait()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Acquire cancelled while waiting: %v, want context.Canceled", err)
		}
		held.Release()
	})
}

func TestConcurrentUseNeverExceedsMaxParallel(t *testing.T) {
	const (
		maxParallel = 3
		workers     = 16
		rounds      = 200
	)
	r := router.New(router.LeastBusy, []router.Deployment{
		{ID: "a", Group: "g", MaxParallel: maxParallel},
		{ID: "b", Group: "g", MaxParallel: maxParallel},
	}, nil)
	var inFlight [2]atomic.Int32
	var mu sync.Mutex
	peak := map[string]int32{}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for range rounds {
				l, err := r.Acquire(context.Background(), "g")
				if err != nil {
					t.Error(err)
					return
				}
				i := 0
				if l.Deployment().ID == "b" {
					i = 1
				}
				n := inFlight[i].Add(1)
				mu.Lock()
				peak[l.Deployment().ID] = max(peak[l.Deployment().ID], n)
				mu.Unlock()
				inFlight[i].Add(-1)
				l.Release()
			}
		})
	}
	wg.Wait()
	for id, p := range peak {
		if p > maxParallel {
			t.Errorf("deployment %s had %d calls in flight, MaxParallel %d", id, p, maxParallel)
		}
	}
	acquire(t, r, "g") // everything was released
}

// TestOrderSettlesForYoungLocalAdmissions: with settle, a deployment of a
// better order that is at its max_parallel_requests only through an
// admission younger than AdmissionSettle keeps the worse order out (slots
// racing for one message give such admissions back a moment later);
// without settle (a backlog is known), or once the admission is older, the
// overflow goes to the worse order.
func TestOrderSettlesForYoungLocalAdmissions(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := router.New(router.SimpleShuffle, []router.Deployment{
			{ID: "second", Group: "g", Order: 2},
			{ID: "first", Group: "g", Order: 1, MaxParallel: 1},
		}, nil)
		held, ok := r.TryAcquireTokens("g", 0, true)
		if !ok || held.Deployment().ID != "first" {
			t.Fatalf("first admission: %v, want the order-1 deployment", held)
		}
		if l, ok := r.TryAcquireTokens("g", 0, true); ok {
			t.Fatalf("with settle, a young admission of the order-1 deployment let %s in", l.Deployment().ID)
		}
		l, ok := r.TryAcquireTokens("g", 0, false)
		if !ok || l.Deployment().ID != "second" {
			t.Fatalf("without settle: %v, want the order-2 deployment", l)
		}
		l.Release()
		time.Sleep(router.AdmissionSettle)
		l, ok = r.TryAcquireTokens("g", 0, true)
		if !ok || l.Deployment().ID != "second" {
			t.Fatalf("with settle after %s: %v, want the order-2 deployment", router.AdmissionSettle, l)
		}
		l.Release()
		held.Release()
		if l, ok := r.TryAcquireTokens("g", 0, true); !ok || l.Deployment().ID != "first" {
			t.Fatalf("after the release: %v, want the order-1 deployment", l)
		}
	})
}
