package worker

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// keeper keeps the requests a pool holds alive: for each, an in-progress
// ack every third of the ack wait, so JetStream does not redeliver it, and a
// heartbeat to its caller every HeartbeatInterval, sent with the request's
// control subject as reply so that a vanished caller is noticed. One
// goroutine does it for all of them, ticking only while some request is
// held: a request costs two map entries, not a goroutine and two tickers.
//
// Each heartbeat (and the pickup, see redeliverIn) tells the caller when
// JetStream would redeliver the request if this worker fell silent: its last
// in-progress ack plus the ack wait. A redelivery publishes no wake-up hint,
// and the worker that could announce it is the one that died; the caller is
// the only party left that knows when it comes, so the caller announces it
// (pkg/client). It costs one header on messages sent anyway, and one hint
// per dead worker's request.
type keeper struct {
	nc       *nats.Conn
	ackWait  time.Duration
	progress time.Duration // in-progress ack interval
	tick     time.Duration // how late a keep-alive may be

	mu        sync.Mutex
	held      map[*kept]struct{}
	byControl map[string]*kept // the latest held under each control subject
	wake      chan struct{}    // the first request held starts the ticking
	out       []due            // send's buffer (run's goroutine only)
}

// kept is one held request.
type kept struct {
	m              *pulled
	inbox, control string
	nextProgress   time.Time
	nextBeat       time.Time
	quiet          bool // no more heartbeats: the caller has its answer
}

func newKeeper(nc *nats.Conn, ackWait time.Duration) *keeper {
	progress := ackWait / 3
	return &keeper{
		nc:       nc,
		ackWait:  ackWait,
		progress: progress,
		// A quarter of the shorter interval: a heartbeat goes out at most
		// 1.25 HeartbeatInterval after the last sign of life, well within
		// the 2 HeartbeatInterval after which a caller may serve a
		// redelivered request again.
		tick:      min(messages.HeartbeatInterval, progress) / 4,
		held:      make(map[*kept]struct{}),
		byControl: make(map[string]*kept),
		wake:      make(chan struct{}, 1),
	}
}

// hold keeps m alive until stop is called.
func (k *keeper) hold(m *pulled, inbox, control string) (stop func()) {
	now := time.Now()
	e := &kept{m: m, inbox: inbox, control: control,
		nextProgress: now.Add(k.progress), nextBeat: now.Add(messages.HeartbeatInterval)}
	k.mu.Lock()
	k.held[e] = struct{}{}
	k.byControl[control] = e
	first := len(k.held) == 1
	k.mu.Unlock()
	if first {
		select {
		case k.wake <- struct{}{}:
		default:
		}
	}
	return func() {
		k.mu.Lock()
		delete(k.held, e)
		if k.byControl[control] == e {
			delete(k.byControl, control)
		}
		k.mu.Unlock()
	}
}

// quiet stops the heartbeats of the request held under control (its answer
// is out); its in-progress acks go on until stop.
func (k *keeper) quiet(control string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e := k.byControl[control]; e != nil {
		e.quiet = true
	}
}

// inboxOf is the caller's inbox of the request held under control, or "".
func (k *keeper) inboxOf(control string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e := k.byControl[control]; e != nil {
		return e.inbox
	}
	return ""
}

// redeliverIn is how long after now JetStream redelivers the request held
// under control if no more in-progress acks go out (the ack wait, when the
// request is not held).
func (k *keeper) redeliverIn(control string, now time.Time) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.byControl[control]
	if e == nil {
		return k.ackWait
	}
	return e.redeliverAt(k).Sub(now)
}

// redeliverAt is when JetStream redelivers e's request if no more
// in-progress acks go out: the last one (or the fetch) plus the ack wait.
// The server starts the ack wait when it receives the ack, a little after
// this worker sent it, so this is a little early; pkg/client allows for that.
func (e *kept) redeliverAt(k *keeper) time.Time {
	return e.nextProgress.Add(k.ackWait - k.progress)
}

// run sends the keep-alives until ctx ends. It must outlive every call and
// delivery of the pool (the drain included).
func (k *keeper) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.wake:
		}
		t := time.NewTicker(k.tick)
		for k.send(time.Now()) {
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		t.Stop()
	}
}

// due is what one held request is due at a tick.
type due struct {
	e               *kept
	progress, beats bool
	redeliverIn     time.Duration // after this tick's in-progress ack, if any
}

// send sends what is due at now and reports whether any request is held.
// The messages go out after the lock is released, so a slow connection
// holds up no slot; one may thus follow a stop, which is harmless: a late
// in-progress ack of a settled message and a heartbeat to a caller that has
// its answer are ignored.
func (k *keeper) send(now time.Time) bool {
	out, held := k.collect(now)
	for _, a := range out {
		if a.progress {
			_ = a.e.m.InProgress()
		}
		if a.beats {
			msg := messages.EventMsg(a.e.inbox, messages.EventAlive, 0, nil)
			msg.Reply = a.e.control
			messages.SetRedeliverIn(msg, a.redeliverIn)
			_ = k.nc.PublishMsg(msg)
		}
	}
	clear(out) // hold no finished request
	k.out = out[:0]
	return held
}

// collect returns what is due at now (in k.out's buffer, which only run's
// goroutine uses) and whether any request is held, and moves the next times
// on as if it was sent.
func (k *keeper) collect(now time.Time) ([]due, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.out[:0]
	for e := range k.held {
		a := due{e: e, progress: !now.Before(e.nextProgress), beats: !e.quiet && !now.Before(e.nextBeat)}
		if a.progress {
			e.nextProgress = now.Add(k.progress)
		}
		if a.beats {
			e.nextBeat = now.Add(messages.HeartbeatInterval)
		}
		a.redeliverIn = e.redeliverAt(k).Sub(now)
		if a.progress || a.beats {
			out = append(out, a)
		}
	}
	return out, len(k.held) > 0
}

// reconnectSettle is how long after this worker's connection came back a
// "no responders" to a heartbeat does not count as the caller being gone.
// On reconnecting, the worker flushes at once the heartbeats it buffered
// while disconnected, and the caller's gateway may still be reconnecting
// (a pickup is tried again for about as long, for the same reason).
const reconnectSettle = 5 * time.Second

// reconnectWatch tells whether the connection reconnected less than
// reconnectSettle ago. It is used only on the control subscription's
// goroutine.
type reconnectWatch struct {
	nc   *nats.Conn
	seen uint64    // reconnects counted so far
	at   time.Time // when a new reconnect was first noticed
}

func (r *reconnectWatch) settling(now time.Time) bool {
	if n := r.nc.Stats().Reconnects; n != r.seen {
		r.seen, r.at = n, now
	}
	return !r.at.IsZero() && now.Sub(r.at) < reconnectSettle
}
