package gateway

import "testing"

func TestParkedSet(t *testing.T) {
	var ps parkedSet
	a, b, c := &parked{}, &parked{}, &parked{}
	for _, p := range []*parked{a, b, c} {
		ps.add(p)
	}
	list := func() []*parked {
		var out []*parked
		for p := ps.head; p != nil; p = p.next {
			out = append(out, p)
		}
		return out
	}
	if got := list(); len(got) != 3 || ps.n != 3 {
		t.Fatalf("after three adds: %d listed, n = %d", len(got), ps.n)
	}
	for _, step := range []struct {
		p    *parked
		in   bool
		left []*parked
	}{
		{b, true, []*parked{c, a}}, // middle
		{b, false, []*parked{c, a}},
		{c, true, []*parked{a}}, // head
		{a, true, nil},          // last
		{a, false, nil},
	} {
		if got := ps.remove(step.p); got != step.in {
			t.Errorf("remove reported %v, want %v", got, step.in)
		}
		got := list()
		if len(got) != len(step.left) || ps.n != len(step.left) {
			t.Fatalf("after a remove: %d listed, n = %d, want %d", len(got), ps.n, len(step.left))
		}
		for i := range got {
			if got[i] != step.left[i] {
				t.Fatalf("after a remove: element %d differs", i)
			}
		}
	}
}
