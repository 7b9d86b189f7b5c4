package worker

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// Starting without asking
//
// A pickup check is a round trip to the caller before every provider call.
// It is needed only when the caller may have left, and a caller that
// published a moment ago almost always still waits. So a request may say
// until when (Llmq-Notify-Until, honoured at most messages.NotifyWindow
// after it was stored) a worker may start it on its first delivery without
// asking. The worker then tells the caller later, and only if it has to:
// a "started" event goes with what would be the call's first heartbeat
// (HeartbeatInterval after the pickup), or startedMargin before the
// request's queue deadline if that is sooner, so the caller never takes a
// request that is being served for one that waits too long. A call that
// ends sooner says when it was picked up on its answer (Llmq-Picked-Ago),
// and costs no event at all.
//
// A caller that gives up a request before its notify time publishes the
// request's reply subject on Subjects.Left. Every worker process hears it:
// it remembers it for 2×NotifyWindow (leftSet) and asks the caller, rather
// than starting the request, if it takes it later; and it stops a call of
// it that it started without asking. So no provider is called for a
// caller that left, except one that left in the moment before the pickup
// (less than the time its announcement takes to reach the worker), whose
// call stops as soon as it arrives.
//
// The request, stored a moment ago, is also the sign of life of its
// caller that an answered pickup would be (callers, hold.go): its answer
// is held while the caller's gateway reconnects. Nobody on the caller's
// inbox is noticed as for any call, by "no responders" to the "started"
// event, a heartbeat or the answer.
//
// A redelivery, a request the caller may have parked (pkg/client never
// lets a worker start one without asking once it may be parked), one past
// its notify time or within 2×startedMargin of its queue deadline are
// picked up with the round trip as before.

// leftSet remembers the requests their callers left while a worker might
// still start them without asking, by reply subject, for leftFor. Safe for
// concurrent use.
type leftSet struct {
	mu    sync.Mutex
	at    map[string]time.Time
	order []leftEntry // oldest first, from head
	head  int
}

type leftEntry struct {
	reply string
	at    time.Time
}

const (
	// leftFor is how long a left request is remembered: past
	// messages.NotifyWindow after its store no worker starts it without
	// asking, and a caller announces it only before then.
	leftFor = 2 * messages.NotifyWindow
	// maxLeft bounds the memory (about 100 bytes an entry); past it the
	// oldest are forgotten first.
	maxLeft = 100_000
)

func (l *leftSet) add(reply string, now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil {
		l.at = make(map[string]time.Time)
	}
	for l.head < len(l.order) && (now.Sub(l.order[l.head].at) >= leftFor || len(l.order)-l.head >= maxLeft) {
		if e := l.order[l.head]; l.at[e.reply].Equal(e.at) {
			delete(l.at, e.reply)
		}
		l.order[l.head] = leftEntry{}
		l.head++
	}
	if l.head > len(l.order)/2 { // reuse the front once half of it is spent
		l.order = append(l.order[:0], l.order[l.head:]...)
		l.head = 0
	}
	l.at[reply] = now
	l.order = append(l.order, leftEntry{reply, now})
}

func (l *leftSet) has(reply string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.at[reply]
	return ok && now.Sub(at) < leftFor
}

// len is how many requests the set remembers.
func (l *leftSet) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.order) - l.head
}

// onLeft records a request its caller left; the payload is its reply
// subject. A call of it that this worker started without asking, and has
// not told its caller of yet, stops.
func (p *Pool) onLeft(m *nats.Msg) {
	n := len(m.Data)
	if n == 0 || n > 512 {
		return
	}
	reply := string(m.Data)
	p.left.add(reply, time.Now())
	id := reply[strings.LastIndexByte(reply, '.')+1:]
	if p.keeper.inboxOf(p.control+"."+id) != reply {
		return
	}
	if cancel, ok := p.calls.Load(id); ok {
		cancel.(context.CancelCauseFunc)(errCallerGone)
	}
}

// mayStartUnasked reports whether req, on m's delivery, may be started
// without a pickup check: its first delivery, before its notify time and
// within messages.NotifyWindow of its store, and not left by its caller.
func (p *Pool) mayStartUnasked(m *pulled, req *messages.Request) bool {
	if req.NotifyUntil.IsZero() {
		return false
	}
	now := time.Now()
	if !now.Before(req.NotifyUntil) {
		return false
	}
	if !req.Deadline.IsZero() && req.Deadline.Sub(now) < 2*startedMargin {
		return false // the caller must hear of it before its deadline: ask
	}
	md, err := m.msg.Metadata()
	if err != nil || md.NumDelivered != 1 || now.Sub(md.Timestamp) >= messages.NotifyWindow {
		return false
	}
	return !p.left.has(req.ReplyTo, now)
}

// startedMargin is how long before a request's queue deadline its
// "started" event goes out at the latest, so that its caller knows it was
// picked up before it would give up on it.
const startedMargin = 500 * time.Millisecond

// notifyLater has the keeper tell the caller that req was started without
// asking: with its first heartbeat, or startedMargin before its queue
// deadline if that is earlier. A call that ends sooner says so with its
// answer (Llmq-Picked-Ago) and sends no event at all.
func (p *Pool) notifyLater(req *messages.Request, control, deployment string, now time.Time) {
	by := now.Add(messages.HeartbeatInterval)
	if dl := req.Deadline.Add(-startedMargin); !req.Deadline.IsZero() && dl.Before(by) {
		by = dl
	}
	p.keeper.notify(control, &startedEvent{by: by, deployment: deployment})
}
