package worker

import (
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

func TestHoldGap(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	for n, w := range want {
		if got := holdGap(n); got != w {
			t.Errorf("holdGap(%d) = %s, want %s", n, got, w)
		}
	}
	if got := holdGap(1 << 30); got != maxHoldGap {
		t.Errorf("holdGap(huge) = %s, want %s", got, maxHoldGap)
	}
}

func TestPickupDeadline(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	queue, answer := now.Add(time.Minute), now.Add(2*time.Minute)
	for _, tt := range []struct {
		name          string
		queue, answer time.Time
		want          time.Time
	}{
		{"neither", time.Time{}, time.Time{}, time.Time{}},
		{"queue only", queue, time.Time{}, queue},
		{"answer only", time.Time{}, answer, answer},
		{"queue first", queue, answer, queue},
		{"answer first", answer, queue, queue},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := pickupDeadline(&messages.Request{Deadline: tt.queue, AnswerDeadline: tt.answer})
			if !got.Equal(tt.want) {
				t.Errorf("pickupDeadline = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestCallers: a caller is held for a reconnect only once it was heard
// from, and no longer once it closed.
func TestCallers(t *testing.T) {
	var c callers
	const inbox = "_INBOX.abc.def.req-1"
	if c.known(inbox) || c.closed(inbox) {
		t.Fatal("a caller never heard from is known or closed")
	}
	c.heard(inboxPrefix(inbox), false)
	if !c.known(inbox) || c.closed(inbox) {
		t.Error("a caller heard from is not known, or closed")
	}
	if !c.known("_INBOX.abc.def.req-2") {
		t.Error("another request of the same caller is not known")
	}
	if c.known("_INBOX.abc.xyz.req-1") {
		t.Error("another caller is known")
	}
	c.heard("_INBOX.abc.def", true)
	if c.known(inbox) || !c.closed(inbox) {
		t.Error("a caller that closed is still known, or not closed")
	}
	for i := range maxCallers + 10 {
		c.heard("_INBOX.many."+string(rune('a'+i%26))+time.Duration(i).String(), false)
	}
	if n := len(c.by); n > maxCallers {
		t.Errorf("%d callers remembered, want at most %d", n, maxCallers)
	}
}

// TestBatchLinesMayReconnect: a batch line's reply subject is held for a
// reconnect (until its batch expires) although no worker heard from it: any
// gateway, started at any time, answers it.
func TestBatchLinesMayReconnect(t *testing.T) {
	subjects, err := messages.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	p := &Pool{opts: Options{Subjects: subjects}}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	expires := now.Add(24 * time.Hour)
	if got := p.holdFor(subjects.BatchReply("batch_x", 7), expires, now); !got.Equal(expires) {
		t.Errorf("a batch line is held until %v, want its expiry %v", got, expires)
	}
	if got := p.holdFor("_INBOX.abc.def.req-1", expires, now); !got.Equal(now.Add(noResponderRetries * retryGap)) {
		t.Errorf("an unknown caller is held until %v, want the short default", got)
	}
}
