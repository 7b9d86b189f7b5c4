package worker

import (
	"time"

	"github.com/llmq/llmq/internal/router"
)

// The dispatch policy: which queue a free slot is given a fetch of next.
// The dispatcher (dispatch.go) alone calls it, with the state it alone
// owns; nothing here blocks or touches the network, so it is tested as a
// table of states (policy_test.go).
//
// # The order
//
//  1. Bands strictly, 0 first. A band is looked at only when no better band
//     has a queue that wants a fetch (pair.wants) and may be served now.
//     With aging on (Aging), levels instead: a band, or a worse band's lane
//     lifted to it by its wait.
//  2. Inside a band, model groups from a rotating start, so that no group is
//     always last when several wait at the same band.
//  3. Inside a band and group, tenants by weighted fair share of the tokens
//     served (fairness below): of the tenant lanes that want a fetch, the
//     one furthest behind its share goes first.
//  4. Inside a lane, the consumer delivers in stream order: first come,
//     first served.
//
// A queue "may be served now" unless an operator paused it, or its group
// was refused capacity earlier in the same pass (refused): a group refused
// at a band is not admitted at a worse one in that pass, because the room
// the limiter may have a moment later belongs to the better band's request.
// With headroom (Headroom), a queue of a held-back band may be served only
// while, after it, a share of the capacity stays free.
//
// # Why priority cannot invert
//
// The pass walks bands in order and stops at the first queue it can serve,
// so a queue of band b is chosen only if, for every better band b' < b and
// the same group, every lane of (b', group) was either empty as far as the
// dispatcher knows, already had as many fetches in flight as messages it is
// known to hold (those fetches take them), paused, or refused capacity —
// and a refused group is refused at every worse band in the same pass.
// Fairness only orders the lanes of one band and group, after the band is
// chosen, so it can never move work between bands. So a worse band of a
// group is never fetched while a better band of the same group holds a
// message the dispatcher knows of and could start. Across groups there is
// no priority to invert: each group has its own deployments and limits,
// and a request can only run on its own group's. What the dispatcher knows
// lags the stream by the time a wake-up hint takes to arrive (well under a
// millisecond on one machine), and a message another process hands back is
// announced by a hint of its own; that lag is the only window in which a
// worse band can go first. With aging on, a worse band goes first on
// purpose, and only as Aging says.

// Headroom keeps a share of the capacity free for the more important
// bands (llmq_settings.headroom). Dispatch is strict but not preemptive: a
// call that started runs to its end. Without headroom a flood of the
// lowest band (a batch) takes every slot and every unit of the
// deployments' limits the moment it frees, and a request of band 0 that
// arrives then waits for the next call to end, however important it is.
//
// The rule. A request at a level (its band, or the band aging lifted it
// to) of FromBand or worse is started only if, after it starts, Share of
// each capacity it uses stays free: of this process's worker slots, and of
// the chosen deployment's limits as the router sees them
// (router.Router.TryAcquireKeeping: max_parallel_requests in this process;
// with shared limits, the concurrency, rpm and tpm every process uses).
// What stays free is router.HeldBack of each: Share × the capacity, rounded
// down, never all of it. Requests at the levels before FromBand use
// everything, the free share included. So an arrival of a more important
// band finds room at once, unless arrivals of the more important bands
// alone took the free share since calls last ended; each call that ends
// while the held-back bands are at their limit refills it.
//
// The price is the free share: the held-back bands use at most 1 - Share
// of a capacity, even when nothing else runs. Only they pay it, and only
// when they would otherwise fill it.
//
// Why this cannot invert priority: the rule only ever removes requests of
// the held-back levels from a pass, or refuses their admission; it never
// holds anything back from a more important level, and a refusal marks the
// group refused for the rest of the pass like any other, which keeps only
// worse levels of the group out. So every pass still starts the most
// important request it can, and the argument above holds unchanged.
type Headroom struct {
	// Share is the share of each capacity held-back requests leave free,
	// 0 to 1; 0 turns headroom off.
	Share float64
	// FromBand is the most important band held back: it and every worse
	// band are.
	FromBand int
}

// holds reports whether a request at level is held back.
func (h Headroom) holds(level int) bool { return h.Share > 0 && level >= h.FromBand }

// keep is the share of a deployment's limits that starting a request at
// level must leave free (router.Router.TryAcquireKeeping).
func (h Headroom) keep(level int) float64 {
	if !h.holds(level) {
		return 0
	}
	return h.Share
}

// lowest returns the worst level a pass may start a request at, with free
// of slots worker slots free (bands levels in all): before FromBand once
// starting one more held-back request would leave less than the share of
// the slots free.
func (h Headroom) lowest(bands, free, slots int) int {
	if h.Share > 0 && int64(free) <= router.HeldBack(h.Share, int64(slots)) {
		return min(h.FromBand, bands) - 1
	}
	return bands - 1
}

// skipFunc reports that a queue may not be served in this pass (paused, or
// its group refused capacity earlier in the pass).
type skipFunc func(band, gi int) bool

// Aging lifts waiting requests to more important bands: a lane whose oldest
// waiting request has waited k steps is treated as k bands more important,
// up to LimitBand (llmq_settings.aging). Off when Step is 0.
//
// The pass then walks levels instead of bands: at level e it considers, per
// group, the lanes of band e and the lanes of worse bands lifted to e, and
// of these the band whose lane (chosen by fairness) has the oldest head
// goes first: at one level, requests go in the order they arrived. So a
// lifted request overtakes the requests of a better band that arrived after
// it, never those that arrived before it.
//
// The bound. Under a saturating flood of band 0, a band-b request with
// LimitBand 0 reaches level 0 after b steps; from then on it goes before
// every band-0 request that arrived after it. So its wait is at most
// max(b*Step, W) plus the time until a slot of its group frees, where W is
// the wait of the band-0 requests that arrived just before it (with a
// queue deadline, at most router_settings.timeout). A flood that the
// deployments keep up with (W below b*Step) holds it back for b steps at
// most. Its head's arrival is what this process knows: when the hint of
// the oldest request it has not fetched arrived (it remembers up to
// maxArrivals per lane; past them, the store time of the last request it
// fetched, which the next one cannot precede). Requests other processes
// take are not seen, which can only make a lane look older and lift it
// sooner. A lane marked without a hint (at start, by the poll) is not
// lifted until a hint or a fetch tells when its requests arrived.
type Aging struct {
	Step      time.Duration
	LimitBand int
}

// level returns the band a lane of band, whose oldest request arrived at
// since, is treated as at now.
func (a Aging) level(band int, since, now time.Time) int {
	if a.Step <= 0 || band <= a.LimitBand || since.IsZero() {
		return band
	}
	return max(a.LimitBand, band-int(min(now.Sub(since)/a.Step, time.Duration(band))))
}

// pick returns the next queue to fetch from under the order above, at level
// lowest or better (Headroom.lowest): the
// first level (band, or band lifted by aging), then the first group from
// start (rotating) with a lane at that level that wants a fetch and is not
// skipped; of its bands at that level the one whose lane has the oldest
// head, and of that band's lanes at that level the one with the least
// virtual finish time. Without aging a level is just a band. ok is false
// when no lane wants a fetch.
func pick(pairs [][][]pair, fair [][]fairness, start int, skip skipFunc, ag Aging, now time.Time, lowest int) (band, gi, li int, ok bool) {
	bands := len(pairs)
	for level := range min(bands, lowest+1) {
		n := len(pairs[level])
		for i := range n {
			gi := (start + i) % n
			bestB, bestL := -1, -1
			var bestSince time.Time
			for b := level; b < bands; b++ {
				if b > level && ag.Step <= 0 {
					break // without aging only band == level is at level
				}
				ps := pairs[b][gi]
				l := fair[b][gi].next(ps, func(li int) bool { return ag.level(b, ps[li].since, now) == level })
				if l < 0 || (skip != nil && skip(b, gi)) {
					continue
				}
				since := ps[l].since
				if since.IsZero() {
					since = now // not known: as young as can be
				}
				if bestB < 0 || since.Before(bestSince) {
					bestB, bestL, bestSince = b, l, since
				}
			}
			if bestB >= 0 {
				return bestB, gi, bestL, true
			}
		}
	}
	return 0, 0, 0, false
}

// fairness shares one band and group between its tenant lanes by weight, in
// tokens served: start-time fair queueing over the lanes. Each lane has a
// virtual finish time vt, advanced by every request it is served by
// tokens/weight; the lane that wants a fetch with the least vt goes next,
// and v, the pool's virtual time, is the vt of the last lane picked. A
// lane that becomes pending starts at max(its vt, v): an idle lane earns no
// credit (a tenant that was away does not then take everything), and a
// lane alone gets everything (work-conserving).
//
// Tokens are known only after a call, and other processes serve too. So a
// lane is charged in three steps: at the pick, its usual size (the decaying
// largest recent estimate, as the shared limiter's guess); when the message
// is read, corrected to its estimate (prompt estimate plus max_tokens); when
// the served-tokens hint of the call comes back (every process hears every
// process's hints: Pool.served), corrected to the tokens served. Hints of
// other processes are charged whole. The unfairness bound this gives is in
// the package doc.
type fairness struct {
	vt     [lanes]float64
	weight [lanes]float64
	size   [lanes]int64 // the lane's usual request size, charged at a pick
	v      float64
}

func newFairness(defaultSize int64) fairness {
	var f fairness
	for i := range f.weight {
		f.weight[i] = 1
		f.size[i] = max(defaultSize, 1)
	}
	return f
}

// next returns the lane (index) of ps that wants a fetch, and is one of
// those in (nil: all), with the least virtual finish time (ties: the lower
// index), or -1.
func (f *fairness) next(ps []pair, in func(li int) bool) int {
	best := -1
	for li := range ps {
		if ps[li].wants() && (in == nil || in(li)) && (best < 0 || f.vt[li] < f.vt[best]) {
			best = li
		}
	}
	return best
}

// activate starts a lane that becomes pending at the pool's virtual time,
// unless it is ahead of it.
func (f *fairness) activate(li int) { f.vt[li] = max(f.vt[li], f.v) }

// pick records that lane li was picked: the virtual time moves to its vt,
// and it is charged its usual size, which pick returns.
func (f *fairness) pick(li int) int64 {
	f.v = max(f.v, f.vt[li])
	f.vt[li] += float64(f.size[li]) / f.weight[li]
	return f.size[li]
}

// charge adds d (tokens divided by the lane's weight; negative to correct)
// to lane li's virtual finish time.
func (f *fairness) charge(li int, d float64) { f.vt[li] += d }

// saw folds a request's estimate into the lane's usual size (the largest
// recent one, decaying by 1/32 a request).
func (f *fairness) saw(li int, estimate int64) {
	f.size[li] = max(estimate, f.size[li]-f.size[li]/32, 1)
}

// setWeight sets the weight of the lane's tenant (the last one seen in it).
func (f *fairness) setWeight(li int, w float64) {
	if w > 0 {
		f.weight[li] = w
	}
}
