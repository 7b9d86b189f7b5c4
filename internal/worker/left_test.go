package worker

import (
	"strconv"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/messages"
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

// TestKeeperStarted: the "started" event of a request started without
// asking goes out with its first heartbeat, or earlier when its by time
// comes first (before its caller's queue deadline), once; and not at all
// once the answer is out (quiet).
func TestKeeperStarted(t *testing.T) {
	k := newKeeper(nil, 30*time.Second)
	t0 := time.Now()
	// at returns what is due for the request held under ctl at now.
	at := func(ctl string, now time.Time) (started, beat bool) {
		t.Helper()
		out, _ := k.collect(now)
		for _, a := range out {
			if a.e.control == ctl {
				return a.started != nil, a.beats
			}
		}
		return false, false
	}
	k.hold(&pulled{}, "_INBOX.c.1", "ctl.1")
	k.notify("ctl.1", &startedEvent{by: t0.Add(time.Hour), deployment: "d"})
	if s, b := at("ctl.1", t0.Add(messages.HeartbeatInterval/2)); s || b {
		t.Errorf("half a heartbeat in: started %v, heartbeat %v; want neither", s, b)
	}
	if s, _ := at("ctl.1", t0.Add(messages.HeartbeatInterval+time.Millisecond)); !s {
		t.Error("started does not go with the first heartbeat")
	}
	if s, b := at("ctl.1", t0.Add(2*messages.HeartbeatInterval+2*time.Millisecond)); s || !b {
		t.Errorf("second heartbeat: started %v, heartbeat %v; want a plain heartbeat", s, b)
	}

	k.hold(&pulled{}, "_INBOX.c.2", "ctl.2")
	k.notify("ctl.2", &startedEvent{by: t0.Add(100 * time.Millisecond), deployment: "d"})
	if s, _ := at("ctl.2", t0.Add(100*time.Millisecond)); !s {
		t.Error("started does not go at its by time, before the first heartbeat")
	}

	k.hold(&pulled{}, "_INBOX.c.3", "ctl.3")
	k.notify("ctl.3", &startedEvent{by: t0.Add(100 * time.Millisecond), deployment: "d"})
	k.quiet("ctl.3")
	if s, b := at("ctl.3", t0.Add(time.Hour)); s || b {
		t.Errorf("the answer is out, yet started %v, heartbeat %v are due", s, b)
	}
}
