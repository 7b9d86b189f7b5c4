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
// asking: the worker tells the caller with a "started" event as the call
// starts (one message, nothing waits for it), which carries what a pickup
// carries (the control subject, the deployment, when JetStream would
// redeliver), so the caller knows its request is served, can cancel it,
// and can announce its redelivery if the worker dies (pkg/client).
//
// A caller that gives up a request before its notify time publishes the
// request's reply subject on Subjects.Left. Every worker process hears it:
// it remembers it for 2×NotifyWindow (leftSet) and asks the caller, rather
// than starting the request, if it takes it later; and it stops a call of
// it already started. So no provider is called for a caller that left,
// except one that left in the moment before the pickup (less than the time
// its announcement takes to reach the worker), whose call stops as soon as
// the announcement arrives, or the caller answers the "started" event with
// a cancel.
//
// Only a caller this worker has heard from lately (callers, hold.go) is
// not asked: one it does not know may have closed before this worker
// started, and its first requests are asked as before. A "started" event
// that finds nobody on the caller's inbox (NATS answers "no responders")
// stops the call at once, and the request is held as a pickup that found
// nobody would be (hold.go).
//
// A redelivery, a request the caller may have parked (pkg/client never
// lets a worker start one without asking once it may be parked), one past
// its notify time, and one whose queue deadline is less than NotifyWindow
// away are picked up with the round trip as before.

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
// subject. A call of it that this worker started without asking stops.
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
	if !req.Deadline.IsZero() && req.Deadline.Sub(now) < messages.NotifyWindow {
		// Its caller may give up at its deadline while "started" is on
		// the way: the round trip decides exactly.
		return false
	}
	md, err := m.msg.Metadata()
	if err != nil || md.NumDelivered != 1 || now.Sub(md.Timestamp) >= messages.NotifyWindow {
		return false
	}
	// A caller this worker has not heard from (it may have closed before
	// this worker started) is asked.
	return p.callers.known(req.ReplyTo) && !p.left.has(req.ReplyTo, now)
}

// notifyStarted tells the caller that its request was started without
// asking, naming the control subject it can cancel the call on. Nobody on
// the caller's inbox makes NATS answer "no responders" on startedSubject.
func (p *Pool) notifyStarted(req *messages.Request, control, deployment string) {
	msg := messages.EventMsg(req.ReplyTo, messages.EventStarted, 0, nil)
	msg.Header[messages.HeaderControl] = []string{control}
	msg.Header[messages.HeaderDeployment] = []string{deployment}
	messages.SetRedeliverIn(msg, p.keeper.redeliverIn(control, time.Now()))
	msg.Reply = p.startedSubject(req.ID)
	_ = p.nc.PublishMsg(msg)
}

// startedSubject is the reply subject of the "started" event of request id.
func (p *Pool) startedSubject(id string) string { return p.control + ".s." + id }

// onStartedBounce stops a call whose "started" event found nobody on the
// caller's inbox: the request is then held as a pickup that found nobody
// (start, errNobody).
func (p *Pool) onStartedBounce(m *nats.Msg) {
	if m.Header.Get("Status") != "503" {
		return
	}
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if cancel, ok := p.calls.Load(id); ok {
		cancel.(context.CancelCauseFunc)(errNobody)
	}
}
