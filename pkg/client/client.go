// Package client submits requests to llmq over NATS, for internal services
// that skip the HTTP gateway, and for the gateway itself. A request is
// published to JetStream on the subject of its priority band and model group
// (see pkg/messages); a worker picks it up in priority order, calls the
// provider and replies to this client's inbox.
//
// A Client holds one wildcard subscription on its own inbox prefix and serves
// any number of concurrent [Client.Do] calls; it is safe for concurrent use.
// It answers the workers' pickup checks: a request whose Do call has returned
// (deadline passed, context cancelled) is refused at pickup, so no provider is
// ever called for it. For its first second a request may be started without
// that check (see pkg/messages): a request given up in that second is
// announced to the workers, and a worker that started one anyway is told to
// stop. The client acks a served request in JetStream itself when its
// answer arrives (the answer names the ack subject): one message per
// request instead of a confirmation and the worker's acknowledged ack.
//
// Publishing rides out a JetStream cluster's failover: a publish that meets
// the request stream without a leader, or loses its node, is repeated
// within Options.PublishTimeout, the request id serving as Nats-Msg-Id so
// that a repeat is never stored twice; only past the bound does Do fail
// with messages.ErrBrokerUnavailable.
//
// Submitting and waiting are separate steps when the caller wants them so:
// [Client.Submit] returns a [Handle] once the request is queued, and
// [Handle.Wait] waits for its answer ([Client.Do] is both); a handle that
// will not be waited for is given up with [Handle.Abandon]. [Client.Enqueue]
// queues a request whose pickups and answer another party takes on a
// subject of its own (internal/batch's batch lines).
//
// Ownership: Do (or Submit and Wait) owns a request from publish to answer. When its context ends
// or the queue deadline passes before a worker picked the request up, Do
// returns at once and the request is abandoned; the worker that later finds
// it drops it without a provider call. A request with a [Parker] may be
// handed over while it waits: the client then owns it until Parker.Done.
//
// # Waking workers for a redelivery
//
// A worker that dies while it holds a request leaves it to JetStream, which
// redelivers it once the ack wait has passed since the worker's last
// in-progress ack. Unlike a new message, a redelivery is not republished as
// a wake-up hint, so workers would find it only at their safety-net poll
// (seconds later), and a busy pool would serve lower bands before it in the
// meantime. The dead worker cannot announce it, and no other worker knows
// which requests it held; the caller does: it hears the worker's
// heartbeats, and each one (and the pickup) says when JetStream will
// redeliver the request if nothing more comes (Llmq-Redeliver-In, see
// pkg/messages). So the client keeps one timer per picked request, set at
// pickup and moved on only when it fires early (a heartbeat pushed the time
// on), and when it fires with the worker silent it publishes a wake-up hint
// for the request's band and group: the redelivery is fetched before any
// lower band, like a new message. This costs nothing per request beyond the
// timer (no message, no round trip), and one hint per request whose worker
// died. The hint waits, if need be, until the worker has been silent for
// two heartbeats, since only then is the redelivery's pickup accepted (with
// a short ack wait, JetStream may redeliver sooner). When that time comes
// after the request's queue deadline, nothing will serve it again (it left
// the stream at the deadline, and workers drop redeliveries past it): the
// request ends there with 502 worker_lost instead of at its answer deadline.
package client

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/llmq/llmq/internal/jsretry"
	"github.com/llmq/llmq/pkg/messages"
)

// Options configure a Client. The zero value uses the defaults.
type Options struct {
	// Prefix is llmq_settings.subject_prefix; default "llmq".
	Prefix string
	// BandBounds is llmq_settings.priority_bands; default messages.DefaultBandBounds.
	BandBounds []int64
	// PublishTimeout bounds the JetStream publish; default 10 s. Within it a
	// publish that meets a stream without a leader (a cluster node failed)
	// is repeated (nats-server elects a new leader within 4 to 9 s); a broker that does not acknowledge in time makes Do fail
	// with messages.ErrBrokerUnavailable.
	PublishTimeout time.Duration
	// StreamBuffer bounds the chunks buffered per stream for a slow reader;
	// default 256. A stream whose reader falls further behind is ended with
	// ErrSlowReader as soon as its reader returns (the chunks still buffered
	// are dropped), and its worker is told to stop at once, so memory per
	// stream is bounded and nothing else waits.
	StreamBuffer int
}

// ErrSlowReader ends a stream whose reader could not keep up.
var ErrSlowReader = errors.New("the client read the stream too slowly")

// ErrWorkerLost ends a stream whose worker stopped sending (it died).
var ErrWorkerLost = errors.New("the worker serving the stream stopped responding")

// ErrParked is what Do returns once it handed a waiting request over to its
// [Parker]: the outcome goes to Parker.Done.
var ErrParked = errors.New("the request was parked")

// A Parker lets Do return while a request still waits in the queue, so that
// the caller holds no goroutine for it: after waiting Request.ParkAfter
// without a pickup, Do calls Park; if Park takes the request over, Do
// returns ErrParked, from then on the client's own timer and subscription
// carry the request, and Done gets its outcome. A context no longer ends a
// parked request: its deadlines, Alive and the cancel function given to
// Started do. The gateway parks requests that wait long: it takes their
// HTTP connection over from net/http and answers it from Done, so a waiting
// request holds neither a goroutine nor net/http's buffers.
//
// Streams are never parked. Only Done may block.
type Parker interface {
	// Park is called at most once, in Do's goroutine. True hands the
	// request over; false keeps Do waiting as if there were no Parker.
	Park() bool
	// Alive is asked, on the client's subscription goroutine, when a worker
	// wants to start the parked request. False refuses the pickup (no
	// provider is called) and ends the request as cancelled.
	Alive() bool
	// Started is called once a worker started the parked request, with a
	// function that abandons the request and tells the worker to stop.
	Started(cancel func())
	// Done gets the outcome of a parked request, exactly once, in a
	// goroutine of its own.
	Done(*Response, Result, error)
}

// Client submits requests over one NATS connection.
type Client struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects messages.Subjects
	bands    messages.Bands
	pubWait  time.Duration
	buffer   int
	inbox    string // prefix; a request's inbox is inbox + "." + id
	sub      *nats.Subscription

	mu      sync.Mutex
	waiters map[string]*waiter
	peak    int // most waiters since the map was made (see forget)

	// epoch ends when the connection leaves CONNECTED and is replaced when
	// it is back, so that a publish waiting for its acknowledgement when
	// the broker goes away fails at once instead of after PublishTimeout.
	epoch     atomic.Pointer[epoch]
	status    chan nats.Status
	watchDone chan struct{}
}

// epoch is one span of the connection being up.
type epoch struct {
	ctx    context.Context
	cancel context.CancelFunc
	next   chan struct{} // closed once the next epoch is stored
}

func newEpoch() *epoch {
	ctx, cancel := context.WithCancel(context.Background())
	return &epoch{ctx: ctx, cancel: cancel, next: make(chan struct{})}
}

// New subscribes the client's inbox on nc. Close releases it; nc stays open.
func New(nc *nats.Conn, opts Options) (*Client, error) {
	subjects, err := messages.NewSubjects(opts.Prefix)
	if err != nil {
		return nil, err
	}
	bounds := opts.BandBounds
	if bounds == nil {
		bounds = messages.DefaultBandBounds
	}
	bands, err := messages.NewBands(bounds)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	c := &Client{
		nc:       nc,
		js:       js,
		subjects: subjects,
		bands:    bands,
		pubWait:  opts.PublishTimeout,
		inbox:    nc.NewRespInbox(),
		waiters:  make(map[string]*waiter),
	}
	if c.pubWait <= 0 {
		c.pubWait = 10 * time.Second
	}
	if c.buffer = opts.StreamBuffer; c.buffer <= 0 {
		c.buffer = 256
	}
	c.sub, err = nc.Subscribe(c.inbox+".*", c.onInbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe inbox: %w", err)
	}
	if err := c.sub.SetPendingLimits(-1, -1); err != nil {
		_ = c.sub.Unsubscribe()
		return nil, err
	}
	c.epoch.Store(newEpoch())
	c.status = nc.StatusChanged(nats.CONNECTED, nats.RECONNECTING, nats.DISCONNECTED, nats.CLOSED)
	c.watchDone = make(chan struct{})
	go c.watch()
	if !nc.IsConnected() { // it may have gone before the listener was there
		c.epoch.Load().cancel()
	}
	return c, nil
}

// Close unsubscribes the inbox and stops following the connection's status.
// Pending Do calls end by their own contexts, parked requests at their
// deadlines. It tells the workers that nobody will answer on this client's
// inbox any more, so they drop its requests rather than hold them for a
// reconnect (see pkg/messages).
func (c *Client) Close() error {
	c.stopWatch()
	err := c.sub.Unsubscribe()
	if c.nc.IsConnected() {
		_ = c.nc.Publish(c.subjects.Gone(), []byte(c.inbox))
		_ = c.nc.FlushTimeout(time.Second)
	}
	return err
}

// watch follows the connection's status until stopWatch.
func (c *Client) watch() {
	defer close(c.watchDone)
	for st := range c.status {
		if st != nats.CONNECTED {
			c.epoch.Load().cancel()
		} else if old := c.epoch.Load(); old.ctx.Err() != nil {
			c.epoch.Store(newEpoch())
			close(old.next)
		}
	}
}

func (c *Client) stopWatch() {
	c.nc.RemoveStatusListener(c.status)
	<-c.watchDone
	c.epoch.Load().cancel()
}

// Bands returns the client's band table.
func (c *Client) Bands() messages.Bands { return c.bands }

// Request is one request to submit.
type Request struct {
	ID       string        // unique id; generated when empty
	Kind     messages.Kind // chat or completion
	Group    string        // model group (model_name)
	Priority int64         // lower is more important
	// Tenant is who the request is for (messages.ValidTenant); empty means
	// messages.TenantAnonymous. Workers share a band's capacity between
	// tenants.
	Tenant string
	Body   []byte // OpenAI request body without llmq-only fields such as "priority"
	// OnChunk, when set, makes the request a stream (the body must have
	// "stream": true): it receives each event payload in order, in Do's
	// goroutine. An error from it ends the stream and cancels the call.
	OnChunk func(data []byte) error
	// OnStart, when set, is called once in Do's goroutine before the first
	// chunk of a stream, with what is known at pickup.
	OnStart func(info Result)
	// Deadline bounds the time the request may wait in the queue. Zero means
	// no deadline other than ctx's.
	Deadline time.Time
	// AnswerDeadline bounds the whole wait, queue and provider call; past
	// it Do fails with messages.OutcomeProviderTimeout and tells the worker
	// to stop. Zero means no bound other than ctx's. Do waits on one timer
	// for both deadlines, where a context deadline would add a second. It
	// travels with the request (Llmq-Answer-Deadline, with ctx's deadline
	// if earlier): while this client's connection reconnects, workers hold
	// its answers and pickups until then (about five seconds without one).
	AnswerDeadline time.Time
	// Parker, when set on a request that is not a stream, lets Do hand
	// the request over after it waited ParkAfter in the queue (see Parker).
	Parker    Parker
	ParkAfter time.Duration
}

// Response is a served request.
type Response struct {
	ID         string
	Band       int
	Deployment string        // model_info.id of the deployment that answered
	QueueWait  time.Duration // from publish to pickup by a worker
	Body       []byte        // the provider's response body
}

// Result carries what is known about a request even when it failed.
type Result struct {
	ID         string
	Band       int
	Picked     bool          // a worker picked the request up
	QueueWait  time.Duration // from publish to pickup, when Picked
	Deployment string        // the deployment chosen at pickup, when Picked
}

const (
	stateWaiting int32 = iota
	statePicked
	stateAbandoned
)

type waiter struct {
	id                            string
	group                         string
	band                          int
	lane                          int       // the tenant's lane (messages.Lane)
	start                         time.Time // of the publish
	queueDeadline, answerDeadline time.Time
	stream                        bool
	// notifyUntil is until when a worker may start the request without a
	// pickup check (messages.Request.NotifyUntil); zero: never.
	notifyUntil time.Time

	state    atomic.Int32
	pickedAt atomic.Int64 // unix nanos
	lastSeen atomic.Int64 // unix nanos of the last message from the worker
	control  atomic.Pointer[string]
	deploy   atomic.Pointer[string]
	// redeliverAt is when JetStream redelivers the request if its worker
	// sends nothing more (unix nanos; 0: unknown); wake fires then (see the
	// package doc).
	redeliverAt atomic.Int64
	wake        atomic.Pointer[time.Timer]
	reply       chan *nats.Msg
	chunks      chan *nats.Msg // streams only
	abort       chan struct{}  // closed when the chunk buffer overflowed
	once        sync.Once

	// A parked request (see Parker): parked is set once, after timer.
	parker  Parker
	parked  atomic.Bool
	timer   *time.Timer // the parked request's deadline
	started atomic.Bool // Parker.Started was called
	ended   atomic.Bool // Parker.Done was called
}

// result is what is known about w's request now.
func (w *waiter) result() Result {
	info := Result{ID: w.id, Band: w.band}
	if at := w.pickedAt.Load(); at != 0 {
		info.Picked = true
		info.QueueWait = time.Unix(0, at).Sub(w.start)
		if d := w.deploy.Load(); d != nil {
			info.Deployment = *d
		}
	}
	return info
}

// answer turns the worker's reply into Do's results; next is the sequence
// number a stream's reply must carry.
func (w *waiter) answer(m *nats.Msg, next int) (*Response, Result, error) {
	info := w.result()
	rep, err := messages.DecodeReply(m.Header, m.Data)
	if err != nil {
		return nil, info, err
	}
	if w.stream && rep.Seq != next {
		return nil, info, fmt.Errorf("%w: stream ended after event %d, but %d were sent", messages.ErrInternal, next-1, rep.Seq-1)
	}
	if err := rep.Err(); err != nil {
		return nil, info, err
	}
	return &Response{ID: w.id, Band: w.band, Deployment: rep.Deployment, QueueWait: info.QueueWait, Body: rep.Body}, info, nil
}

func (w *waiter) queueTimeout() error {
	return messages.Errorf(messages.OutcomeQueueTimeout, "", "the request waited %s in the queue without reaching a worker", time.Since(w.start).Round(time.Millisecond))
}

func answerTimeout() error {
	return &messages.Error{Outcome: messages.OutcomeProviderTimeout, Message: "no answer in time"}
}

// Do submits req and waits for its answer. A request that fails returns an
// error matching one of pkg/messages' classes with errors.Is (a *messages.Error
// for answers from a worker); info is filled in either way. For a stream,
// Response.Body is empty: the events went to req.OnChunk. A request handed
// over to its Parker returns ErrParked.
func (c *Client) Do(ctx context.Context, req *Request) (resp *Response, info Result, err error) {
	h, err := c.Submit(ctx, req)
	if err != nil {
		return nil, Result{ID: req.ID, Band: c.bands.Band(req.Priority)}, err
	}
	return h.Wait(ctx)
}

// Handle is a submitted request: Wait for its answer, or Abandon it. It
// holds the request's waiter, not its body.
type Handle struct {
	c                *Client
	w                *waiter
	onChunk          func([]byte) error
	onStart          func(Result)
	parkAfter        time.Duration
	waited, released atomic.Bool
}

// ID is the request's id.
func (h *Handle) ID() string { return h.w.id }

// Submit publishes req and returns once JetStream stored it (with the
// guarantees described for Do); from then on this client answers the
// request's pickups. Every handle must be waited for (Wait, once) or
// abandoned (Abandon): until then the client keeps the request's waiter,
// and accepts its pickup. ctx bounds the publish; its deadline also
// travels with the request (see Request.AnswerDeadline).
func (c *Client) Submit(ctx context.Context, req *Request) (*Handle, error) {
	if req.ID == "" {
		req.ID = nuid.Next()
	}
	if req.Tenant != "" {
		if err := messages.ValidTenant(req.Tenant); err != nil {
			return nil, messages.Errorf(messages.OutcomeInvalidRequest, "", "tenant: %v", err)
		}
	}
	w := &waiter{
		id: req.ID, group: req.Group, band: c.bands.Band(req.Priority), lane: messages.Lane(req.Tenant), stream: req.OnChunk != nil, reply: make(chan *nats.Msg, 1),
		queueDeadline: req.Deadline, answerDeadline: req.AnswerDeadline,
	}
	if w.stream {
		w.chunks = make(chan *nats.Msg, c.buffer)
		w.abort = make(chan struct{})
	}
	// Only these are used once the request is published, so req, and with
	// it the body, is garbage while the request waits: a waiting request
	// holds its waiter, its timer and Do's stack, not its body (the stream
	// holds that).
	onChunk, onStart, parkAfter := req.OnChunk, req.OnStart, req.ParkAfter
	if !w.stream {
		w.parker = req.Parker
	}
	c.mu.Lock()
	if _, dup := c.waiters[w.id]; dup {
		c.mu.Unlock()
		return nil, messages.Errorf(messages.OutcomeInvalidRequest, "", "request id %q is already in use", w.id)
	}
	c.waiters[w.id] = w
	c.peak = max(c.peak, len(c.waiters))
	c.mu.Unlock()

	w.start = time.Now()
	// The workers hold an answer or a pickup that finds nobody on the
	// inbox (this connection is reconnecting) until the caller stops
	// waiting: its answer deadline, or its context's deadline for a request
	// that cannot be parked (a parked request outlives its context).
	answerBy := w.answerDeadline
	if dl, ok := ctx.Deadline(); ok && w.parker == nil {
		answerBy = earliest(answerBy, dl)
	}
	// A worker may start the request without asking for a moment: the
	// caller is all but sure to wait, and says so if it leaves (left). Not
	// for a request that may be parked by then: a parked caller's
	// connection is checked at pickup (Parker.Alive).
	if notify := notifyWindow(w.parker, parkAfter); notify > 0 {
		w.notifyUntil = w.start.Add(notify)
	}
	msg := c.subjects.Msg(&messages.Request{
		ID: w.id, Kind: req.Kind, Group: req.Group, Band: w.band, Priority: req.Priority,
		ReplyTo: c.inbox + "." + w.id, Deadline: w.queueDeadline, AnswerDeadline: answerBy, Stream: w.stream, Tenant: req.Tenant, Body: req.Body,
		CallerAcks: true, NotifyUntil: w.notifyUntil,
	}, w.start)
	req = nil // see above
	if err := c.publish(ctx, msg); err != nil {
		w.state.Store(stateAbandoned)
		c.forget(w)
		return nil, err
	}
	return &Handle{c: c, w: w, onChunk: onChunk, onStart: onStart, parkAfter: parkAfter}, nil
}

// notifyWindow is how long after its publish a worker may start a request
// without asking: messages.NotifyWindow, but no longer than until it may be
// parked.
func notifyWindow(p Parker, parkAfter time.Duration) time.Duration {
	if p != nil {
		return min(messages.NotifyWindow, parkAfter)
	}
	return messages.NotifyWindow
}

// Abandon gives the request up without waiting: a worker that has not
// picked it up yet drops it without a provider call, and one that has is
// told to stop. It does nothing after Wait.
func (h *Handle) Abandon() {
	if h.waited.Load() || !h.released.CompareAndSwap(false, true) {
		return
	}
	h.c.giveUp(h.w)
	h.c.forget(h.w)
}

// Wait waits for the answer of a submitted request, as Do does; it may be
// called once. A request handed over to its Parker returns ErrParked.
func (h *Handle) Wait(ctx context.Context) (resp *Response, info Result, err error) {
	c, w, onChunk, onStart, parkAfter := h.c, h.w, h.onChunk, h.onStart, h.parkAfter
	if !h.waited.CompareAndSwap(false, true) {
		return nil, w.result(), errors.New("client: Wait called twice")
	}
	if h.released.Load() {
		return nil, w.result(), fmt.Errorf("%w: the request was abandoned", messages.ErrCancelled)
	}
	parked := false
	defer func() {
		if !parked {
			c.forget(w)
		}
	}()

	// One timer serves both deadlines: it fires at the queue deadline (or
	// the answer deadline, whichever comes first) and, if the request was
	// picked up by then, is set again for the answer deadline.
	var (
		timer    *time.Timer
		deadline <-chan time.Time
	)
	if first := earliest(w.queueDeadline, w.answerDeadline); !first.IsZero() {
		timer = time.NewTimer(time.Until(first))
		defer timer.Stop()
		deadline = timer.C
	}
	var park <-chan time.Time
	if w.parker != nil {
		t := time.NewTimer(parkAfter)
		defer t.Stop()
		park = t.C
	}
	var silence <-chan time.Time
	if w.stream {
		t := time.NewTicker(messages.HeartbeatInterval)
		defer t.Stop()
		silence = t.C
	}
	// fail abandons the request and tells its worker, if any, to stop.
	fail := func(err error) (*Response, Result, error) {
		c.giveUp(w)
		return nil, w.result(), err
	}
	next := 1 // the sequence number the next stream event must carry
	chunk := func(m *nats.Msg) error {
		if seq, _ := strconv.Atoi(m.Header.Get(messages.HeaderSeq)); seq != next {
			return fmt.Errorf("%w: stream event %d arrived where %d was expected", messages.ErrInternal, seq, next)
		}
		next++
		if next == 2 {
			// The first event names the deployment that answered, which
			// after fallbacks is not the one chosen at pickup.
			if d := m.Header.Get(messages.HeaderDeployment); d != "" {
				w.deploy.Store(&d)
			}
			if onStart != nil {
				onStart(w.result())
			}
		}
		return onChunk(m.Data)
	}
	// slow ends a stream whose buffer overflowed. It goes before any event
	// still buffered: the stream ends where the reader fell behind, and no
	// more events are relayed once that was decided.
	slow := func() bool {
		select {
		case <-w.abort:
			return true
		default:
			return false
		}
	}
	slowErr := func() (*Response, Result, error) {
		return fail(fmt.Errorf("%w: more than %d events were waiting", ErrSlowReader, c.buffer))
	}
	for {
		select {
		case m := <-w.chunks:
			if slow() {
				return slowErr()
			}
			if err := chunk(m); err != nil {
				return fail(err)
			}
		case m := <-w.reply:
			if slow() {
				return slowErr()
			}
			for drained := false; !drained; { // chunks sent before the reply are already queued
				select {
				case cm := <-w.chunks:
					if err := chunk(cm); err != nil {
						return fail(err)
					}
				default:
					drained = true
				}
			}
			return w.answer(m, next)
		case <-w.abort:
			return slowErr()
		case <-silence:
			if seen := w.lastSeen.Load(); w.state.Load() == statePicked && time.Since(time.Unix(0, seen)) > messages.StreamSilence {
				return fail(fmt.Errorf("%w: nothing for %s", ErrWorkerLost, messages.StreamSilence))
			}
		case <-park:
			park = nil
			if w.state.Load() == stateWaiting && w.parker.Park() {
				parked = true
				c.hand(w)
				return nil, w.result(), ErrParked
			}
		case <-deadline:
			if w.state.CompareAndSwap(stateWaiting, stateAbandoned) {
				c.left(w)
				return nil, w.result(), w.queueTimeout()
			}
			// Picked up: only the answer deadline is left.
			switch left := time.Until(w.answerDeadline); {
			case w.answerDeadline.IsZero():
				deadline = nil
			case left <= 0:
				return fail(answerTimeout())
			default:
				timer.Reset(left)
			}
		case <-ctx.Done():
			cause := context.Cause(ctx)
			if errors.Is(cause, messages.ErrQueueTimeout) && w.state.Load() == stateWaiting {
				return fail(w.queueTimeout())
			}
			if errors.Is(cause, messages.ErrProviderTimeout) {
				return fail(answerTimeout())
			}
			return fail(fmt.Errorf("%w: %w", messages.ErrCancelled, cause))
		}
	}
}

// Enqueue publishes req for a party other than this client, which answers
// its pickups and takes its answer on replyTo (internal/batch answers a
// batch's lines this way, durably, from any gateway). It returns once
// JetStream stored the request, with Do's publish guarantees: repeated
// through a cluster failover, the request id as Nats-Msg-Id, an error
// matching messages.ErrQueueFull when its band and group are full and
// messages.ErrBrokerUnavailable past Options.PublishTimeout. Only ID (made
// when empty), Kind, Group, Priority, Body, Deadline and AnswerDeadline are
// used.
func (c *Client) Enqueue(ctx context.Context, req *Request, replyTo string) error {
	if req.ID == "" {
		req.ID = nuid.Next()
	}
	if req.Tenant != "" {
		if err := messages.ValidTenant(req.Tenant); err != nil {
			return messages.Errorf(messages.OutcomeInvalidRequest, "", "tenant: %v", err)
		}
	}
	return c.publish(ctx, c.subjects.Msg(&messages.Request{
		ID: req.ID, Kind: req.Kind, Group: req.Group, Band: c.bands.Band(req.Priority), Priority: req.Priority,
		ReplyTo: replyTo, Deadline: req.Deadline, AnswerDeadline: req.AnswerDeadline, Tenant: req.Tenant, Body: req.Body,
	}, time.Now()))
}

// forget removes w from the waiters; later messages for it are refused.
func (c *Client) forget(w *waiter) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.waiters[w.id] != w {
		return
	}
	delete(c.waiters, w.id)
	if t := w.wake.Load(); t != nil {
		t.Stop()
	}
	// A Go map never shrinks: once a crowd of waiters has gone, the rest
	// move to a map of their size, so the crowd's memory is returned.
	if n := len(c.waiters); c.peak >= shrinkFrom && n < c.peak/4 {
		m := make(map[string]*waiter, n)
		maps.Copy(m, c.waiters)
		c.waiters, c.peak = m, n
	}
}

// shrinkFrom is the smallest peak of waiters after which forget shrinks
// the map.
const shrinkFrom = 1024

// hand takes a waiting request over from Do: from here its deadlines are a
// timer's, its answer and pickups the subscription's (see onInbox, pickup).
func (c *Client) hand(w *waiter) {
	if first := earliest(w.queueDeadline, w.answerDeadline); !first.IsZero() {
		// Set before it can fire: the callback uses w.timer.
		w.timer = time.AfterFunc(time.Hour, func() { c.parkedDeadline(w) })
		w.timer.Reset(time.Until(first))
	}
	w.parked.Store(true)
	// An answer that came before the store is in the channel; one that
	// comes after it is taken by onInbox. Both may look: one gets it.
	select {
	case m := <-w.reply:
		c.endParked(w, m, nil)
	default:
	}
	c.startParked(w) // in case a pickup was accepted before the store
}

// parkedDeadline is Do's deadline case for a parked request.
func (c *Client) parkedDeadline(w *waiter) {
	if w.state.CompareAndSwap(stateWaiting, stateAbandoned) {
		c.left(w)
		c.endParked(w, nil, w.queueTimeout())
		return
	}
	switch left := time.Until(w.answerDeadline); {
	case w.answerDeadline.IsZero():
	case left <= 0:
		c.failParked(w, answerTimeout())
	default:
		w.timer.Reset(left)
	}
}

// failParked is Do's fail for a parked request.
func (c *Client) failParked(w *waiter, err error) {
	c.giveUp(w)
	c.endParked(w, nil, err)
}

// startParked calls Parker.Started once the parked request was picked up.
func (c *Client) startParked(w *waiter) {
	if w.parked.Load() && w.state.Load() == statePicked && w.started.CompareAndSwap(false, true) {
		w.parker.Started(func() { c.failParked(w, fmt.Errorf("%w: the caller went away", messages.ErrCancelled)) })
	}
}

// endParked ends a parked request once, with the worker's reply m or with
// err: Parker.Done gets the outcome in a goroutine of its own, where the
// reply is decoded.
func (c *Client) endParked(w *waiter, m *nats.Msg, err error) {
	if !w.ended.CompareAndSwap(false, true) {
		return
	}
	if w.timer != nil {
		w.timer.Stop()
	}
	c.forget(w)
	go func() {
		if m != nil {
			w.parker.Done(w.answer(m, 0))
			return
		}
		w.parker.Done(nil, w.result(), err)
	}()
}

// hintDelay is how long after the announced redelivery time the wake-up
// hint goes out: the server starts the ack wait when it receives an
// in-progress ack, a little after the worker sent it, and a hint that comes
// before the server redelivers makes a worker fetch nothing (it tries again
// a few times, only while idle).
const hintDelay = 25 * time.Millisecond

// workerGone reports whether the worker that picked w's request up has
// gone quiet, so that a second pickup of it is a redelivery: it sent
// nothing for two heartbeats. (A redelivery while it still sends them is a
// late in-progress ack of a loaded worker: a second call would put the
// request at two providers at once.)
func (w *waiter) workerGone() bool {
	return time.Since(time.Unix(0, w.lastSeen.Load())) >= 2*messages.HeartbeatInterval
}

// hintAt is when the wake-up hint for w's redelivery is due: once the
// announced redelivery time has come and the worker has been silent long
// enough for the redelivery's pickup to be accepted (workerGone).
func (w *waiter) hintAt() time.Time {
	at := time.Unix(0, w.redeliverAt.Load())
	if quiet := time.Unix(0, w.lastSeen.Load()).Add(2 * messages.HeartbeatInterval); quiet.After(at) {
		at = quiet
	}
	return at.Add(hintDelay)
}

// watchRedelivery sets w's redelivery time to at and its timer to fire
// then (see the package doc).
func (c *Client) watchRedelivery(w *waiter, at time.Time) {
	w.redeliverAt.Store(at.UnixNano())
	d := time.Until(w.hintAt())
	if t := w.wake.Load(); t != nil {
		t.Reset(d)
		return
	}
	// Stored before it can fire: redelivered uses w.wake.
	t := time.AfterFunc(time.Hour, func() { c.redelivered(w) })
	w.wake.Store(t)
	t.Reset(d)
}

// redelivered runs when w's redelivery timer fires: if a heartbeat moved
// the time on, the timer is set again; otherwise the worker went silent,
// JetStream redelivers the request, and a wake-up hint makes an idle worker
// fetch it at once.
func (c *Client) redelivered(w *waiter) {
	c.mu.Lock()
	live := c.waiters[w.id] == w
	c.mu.Unlock()
	if !live {
		return
	}
	if d := time.Until(w.hintAt()); d > 0 {
		w.wake.Load().Reset(d)
		return
	}
	if !w.queueDeadline.IsZero() && time.Now().After(w.queueDeadline) {
		// No worker may start the request again: it left the stream at its
		// queue deadline (Nats-TTL), and a redelivery past it is dropped.
		lost := &messages.Error{Outcome: messages.OutcomeProviderError, Code: "worker_lost",
			Message: "the worker serving the request stopped responding after its queue deadline, so no other worker may start it"}
		c.answered(w, messages.ReplyMsg(c.inbox+"."+w.id, &messages.Reply{Outcome: lost.Outcome, Status: lost.HTTPStatus(), Body: messages.ErrorBody(lost)}))
		return
	}
	_ = c.nc.Publish(c.subjects.WakeLane(w.band, w.group, w.lane), nil)
}

// earliest returns the earlier of two times, a zero time meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}

// giveUp abandons w's request: a worker serving it is told to stop, and,
// while a worker may start it without asking, the workers are told it was
// left.
func (c *Client) giveUp(w *waiter) {
	switch w.state.Swap(stateAbandoned) {
	case statePicked:
		c.cancel(w)
	case stateWaiting:
		c.left(w)
	}
}

// left tells the workers that w's request, given up before a worker picked
// it up, must not be started without asking (see Request's NotifyUntil in
// pkg/messages): only needed before its notify time.
func (c *Client) left(w *waiter) {
	if !w.notifyUntil.IsZero() && time.Now().Before(w.notifyUntil) {
		_ = c.nc.Publish(c.subjects.Left(), []byte(c.inbox+"."+w.id))
	}
}

// cancel tells the worker serving w to stop.
func (c *Client) cancel(w *waiter) {
	if ctl := w.control.Load(); ctl != nil {
		_ = c.nc.PublishMsg(messages.EventMsg(*ctl, messages.EventCancel, 0, nil))
	}
}

// publish stores msg in the request stream within the client's publish
// bound. It rides out what a JetStream cluster goes through when a node
// fails: while the stream elects a new leader nobody answers ("no
// responders", or no answer from a leader that died holding the publish),
// and a client connected to the failed node moves to another. Each such
// attempt is repeated (see internal/jsretry); the message's Nats-Msg-Id,
// the request id, makes a repeat of a publish that was stored a duplicate
// the stream acknowledges without storing it twice. Only once the bound has
// passed, or the connection to a single server has been down for
// reconnectGrace, is the caller told the broker is unavailable.
func (c *Client) publish(ctx context.Context, msg *nats.Msg) error {
	pctx, cancel := context.WithTimeout(ctx, c.pubWait)
	defer cancel()
	var last error // the last attempt's error, but for a lost connection
	for n := 0; ; n++ {
		ep := c.up(pctx)
		if ep == nil {
			switch {
			case ctx.Err() != nil:
				return fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(ctx))
			case n == 0:
				return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "the message broker is not connected", RetryAfter: "1"}
			}
			return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "the connection to the message broker was lost before it acknowledged the request", RetryAfter: "1"}
		}
		err := c.publishOnce(pctx, ep, msg)
		switch {
		case err == nil:
			return nil
		case isQueueFull(err):
			return &messages.Error{Outcome: messages.OutcomeQueueFull, Message: "the queue for this priority band and model group is full", RetryAfter: "1"}
		case ctx.Err() != nil:
			return fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(ctx))
		case ep.ctx.Err() != nil:
			continue // the connection went: up waits for the next one
		case !jsretry.Retryable(err):
			return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "the message broker did not accept the request: " + err.Error(), RetryAfter: "1"}
		}
		last = err
		if !jsretry.Sleep(pctx, jsretry.Backoff(n)) || pctx.Err() != nil {
			return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, RetryAfter: "1",
				Message: fmt.Sprintf("the message broker did not acknowledge the request within %s: %v", c.pubWait, last)}
		}
	}
}

// reconnectGrace is how long a publish waits for a lost connection to a
// single server to come back before it tells the caller the broker is
// unavailable. A client that knows more than one server (a cluster) waits
// for the whole publish bound instead: it moves to another node within
// milliseconds, and a node's failure must not refuse requests.
const reconnectGrace = 300 * time.Millisecond

// up returns the current epoch of a connected client, waiting for a lost
// connection to come back (see reconnectGrace) no longer than ctx; nil
// when it did not.
func (c *Client) up(ctx context.Context) *epoch {
	ep := c.epoch.Load()
	if ep.ctx.Err() == nil && c.nc.IsConnected() {
		return ep
	}
	var grace <-chan time.Time
	if len(c.nc.Servers()) <= 1 {
		t := time.NewTimer(reconnectGrace)
		defer t.Stop()
		grace = t.C
	}
	for {
		select {
		case <-ep.next:
			if ep = c.epoch.Load(); ep.ctx.Err() == nil {
				return ep
			}
		case <-grace:
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// publishOnce is one attempt of publish, bounded by jsretry.Attempt and
// ended early when the connection of ep goes.
func (c *Client) publishOnce(ctx context.Context, ep *epoch, msg *nats.Msg) error {
	actx, cancel := context.WithTimeout(ctx, jsretry.Attempt)
	defer cancel()
	defer context.AfterFunc(ep.ctx, cancel)()
	_, err := c.js.PublishMsg(actx, msg, jetstream.WithRetryAttempts(0)) // publish repeats
	return err
}

func isQueueFull(err error) bool {
	// nats-server answers a discard-new-per-subject refusal with error code
	// 10077 (stream store failed) and this description.
	return strings.Contains(strings.ToLower(err.Error()), "maximum messages per subject exceeded")
}

// onInbox handles pickups and events for every request of this client. It
// runs on the subscription's goroutine and never blocks.
func (c *Client) onInbox(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	c.mu.Lock()
	w := c.waiters[id]
	c.mu.Unlock()
	event := m.Header.Get(messages.HeaderEvent)
	switch {
	case w == nil || event == messages.EventPickup || event == messages.EventStarted:
	case event == messages.EventRequeue:
		w.lastSeen.Store(0) // its worker let go: the next pickup may start it
	default:
		now := time.Now()
		w.lastSeen.Store(now.UnixNano()) // a sign of life of the serving worker
		if d, ok := messages.RedeliverIn(m.Header); ok {
			w.redeliverAt.Store(now.Add(d).UnixNano())
		}
	}
	switch event {
	case messages.EventPickup:
		_ = m.Respond([]byte(c.pickup(w, m.Header)))
	case messages.EventStarted:
		// A worker started the request without asking: the same decision
		// as for a pickup, and if the answer is no, the worker is told to
		// stop.
		if c.pickup(w, m.Header) != messages.PickupAccept {
			if ctl := m.Header.Get(messages.HeaderControl); ctl != "" {
				_ = c.nc.PublishMsg(messages.EventMsg(ctl, messages.EventCancel, 0, nil))
			}
		}
	case messages.EventChunk:
		if w == nil || w.chunks == nil {
			return
		}
		select {
		case w.chunks <- m:
		default:
			// The reader fell behind: end the stream and stop paying for
			// tokens now, not when Do gets out of its blocked write.
			w.once.Do(func() {
				close(w.abort)
				c.cancel(w)
			})
		}
	case messages.EventReply:
		if ack := m.Header.Get(messages.HeaderAck); ack != "" {
			// The request asked to ack its answer itself (Submit's requests
			// do): one publish, and the worker waits for nothing. An ack
			// that is lost leaves the request to be redelivered, and its
			// pickup is refused, as this client has its answer.
			if messages.ValidAck(ack) {
				_ = c.nc.Publish(ack, messages.AckToken)
			}
		} else {
			// Confirm receipt, so the worker acks the request; a worker
			// that gets no confirmation serves the request again.
			_ = m.Respond(nil)
		}
		if w != nil {
			c.answered(w, m)
		}
	}
}

// answered hands the reply m to whoever waits for w: Do, or the parked
// request's end. The first answer wins; a duplicate is dropped.
func (c *Client) answered(w *waiter, m *nats.Msg) {
	select {
	case w.reply <- m:
	default:
		return
	}
	if w.parked.Load() { // see hand
		select {
		case m := <-w.reply:
			c.endParked(w, m, nil)
		default:
		}
	}
}

// pickup decides whether a worker may start w's request.
func (c *Client) pickup(w *waiter, h nats.Header) string {
	if w == nil {
		return messages.PickupReject
	}
	if w.parked.Load() && w.state.Load() == stateWaiting && !w.parker.Alive() {
		if w.state.CompareAndSwap(stateWaiting, stateAbandoned) {
			c.endParked(w, nil, fmt.Errorf("%w: the caller went away while the request waited", messages.ErrCancelled))
		}
		return messages.PickupReject
	}
	// A redelivery after a worker died finds the state already picked. A
	// plain request may start again (the caller still waits for its one
	// answer) once the first worker has gone quiet; while it still sends
	// heartbeats, the redelivery is a late ack, and a second call would put
	// the request at two providers at once. A stream never starts again,
	// since part of it may have been relayed.
	first := w.state.CompareAndSwap(stateWaiting, statePicked)
	if !first && (w.stream || w.state.Load() != statePicked || !w.workerGone()) {
		return messages.PickupReject
	}
	control, deployment := h.Get(messages.HeaderControl), h.Get(messages.HeaderDeployment)
	w.control.Store(&control)
	w.deploy.Store(&deployment)
	now := time.Now()
	w.lastSeen.Store(now.UnixNano())
	if first {
		w.pickedAt.Store(now.UnixNano())
	}
	if d, ok := messages.RedeliverIn(h); ok {
		c.watchRedelivery(w, now.Add(d))
	}
	c.startParked(w)
	return messages.PickupAccept
}
