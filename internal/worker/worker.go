// Package worker is llmq's dispatch loop: worker slots that take requests from
// JetStream in strict priority order, call a deployment with headroom, and
// reply to the caller's inbox.
//
// # The policy
//
// Every free slot sweeps the bands from 0 (most important) to the last. Inside
// a band it looks only at model groups that (a) may have pending messages and
// (b) have a deployment with headroom, and it leases that headroom before it
// fetches, so a slot never holds a request it cannot start. For a group with
// shared limits the lease includes the global reservation (one slot of the
// process at a time admits the group): only an admitted slot fetches, so the
// limit releases the head of the queue whichever process wins the room. It
// fetches one message with a no-wait pull request (see puller) from the
// durable consumer of that band and group; the first hit wins. So a lower
// band gets a slot only when no higher band of the same group has a message,
// or when that group is saturated — and then the higher band's request could
// not have started anyway; a group refused at one band is not admitted at a
// worse one in the same sweep. Priority cannot invert within a group except
// for the time a wake-up hint takes to arrive (well under a millisecond on
// one machine). Inside one band and group, the consumer delivers in stream
// order: first come, first served.
//
// # Knowing what is pending without polling
//
// The request stream republishes a headers-only copy of every stored message
// to <prefix>.wake.<band>.<group>. Each worker process subscribes to these
// hints (a plain subscription, not a queue group: with a queue group only one
// process would learn about a message, and a busy process's view would go
// stale, letting a later sweep take a lower band first), marks the pair as
// pending, and wakes one idle slot. A fetched message's metadata carries the
// consumer's remaining count, which keeps the pair marked while it has more.
// A slow safety-net poll (one stream-info request listing the subjects that
// hold messages) repairs the view after lost hints or reconnects. An idle pool
// sends nothing but that poll.
//
// # One fetch per message
//
// A fetch that finds nothing costs a round trip and the server's parsing of
// a pull request, so slots avoid them. A hint names the stored message's
// stream sequence, and a fetched message its own; a consumer delivers in
// stream order, so once the pool has fetched a sequence at least as high as
// the last hinted one, a marked pair holds nothing the pool knows of and is
// not fetched. While fetches are in flight for a pair, another slot fetches
// only if they are fewer than the messages known to wait (hinted and not
// fetched here, or left by the last answer); an answer that leaves more
// wakes a slot. Marks no sequence explains (start, the safety-net poll, a
// request handed back) make the next sweep fetch regardless. A release of
// capacity wakes slots only when it can let a refused admission through.
// Under a closed loop this brought fetches from about seven per request to
// about one.
//
// # Ownership of a message
//
// The slot that fetched a message owns it until it acks or terminates it.
// Before calling a provider it checks the queue deadline and asks the caller
// (a pickup request to the caller's inbox) whether it still waits; if not, it
// terminates the message and no provider is called. During the call it sends
// in-progress acks so JetStream does not redeliver. It publishes the answer to
// the caller's inbox first and acks once the caller confirmed it, so a worker
// that dies in between causes a redelivery, never a lost answer; the caller
// keeps only the first answer it receives. The slot does not wait for the
// confirmation: it takes the next request while the answer's delivery
// (deliver.go) settles the message. A pickup or an answer that finds nobody
// on the caller's inbox is held for as long as the caller said it waits (its
// gateway may be reconnecting; see hold.go).
//
// A worker that dies holding a message leaves it to JetStream, which
// redelivers it after the ack wait but publishes no wake-up hint for it.
// The caller announces it instead: the pickup and each heartbeat say when
// the redelivery would come (keepalive.go), and pkg/client publishes the
// hint then if the worker fell silent. Other workers cannot tell which
// messages a dead worker held without a round trip per request; the caller
// already hears from the worker every second.
//
// # Shutdown
//
// When the context passed to Run ends, slots stop taking work; calls in
// progress finish within DrainTimeout, the rest are cancelled and their
// messages negatively acknowledged, so another worker serves them at once;
// then Run returns.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/messages"
)

// Options configure a Pool.
type Options struct {
	Subjects messages.Subjects
	Bands    int      // number of priority bands
	Groups   []string // model groups served
	Slots    int      // concurrent requests
	// Router leases deployment capacity; each router.Deployment's Value is its provider.Caller.
	Router *router.Router
	Logger *slog.Logger
	// AckWait is the consumers' ack wait; in-progress acks go out at a third of it.
	AckWait time.Duration
	// PollInterval is the safety-net poll; default 5 s.
	PollInterval time.Duration
	// PickupTimeout bounds the check that the caller still waits; default 2 s.
	PickupTimeout time.Duration
	// Metrics records what the pool does; default: a private registry.
	Metrics *metrics.Metrics
	// LimitsChanged signals that the shared limiter state changed (a slot
	// freed, a cooldown ended); the pool then wakes its waiting slots.
	LimitsChanged <-chan struct{}
	// Paused, when set, tells whether an operator paused a band and group
	// (internal/pauses): the sweep takes no new request of it, which stays
	// queued. PausesChanged signals a change: the pool looks at every queue
	// again, so resumed requests go out at once.
	Paused        func(band int, group string) bool
	PausesChanged <-chan struct{}
	// DefaultCompletionTokens is the completion budget reserved against tpm
	// for a request without max_tokens; default 256.
	DefaultCompletionTokens int64
	// Policy is the retry, cooldown and fallback policy.
	Policy Policy
	// DrainTimeout bounds how long Run waits, after its context ends, for the
	// calls in progress; calls still running then are cancelled and their
	// requests handed back to JetStream for another worker. Default 30 s.
	DrainTimeout time.Duration
}

// Pool is a set of worker slots sharing one NATS connection.
type Pool struct {
	nc     *nats.Conn
	js     jetstream.JetStream
	opts   Options
	log    *slog.Logger
	stream jetstream.Stream

	pullers  [][]*puller // [band][group]
	pairs    [][]pair    // [band][group]: what is known about its messages
	groupIdx map[string]int
	limited  []*limitedGroup // per group: nil unless some deployment has a shared limiter
	limits   bool            // some deployment (of any group, fallbacks included) has a shared limiter
	wake     chan struct{}
	// retired is closed by Retire.
	retired    chan struct{}
	retireOnce sync.Once
	rotate     atomic.Uint32
	inFlight   workCount

	control   string         // prefix of this pool's control subjects
	calls     sync.Map       // request id -> context.CancelCauseFunc of its call
	reconnect reconnectWatch // onControl's
	delivered deliveries
	callers   callers
	keeper    *keeper
}

// Causes of a cancelled call.
var (
	errCallerGone = errors.New("the caller went away")
	errShutdown   = errors.New("the worker is shutting down")
)

// New prepares a pool. The stream and consumers must exist (topology.Ensure).
func New(nc *nats.Conn, opts Options) (*Pool, error) {
	if opts.Slots < 1 {
		return nil, errors.New("worker: at least one slot is required")
	}
	if opts.Router == nil {
		return nil, errors.New("worker: a router is required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 5 * time.Second
	}
	if opts.PickupTimeout <= 0 {
		opts.PickupTimeout = 2 * time.Second
	}
	if opts.AckWait <= 0 {
		opts.AckWait = 30 * time.Second
	}
	if opts.Metrics == nil {
		opts.Metrics = metrics.New(prometheus.NewRegistry())
	}
	if opts.DefaultCompletionTokens <= 0 {
		opts.DefaultCompletionTokens = 256
	}
	if opts.Policy.Backoff <= 0 {
		opts.Policy.Backoff = 500 * time.Millisecond
	}
	if opts.Policy.CooldownTime <= 0 {
		opts.Policy.CooldownTime = 5 * time.Second
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	p := &Pool{
		nc: nc, js: js, opts: opts, log: opts.Logger,
		groupIdx: make(map[string]int, len(opts.Groups)),
		wake:     make(chan struct{}, opts.Slots),
		retired:  make(chan struct{}),
		control:  nc.NewRespInbox(),
		keeper:   newKeeper(nc, opts.AckWait),
	}
	p.reconnect.nc = nc
	p.delivered.pending = make(map[string]*delivery)
	p.limited = make([]*limitedGroup, len(opts.Groups))
	for i, g := range opts.Groups {
		p.groupIdx[g] = i
	}
	for _, d := range opts.Router.Deployments() {
		p.limits = p.limits || d.Limiter != nil
		if gi, ok := p.groupIdx[d.Group]; ok && d.Limiter != nil && p.limited[gi] == nil {
			p.limited[gi] = &limitedGroup{}
			p.limited[gi].tokens.Store(opts.DefaultCompletionTokens)
		}
	}
	p.pairs = make([][]pair, opts.Bands)
	for b := range p.pairs {
		p.pairs[b] = make([]pair, len(opts.Groups))
	}
	opts.Router.SetOnRelease(func(string) { p.signal() })
	return p, nil
}

// Run serves requests until ctx ends, then waits for calls in progress.
func (p *Pool) Run(ctx context.Context) error {
	if err := p.bind(ctx); err != nil {
		return err
	}
	// Slots take work until ctx ends or the pool is retired.
	outer := ctx
	ctx, stopTaking := context.WithCancel(ctx)
	defer stopTaking()
	go func() {
		select {
		case <-p.retired:
			stopTaking()
		case <-ctx.Done():
		}
	}()
	defer func() {
		for _, band := range p.pullers {
			for _, pl := range band {
				pl.close()
			}
		}
	}()
	sub, err := p.nc.Subscribe(p.opts.Subjects.WakeWildcard(), p.onWake)
	if err != nil {
		return fmt.Errorf("worker: subscribe wake hints: %w", err)
	}
	defer sub.Unsubscribe()
	_ = sub.SetPendingLimits(-1, -1)
	ctl, err := p.nc.Subscribe(p.control+".*", p.onControl)
	if err != nil {
		return fmt.Errorf("worker: subscribe control: %w", err)
	}
	defer ctl.Unsubscribe()
	conf, err := p.nc.Subscribe(p.confirmSubject("*"), p.onConfirm)
	if err != nil {
		return fmt.Errorf("worker: subscribe confirmations: %w", err)
	}
	defer conf.Unsubscribe()
	gone, err := p.nc.Subscribe(p.opts.Subjects.Gone(), p.onGone)
	if err != nil {
		return fmt.Errorf("worker: subscribe closed callers: %w", err)
	}
	defer gone.Unsubscribe()

	// The keep-alives go on until Run returns: calls and deliveries outlive
	// ctx by the drain.
	kctx, stopKeeper := context.WithCancel(context.Background())
	defer stopKeeper()
	go p.keeper.run(kctx)

	p.markAll() // requests queued before we started
	var wg sync.WaitGroup
	wg.Go(func() { p.poll(ctx) })
	if p.opts.LimitsChanged != nil {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-p.opts.LimitsChanged:
					p.opts.Router.Wake()
				}
			}
		})
	}
	if p.opts.PausesChanged != nil {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-p.opts.PausesChanged:
					p.markAll()
				}
			}
		})
	}
	for range p.opts.Slots {
		wg.Go(func() { p.slot(ctx) })
	}
	p.log.Info("worker slots started", "slots", p.opts.Slots, "bands", p.opts.Bands, "groups", len(p.opts.Groups))
	// The drain timer starts when ctx ends, not when the slots are done: a
	// slot returns only after its call, so waiting for the slots first would
	// let the slowest call decide how long shutdown takes.
	// A retired pool waits for its calls without that bound, until outer
	// ends too.
	drained, slotsDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(drained)
		<-ctx.Done()
		if outer.Err() == nil {
			select {
			case <-slotsDone: // every call has ended
			case <-outer.Done():
			}
		}
		p.drain()
	}()
	wg.Wait()
	close(slotsDone)
	<-drained
	return nil
}

// Retire stops the pool taking work, as the end of Run's context does, but
// lets the calls and deliveries in progress run to their own end (their
// provider timeouts and deadlines) rather than DrainTimeout: another pool
// has taken over (a configuration reload). Run returns once they have
// ended; if its context ends first, DrainTimeout applies from then.
func (p *Pool) Retire() { p.retireOnce.Do(func() { close(p.retired) }) }

// drain waits for the calls in progress, at most DrainTimeout; then it
// cancels the rest, whose requests go back to JetStream.
func (p *Pool) drain() {
	done := p.inFlight.idle()
	t := time.NewTimer(p.opts.DrainTimeout)
	defer t.Stop()
	select {
	case <-done:
		return
	case <-t.C:
	}
	p.log.Warn("drain timeout: handing unfinished requests back", "timeout", p.opts.DrainTimeout)
	p.calls.Range(func(_, cancel any) bool {
		cancel.(context.CancelCauseFunc)(errShutdown)
		return true
	})
	p.abandonDeliveries()
	<-done
}

// workCount counts the calls and deliveries in progress. Unlike a
// sync.WaitGroup's, its count may leave zero while a drain waits (a slot
// that fetched a message just as the pool was stopped starts its call).
type workCount struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed while n is zero; nil before the first add
}

func (w *workCount) Add(delta int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == 0 {
		w.zero = make(chan struct{})
	}
	w.n += delta
	if w.n == 0 {
		close(w.zero)
	}
}

func (w *workCount) Done() { w.Add(-1) }

// idle returns a channel closed once the count is zero.
func (w *workCount) idle() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.zero == nil {
		w.zero = make(chan struct{})
		close(w.zero)
	}
	return w.zero
}

// pullTimeout bounds the wait for the server's answer to one fetch.
const pullTimeout = 5 * time.Second

func (p *Pool) bind(ctx context.Context) error {
	var err error
	p.stream, err = p.js.Stream(ctx, p.opts.Subjects.RequestStream())
	if err != nil {
		return fmt.Errorf("worker: stream %s: %w", p.opts.Subjects.RequestStream(), err)
	}
	p.pullers = make([][]*puller, p.opts.Bands)
	for b := range p.opts.Bands {
		p.pullers[b] = make([]*puller, len(p.opts.Groups))
		for gi, g := range p.opts.Groups {
			name := p.opts.Subjects.Consumer(b, g)
			if _, err := p.stream.Consumer(ctx, name); err != nil {
				return fmt.Errorf("worker: consumer %s: %w", name, err)
			}
			p.pullers[b][gi] = newPuller(p.nc, p.opts.Subjects.RequestStream(), name, pullTimeout)
		}
	}
	return nil
}
