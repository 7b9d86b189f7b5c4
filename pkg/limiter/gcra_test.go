package limiter

import (
	"math/rand/v2"
	"sort"
	"testing"
	"time"
)

// epoch is aligned with every bucket grid, so expected times are round.
var epoch = time.Unix(0, 0)

func at(d time.Duration) time.Time { return epoch.Add(d) }

// step is one action on a GCRA in a table test.
type step struct {
	at       time.Duration // since epoch
	n        int64         // reserve n units (if settle < 0)
	settle   int           // >= 0: settle the grant of that step index with used
	used     int64
	wantOK   bool
	wantNext time.Duration // when !wantOK: expected retry time since epoch (-1: never)
}

func TestGCRA(t *testing.T) {
	const sec = time.Second
	w := 10 * sec / windowBuckets // bucket width of a 10 s period
	w1, w2 := sec/windowBuckets, 2*sec/windowBuckets
	tests := []struct {
		name   string
		limit  int64
		period time.Duration
		steps  []step
	}{
		{
			name: "unit costs are paced one interval apart", limit: 4, period: 4 * sec,
			steps: []step{
				{at: 0, n: 1, settle: -1, wantOK: true},
				{at: 0, n: 1, settle: -1, wantNext: 1 * sec},
				{at: 999 * time.Millisecond, n: 1, settle: -1, wantNext: 1 * sec},
				{at: 1 * sec, n: 1, settle: -1, wantOK: true},
				{at: 5 * sec, n: 1, settle: -1, wantOK: true}, // idle time is banked up to period/60
				{at: 5 * sec, n: 1, settle: -1, wantNext: 6*sec - 4*sec/60},
			},
		},
		{
			name: "a larger cost waits for the window to drain", limit: 10, period: 10 * sec,
			steps: []step{
				{at: 0, n: 6, settle: -1, wantOK: true},
				// Pacing allows it at 6 s, but 6 of the last 10 s are used:
				// it must wait until the bucket of t=0 leaves the window.
				{at: 6 * sec, n: 6, settle: -1, wantNext: 10*sec + w},
				{at: 6 * sec, n: 4, settle: -1, wantOK: true},
				// Pacing allows it at 10 s, the window (6 + 4) only when the
				// bucket of t=0 ends.
				{at: 10 * sec, n: 1, settle: -1, wantNext: 10*sec + w},
				{at: 10*sec + w, n: 1, settle: -1, wantOK: true},
				// 4 (bucket of 6 s) + 1 in the window: 6 more must wait for the 6 s bucket.
				{at: 11 * sec, n: 6, settle: -1, wantNext: 10*sec + 73*w},
				{at: 11 * sec, n: 5, settle: -1, wantOK: true},
			},
		},
		{
			name: "never more than the limit", limit: 5, period: sec,
			steps: []step{
				{at: 0, n: 6, settle: -1, wantNext: -1},
				{at: 0, n: 5, settle: -1, wantOK: true},
			},
		},
		{
			name: "zero units cost nothing", limit: 1, period: sec,
			steps: []step{
				{at: 0, n: 1, settle: -1, wantOK: true},
				{at: 0, n: 0, settle: -1, wantOK: true},
				{at: 0, n: 1, settle: -1, wantNext: sec + w1},
			},
		},
		{
			name: "unlimited", limit: 0, period: sec,
			steps: []step{
				{at: 0, n: 1 << 40, settle: -1, wantOK: true},
				{at: 0, n: 1 << 40, settle: -1, wantOK: true},
			},
		},
		{
			name: "refund of the latest grant moves pacing back", limit: 100, period: 10 * sec,
			steps: []step{
				{at: 0, n: 50, settle: -1, wantOK: true}, // paced to 5 s
				{at: sec, settle: 0, used: 10},           // now paced to 1 s
				{at: sec, n: 10, settle: -1, wantOK: true},
				{at: 2 * sec, n: 1, settle: -1, wantOK: true},
			},
		},
		{
			name: "refund of an older grant frees the log, not the pacing", limit: 100, period: 10 * sec,
			steps: []step{
				{at: 0, n: 50, settle: -1, wantOK: true},
				{at: 5 * sec, n: 40, settle: -1, wantOK: true}, // paced to 9 s
				{at: 9 * sec, n: 20, settle: -1, wantNext: 10*sec + w},
				{at: 9 * sec, settle: 0, used: 30}, // log: 30+40 in the window
				{at: 9 * sec, n: 20, settle: -1, wantOK: true},
			},
		},
		{
			name: "extra usage delays the next admission", limit: 100, period: 10 * sec,
			steps: []step{
				{at: 0, n: 10, settle: -1, wantOK: true}, // paced to 1 s
				{at: 0, settle: 0, used: 30},             // latest grant: paced to 3 s
				{at: 2 * sec, n: 1, settle: -1, wantNext: 3 * sec},
				{at: 3 * sec, n: 10, settle: -1, wantOK: true}, // paced to 4 s
				{at: 4 * sec, n: 1, settle: -1, wantOK: true},  // paced to 4.1 s
				{at: 4 * sec, settle: 3, used: 50},             // not latest: +4 s from max(tat, now)
				{at: 5 * sec, n: 1, settle: -1, wantNext: 8100 * time.Millisecond},
			},
		},
		{
			name: "cancel of the latest grant restores its slot", limit: 2, period: 2 * sec,
			steps: []step{
				{at: 0, n: 1, settle: -1, wantOK: true},
				{at: 0, settle: 0, used: 0},
				{at: 0, n: 2, settle: -1, wantOK: true},
				{at: 0, n: 1, settle: -1, wantNext: 2*sec + w2},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			g := NewGCRA(tc.limit, tc.period)
			grants := map[int]Grant{}
			for i, s := range tc.steps {
				now := at(s.at)
				if s.settle >= 0 {
					g.Settle(now, grants[s.settle], s.used)
					continue
				}
				allow := g.AllowN(now, s.n)
				gr, next, ok := g.ReserveN(now, s.n)
				if ok != s.wantOK || allow != s.wantOK {
					t.Fatalf("step %d: ReserveN(%v, %d) ok = %v, AllowN = %v, want %v (next %v)", i, s.at, s.n, ok, allow, s.wantOK, next.Sub(epoch))
				}
				if ok {
					grants[i] = gr
					continue
				}
				if s.wantNext < 0 {
					if !next.IsZero() {
						t.Fatalf("step %d: next = %v, want never", i, next.Sub(epoch))
					}
					continue
				}
				if got := next.Sub(epoch); got != s.wantNext {
					t.Fatalf("step %d: next = %v, want %v", i, got, s.wantNext)
				}
				if nx, _ := g.NextN(now, s.n); !nx.Equal(next) {
					t.Fatalf("step %d: NextN = %v, ReserveN next = %v", i, nx.Sub(epoch), next.Sub(epoch))
				}
				if _, _, ok := g.ReserveN(next, s.n); !ok {
					// The named time must admit when nothing changed meanwhile.
					t.Fatalf("step %d: not admitted at the promised time %v", i, next.Sub(epoch))
				}
				// Undo the probe so the table continues from the same state.
				g2 := NewGCRA(tc.limit, tc.period)
				*g = *replay(g2, tc.steps[:i+1], grants)
			}
		})
	}
}

// replay rebuilds a GCRA from the table steps so far, skipping probes.
func replay(g *GCRA, steps []step, grants map[int]Grant) *GCRA {
	for i, s := range steps {
		now := at(s.at)
		if s.settle >= 0 {
			g.Settle(now, grants[s.settle], s.used)
			continue
		}
		if !s.wantOK {
			continue
		}
		gr, _, _ := g.ReserveN(now, s.n)
		grants[i] = gr
	}
	return g
}

type admission struct {
	t     int64
	units int64
}

// maxWindow returns the largest total of units admitted in any half-open
// window [s, s+period).
func maxWindow(adm []admission, period int64) int64 {
	sort.Slice(adm, func(i, j int) bool { return adm[i].t < adm[j].t })
	var best, sum int64
	j := 0
	for i := range adm { // window starting at adm[i].t
		for j < len(adm) && adm[j].t < adm[i].t+period {
			sum += adm[j].units
			j++
		}
		best = max(best, sum)
		sum -= adm[i].units
	}
	return best
}

// TestGCRASlidingWindow throws random arrival sequences with random costs,
// refunds and cancels at the algorithm and checks by brute force that no
// window of one period ever holds more than the limit.
func TestGCRASlidingWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 400 {
		limit := 1 + rng.Int64N(60)
		period := time.Duration(1+rng.Int64N(10)) * time.Second
		maxCost := 1 + rng.Int64N(limit)
		if trial%4 == 0 {
			maxCost = 1 // the rpm case
		}
		g := NewGCRA(limit, period)
		type held struct {
			gr  Grant
			idx int
		}
		var adm []admission
		var open []held
		now := epoch
		for range 600 {
			// Bursty arrivals: mostly close together, sometimes a long gap.
			gap := time.Duration(rng.Int64N(int64(period) / 8))
			if rng.IntN(20) == 0 {
				gap = time.Duration(rng.Int64N(2 * int64(period)))
			}
			now = now.Add(gap)
			if len(open) > 0 && rng.IntN(3) == 0 {
				k := rng.IntN(len(open))
				h := open[k]
				used := rng.Int64N(h.gr.N + 1) // never more than reserved
				if rng.IntN(4) == 0 {
					used = 0 // cancel
				}
				g.Settle(now, h.gr, used)
				adm[h.idx].units = used
				open = append(open[:k], open[k+1:]...)
				continue
			}
			n := 1 + rng.Int64N(maxCost)
			if gr, _, ok := g.ReserveN(now, n); ok {
				adm = append(adm, admission{t: now.UnixNano(), units: n})
				open = append(open, held{gr: gr, idx: len(adm) - 1})
			}
		}
		if got := maxWindow(adm, int64(period)); got > limit {
			t.Fatalf("trial %d (limit %d, period %v, max cost %d): a window holds %d units", trial, limit, period, maxCost, got)
		}
	}
}

// TestGCRASaturation keeps a request always waiting, retrying at the time
// the refusal names plus a random wake-up lateness, and checks the long-run
// admitted rate against the bound of the package doc,
// (L-m+1)/L * 120/121, and against 0.95.
func TestGCRASaturation(t *testing.T) {
	const period = time.Minute
	tests := []struct {
		name     string
		limit    int64
		maxCost  int64
		constant bool          // every cost is maxCost
		late     time.Duration // retry up to this long after the named time
	}{
		{name: "unit costs (rpm)", limit: 20, maxCost: 1},
		{name: "unit costs, late waiters", limit: 20, maxCost: 1, late: 500 * time.Millisecond},
		{name: "unit costs, high limit, late waiters", limit: 6_000, maxCost: 1, late: 5 * time.Millisecond},
		{name: "costs up to 1% of the limit", limit: 100_000, maxCost: 1_000},
		{name: "costs up to 1%, late waiters", limit: 100_000, maxCost: 1_000, late: 100 * time.Millisecond},
		{name: "constant cost 1% of the limit", limit: 10_000, maxCost: 100, constant: true},
		{name: "costs up to 5% of the limit", limit: 100_000, maxCost: 5_000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			g := NewGCRA(tc.limit, period)
			cost := func() int64 {
				if tc.constant {
					return tc.maxCost
				}
				return 1 + rng.Int64N(tc.maxCost)
			}
			var adm []admission
			now := epoch
			const periods = 30
			end := epoch.Add(periods * period)
			n := cost()
			var total int64
			for now.Before(end) {
				gr, next, ok := g.ReserveN(now, n)
				if !ok {
					if next.IsZero() {
						t.Fatalf("cost %d never admitted", n)
					}
					now = next
					if tc.late > 0 {
						now = now.Add(time.Duration(rng.Int64N(int64(tc.late))))
					}
					continue
				}
				total += gr.N
				adm = append(adm, admission{t: now.UnixNano(), units: gr.N})
				n = cost()
			}
			rate := float64(total) / (periods * float64(tc.limit))
			bound := float64(tc.limit-tc.maxCost+1) / float64(tc.limit) * windowBuckets / (windowBuckets + 1)
			t.Logf("rate %.4f of the limit (bound %.4f)", rate, bound)
			if rate < bound-0.002 || rate > 1.0 {
				t.Errorf("long-run rate = %.4f of the limit, want in [%.4f, 1]", rate, bound)
			}
			if tc.maxCost <= tc.limit/100 && rate < 0.95 {
				t.Errorf("long-run rate = %.4f of the limit, want >= 0.95", rate)
			}
			if got := maxWindow(adm, int64(period)); got > tc.limit {
				t.Errorf("a window holds %d > %d", got, tc.limit)
			}
		})
	}
}

func TestGCRACost(t *testing.T) {
	g := NewGCRA(3, time.Second)
	for _, tc := range []struct{ n, want int64 }{
		{0, 0}, {1, 333_333_334}, {3, 1_000_000_000}, {4, 1_333_333_334}, {1 << 62, 1 << 61},
	} {
		if got := g.cost(tc.n); got != tc.want && !(tc.n == 1<<62 && got > 0) {
			t.Errorf("cost(%d) = %d, want %d", tc.n, got, tc.want)
		}
	}
}

func BenchmarkGCRAReserve(b *testing.B) {
	g := NewGCRA(1_000_000, time.Minute)
	now := epoch
	b.ReportAllocs()
	for b.Loop() {
		now = now.Add(time.Millisecond)
		gr, _, ok := g.ReserveN(now, 10)
		if ok {
			g.Settle(now, gr, 5)
		}
	}
}
