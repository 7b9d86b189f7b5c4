package router_test

import (
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
)

func TestHeldBack(t *testing.T) {
	tests := []struct {
		keep  float64
		limit int64
		want  int64
	}{
		{0, 40, 0},
		{0.1, 40, 4},
		{0.1, 16, 1},
		{0.1, 9, 0}, // too small to hold a whole unit back
		{0.29, 100, 29},
		{0.5, 1, 0}, // never the whole limit
		{0.9, 2, 1},
		{0.1, 0, 0}, // unlimited
		{0.1, 600_000, 60_000},
	}
	for _, tt := range tests {
		if got := router.HeldBack(tt.keep, tt.limit); got != tt.want {
			t.Errorf("HeldBack(%v, %d) = %d, want %d", tt.keep, tt.limit, got, tt.want)
		}
	}
}

// TestTryAcquireKeeping: a request asked to keep a share free takes a
// deployment's max_parallel_requests only up to what that share leaves;
// one that asks for nothing takes the rest; the release of a deployment
// that refused such a request wakes the dispatcher.
func TestTryAcquireKeeping(t *testing.T) {
	var h hook
	r := router.New(router.LeastBusy, []router.Deployment{{ID: "a", Group: "g", MaxParallel: 10}}, h.fn)
	var low []*router.Lease
	for {
		l, ok := r.TryAcquireKeeping("g", 0, false, 0.2)
		if !ok {
			break
		}
		low = append(low, l)
		if len(low) > 10 {
			t.Fatal("more leases than max_parallel_requests")
		}
	}
	if len(low) != 8 {
		t.Fatalf("keeping 20 %% of 10 free, %d leases were given, want 8", len(low))
	}
	for range 2 {
		acquire(t, r, "g") // a more important request uses the rest
	}
	noCapacity(t, r, "g")
	before := h.count("g")
	low[0].Release()
	if h.count("g") != before+1 {
		t.Error("the release of a deployment that refused a request to keep headroom woke nobody")
	}
	if _, ok := r.TryAcquireKeeping("g", 0, false, 0.2); ok {
		t.Error("with 9 of 10 in use a request keeping 2 free was admitted")
	}
}

// TestTryAcquireKeepingOrder: a request that may not take a preferred
// deployment's last units goes to the next order, a more important one
// stays on the preferred deployment.
func TestTryAcquireKeepingOrder(t *testing.T) {
	r := router.New(router.LeastBusy, []router.Deployment{
		{ID: "first", Group: "g", MaxParallel: 4, Order: 1},
		{ID: "second", Group: "g", MaxParallel: 4, Order: 2},
	}, nil)
	for range 3 {
		if l, ok := r.TryAcquireKeeping("g", 0, false, 0.25); !ok || l.Deployment().ID != "first" {
			t.Fatalf("a request keeping 25 %% free was not given the preferred deployment while it had room")
		}
	}
	if l, ok := r.TryAcquireKeeping("g", 0, false, 0.25); !ok || l.Deployment().ID != "second" {
		t.Errorf("with the preferred deployment at its kept share, the request was not given the next order")
	}
	if l := acquire(t, r, "g"); l.Deployment().ID != "first" {
		t.Errorf("a request keeping nothing was given %s, want first (it has room)", l.Deployment().ID)
	}
}

// TestTryAcquireKeepingSharedLimits: with a limiter, the share is kept of
// the rpm, tpm and concurrency every process shares, as this process's
// mirror counts them.
func TestTryAcquireKeepingSharedLimits(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Name: "router-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// One clock for the limiter and the router, moved by the test: rpm and
	// tpm are paced, so only requests spread over the period fill them.
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }
	set, err := limiter.Open(t.Context(), js, limiter.Options{Bucket: "router_headroom", Period: time.Hour, Clock: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = set.Close() })

	tests := []struct {
		name   string
		limits limiter.Limits
		tokens int64
		want   int // leases a request keeping 20 % may take
	}{
		{name: "rpm", limits: limiter.Limits{RPM: 10}, want: 8},
		{name: "tpm", limits: limiter.Limits{TPM: 1000}, tokens: 100, want: 8},
		{name: "shared max_parallel_requests", limits: limiter.Limits{MaxParallel: 5}, want: 4},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := router.New(router.LeastBusy, []router.Deployment{{ID: tt.name, Group: "g", Limiter: set.Deployment(tt.name, tt.limits)}}, nil)
			r.SetClock(now)
			n := 0
			for ; n <= 10; n++ {
				advance(6 * time.Minute) // a tenth of the period: the pace of 10 a period
				l, ok := r.TryAcquireKeeping("g", tt.tokens, false, 0.2)
				if !ok {
					break
				}
				if err := l.Reserve(t.Context(), tt.tokens); err != nil {
					t.Fatalf("lease %d: %v", n+1, err)
				}
				t.Cleanup(func() { l.Finish(-1) })
			}
			if n != tt.want {
				t.Fatalf("%d leases kept 20 %% free, want %d", n, tt.want)
			}
			l, ok := r.TryAcquireTokens("g", tt.tokens, false)
			if !ok {
				t.Fatal("a request keeping nothing was refused the kept share")
			}
			if err := l.Reserve(t.Context(), tt.tokens); err != nil {
				t.Fatalf("the kept share: %v", err)
			}
			l.Finish(-1)
		})
	}
}
