package worker

import (
	"strconv"
	"testing"
	"time"
)

func TestLeftSet(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var l leftSet
	if l.has("_INBOX.a.1", t0) {
		t.Fatal("an empty set has a request")
	}
	l.add("_INBOX.a.1", t0)
	l.add("_INBOX.a.2", t0.Add(leftFor/2))
	cases := []struct {
		name  string
		reply string
		at    time.Time
		want  bool
	}{
		{"just left", "_INBOX.a.1", t0, true},
		{"another request of the same caller", "_INBOX.a.3", t0, false},
		{"just before it is forgotten", "_INBOX.a.1", t0.Add(leftFor - time.Millisecond), true},
		{"once it is forgotten", "_INBOX.a.1", t0.Add(leftFor), false},
		{"a later one is still known", "_INBOX.a.2", t0.Add(leftFor), true},
	}
	for _, c := range cases {
		if got := l.has(c.reply, c.at); got != c.want {
			t.Errorf("%s: has(%q) = %v, want %v", c.name, c.reply, got, c.want)
		}
	}
	// Adding expires the old entries: the memory follows the rate of
	// requests left, not their total.
	l.add("_INBOX.a.4", t0.Add(2*leftFor))
	if n := l.len(); n != 1 || len(l.at) != 1 {
		t.Errorf("after expiry the set holds %d (%d in its map), want 1", n, len(l.at))
	}
}

func TestLeftSetBounded(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	var l leftSet
	for i := range maxLeft + 10 {
		l.add(strconv.Itoa(i), t0)
	}
	if n := l.len(); n != maxLeft || len(l.at) != maxLeft {
		t.Errorf("the set holds %d (%d in its map), want %d", n, len(l.at), maxLeft)
	}
	if l.has("0", t0) || !l.has(strconv.Itoa(maxLeft+9), t0) {
		t.Error("past its bound the set did not forget the oldest first")
	}
}
