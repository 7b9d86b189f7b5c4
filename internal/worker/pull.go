package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/internal/jsretry"
	"github.com/llmq/llmq/pkg/messages"
)

// puller takes one message at a time from one durable pull consumer with a
// raw JetStream pull request ($JS.API.CONSUMER.MSG.NEXT, batch 1, no wait),
// answered on an inbox subscription it keeps for the next fetch.
//
// jetstream.Consumer.FetchNoWait subscribes a fresh inbox for every fetch
// and unsubscribes it afterwards: two more protocol messages, and interest
// changes on the server, for every request served. A JetStream message
// arrives under its own subject, not the inbox's, so an answer can only be
// told apart by the subscription it arrives on: each fetch in flight has an
// inbox of its own, taken from a free list that grows to the number of
// concurrent fetches.
//
// An inbox delivers into a channel of its own with room for two messages
// (a fetch gets one answer). nats.go's SubscribeSync would allocate a
// channel of SubChanLen (65,536) message pointers per inbox, 512 KB that
// the garbage collector scans in every cycle: with a free list per band and
// group and up to one inbox per slot in each, that was most of a busy
// worker's GC work.
type puller struct {
	nc      *nats.Conn
	next    string        // the consumer's MSG.NEXT API subject
	timeout time.Duration // how long a fetch waits for the server's answer

	mu   sync.Mutex
	free []*fetchInbox
}

// fetchInbox is one fetch's reply subscription, with its channel and timer.
type fetchInbox struct {
	sub   *nats.Subscription
	ch    chan *nats.Msg
	timer *time.Timer // stopped while the inbox is free
}

// noWaitOne asks for at most one message, answered at once.
var noWaitOne = []byte(`{"batch":1,"no_wait":true}`)

func newPuller(nc *nats.Conn, stream, consumer string, timeout time.Duration) *puller {
	return &puller{nc: nc, next: "$JS.API.CONSUMER.MSG.NEXT." + stream + "." + consumer, timeout: timeout}
}

// fetch returns the consumer's next message, or nil when it has none.
func (pl *puller) fetch() (*pulled, error) {
	in, err := pl.inbox()
	if err != nil {
		return nil, err
	}
	if err := pl.nc.PublishRequest(pl.next, in.sub.Subject, noWaitOne); err != nil {
		pl.put(in)
		return nil, err
	}
	in.timer.Reset(pl.timeout)
	var m *nats.Msg
	select {
	case m = <-in.ch:
		in.timer.Stop()
	case <-in.timer.C:
		// The answer may still come: this inbox is not used again, so it
		// cannot be mistaken for the answer to a later fetch. A message it
		// carried is redelivered after the ack wait.
		_ = in.sub.Unsubscribe()
		return nil, fmt.Errorf("pull %s: %w", pl.next, nats.ErrTimeout)
	}
	pl.put(in)
	switch status := m.Header.Get("Status"); {
	case status == "":
		return &pulled{msg: m, nc: pl.nc}, nil
	case status == "404" || status == "408": // no messages; request expired
		return nil, nil
	default:
		return nil, fmt.Errorf("pull %s: %s %s", pl.next, status, m.Header.Get("Description"))
	}
}

func (pl *puller) inbox() (*fetchInbox, error) {
	pl.mu.Lock()
	if n := len(pl.free); n > 0 {
		in := pl.free[n-1]
		pl.free = pl.free[:n-1]
		pl.mu.Unlock()
		return in, nil
	}
	pl.mu.Unlock()
	in := &fetchInbox{ch: make(chan *nats.Msg, 2), timer: time.NewTimer(time.Hour)}
	in.timer.Stop()
	var err error
	if in.sub, err = pl.nc.ChanSubscribe(pl.nc.NewInbox(), in.ch); err != nil {
		return nil, err
	}
	return in, nil
}

func (pl *puller) put(in *fetchInbox) {
	pl.mu.Lock()
	pl.free = append(pl.free, in)
	pl.mu.Unlock()
}

// close unsubscribes the free inboxes.
func (pl *puller) close() {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, in := range pl.free {
		_ = in.sub.Unsubscribe()
	}
	pl.free = nil
}

// pulled is a request message taken from a consumer. Its acknowledgements
// are JetStream's ack tokens published to the message's reply subject, as
// jetstream.Msg sends them (without waiting for a confirmation, but for
// Ack).
type pulled struct {
	msg *nats.Msg
	nc  *nats.Conn
}

// The acknowledgement tokens of the JetStream API.
var (
	ackAck      = messages.AckToken
	ackNak      = []byte("-NAK")
	ackProgress = []byte("+WPI")
)

func (m *pulled) Subject() string      { return m.msg.Subject }
func (m *pulled) Headers() nats.Header { return m.msg.Header }
func (m *pulled) Data() []byte         { return m.msg.Data }

func (m *pulled) ack(token []byte) error {
	if m.msg.Reply == "" {
		return errors.New("the message has no ack subject")
	}
	return m.nc.Publish(m.msg.Reply, token)
}

// Ack removes the message from the work-queue stream. Unlike the other
// acknowledgements it is confirmed: JetStream answers it, and an ack that
// meets a consumer without a leader (a cluster node failed: "no
// responders") or gets no answer is sent again until it is answered or
// ackBound has passed (see internal/jsretry). That happens in a goroutine
// of its own, which lives for one round trip unless a leader is being
// elected, so the caller never waits. An ack that was never confirmed
// leaves the message to be redelivered after the ack wait: its caller had
// its answer, so the redelivery is refused at pickup and no provider is
// called for it.
func (m *pulled) Ack() error {
	if m.msg.Reply == "" {
		return errors.New("the message has no ack subject")
	}
	go m.confirmAck()
	return nil
}

// ackBound bounds the repeats of one Ack.
const ackBound = 5 * time.Second

func (m *pulled) confirmAck() {
	ctx, cancel := context.WithTimeout(context.Background(), ackBound)
	defer cancel()
	for n := 0; ; n++ {
		actx, acancel := context.WithTimeout(ctx, jsretry.Attempt)
		_, err := m.nc.RequestWithContext(actx, m.msg.Reply, ackAck)
		acancel()
		if err == nil || !jsretry.Retryable(err) || !jsretry.Sleep(ctx, jsretry.Backoff(n)) {
			return
		}
	}
}

// Nak hands the message back for redelivery.
func (m *pulled) Nak() error { return m.ack(ackNak) }

// NakWithDelay hands the message back for redelivery after delay.
func (m *pulled) NakWithDelay(delay time.Duration) error {
	return m.ack(append([]byte("-NAK "), delay.String()...))
}

// InProgress resets the message's ack wait.
func (m *pulled) InProgress() error { return m.ack(ackProgress) }

// TermWithReason stops redelivery; the reason appears in the server's
// advisory.
func (m *pulled) TermWithReason(reason string) error {
	return m.ack(append([]byte("+TERM "), reason...))
}
