package limiter

import (
	"math"
	"math/bits"
	"slices"
	"sort"
	"time"
)

// windowBuckets is how many buckets the admission log splits one period into.
// The log over-counts a unit for at most one bucket width (Period/120), which
// costs at most 1/121 of the long-run rate; see the package doc.
const windowBuckets = 120

// bucket holds the units admitted in [idx*width, (idx+1)*width) (Unix ns).
type bucket struct {
	idx   int64
	units int64
}

// gcraState is the part of a GCRA that lives in the shared store. It does not
// hold the limit or the period: those come from configuration.
type gcraState struct {
	tat   int64  // theoretical arrival time, Unix ns: nothing is admitted before it
	seq   uint64 // admissions so far; identifies the latest grant
	width int64  // bucket width of log, ns
	log   []bucket
}

func (s gcraState) clone() gcraState {
	s.log = slices.Clone(s.log)
	return s
}

func (s gcraState) equal(o gcraState) bool {
	return s.tat == o.tat && s.seq == o.seq && s.width == o.width && slices.Equal(s.log, o.log)
}

// GCRA limits a flow to Limit units in every sliding window of Period. It is
// the generic cell rate algorithm (a theoretical arrival time that paces
// admissions evenly at Limit per Period, with a tolerance of Period/60) plus a
// coarse log of the last period's admissions that no window may overflow. The
// log alone guarantees the limit; the pacing only spreads admissions out. The
// package doc gives the rule and its proof.
//
// Every method takes the current time explicitly, so tests never sleep. A
// GCRA is not safe for concurrent use: the KV-backed Limiter serialises its
// updates with compare-and-set. A GCRA with a limit or period of zero admits
// everything and keeps no state.
type GCRA struct {
	limit  int64
	period int64 // ns
	margin int64 // ns the log's window is wider than period (see Options.Margin)
	st     gcraState
}

// Grant is one admission of a GCRA, kept so that it can be settled or
// cancelled later.
type Grant struct {
	// At is the admission time.
	At time.Time
	// N is the number of units admitted.
	N int64

	seq uint64 // GCRA seq right after this admission; 0 if nothing was recorded
	end int64  // TAT right after this admission
}

// NewGCRA returns a GCRA for limit units per period, with no admissions yet.
// A limit or period of zero or less means unlimited.
func NewGCRA(limit int64, period time.Duration) *GCRA {
	g := &GCRA{}
	g.init(limit, period, gcraState{})
	return g
}

func (g *GCRA) init(limit int64, period time.Duration, st gcraState) {
	g.limit, g.period = limit, int64(period)
	if g.unlimited() {
		g.st = st
		return
	}
	g.st = st.rescale(max(1, g.period/windowBuckets))
}

// Limit returns the number of units allowed per period (0: unlimited).
func (g *GCRA) Limit() int64 {
	if g.unlimited() {
		return 0
	}
	return g.limit
}

// Period returns the length of the sliding window.
func (g *GCRA) Period() time.Duration { return time.Duration(g.period) }

func (g *GCRA) unlimited() bool { return g.limit <= 0 || g.period <= 0 }

// rescale moves a log written with another bucket width (the period changed)
// onto width w. Each bucket moves to the bucket holding its last nanosecond, so
// units only ever move later: the log stays an upper bound.
func (s gcraState) rescale(w int64) gcraState {
	if s.width == w || len(s.log) == 0 {
		s.width = w
		return s
	}
	var out []bucket
	for _, b := range s.log {
		idx := floorDiv((b.idx+1)*s.width-1, w)
		if n := len(out); n > 0 && out[n-1].idx == idx {
			out[n-1].units += b.units
			continue
		}
		out = append(out, bucket{idx: idx, units: b.units})
	}
	s.width, s.log = w, out
	return s
}

// cost is the pacing interval of n units, ceil(n*period/limit) ns, saturating
// far beyond any period.
func (g *GCRA) cost(n int64) int64 {
	if n <= 0 {
		return 0
	}
	q, r := n/g.limit, n%g.limit
	const maxCost = math.MaxInt64 / 4
	if q > maxCost/g.period {
		return maxCost
	}
	hi, lo := bits.Mul64(uint64(r), uint64(g.period))
	quo, rem := bits.Div64(hi, lo, uint64(g.limit)) // hi < limit since r < limit
	c := int64(quo)
	if rem != 0 {
		c++
	}
	return q*g.period + c
}

// tolerance is how far the pacing lets the TAT lag behind now: up to that much
// idle time (or wake-up lateness of a waiter) is banked and may be used as a
// burst. Period/60: one second for a one-minute period.
func (g *GCRA) tolerance() int64 { return g.period / 60 }

// start is where the pacing slot of an admission at t begins.
func (g *GCRA) start(t int64) int64 { return max(g.st.tat, t-g.tolerance()) }

// expiry is the first time at which bucket b no longer counts: units in b count
// at time x while the bucket's end is inside the window (x-period-margin, x].
func (g *GCRA) expiry(b bucket) int64 { return (b.idx+1)*g.st.width + g.period + g.margin }

// usedAt returns the units of log buckets that still count at time x.
func (g *GCRA) usedAt(x int64) int64 {
	var u int64
	for _, b := range g.st.log {
		if g.expiry(b) > x {
			u += b.units
		}
	}
	return u
}

// next returns the earliest time at or after t (Unix ns) at which n units are
// admitted, or ok false if n exceeds the limit and never will be.
func (g *GCRA) next(t, n int64) (at int64, ok bool) {
	if g.unlimited() || n <= 0 {
		return t, true
	}
	if n > g.limit {
		return 0, false
	}
	at = max(t, g.st.tat)        // pacing
	used := g.usedAt(at)         // window log
	for _, b := range g.st.log { // ascending, so expiries ascend too
		if used+n <= g.limit {
			break
		}
		if exp := g.expiry(b); exp > at {
			used -= b.units
			at = exp
		}
	}
	return at, true
}

// NextN returns the earliest time at or after now at which n units would be
// admitted if nothing else changed. ok is false when n exceeds the limit: such
// a reservation is never admitted.
func (g *GCRA) NextN(now time.Time, n int64) (at time.Time, ok bool) {
	t := now.UnixNano()
	a, ok := g.next(t, n)
	if !ok {
		return time.Time{}, false
	}
	if a == t {
		return now, true
	}
	return time.Unix(0, a), true
}

// AllowN reports whether n units would be admitted at now, without taking them.
func (g *GCRA) AllowN(now time.Time, n int64) bool {
	t := now.UnixNano()
	a, ok := g.next(t, n)
	return ok && a <= t
}

// ReserveN admits n units at now if the limit allows it and returns the grant.
// Otherwise it changes nothing, ok is false, and next is the earliest time at
// which n units would be admitted (zero when n exceeds the limit). A
// reservation of zero units is always admitted and records nothing.
func (g *GCRA) ReserveN(now time.Time, n int64) (gr Grant, next time.Time, ok bool) {
	t := now.UnixNano()
	if g.unlimited() || n <= 0 {
		return Grant{At: now, end: -1}, now, true
	}
	a, ok := g.next(t, n)
	if !ok {
		return Grant{}, time.Time{}, false
	}
	if a > t {
		return Grant{}, time.Unix(0, a), false
	}
	g.st.tat = g.start(t) + g.cost(n)
	g.st.seq++
	g.add(t, n)
	g.prune(t)
	return Grant{At: now, N: n, seq: g.st.seq, end: g.st.tat}, now, true
}

// Settle replaces the units of gr by used, the amount actually consumed:
// a refund when used < gr.N, an extra charge when used > gr.N. A refund moves
// the pacing back only if gr is still the latest admission (later ones were
// already spaced by gr.N) and always returns the units to the log; an extra
// charge is added to the log and delays future admissions by its cost.
// Settle a grant at most once.
func (g *GCRA) Settle(now time.Time, gr Grant, used int64) {
	if g.unlimited() {
		return
	}
	used = max(used, 0)
	delta := used - gr.N
	if delta == 0 {
		return
	}
	t := now.UnixNano()
	at := gr.At.UnixNano()
	if gr.seq != 0 && gr.seq == g.st.seq && gr.end == g.st.tat {
		g.st.tat = gr.end - g.cost(gr.N) + g.cost(used) // as if admitted with used
	} else if delta > 0 {
		g.st.tat = g.start(t) + g.cost(delta)
	}
	idx := floorDiv(at, g.st.width)
	i, found := g.find(idx)
	switch {
	case found:
		g.st.log[i].units += delta
		if g.st.log[i].units <= 0 {
			g.st.log = slices.Delete(g.st.log, i, i+1)
		}
	case delta > 0 && g.expiry(bucket{idx: idx}) > t:
		g.st.log = slices.Insert(g.st.log, i, bucket{idx: idx, units: delta})
	}
	g.prune(t)
}

// Resize settles gr at n units, like Settle, and returns the grant that
// stands for those n units from now on: settle or cancel that one later,
// never gr again. A shrink is never refused; it moves the pacing back while
// gr is still the latest admission.
func (g *GCRA) Resize(now time.Time, gr Grant, n int64) Grant {
	latest := gr.seq != 0 && gr.seq == g.st.seq && gr.end == g.st.tat
	g.Settle(now, gr, n)
	gr.N = max(n, 0)
	if latest {
		gr.end = g.st.tat
	}
	return gr
}

// Cancel gives back the units of a grant that was not used: Settle with zero.
func (g *GCRA) Cancel(now time.Time, gr Grant) { g.Settle(now, gr, 0) }

// Used returns the units admitted in the window of one period ending at now,
// as the log counts them (an upper bound: a unit counts until its bucket ends
// one period later).
func (g *GCRA) Used(now time.Time) int64 {
	if g.unlimited() {
		return 0
	}
	return g.usedAt(now.UnixNano())
}

func (g *GCRA) find(idx int64) (int, bool) {
	i := sort.Search(len(g.st.log), func(i int) bool { return g.st.log[i].idx >= idx })
	return i, i < len(g.st.log) && g.st.log[i].idx == idx
}

func (g *GCRA) add(t, n int64) {
	idx := floorDiv(t, g.st.width)
	i, found := g.find(idx)
	if found {
		g.st.log[i].units += n
		return
	}
	g.st.log = slices.Insert(g.st.log, i, bucket{idx: idx, units: n})
}

// prune drops buckets that stopped counting at least one bucket width ago; the
// extra width keeps them for a process whose clock is slightly behind.
func (g *GCRA) prune(t int64) {
	i := 0
	for i < len(g.st.log) && g.expiry(g.st.log[i])+g.st.width <= t {
		i++
	}
	if i > 0 {
		g.st.log = slices.Delete(g.st.log, 0, i)
	}
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}
