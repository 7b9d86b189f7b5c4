package worker

// The dispatch policy: which queue a free slot is given a fetch of next.
// The dispatcher (dispatch.go) alone calls it, with the state it alone
// owns; nothing here blocks or touches the network, so it is tested as a
// table of states (policy_test.go).
//
// # The order
//
//  1. Bands strictly, 0 first. A band is looked at only when no better band
//     has a queue that wants a fetch (pair.wants) and may be served now.
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
// worse band can go first.

// skipFunc reports that a queue may not be served in this pass (paused, or
// its group refused capacity earlier in the pass).
type skipFunc func(band, gi int) bool

// pick returns the next queue to fetch from under the order above: the first
// band, then the first group from start (rotating), with a lane that wants
// a fetch and is not skipped, and of its lanes that want one the one with
// the least virtual finish time. ok is false when no lane wants a fetch.
func pick(pairs [][][]pair, fair [][]fairness, start int, skip skipFunc) (band, gi, li int, ok bool) {
	for band := range pairs {
		n := len(pairs[band])
		for i := range n {
			gi := (start + i) % n
			li := fair[band][gi].next(pairs[band][gi])
			if li >= 0 && (skip == nil || !skip(band, gi)) {
				return band, gi, li, true
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

// next returns the lane (index) of ps that wants a fetch with the least
// virtual finish time (ties: the lower index), or -1.
func (f *fairness) next(ps []pair) int {
	best := -1
	for li := range ps {
		if ps[li].wants() && (best < 0 || f.vt[li] < f.vt[best]) {
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
