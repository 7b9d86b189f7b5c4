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
// ever called for it.
//
// Ownership: Do owns a request from publish to answer. When its context ends
// or the queue deadline passes before a worker picked the request up, Do
// returns at once and the request is abandoned; the worker that later finds
// it drops it without a provider call.
package client

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/llmq/llmq/pkg/messages"
)

// Options configure a Client. The zero value uses the defaults.
type Options struct {
	// Prefix is llmq_settings.subject_prefix; default "llmq".
	Prefix string
	// BandBounds is llmq_settings.priority_bands; default messages.DefaultBandBounds.
	BandBounds []int64
	// PublishTimeout bounds the JetStream publish; default 5 s. A broker that
	// does not acknowledge in time makes Do fail with ErrBrokerUnavailable.
	PublishTimeout time.Duration
}

// Client submits requests over one NATS connection.
type Client struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	subjects messages.Subjects
	bands    messages.Bands
	pubWait  time.Duration
	inbox    string // prefix; a request's inbox is inbox + "." + id
	sub      *nats.Subscription

	mu      sync.Mutex
	waiters map[string]*waiter
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
		c.pubWait = 5 * time.Second
	}
	c.sub, err = nc.Subscribe(c.inbox+".*", c.onInbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe inbox: %w", err)
	}
	if err := c.sub.SetPendingLimits(-1, -1); err != nil {
		return nil, err
	}
	return c, nil
}

// Close unsubscribes the inbox. Pending Do calls end by their own contexts.
func (c *Client) Close() error { return c.sub.Unsubscribe() }

// Bands returns the client's band table.
func (c *Client) Bands() messages.Bands { return c.bands }

// Request is one request to submit.
type Request struct {
	ID       string        // unique id; generated when empty
	Kind     messages.Kind // chat or completion
	Group    string        // model group (model_name)
	Priority int64         // lower is more important
	Body     []byte        // OpenAI request body without llmq-only fields such as "priority"
	Stream   bool          // not supported over this client yet
	// Deadline bounds the time the request may wait in the queue. Zero means
	// no deadline other than ctx's.
	Deadline time.Time
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
	ID        string
	Band      int
	Picked    bool          // a worker picked the request up
	QueueWait time.Duration // from publish to pickup, when Picked
}

const (
	stateWaiting int32 = iota
	statePicked
	stateAbandoned
)

type waiter struct {
	state    atomic.Int32
	pickedAt atomic.Int64 // unix nanos
	reply    chan *nats.Msg
}

// Do submits req and waits for its answer. A request that fails returns an
// error matching one of pkg/messages' classes with errors.Is (a *messages.Error
// for answers from a worker); info is filled in either way.
func (c *Client) Do(ctx context.Context, req *Request) (resp *Response, info Result, err error) {
	if req.ID == "" {
		req.ID = nuid.Next()
	}
	band := c.bands.Band(req.Priority)
	info = Result{ID: req.ID, Band: band}
	w := &waiter{reply: make(chan *nats.Msg, 1)}
	c.mu.Lock()
	if _, dup := c.waiters[req.ID]; dup {
		c.mu.Unlock()
		return nil, info, messages.Errorf(messages.OutcomeInvalidRequest, "", "request id %q is already in use", req.ID)
	}
	c.waiters[req.ID] = w
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.waiters, req.ID)
		c.mu.Unlock()
	}()

	start := time.Now()
	msg := c.subjects.Msg(&messages.Request{
		ID: req.ID, Kind: req.Kind, Group: req.Group, Band: band, Priority: req.Priority,
		ReplyTo: c.inbox + "." + req.ID, Deadline: req.Deadline, Stream: req.Stream, Body: req.Body,
	}, start)
	if err := c.publish(ctx, msg); err != nil {
		w.state.Store(stateAbandoned)
		return nil, info, err
	}

	var deadline <-chan time.Time
	if !req.Deadline.IsZero() {
		t := time.NewTimer(time.Until(req.Deadline))
		defer t.Stop()
		deadline = t.C
	}
	for {
		select {
		case m := <-w.reply:
			info.Picked = true
			if at := w.pickedAt.Load(); at != 0 {
				info.QueueWait = time.Unix(0, at).Sub(start)
			}
			rep, err := messages.DecodeReply(m.Header, m.Data)
			if err != nil {
				return nil, info, err
			}
			if err := rep.Err(); err != nil {
				return nil, info, err
			}
			return &Response{ID: req.ID, Band: band, Deployment: rep.Deployment, QueueWait: info.QueueWait, Body: rep.Body}, info, nil
		case <-deadline:
			if w.state.CompareAndSwap(stateWaiting, stateAbandoned) {
				return nil, info, messages.Errorf(messages.OutcomeQueueTimeout, "", "the request waited %s in the queue without reaching a worker", time.Since(start).Round(time.Millisecond))
			}
			deadline = nil // picked up just in time: wait for the answer
		case <-ctx.Done():
			if w.state.Swap(stateAbandoned) == statePicked {
				info.Picked = true
			}
			cause := context.Cause(ctx)
			if errors.Is(cause, messages.ErrQueueTimeout) {
				return nil, info, messages.Errorf(messages.OutcomeQueueTimeout, "", "the request waited %s in the queue without reaching a worker", time.Since(start).Round(time.Millisecond))
			}
			return nil, info, fmt.Errorf("%w: %w", messages.ErrCancelled, cause)
		}
	}
}

func (c *Client) publish(ctx context.Context, msg *nats.Msg) error {
	if !c.nc.IsConnected() {
		return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "the message broker is not connected", RetryAfter: "1"}
	}
	pctx, cancel := context.WithTimeout(ctx, c.pubWait)
	defer cancel()
	_, err := c.js.PublishMsg(pctx, msg)
	switch {
	case err == nil:
		return nil
	case isQueueFull(err):
		return &messages.Error{Outcome: messages.OutcomeQueueFull, Message: "the queue for this priority band and model group is full", RetryAfter: "1"}
	case ctx.Err() != nil:
		return fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(ctx))
	default:
		return &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "the message broker did not accept the request: " + err.Error(), RetryAfter: "1"}
	}
}

func isQueueFull(err error) bool {
	// nats-server answers a discard-new-per-subject refusal with error code
	// 10077 (stream store failed) and this description.
	return strings.Contains(strings.ToLower(err.Error()), "maximum messages per subject exceeded")
}

// onInbox handles pickups and replies for every request of this client.
func (c *Client) onInbox(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	c.mu.Lock()
	w := c.waiters[id]
	c.mu.Unlock()
	switch m.Header.Get(messages.HeaderEvent) {
	case messages.EventPickup:
		answer := messages.PickupReject
		if w != nil {
			// A redelivery after a worker died finds the state already picked:
			// the caller still waits, so the new worker may go on.
			if w.state.CompareAndSwap(stateWaiting, statePicked) {
				w.pickedAt.Store(time.Now().UnixNano())
				answer = messages.PickupAccept
			} else if w.state.Load() == statePicked {
				answer = messages.PickupAccept
			}
		}
		_ = m.Respond([]byte(answer))
	case messages.EventReply:
		if w == nil {
			return
		}
		select {
		case w.reply <- m: // the first answer wins; a duplicate is dropped
		default:
		}
	}
}
