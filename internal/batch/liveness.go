package batch

import (
	"errors"
	"time"

	"github.com/nats-io/nats.go"
)

// Drivers that are gone.
//
// A driver's lease (Options.Lease) is the safety net: it runs out however
// the driver was lost. It is long, since renewing it costs a write. But a
// process that dies (SIGKILL, a crash, its machine) loses its NATS
// connection at once, and with it its subscriptions. So every process that
// runs a Service answers on an inbox of its own (record.DriverInbox), and a
// process that sees a batch held by another driver asks that inbox, once a
// tick: NATS answers "no responders" at once when nobody listens there. A
// driver found missing on every ask for Options.DriverGone is taken over
// without waiting for its lease. That wait covers a driver that is only
// reconnecting (a NATS restart, a cluster node lost): its subscriptions
// come back with its connection.
//
// Taking over from a driver that was alive after all is safe, as after a
// lease that ran out: records are written with compare-and-set, so the old
// driver stops at its next step; a line both queue has one Nats-Msg-Id
// (its request id), so JetStream keeps one copy within its dedupe window;
// and a line ends once, with compare-and-set, in the lines bucket, however
// often it is delivered.

// answerProbes answers other processes' asks on this process's inbox until
// the returned subscription is unsubscribed.
func (s *Service) answerProbes() (*nats.Subscription, error) {
	return s.nc.Subscribe(s.inbox, func(m *nats.Msg) { _ = m.Respond(nil) })
}

// probes is the Run loop's view of other drivers' inboxes; only the Run
// loop uses it.
type probes struct {
	nc      *nats.Conn
	timeout time.Duration // of one ask
	grace   time.Duration // Options.DriverGone
	missing map[string]time.Time
	asked   map[string]bool // this tick's findings: inbox → gone
}

func newProbes(nc *nats.Conn, timeout, grace time.Duration) *probes {
	return &probes{nc: nc, timeout: timeout, grace: grace, missing: map[string]time.Time{}}
}

// tick starts a tick: each inbox is asked at most once per tick, and an
// inbox no batch names any more is forgotten.
func (p *probes) tick() {
	for inbox := range p.missing {
		if _, ok := p.asked[inbox]; !ok {
			delete(p.missing, inbox)
		}
	}
	p.asked = map[string]bool{}
}

// gone reports whether nobody has answered on inbox, at any ask, for the
// grace period up to now. An ask without an answer in time proves nothing
// (the driver may be busy, or this process's connection down): the driver
// counts as alive.
func (p *probes) gone(inbox string, now time.Time) bool {
	if inbox == "" {
		return false // a driver of a version without an inbox: its lease tells
	}
	if g, ok := p.asked[inbox]; ok {
		return g
	}
	_, err := p.nc.Request(inbox, nil, p.timeout)
	g := false
	if errors.Is(err, nats.ErrNoResponders) {
		since, ok := p.missing[inbox]
		if !ok {
			since = now
			p.missing[inbox] = now
		}
		g = now.Sub(since) >= p.grace
	} else {
		delete(p.missing, inbox)
	}
	p.asked[inbox] = g
	return g
}
