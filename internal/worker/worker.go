// Package worker is llmq's dispatch loop: worker slots that take requests from
// JetStream in strict priority order, call a deployment with headroom, and
// reply to the caller's inbox.
//
// # The policy
//
// Every free slot sweeps the bands from 0 (most important) to the last. Inside
// a band it looks only at model groups that (a) may have pending messages and
// (b) have a deployment with headroom, and it leases that headroom before it
// fetches, so a slot never holds a request it cannot start. It fetches one
// message with a no-wait fetch from the durable consumer of that band and
// group; the first hit wins. So a lower band gets a slot only when no higher
// band of the same group has a message, or when that group is saturated —
// and then the higher band's request could not have started anyway. Priority
// cannot invert within a group except for the time a wake-up hint takes to
// arrive (well under a millisecond on one machine). Inside one band and group,
// the consumer delivers in stream order: first come, first served.
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
// # Ownership of a message
//
// The slot that fetched a message owns it until it acks or terminates it.
// Before calling a provider it checks the queue deadline and asks the caller
// (a pickup request to the caller's inbox) whether it still waits; if not, it
// terminates the message and no provider is called. During the call it sends
// in-progress acks so JetStream does not redeliver. It publishes the answer to
// the caller's inbox first and acks after, so a worker that dies in between
// causes a redelivery, never a lost answer; the caller keeps only the first
// answer it receives.
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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/provider"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
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

	consumers [][]jetstream.Consumer // [band][group]
	pending   [][]atomic.Bool        // [band][group]: may have messages
	hinted    [][]atomic.Int64       // [band][group]: unix nanos of the last wake-up hint
	groupIdx  map[string]int
	wake      chan struct{}
	rotate    atomic.Uint32
	inFlight  sync.WaitGroup

	control string   // prefix of this pool's control subjects
	calls   sync.Map // request id -> context.CancelCauseFunc of its call
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
		control:  nc.NewRespInbox(),
	}
	for i, g := range opts.Groups {
		p.groupIdx[g] = i
	}
	p.pending = make([][]atomic.Bool, opts.Bands)
	p.hinted = make([][]atomic.Int64, opts.Bands)
	for b := range p.pending {
		p.pending[b] = make([]atomic.Bool, len(opts.Groups))
		p.hinted[b] = make([]atomic.Int64, len(opts.Groups))
	}
	opts.Router.SetOnRelease(func(string) { p.signal() })
	return p, nil
}

// Run serves requests until ctx ends, then waits for calls in progress.
func (p *Pool) Run(ctx context.Context) error {
	if err := p.bind(ctx); err != nil {
		return err
	}
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
	for range p.opts.Slots {
		wg.Go(func() { p.slot(ctx) })
	}
	p.log.Info("worker slots started", "slots", p.opts.Slots, "bands", p.opts.Bands, "groups", len(p.opts.Groups))
	wg.Wait()
	p.drain()
	return nil
}

// drain waits for the calls in progress, at most DrainTimeout; then it
// cancels the rest, whose requests go back to JetStream.
func (p *Pool) drain() {
	done := make(chan struct{})
	go func() {
		p.inFlight.Wait()
		close(done)
	}()
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
	<-done
}

func (p *Pool) bind(ctx context.Context) error {
	var err error
	p.stream, err = p.js.Stream(ctx, p.opts.Subjects.RequestStream())
	if err != nil {
		return fmt.Errorf("worker: stream %s: %w", p.opts.Subjects.RequestStream(), err)
	}
	p.consumers = make([][]jetstream.Consumer, p.opts.Bands)
	for b := range p.opts.Bands {
		p.consumers[b] = make([]jetstream.Consumer, len(p.opts.Groups))
		for gi, g := range p.opts.Groups {
			name := p.opts.Subjects.Consumer(b, g)
			c, err := p.stream.Consumer(ctx, name)
			if err != nil {
				return fmt.Errorf("worker: consumer %s: %w", name, err)
			}
			p.consumers[b][gi] = c
		}
	}
	return nil
}

// signal wakes one idle slot, if any waits.
func (p *Pool) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *Pool) onWake(m *nats.Msg) {
	band, group, err := p.opts.Subjects.ParseRequest(m.Subject)
	if err != nil || band >= p.opts.Bands {
		return
	}
	gi, ok := p.groupIdx[group]
	if !ok {
		return
	}
	p.hinted[band][gi].Store(time.Now().UnixNano())
	p.pending[band][gi].Store(true)
	p.signal()
}

// hintLag is how long after a wake-up hint an empty fetch is not believed:
// JetStream publishes the hint when it stores the message, but the consumer
// counts the message as pending a moment later (another server goroutine),
// and a no-wait fetch in between answers "no messages".
const hintLag = 50 * time.Millisecond

// retryRecent keeps a pair marked after an empty fetch that may have raced
// its hint, and sweeps again shortly.
func (p *Pool) retryRecent(band, gi int) {
	if time.Since(time.Unix(0, p.hinted[band][gi].Load())) < hintLag {
		p.pending[band][gi].Store(true)
		time.AfterFunc(time.Millisecond, p.signal)
	}
}

// onControl cancels a call when its caller says so, or when NATS reports
// that nobody listens on the caller's inbox any more ("no responders" to a
// heartbeat or chunk sent with this control subject as reply).
func (p *Pool) onControl(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	if m.Header.Get(messages.HeaderEvent) != messages.EventCancel && m.Header.Get("Status") != "503" {
		return
	}
	if cancel, ok := p.calls.Load(id); ok {
		cancel.(context.CancelCauseFunc)(errCallerGone)
	}
}

func (p *Pool) markAll() {
	for b := range p.pending {
		for gi := range p.pending[b] {
			p.pending[b][gi].Store(true)
		}
	}
	for range p.opts.Slots {
		p.signal()
	}
}

// poll is the safety net: one stream-info request names every subject that
// holds messages.
func (p *Pool) poll(ctx context.Context) {
	t := time.NewTicker(p.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		info, err := p.stream.Info(ctx, jetstream.WithSubjectFilter(p.opts.Subjects.RequestWildcard()))
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("safety-net poll failed", "error", err)
			}
			continue
		}
		found := false
		depth := make([][]uint64, p.opts.Bands)
		for b := range depth {
			depth[b] = make([]uint64, len(p.opts.Groups))
		}
		for subj, n := range info.State.Subjects {
			band, group, err := p.opts.Subjects.ParseRequest(subj)
			if gi, ok := p.groupIdx[group]; err == nil && ok && band < p.opts.Bands && n > 0 {
				depth[band][gi] = n
				p.pending[band][gi].Store(true)
				found = true
			}
		}
		for b := range depth {
			for gi, n := range depth[b] {
				p.opts.Metrics.QueueDepth(metrics.Band(b), p.opts.Groups[gi], n)
			}
		}
		p.recordLimits()
		if found {
			p.signal()
		}
	}
}

// recordLimits publishes each deployment's share of its limits in use.
func (p *Pool) recordLimits() {
	now := time.Now()
	for _, d := range p.opts.Router.Deployments() {
		if d.Limiter == nil {
			continue
		}
		u := d.Limiter.Usage(now)
		ratio := func(used, limit int64) float64 { return float64(used) / float64(limit) }
		if u.Limits.RPM > 0 {
			p.opts.Metrics.LimiterUse(d.ID, "rpm", ratio(u.Requests, u.Limits.RPM))
		}
		if u.Limits.TPM > 0 {
			p.opts.Metrics.LimiterUse(d.ID, "tpm", ratio(u.Tokens, u.Limits.TPM))
		}
		if u.Limits.MaxParallel > 0 {
			p.opts.Metrics.LimiterUse(d.ID, "parallel", ratio(int64(u.InFlight), int64(u.Limits.MaxParallel)))
		}
	}
}

func (p *Pool) slot(ctx context.Context) {
	for {
		m, lease, err := p.next(ctx)
		if err != nil {
			return
		}
		p.inFlight.Add(1)
		p.handle(ctx, m, lease)
		p.inFlight.Done()
	}
}

// next returns the next message to serve and the lease it will run under.
// It blocks until there is one or ctx ends.
func (p *Pool) next(ctx context.Context) (jetstream.Msg, *router.Lease, error) {
	for {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if m, lease := p.sweep(ctx); m != nil {
			return m, lease, nil
		}
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-p.wake:
		}
	}
}

// sweep is the strict-priority pass: bands in order, groups with pending
// messages and headroom, one no-wait fetch each, first hit wins. Groups of a
// band are visited from a rotating start so no group is always last.
func (p *Pool) sweep(ctx context.Context) (jetstream.Msg, *router.Lease) {
	n := len(p.opts.Groups)
	start := int(p.rotate.Add(1)) % max(n, 1)
	for band := range p.opts.Bands {
		for i := range n {
			gi := (start + i) % n
			flag := &p.pending[band][gi]
			if !flag.Load() {
				continue
			}
			lease, ok := p.opts.Router.TryAcquire(p.opts.Groups[gi])
			if !ok {
				continue // saturated: its requests wait, others go on
			}
			if !flag.Swap(false) {
				lease.Release() // another slot took the last one
				continue
			}
			m, more, err := p.fetch(band, gi)
			if err != nil && ctx.Err() == nil {
				p.log.Warn("fetch failed", "band", band, "group", p.opts.Groups[gi], "error", err)
			}
			if m == nil {
				lease.Release()
				p.retryRecent(band, gi)
				continue
			}
			if more {
				flag.Store(true)
				p.signal()
			}
			return m, lease
		}
	}
	return nil, nil
}

func (p *Pool) fetch(band, gi int) (jetstream.Msg, bool, error) {
	batch, err := p.consumers[band][gi].FetchNoWait(1)
	if err != nil {
		return nil, false, err
	}
	var got jetstream.Msg
	for m := range batch.Messages() {
		got = m
	}
	if got == nil {
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, false, err
		}
		return nil, false, nil
	}
	md, err := got.Metadata()
	if err != nil {
		return got, true, nil
	}
	p.opts.Metrics.QueueDepth(metrics.Band(band), p.opts.Groups[gi], md.NumPending)
	return got, md.NumPending > 0, nil
}

// handle serves one message under lease and settles it.
func (p *Pool) handle(ctx context.Context, m jetstream.Msg, lease *router.Lease) {
	defer func() {
		if lease != nil {
			lease.Release()
		}
	}()
	d := lease.Deployment()
	req, err := p.opts.Subjects.DecodeRequest(m.Subject(), m.Headers(), m.Data())
	if err != nil {
		p.log.Warn("terminating undecodable request", "subject", m.Subject(), "error", err)
		p.deadLetter(m, "undecodable", err.Error())
		return
	}
	log := p.log.With("request_id", req.ID, "band", req.Band, "group", req.Group)
	if !req.Deadline.IsZero() && time.Now().After(req.Deadline) {
		log.Info("dropping request past its queue deadline")
		_ = m.TermWithReason("queue deadline passed")
		return
	}
	control := p.control + "." + req.ID
	stop := p.keepAlive(m, req.ReplyTo, control)
	defer func() { stop() }()

	// Take the global reservation. If the deployment filled up since the
	// lease was taken (another process won the race), this slot keeps the
	// message, so it stays the head of its group, and waits for capacity.
	tokens := limiter.EstimateTokens(req.Body, p.opts.DefaultCompletionTokens)
	lease, err = p.reserve(ctx, req, lease, tokens, req.Deadline)
	if err != nil {
		p.abandon(log, m, req, err)
		return
	}
	d = lease.Deployment()
	if !p.pickup(req, control, d.ID) {
		log.Info("dropping request whose caller is gone")
		_ = m.TermWithReason("caller gone")
		return
	}

	// The call is finished even if the pool is shutting down (bounded by the
	// provider timeout and DrainTimeout); otherwise only its caller cancels it.
	callCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	p.calls.Store(req.ID, cancel)
	defer p.calls.Delete(req.ID)
	started := time.Now()
	var emit provider.Emit
	seq := 0
	if req.Stream {
		emit = func(data []byte) error {
			seq++
			msg := messages.EventMsg(req.ReplyTo, messages.EventChunk, seq, data)
			msg.Reply = control
			return p.nc.PublishMsg(msg)
		}
	}
	deployment, a := p.serve(callCtx, log, req, lease, tokens, emit)
	lease = nil // serve released it
	rep := &messages.Reply{Deployment: deployment, Body: a.body}
	if req.Stream {
		rep.Seq = seq + 1
	}
	usage, err := a.usage, a.err

	switch {
	case context.Cause(callCtx) == errShutdown:
		log.Info("call interrupted by shutdown; the request goes back to the queue")
		_ = m.Nak()
		return
	case context.Cause(callCtx) == errCallerGone:
		log.Info("call cancelled: the caller went away", "duration", time.Since(started))
		_ = m.Ack() // nobody waits for it: it leaves the stream
		return
	case err != nil:
		var e *messages.Error
		if !errors.As(err, &e) {
			e = &messages.Error{Outcome: messages.OutcomeOf(err), Message: err.Error()}
		}
		rep.Outcome, rep.Status, rep.RetryAfter, rep.Body = e.Outcome, e.HTTPStatus(), e.RetryAfter, messages.ErrorBody(e)
		log.Warn("provider call failed", "outcome", e.Outcome, "status", rep.Status, "error", e.Message, "duration", time.Since(started))
	default:
		rep.Outcome, rep.Status = messages.OutcomeServed, 200
		log.Debug("served", "duration", time.Since(started), "prompt_tokens", usage.PromptTokens, "completion_tokens", usage.CompletionTokens)
	}
	if err := p.nc.PublishMsg(messages.ReplyMsg(req.ReplyTo, rep)); err != nil {
		log.Warn("reply not sent; the request will be redelivered", "error", err)
		_ = m.Nak()
		return
	}
	if err != nil {
		// Failed for good (after the policy's retries and fallbacks): keep a
		// copy with the reason; the caller already has the error.
		p.deadLetter(m, "failed", rep.Outcome.String()+": "+string(rep.Body))
		return
	}
	if err := m.Ack(); err != nil {
		log.Warn("ack failed", "error", err)
	}
}

// deadLetter copies m with reason to the dead-letter stream and terminates
// it; class is the bounded metric label ("undecodable" or "failed").
func (p *Pool) deadLetter(m jetstream.Msg, class, reason string) {
	dead := nats.NewMsg(p.opts.Subjects.DeadLetter(m.Subject()))
	for k, v := range m.Headers() {
		if !strings.HasPrefix(k, "Nats-") {
			dead.Header[k] = v
		}
	}
	dead.Header.Set(messages.HeaderDeadReason, reason)
	dead.Data = m.Data()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.js.PublishMsg(ctx, dead); err != nil {
		p.log.Warn("dead-letter copy failed", "subject", m.Subject(), "error", err)
	}
	p.opts.Metrics.DeadLetter(class)
	_ = m.TermWithReason(reason)
}

// pickup asks the caller whether it still waits for req, and names the
// control subject it can cancel the call on.
func (p *Pool) pickup(req *messages.Request, control, deployment string) bool {
	msg := messages.EventMsg(req.ReplyTo, messages.EventPickup, 0, nil)
	msg.Header.Set(messages.HeaderControl, control)
	msg.Header.Set(messages.HeaderDeployment, deployment)
	resp, err := p.nc.RequestMsg(msg, p.opts.PickupTimeout)
	return err == nil && string(resp.Data) == messages.PickupAccept
}

// keepAlive keeps a request's message and its caller informed until stop: an
// in-progress ack every third of the ack wait, so JetStream does not
// redeliver, and a heartbeat to the caller every HeartbeatInterval, sent with
// the control subject as reply so a vanished caller is noticed.
func (p *Pool) keepAlive(m jetstream.Msg, inbox, control string) (stop func()) {
	done := make(chan struct{})
	go func() {
		progress := time.NewTicker(p.opts.AckWait / 3)
		defer progress.Stop()
		beat := time.NewTicker(messages.HeartbeatInterval)
		defer beat.Stop()
		for {
			select {
			case <-done:
				return
			case <-progress.C:
				_ = m.InProgress()
			case <-beat.C:
				msg := messages.EventMsg(inbox, messages.EventAlive, 0, nil)
				msg.Reply = control
				_ = p.nc.PublishMsg(msg)
			}
		}
	}()
	return func() { close(done) }
}
