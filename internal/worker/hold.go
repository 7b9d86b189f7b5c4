package worker

import (
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// Holding requests for a caller that is away
//
// A pickup or an answer that finds nobody on the caller's inbox ("no
// responders") does not mean the caller is gone: its gateway may be
// reconnecting to NATS (a network blip, a NATS node restart, a cluster
// failover), and a caller that is back must still get its answer. The
// worker cannot tell a reconnecting gateway from a dead one, so it holds
// the request for as long as the caller said it would wait:
//
//   - a call: a heartbeat that finds nobody on the inbox does not cancel
//     it (as it does for a caller that is gone), so that its answer can be
//     held.
//   - an answer until the request's answer deadline (Llmq-Answer-Deadline),
//     sent again retryGap apart, the gap doubling up to maxHoldGap. Only the
//     answer's memory and the message's keep-alive are held; the slot serves
//     other requests meanwhile.
//   - a pickup until the caller stops waiting for one: its queue deadline, or
//     its answer deadline if that is earlier. On the first delivery the slot
//     tries again noResponderRetries times, retryGap apart (a blip shorter
//     than that costs nothing more); then, and at once on a later delivery,
//     the request goes back to the stream with a delayed nak, the delay
//     doubling with each delivery up to maxHoldGap, and this worker publishes
//     a wake-up hint when the delay ends. A dead gateway's requests thus cost
//     a fetch and a pickup every maxHoldGap each until their deadlines, not
//     a slot.
//
// A caller that names neither deadline, or that this worker has not heard
// from (see callers), is held noResponderRetries × retryGap (about five
// seconds), as before the answer deadline travelled. A caller that closed
// for good is not held at all.
const (
	noResponderRetries = 10
	retryGap           = 500 * time.Millisecond
	maxHoldGap         = 4 * time.Second
)

// holdUntil is how long a caller whose wait ends at deadline (zero: it did
// not say) is held, counted from now, the first time nobody was on its
// inbox.
func holdUntil(deadline, now time.Time) time.Time {
	if deadline.IsZero() {
		return now.Add(noResponderRetries * retryGap)
	}
	return deadline
}

// pickupDeadline is when req's caller stops waiting for a pickup.
func pickupDeadline(req *messages.Request) time.Time {
	if req.Deadline.IsZero() || (!req.AnswerDeadline.IsZero() && req.AnswerDeadline.Before(req.Deadline)) {
		return req.AnswerDeadline
	}
	return req.Deadline
}

// holdGap is the wait before try n (from 0) of a held pickup or answer:
// retryGap, doubling up to maxHoldGap.
func holdGap(n int) time.Duration {
	gap := retryGap
	for ; n > 0 && gap < maxHoldGap; n-- {
		gap *= 2
	}
	return min(gap, maxHoldGap)
}

// timesDelivered is how often JetStream delivered m (1 when unknown).
func timesDelivered(m *pulled) uint64 {
	md, err := m.msg.Metadata()
	if err != nil || md.NumDelivered < 1 {
		return 1
	}
	return md.NumDelivered
}

// nakLater hands m back to JetStream to be delivered again after a delay
// that grows with its deliveries (at most maxHoldGap, and not past the
// caller's wait for a pickup), and publishes a wake-up hint when the delay
// ends: a redelivery announces itself to no worker. A worker that stops
// meanwhile leaves the request to the safety-net poll.
func (p *Pool) nakLater(m *pulled, req *messages.Request) {
	delay := holdGap(int(timesDelivered(m)))
	if d := pickupDeadline(req); !d.IsZero() {
		delay = min(delay, max(time.Until(d), 0))
	}
	if delay <= 0 {
		p.nakAndHint(m, req)
		return
	}
	_ = m.NakWithDelay(delay)
	wake := p.opts.Subjects.WakeLane(req.Band, req.Group, messages.Lane(req.Tenant))
	// A little after the server's own timer, which starts when it gets the nak.
	time.AfterFunc(delay+hintLag, func() { _ = p.nc.Publish(wake, nil) })
}

// hintLag is how long after a delayed nak's delay its wake-up hint goes out.
const hintLag = 25 * time.Millisecond

// callers is what a pool knows of the callers' inboxes, by inbox prefix
// (one per pkg/client.Client): when one last answered a pickup or confirmed
// an answer, and whether it closed for good (pkg/client.Close publishes its
// prefix on Subjects.Gone). A caller is held for a reconnect only if it was
// heard from within knownFor and did not close: a worker that started after
// a gateway stopped, or missed its announcement, holds that gateway's
// requests only briefly, so they leave the queue instead of waiting for
// their deadlines. A caller that crashed says nothing, and workers that
// knew it hold its requests until their deadlines.
type callers struct {
	mu sync.Mutex
	by map[string]callerState
}

type callerState struct {
	seen   time.Time // last sign of life
	closed bool
}

// knownFor is how long a caller counts as known after its last sign of
// life (longer than a caller plausibly waits for an answer); maxCallers
// bounds the memory.
const (
	knownFor   = time.Hour
	maxCallers = 10_000
)

// inboxPrefix is the caller part of an inbox subject (its last token is the
// request id).
func inboxPrefix(inbox string) string {
	if i := strings.LastIndexByte(inbox, '.'); i > 0 {
		return inbox[:i]
	}
	return ""
}

// heard records a sign of life of the caller whose inbox prefix is prefix,
// or, with closed, that it closed for good.
func (c *callers) heard(prefix string, closed bool) {
	if prefix == "" {
		return
	}
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.by[prefix]; ok && !closed && !st.closed && now.Sub(st.seen) < time.Second {
		return // recent enough: no write on every request
	}
	if c.by == nil {
		c.by = make(map[string]callerState)
	}
	if len(c.by) >= maxCallers {
		for k, st := range c.by {
			if now.Sub(st.seen) > knownFor || len(c.by) >= maxCallers {
				delete(c.by, k)
			}
		}
	}
	c.by[prefix] = callerState{seen: now, closed: closed}
}

// known reports whether the caller whose inbox is inbox may be reconnecting:
// it was heard from within knownFor and did not close.
func (c *callers) known(inbox string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.by[inboxPrefix(inbox)]
	return ok && !st.closed && time.Since(st.seen) <= knownFor
}

// closed reports whether the caller whose inbox is inbox closed for good.
func (c *callers) closed(inbox string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.by[inboxPrefix(inbox)].closed
}

// mayReconnect reports whether nobody on inbox may mean that its caller is
// reconnecting: a caller heard from lately, or a batch line, whose answer
// any gateway takes and which no process ever announces gone (see
// internal/batch); a batch line is held until its batch expires.
func (p *Pool) mayReconnect(inbox string) bool {
	return p.callers.known(inbox) || p.opts.Subjects.IsBatchReply(inbox)
}

// onGone records a caller that closed; the payload is its inbox prefix.
func (p *Pool) onGone(m *nats.Msg) {
	if n := len(m.Data); n > 0 && n <= 256 {
		p.callers.heard(string(m.Data), true)
	}
}

// holdFor is until when a pickup or answer to inbox that found nobody there
// at now may be tried again, for a caller whose wait ends at deadline.
func (p *Pool) holdFor(inbox string, deadline, now time.Time) time.Time {
	if !p.mayReconnect(inbox) {
		deadline = time.Time{}
	}
	return holdUntil(deadline, now)
}
