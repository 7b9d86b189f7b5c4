package main

import (
	"slices"
	"time"
)

// event is something that happened at a time and counts units (one call,
// or its tokens).
type event struct {
	at    time.Time
	units int64
}

// busiest returns the largest sum of units of the events in any half-open
// window [s, s+period). Any window can slide right until it starts at its
// first event without losing one, so trying the event times as starts is
// enough.
func busiest(events []event, period time.Duration) int64 {
	ev := slices.Clone(events)
	slices.SortFunc(ev, func(a, b event) int { return a.at.Compare(b.at) })
	var best, cur int64
	j := 0
	for i := range ev {
		for j < len(ev) && ev[j].at.Before(ev[i].at.Add(period)) {
			cur += ev[j].units
			j++
		}
		best = max(best, cur)
		cur -= ev[i].units
	}
	return best
}

// sumIn adds the units of the events in [from, to).
func sumIn(events []event, from, to time.Time) int64 {
	var n int64
	for _, e := range events {
		if !e.at.Before(from) && e.at.Before(to) {
			n += e.units
		}
	}
	return n
}

// tracked is one request as the benchmark follows it.
type tracked struct {
	priority   int
	enqueued   time.Time // zero: never seen stored
	dispatched time.Time // zero: never reached the upstream
}

// inversions counts the dispatches of requests of priority p that happened
// while a request of priority < p was waiting: enqueued more than tol before
// the dispatch and dispatched after it, or never. Only dispatches before
// horizon count, and a dispatch at or after horizon counts as never.
// overtaken is how many distinct requests such dispatches went ahead of: one
// request left waiting makes every later dispatch of a less important one an
// inversion, so the two numbers tell a few stuck requests from a steady
// disorder. Priorities must be small non-negative numbers.
func inversions(reqs []tracked, tol time.Duration, horizon time.Time) (inverted, dispatches, overtaken int) {
	type ev struct {
		at    time.Time
		enq   bool // an enqueue (at + tol) rather than a dispatch
		index int
	}
	var evs []ev
	maxPrio := 0
	for i, r := range reqs {
		maxPrio = max(maxPrio, r.priority)
		if !r.enqueued.IsZero() {
			evs = append(evs, ev{at: r.enqueued.Add(tol), enq: true, index: i})
		}
		if !r.dispatched.IsZero() && r.dispatched.Before(horizon) {
			evs = append(evs, ev{at: r.dispatched, index: i})
		}
	}
	// At equal times a dispatch is judged before the enqueue: "more than tol
	// before" is strict.
	slices.SortStableFunc(evs, func(a, b ev) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		switch {
		case a.enq == b.enq:
			return 0
		case a.enq:
			return 1
		default:
			return -1
		}
	})
	waiting := make([]map[int]bool, maxPrio+1) // per priority: the requests waiting
	for p := range waiting {
		waiting[p] = map[int]bool{}
	}
	victim := make([]bool, len(reqs))
	for _, e := range evs {
		r := reqs[e.index]
		if e.enq {
			if !r.dispatched.IsZero() && !e.at.Before(r.dispatched) && r.dispatched.Before(horizon) {
				continue // dispatched before it was "waiting" in this sense
			}
			waiting[r.priority][e.index] = true
			continue
		}
		dispatches++
		inv := false
		for q := range r.priority {
			for j := range waiting[q] {
				inv = true
				if !victim[j] {
					victim[j] = true
					overtaken++
				}
			}
		}
		if inv {
			inverted++
		}
		delete(waiting[r.priority], e.index)
	}
	return inverted, dispatches, overtaken
}
