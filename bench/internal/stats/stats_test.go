package stats

import (
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	xs := []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for _, tc := range []struct {
		name string
		p    float64
		want int
	}{
		{"p50", 50, 5},
		{"p90", 90, 9},
		{"p99", 99, 10},
		{"p100", 100, 10},
		{"tiny", 0.1, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Percentile(xs, tc.p); got != tc.want {
				t.Errorf("Percentile(1..10, %v) = %d, want %d", tc.p, got, tc.want)
			}
		})
	}
	if got := Percentile([]int(nil), 50); got != 0 {
		t.Errorf("Percentile(nil) = %d, want 0", got)
	}
}

func TestMedian(t *testing.T) {
	if got := Median([]float64{3, 1, 2}); got != 2 {
		t.Errorf("odd: got %v", got)
	}
	if got := Median([]time.Duration{4, 1, 3, 2}); got != 2 {
		t.Errorf("even: got %v, want 2 (integer mean of 2 and 3)", got)
	}
}

func TestInversions(t *testing.T) {
	t0 := time.Unix(0, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	tol := time.Millisecond
	for _, tc := range []struct {
		name      string
		high, low []Wait
		want      int
	}{
		{"low picked before high arrived", []Wait{{at(10), at(20)}}, []Wait{{at(0), at(5)}}, 0},
		{"low picked while high waited", []Wait{{at(10), at(30)}}, []Wait{{at(0), at(20)}}, 1},
		{"within the margin", []Wait{{at(10), at(30)}}, []Wait{{at(0), at(10)}, {at(0), at(30)}}, 0},
		{"high never picked", []Wait{{at(10), time.Time{}}}, []Wait{{at(0), at(20)}, {at(0), at(900)}}, 2},
		{"low never picked", []Wait{{at(10), at(30)}}, []Wait{{at(0), time.Time{}}}, 0},
		{"pairs add up", []Wait{{at(10), at(50)}, {at(11), at(50)}}, []Wait{{at(0), at(20)}, {at(0), at(40)}}, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Inversions(tc.high, tc.low, tol); got != tc.want {
				t.Errorf("Inversions = %d, want %d", got, tc.want)
			}
		})
	}
}
