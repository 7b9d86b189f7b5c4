package stats

import (
	"slices"
	"sort"
	"time"
)

// Wait is one request's stay in the queue.
type Wait struct {
	Enqueued time.Time // when the client sent it
	Picked   time.Time // when a worker picked it up; zero if it never was
}

// Inversions counts priority inversions between a more important and a less
// important class of requests: the pairs (h, l), h from high and l from low,
// where l was picked up while h was already waiting and h was picked up only
// after l:
//
//	h.Enqueued + tol < l.Picked  and  l.Picked + tol < h.Picked
//
// A request of high that was never picked up counts as picked up at the end
// of time. Requests of low that were never picked up cannot invert anything.
// tol absorbs the clock's granularity (the gateway reports queue time in whole
// milliseconds) and the HTTP transit between sending and enqueueing.
func Inversions(high, low []Wait, tol time.Duration) int {
	picked := make([]time.Time, 0, len(low))
	for _, l := range low {
		if !l.Picked.IsZero() {
			picked = append(picked, l.Picked)
		}
	}
	slices.SortFunc(picked, func(a, b time.Time) int { return a.Compare(b) })
	n := 0
	for _, h := range high {
		from := h.Enqueued.Add(tol)
		// first index with picked > from
		i := sort.Search(len(picked), func(k int) bool { return picked[k].After(from) })
		j := len(picked)
		if !h.Picked.IsZero() {
			until := h.Picked.Add(-tol)
			// first index with picked >= until
			j = sort.Search(len(picked), func(k int) bool { return !picked[k].Before(until) })
		}
		if j > i {
			n += j - i
		}
	}
	return n
}
