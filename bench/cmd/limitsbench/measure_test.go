package main

import (
	"testing"
	"time"
)

func TestBusiest(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tests := []struct {
		name   string
		events []event
		want   int64
	}{
		{"none", nil, 0},
		{"one", []event{{at(0), 3}}, 3},
		{"window is half-open", []event{{at(0), 1}, {at(1000), 1}}, 1},
		{"just inside", []event{{at(0), 1}, {at(999), 1}}, 2},
		{"unsorted, weighted", []event{{at(1500), 5}, {at(0), 1}, {at(900), 2}, {at(2400), 1}}, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := busiest(tc.events, time.Second); got != tc.want {
				t.Errorf("busiest = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestInversions(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	never := time.Time{}
	horizon := at(10_000)
	tests := []struct {
		name      string
		reqs      []tracked
		tol       time.Duration
		want      int
		overtaken int
	}{
		{"priority order", []tracked{{5, at(0), at(300)}, {1, at(10), at(100)}, {3, at(20), at(200)}}, 0, 0, 0},
		{"lower number waits", []tracked{{5, at(0), at(100)}, {1, at(10), at(200)}}, 0, 1, 1},
		{"lower number never served", []tracked{{1, at(0), never}, {5, at(10), at(100)}, {6, at(20), at(200)}}, 0, 2, 1},
		{"enqueued after the dispatch", []tracked{{5, at(0), at(100)}, {1, at(150), at(200)}}, 0, 0, 0},
		{"within the tolerance", []tracked{{5, at(0), at(100)}, {1, at(90), at(200)}}, 20 * time.Millisecond, 0, 0},
		{"beyond the tolerance", []tracked{{5, at(0), at(100)}, {1, at(70), at(200)}}, 20 * time.Millisecond, 1, 1},
		{"equal priorities never invert", []tracked{{3, at(0), at(200)}, {3, at(10), at(100)}}, 0, 0, 0},
		{"dispatched after the horizon counts as waiting", []tracked{{1, at(0), at(20_000)}, {5, at(10), at(100)}}, 0, 1, 1},
		{"one inversion per dispatch", []tracked{{0, at(0), never}, {1, at(1), never}, {9, at(10), at(100)}}, 0, 1, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _, overtaken := inversions(tc.reqs, tc.tol, horizon)
			if got != tc.want || overtaken != tc.overtaken {
				t.Errorf("inversions = %d overtaking %d, want %d overtaking %d", got, overtaken, tc.want, tc.overtaken)
			}
		})
	}
}
