// Package waitstats keeps the queue waits a gateway saw over the last
// minute, per band, for the queue page and GET /v1/queue: how many requests
// it answered after a worker picked them up, and the median and 99th
// percentile of how long they waited for that pickup. A request still
// waiting, or still at its provider, counts once it is answered.
//
// A Window is safe for concurrent use. Each band keeps at most PerBand of
// its most recent waits: past that many pickups a minute in one band, the
// quantiles are those of the latest PerBand (Count still counts them all).
// It sees only the requests of the process that records them; with several
// gateways, each shows its own callers' waits (the Prometheus histogram
// llmq_queue_wait_seconds sums them all).
package waitstats

import (
	"slices"
	"sync"
	"time"
)

// Span is how far back a Window looks.
const Span = time.Minute

// PerBand is how many waits a band keeps.
const PerBand = 4096

// Band is one band's waits over the last Span.
type Band struct {
	Band  int   `json:"band"`
	Count int   `json:"count"`
	P50Ms int64 `json:"p50_ms"`
	P99Ms int64 `json:"p99_ms"`
}

// Window is the waits of the last Span, per band.
type Window struct {
	mu    sync.Mutex
	bands map[int]*ring
}

type sample struct {
	at   time.Time
	wait time.Duration
}

// ring holds a band's latest samples, oldest at next once full.
type ring struct {
	s    []sample
	next int
	// secs counts the pickups of the last Span by Unix second, for Count
	// beyond the ring.
	secs map[int64]int
}

// New returns an empty Window.
func New() *Window { return &Window{bands: map[int]*ring{}} }

// Add records that a request of band, answered at at, waited wait for its
// pickup.
func (w *Window) Add(band int, at time.Time, wait time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r, ok := w.bands[band]
	if !ok {
		r = &ring{secs: map[int64]int{}}
		w.bands[band] = r
	}
	if len(r.s) < PerBand {
		r.s = append(r.s, sample{at, wait})
	} else {
		r.s[r.next] = sample{at, wait}
		r.next = (r.next + 1) % PerBand
	}
	r.secs[at.Unix()]++
	if len(r.secs) > int(Span/time.Second)+1 {
		for sec := range r.secs {
			if sec <= at.Add(-Span).Unix() {
				delete(r.secs, sec)
			}
		}
	}
}

// Read returns, by band, the requests answered in the Span before now and their
// waits' median and 99th percentile (nearest rank); bands without any are
// left out.
func (w *Window) Read(now time.Time) []Band {
	w.mu.Lock()
	defer w.mu.Unlock()
	from := now.Add(-Span)
	var out []Band
	var waits []time.Duration
	for band, r := range w.bands {
		waits = waits[:0]
		for _, s := range r.s {
			if s.at.After(from) {
				waits = append(waits, s.wait)
			}
		}
		if len(waits) == 0 {
			continue
		}
		count := 0
		for sec, n := range r.secs {
			if sec > from.Unix() {
				count += n
			}
		}
		slices.Sort(waits)
		out = append(out, Band{Band: band, Count: max(count, len(waits)),
			P50Ms: rank(waits, 0.50).Milliseconds(), P99Ms: rank(waits, 0.99).Milliseconds()})
	}
	slices.SortFunc(out, func(a, b Band) int { return a.Band - b.Band })
	return out
}

// rank is the nearest-rank q-quantile of sorted.
func rank(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted)) + 0.999999)
	return sorted[min(max(i, 1), len(sorted))-1]
}
