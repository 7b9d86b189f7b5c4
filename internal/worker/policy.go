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
//  3. Inside a band and group, the consumer delivers in stream order: first
//     come, first served.
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
// the same group, the queue (b', group) was either empty as far as the
// dispatcher knows, already had as many fetches in flight as messages it is
// known to hold (those fetches take them), paused, or refused capacity —
// and a refused group is refused at every worse band in the same pass. So
// a worse band of a group is never fetched while a better band of the same
// group holds a message the dispatcher knows of and could start. Across
// groups there is no priority to invert: each group has its own
// deployments and limits, and a request can only run on its own group's.
// What the dispatcher knows lags the stream by the time a wake-up hint
// takes to arrive (well under a millisecond on one machine), and a
// message another process hands back is announced by a hint of its own;
// that lag is the only window in which a worse band can go first.

// skipFunc reports that a queue may not be served in this pass (paused, or
// its group refused capacity earlier in the pass).
type skipFunc func(band, gi int) bool

// pick returns the next queue to fetch from under the order above: the first
// band, then the first group from start (rotating), whose queue wants a
// fetch and is not skipped. ok is false when no queue does.
func pick(pairs [][]pair, start int, skip skipFunc) (band, gi int, ok bool) {
	for band := range pairs {
		n := len(pairs[band])
		for i := range n {
			gi := (start + i) % n
			if pairs[band][gi].wants() && (skip == nil || !skip(band, gi)) {
				return band, gi, true
			}
		}
	}
	return 0, 0, false
}
