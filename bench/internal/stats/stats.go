// Package stats summarises latency samples: nearest-rank percentiles and the
// median of repeated runs.
package stats

import (
	"slices"
	"time"
)

// Summary describes one set of requests.
type Summary struct {
	Count  int // requests sent
	Errors int // requests that did not end with 200
	// Percentiles of the latency of the successful requests.
	P50, P90, P99, Max time.Duration
}

// Summarize sorts ok (the latencies of the successful requests) in place and
// returns its summary; errors is the number of failed requests.
func Summarize(ok []time.Duration, errors int) Summary {
	slices.Sort(ok)
	s := Summary{Count: len(ok) + errors, Errors: errors}
	if len(ok) > 0 {
		s.P50, s.P90, s.P99 = Percentile(ok, 50), Percentile(ok, 90), Percentile(ok, 99)
		s.Max = ok[len(ok)-1]
	}
	return s
}

// Percentile returns the nearest-rank p-th percentile (0 < p <= 100) of
// sorted, or 0 when it is empty.
func Percentile[T ~int64 | ~float64 | ~int](sorted []T, p float64) T {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999999) // ceil
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// Median returns the median of xs (the mean of the two middle values for an
// even count), or 0 when xs is empty. xs is not modified.
func Median[T ~int64 | ~float64](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
