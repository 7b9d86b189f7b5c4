package worker

import (
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/llmq/llmq/pkg/messages"
)

// replyOutcome is what became of a final answer.
type replyOutcome int

const (
	replyConfirmed   replyOutcome = iota // the caller has it
	replyNobody                          // nobody listens on the caller's inbox any more
	replyUnconfirmed                     // unknown: the request must be served again
)

// deliveries are the final answers sent and not yet settled. The slot that
// served a request goes on to the next one as soon as the answer is out;
// what became of the answer settles the message later, on the pool's
// confirm subscription or a timer. In-flight deliveries count in
// Pool.inFlight, so a drain waits for them.
//
// An answer whose caller acks the request itself (messages.HeaderCallerAcks:
// pkg/client's requests) carries the request's ack subject and is not
// confirmed: it counts as delivered unless NATS answers "no responders" to
// it within PickupTimeout (nobody on the caller's inbox: it is held as
// below). Should it still be lost (the caller's connection dropped it), the
// caller neither acks nor answers, and the request is redelivered once its
// keep-alive stops and served again for the caller that still waits.
type deliveries struct {
	mu      sync.Mutex
	pending map[string]*delivery // by the token of its confirm subject
}

// delivery is one final answer waiting for its confirmation.
type delivery struct {
	msg      *nats.Msg // the answer; its reply subject is the confirm subject
	deadline time.Time // the caller's answer deadline; zero if it gave none
	timeouts int       // sends not confirmed in time
	nobody   int       // sends that found nobody on the caller's inbox
	hold     time.Time // until when nobody on the inbox may mean "reconnecting"; set at the first
	acked    bool      // the caller acks the request: only "no responders" is heard of
	gen      int       // raised when a timer is set or the delivery ends: older timers do nothing
	timer    *time.Timer
	settle   func(replyOutcome)
}

// deliver sends the final answer to the caller's inbox as a request that
// the caller confirms, and calls settle once with what became of it, from
// another goroutine. An answer that finds nobody on the inbox is sent again
// (the caller's gateway may be reconnecting) until the caller's answer
// deadline (see hold.go); one that is not confirmed within PickupTimeout is
// sent again up to 2×noResponderRetries times. An answer with rep.Ack set
// is not confirmed: its caller acks the request instead, and it settles as
// replyConfirmed unless nobody was on the inbox.
func (p *Pool) deliver(inbox string, deadline time.Time, rep *messages.Reply, settle func(replyOutcome)) {
	token := nuid.Next()
	msg := messages.ReplyMsg(inbox, rep)
	msg.Reply = p.confirmSubject(token)
	d := &delivery{msg: msg, deadline: deadline, settle: settle, acked: rep.Ack != ""}
	p.inFlight.Add(1)
	p.delivered.mu.Lock()
	p.delivered.pending[token] = d
	p.delivered.mu.Unlock()
	p.send(token)
}

// ackedDrainWait is how long an answer whose caller acks the request waits
// for a "no responders" once the pool drains, instead of PickupTimeout, so
// that a stopping worker does not wait for answers that went out. One whose
// "no responders" comes later is lost to its caller; the request is then
// redelivered and served again.
const ackedDrainWait = 100 * time.Millisecond

// drainAcked shortens the wait of the answers out whose callers ack their
// requests to ackedDrainWait (the pool drains).
func (p *Pool) drainAcked() {
	p.draining.Store(true)
	p.delivered.mu.Lock()
	defer p.delivered.mu.Unlock()
	for _, d := range p.delivered.pending {
		if d.acked && d.nobody == 0 && d.timer != nil {
			d.timer.Reset(ackedDrainWait)
		}
	}
}

func (p *Pool) confirmSubject(token string) string { return p.control + ".r." + token }

// send publishes the delivery's answer and waits PickupTimeout for the
// confirmation.
func (p *Pool) send(token string) {
	p.delivered.mu.Lock()
	d := p.delivered.pending[token]
	if d == nil {
		p.delivered.mu.Unlock()
		return
	}
	d.gen++
	gen := d.gen
	wait := p.opts.PickupTimeout
	if d.acked && p.draining.Load() {
		wait = ackedDrainWait
	}
	d.timer = time.AfterFunc(wait, func() { p.unconfirmed(token, gen, false) })
	p.delivered.mu.Unlock()
	_ = p.nc.PublishMsg(d.msg) // a failed publish shows as a missing confirmation
}

// onConfirm handles the caller's confirmation of an answer, or NATS's "no
// responders" when nobody listens on the caller's inbox.
func (p *Pool) onConfirm(m *nats.Msg) {
	token := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if m.Header.Get("Status") == "503" {
		p.unconfirmed(token, 0, true)
		return
	}
	p.finish(token, replyConfirmed)
}

// unconfirmed sends the answer again after a gap, or gives up. gen is the
// generation of the timer that fired (0: a "no responders" answer, which is
// always current).
func (p *Pool) unconfirmed(token string, gen int, noResponders bool) {
	p.delivered.mu.Lock()
	d := p.delivered.pending[token]
	if d == nil || (gen != 0 && gen != d.gen) {
		p.delivered.mu.Unlock()
		return
	}
	d.timer.Stop()
	now := time.Now()
	gap := retryGap
	if noResponders && d.hold.IsZero() {
		d.hold = p.holdFor(d.msg.Subject, d.deadline, now)
	}
	switch {
	case noResponders && (!now.Before(d.hold) || p.callers.closed(d.msg.Subject)):
		p.delivered.mu.Unlock()
		p.finish(token, replyNobody)
		return
	case noResponders:
		gap = min(holdGap(d.nobody), d.hold.Sub(now))
		d.nobody++
	case d.acked:
		// No "no responders" in PickupTimeout: the caller had it.
		p.delivered.mu.Unlock()
		p.finish(token, replyConfirmed)
		return
	case d.timeouts >= 2*noResponderRetries:
		p.delivered.mu.Unlock()
		p.finish(token, replyUnconfirmed)
		return
	default:
		d.timeouts++
	}
	d.gen++
	d.timer = time.AfterFunc(gap, func() { p.send(token) })
	p.delivered.mu.Unlock()
}

// finish ends a delivery with outcome, once.
func (p *Pool) finish(token string, outcome replyOutcome) {
	p.delivered.mu.Lock()
	d := p.delivered.pending[token]
	if d != nil {
		delete(p.delivered.pending, token)
		d.gen++
		d.timer.Stop()
	}
	p.delivered.mu.Unlock()
	if d == nil {
		return
	}
	if outcome == replyConfirmed {
		p.callers.heard(inboxPrefix(d.msg.Subject), false)
	}
	d.settle(outcome)
	p.inFlight.Done()
}

// abandonDeliveries ends every delivery still waiting for its confirmation
// as unconfirmed (the pool is shutting down): their requests go back to the
// queue, and a caller that did get the answer refuses the next pickup. An
// answer its caller acks, sent and not refused for nobody on the inbox,
// counts as delivered.
func (p *Pool) abandonDeliveries() {
	p.delivered.mu.Lock()
	outcomes := make(map[string]replyOutcome, len(p.delivered.pending))
	for t, d := range p.delivered.pending {
		outcomes[t] = replyUnconfirmed
		if d.acked && d.nobody == 0 {
			outcomes[t] = replyConfirmed
		}
	}
	p.delivered.mu.Unlock()
	for t, o := range outcomes {
		p.finish(t, o)
	}
}
