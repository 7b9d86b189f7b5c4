package worker

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/llmq/llmq/internal/provider"

	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// Policy is the worker's retry policy; the worker is the only layer that
// retries (openai-go's own retries are off). It acts on the faults that
// internal/provider decides (fault.go there):
//
//   - A provider 429 cools the deployment down for its Retry-After (else
//     CooldownTime) and the request is tried again as soon as the group has
//     capacity. It keeps its place (the slot holds it) and spends no retry.
//   - A fault of the deployment (unreachable, 5xx or 408, timeout, an
//     answer that is not one) counts as a failure of the deployment (more
//     than AllowedFails within a minute cools it down for CooldownTime) and
//     is retried up to NumRetries times with exponential backoff, on
//     whichever deployment of the group has capacity.
//   - Then, and at once for other 4xx answers except 400, 413 and 422 (which
//     are the caller's to fix), the group's fallbacks are tried in order.
//   - A stream that already relayed events is never retried; its fault
//     still counts against the deployment.
//   - The request's queue deadline binds every wait before a call: for
//     capacity, for a cooldown, between retries. When it passes, the caller
//     gets the last fault, or 408 if no call failed (or only with 429s).
type Policy struct {
	NumRetries   int
	AllowedFails int
	CooldownTime time.Duration
	Fallbacks    map[string][]string // group -> fallback groups, in order
	// Backoff is the first retry's delay, doubled for each further retry; default 500 ms.
	Backoff time.Duration
}

// failWindow is the window in which AllowedFails counts failures (LiteLLM's is a minute).
const failWindow = time.Minute

// attempt is the result of one provider call.
type attempt struct {
	usage provider.Usage
	body  []byte
	err   error
}

// relay sends one stream event of the deployment that produced it.
type relay func(deployment string, data []byte) error

// serve runs req under the policy, starting on lease, which it owns. emit
// relays stream events (nil for a plain request).
func (p *Pool) serve(ctx context.Context, log *slog.Logger, req *messages.Request, lease *router.Lease, tokens int64, emit relay) (deployment string, a attempt) {
	pol := p.opts.Policy
	emitted := false
	groups := append([]string{req.Group}, pol.Fallbacks[req.Group]...)
	// hold keeps the request's place in its group between attempts: from the
	// moment an attempt fails until the next lease is taken, slots that would
	// fetch requests behind it are refused the group.
	var hold func()
	unhold := func() {
		if hold != nil {
			hold()
			hold = nil
		}
	}
	defer unhold()
	// last is the last fault worth telling the caller (not a 429).
	var last attempt
	expired := func(err error) attempt {
		if errors.Is(err, messages.ErrQueueTimeout) && last.err != nil {
			return last
		}
		return attempt{err: err}
	}
	for i, group := range groups {
		if i > 0 {
			unhold()
			log.Info("trying fallback group", "fallback", group)
		}
		retries := 0
		for {
			if lease == nil {
				var err error
				lease, err = p.reserve(ctx, group, tokens, req.Deadline)
				unhold()
				if err != nil {
					return deployment, expired(err)
				}
			}
			if err := p.restamp(ctx, lease, req.Deadline); err != nil {
				lease.Release()
				return deployment, expired(err)
			}
			d := lease.Deployment()
			deployment = d.ID
			var events provider.Emit
			if emit != nil {
				events = func(b []byte) error { emitted = true; return emit(d.ID, b) }
			}
			a = p.call(ctx, d, req, events)
			var e *messages.Error
			fault := final
			if a.err != nil && ctx.Err() == nil && errors.As(a.err, &e) {
				fault = classify(e)
			}
			next := fault
			if emitted {
				next = final
			}
			if next != final {
				hold = p.opts.Router.Waiting(group)
			}
			if next == requeue { // before the lease ends, so no other slot picks this deployment
				wait := pol.CooldownTime
				if s, err := strconv.Atoi(e.RetryAfter); err == nil && s > 0 {
					wait = time.Duration(s) * time.Second
				}
				log.Info("provider rate-limited the deployment; cooling it down", "deployment", d.ID, "cooldown", wait)
				p.opts.Router.Cooldown(d.ID, wait, "provider answered 429")
				p.opts.Metrics.Cooldown(d.ID, "rate_limited", wait)
			}
			used := a.usage.TotalTokens
			if used == 0 {
				used = -1 // not reported: keep the estimate
			}
			lease.Finish(used)
			lease = nil
			if fault == retry {
				last = a
				if p.opts.Router.Failed(d.ID, pol.AllowedFails, failWindow, pol.CooldownTime) {
					p.opts.Metrics.Cooldown(d.ID, "failures", pol.CooldownTime)
				}
			}
			switch next {
			case final:
				return deployment, a
			case requeue:
				continue
			case retry:
				unhold() // backing off: the group's other requests may go meanwhile
				if retries < pol.NumRetries {
					delay := pol.Backoff << retries
					retries++
					log.Info("provider call failed; retrying", "deployment", d.ID, "retry", retries, "delay", delay, "error", e.Message)
					if err := sleep(ctx, delay, req.Deadline); err != nil {
						return deployment, expired(err)
					}
					continue
				}
			case fallback:
				last = a
			}
			break // to the next fallback group
		}
	}
	return deployment, a
}

type nextStep int

const (
	final    nextStep = iota // answer the caller with this error
	requeue                  // cool the deployment down and try again, no retry spent
	retry                    // a fault of the deployment: count it, retry, then fall back
	fallback                 // go to the next fallback group at once
)

// classify is the policy's decision for a fault.
func classify(e *messages.Error) nextStep {
	switch e.Outcome {
	case messages.OutcomeProviderTimeout, messages.OutcomeProviderUnreachable, messages.OutcomeProviderBadResponse:
		return retry
	case messages.OutcomeProviderError:
	default:
		return final
	}
	switch s := e.ProviderStatus; {
	case s == http.StatusTooManyRequests:
		return requeue
	case s == 0 || s >= 500 || s == http.StatusRequestTimeout:
		return retry
	case s == http.StatusBadRequest || s == http.StatusRequestEntityTooLarge || s == http.StatusUnprocessableEntity:
		return final
	default:
		return fallback
	}
}

// reserve leases a deployment of group and takes its global reservation of
// tokens, waiting for capacity until ctx ends or the deadline (if not zero)
// passes. While it waits, the group is refused to slots that would fetch
// requests behind this one. The returned lease is reserved; on error no
// lease is held.
func (p *Pool) reserve(ctx context.Context, group string, tokens int64, deadline time.Time) (*router.Lease, error) {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, deadline, queueTimeout)
		defer cancel()
	}
	tooLarge := messages.Errorf(messages.OutcomeInvalidRequest, "max_tokens",
		"the request needs about %d tokens, more than the tokens-per-minute limit of the model group's deployments allow", tokens)
	if p.opts.Router.TooLarge(group, tokens) {
		return nil, tooLarge
	}
	defer p.opts.Router.Waiting(group)()
	for {
		lease, err := p.opts.Router.AcquireTokens(ctx, group, tokens)
		if err != nil {
			return nil, err
		}
		changed := p.opts.Router.Changed()
		err = lease.Reserve(ctx, tokens)
		if err == nil {
			return lease, nil
		}
		lease.Release()
		var le *limiter.LimitedError
		wait := time.Second
		switch {
		case errors.Is(err, limiter.ErrTooLarge):
			return nil, tooLarge
		case errors.As(err, &le):
			wait = time.Until(le.Until)
		case ctx.Err() != nil:
			return nil, context.Cause(ctx)
		default:
			p.log.Warn("limiter unavailable; retrying", "group", group, "error", err)
		}
		t := time.NewTimer(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, context.Cause(ctx)
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// restamp moves lease's reservation to the present if it has aged (see
// router.Lease.Restamp), waiting for room until ctx ends or the deadline
// (if not zero) passes. A limiter that does not answer leaves the
// reservation as it is: the call goes out.
func (p *Pool) restamp(ctx context.Context, lease *router.Lease, deadline time.Time) error {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, deadline, queueTimeout)
		defer cancel()
	}
	waiting := false
	for {
		changed := p.opts.Router.Changed()
		err := lease.Restamp(ctx)
		var le *limiter.LimitedError
		switch {
		case err == nil:
			return nil
		case ctx.Err() != nil:
			return context.Cause(ctx)
		case !errors.As(err, &le):
			p.log.Warn("limiter unavailable; the call goes out on its first admission", "deployment", lease.Deployment().ID, "error", err)
			return nil
		}
		if !waiting { // keep the request's place, as reserve does
			waiting = true
			defer p.opts.Router.Waiting(lease.Deployment().Group)()
		}
		t := time.NewTimer(max(time.Until(le.Until), time.Millisecond))
		select {
		case <-ctx.Done():
			t.Stop()
			return context.Cause(ctx)
		case <-changed:
		case <-t.C:
		}
		t.Stop()
	}
}

// abandon settles a request that could not be started: past its deadline,
// refused for good, or interrupted by shutdown.
func (p *Pool) abandon(log *slog.Logger, m *pulled, req *messages.Request, err error) {
	var e *messages.Error
	switch {
	case errors.Is(err, messages.ErrQueueTimeout):
		p.expire(log, m, req, "dropping request: its queue deadline passed while waiting for capacity")
	case errors.As(err, &e):
		log.Info("refusing request", "error", e.Message)
		_ = p.nc.PublishMsg(messages.ReplyMsg(req.ReplyTo, &messages.Reply{Outcome: e.Outcome, Status: e.HTTPStatus(), Body: messages.ErrorBody(e)}))
		_ = m.TermWithReason(e.Message)
	default: // shutting down: another worker takes it
		_ = m.Nak()
	}
}

// call makes one provider call on deployment d.
func (p *Pool) call(ctx context.Context, d *router.Deployment, req *messages.Request, emit provider.Emit) (a attempt) {
	caller := d.Value.(provider.Caller)
	p.opts.Metrics.CallStarted(d.ID)
	start := time.Now()
	defer func() {
		outcome := messages.OutcomeServed
		if a.err != nil {
			outcome = messages.OutcomeOf(a.err)
		}
		p.opts.Metrics.CallEnded(d.ID, outcome.String(), time.Since(start), a.usage.PromptTokens, a.usage.CompletionTokens)
	}()
	if emit != nil {
		u, err := caller.Stream(ctx, req.Kind, req.Body, emit)
		return attempt{usage: u, err: err}
	}
	res, err := caller.Call(ctx, req.Kind, req.Body)
	if err != nil {
		return attempt{err: err}
	}
	return attempt{usage: res.Usage, body: res.Body}
}

// sleep waits d, or until ctx ends or the deadline (if not zero) passes,
// which it returns as ErrQueueTimeout.
func sleep(ctx context.Context, d time.Duration, deadline time.Time) error {
	if !deadline.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadlineCause(ctx, deadline, queueTimeout)
		defer cancel()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}

// expire drops a request whose queue deadline passed before a provider was
// called, and tells its caller. A caller that counted the deadline itself
// has gone and nobody hears it; one that already saw the request picked up
// (a redelivery after its worker died) would otherwise wait for its answer
// deadline.
func (p *Pool) expire(log *slog.Logger, m *pulled, req *messages.Request, msg string) {
	log.Info(msg)
	_ = p.nc.PublishMsg(messages.ReplyMsg(req.ReplyTo, &messages.Reply{
		Outcome: queueTimeout.Outcome, Status: queueTimeout.HTTPStatus(), Body: messages.ErrorBody(queueTimeout)}))
	_ = m.TermWithReason("queue deadline passed")
}

// queueTimeout is the end of a request whose queue deadline passed after
// its pickup, while it waited for capacity, a cooldown or a retry.
var queueTimeout = &messages.Error{Outcome: messages.OutcomeQueueTimeout,
	Message: "the queue deadline passed before a deployment of the model group could take the request"}
