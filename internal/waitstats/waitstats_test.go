package waitstats

import (
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	w := New()
	if got := w.Read(t0); len(got) != 0 {
		t.Fatalf("empty window: %v", got)
	}
	// Band 0: 100 pickups waiting 1..100 ms; band 9: one, long ago.
	w.Add(9, t0, 5*time.Second)
	for i := 1; i <= 100; i++ {
		w.Add(0, t0.Add(30*time.Second), time.Duration(i)*time.Millisecond)
	}
	got := w.Read(t0.Add(40 * time.Second))
	want := []Band{{Band: 0, Count: 100, P50Ms: 50, P99Ms: 99}, {Band: 9, Count: 1, P50Ms: 5000, P99Ms: 5000}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("Read: %+v, want %+v", got, want)
	}
	// A minute after band 9's pickup it is gone; band 0's stay.
	got = w.Read(t0.Add(Span + time.Second))
	if len(got) != 1 || got[0].Band != 0 || got[0].Count != 100 {
		t.Fatalf("after a minute: %+v, want band 0 only", got)
	}
	if got := w.Read(t0.Add(2 * Span)); len(got) != 0 {
		t.Fatalf("after two minutes: %+v, want nothing", got)
	}
}

// TestWindowBounded: past PerBand pickups in a minute the quantiles are the
// latest PerBand's, and Count still counts every pickup.
func TestWindowBounded(t *testing.T) {
	t0 := time.Unix(2_000_000, 0)
	w := New()
	for i := range 3 * PerBand {
		wait := time.Second // the oldest two rounds wait 1 s ...
		if i >= 2*PerBand {
			wait = time.Millisecond // ... the latest 1 ms
		}
		w.Add(3, t0.Add(time.Duration(i)*time.Millisecond), wait)
	}
	got := w.Read(t0.Add(20 * time.Second))
	if len(got) != 1 || got[0].Count != 3*PerBand || got[0].P99Ms != 1 {
		t.Fatalf("Read: %+v, want count %d and p99 1 ms", got, 3*PerBand)
	}
}
