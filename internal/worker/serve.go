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
	"github.com/llmq/llmq/pkg/messages"
)

// Policy is the worker's retry policy; the worker is the only layer that
// retries (openai-go's own retries are off).
//
//   - A provider 429 cools the deployment down for its Retry-After (else
//     CooldownTime) and the request is tried again as soon as the group has
//     capacity. It keeps its place (the slot holds it) and spends no retry.
//   - A 5xx, a timeout or an unreachable provider counts as a failure of the
//     deployment (more than AllowedFails within a minute cools it down for
//     CooldownTime) and is retried up to NumRetries times with exponential
//     backoff, on whichever deployment of the group has capacity.
//   - Then, and at once for other 4xx answers except 400, 413 and 422 (which
//     are the caller's to fix), the group's fallbacks are tried in order.
//   - A stream that already relayed events is never retried.
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

// serve runs req under the policy, starting on lease, which it owns. emit
// relays stream events (nil for a plain request).
func (p *Pool) serve(ctx context.Context, log *slog.Logger, req *messages.Request, lease *router.Lease, emit provider.Emit) (deployment string, a attempt) {
	pol := p.opts.Policy
	emitted := false
	if emit != nil {
		inner := emit
		emit = func(b []byte) error { emitted = true; return inner(b) }
	}
	groups := append([]string{req.Group}, pol.Fallbacks[req.Group]...)
	for i, group := range groups {
		if i > 0 {
			log.Info("trying fallback group", "fallback", group)
		}
		retries := 0
		for {
			if lease == nil {
				var err error
				if lease, err = p.opts.Router.Acquire(ctx, group); err != nil {
					return deployment, attempt{err: errors.Join(messages.ErrCancelled, err)}
				}
			}
			d := lease.Deployment()
			deployment = d.ID
			a = p.call(ctx, d, req, emit)
			lease.Release()
			lease = nil
			if a.err == nil || emitted || ctx.Err() != nil {
				return deployment, a
			}
			var e *messages.Error
			errors.As(a.err, &e)
			switch next := classify(e); next {
			case requeue:
				wait := pol.CooldownTime
				if s, err := strconv.Atoi(e.RetryAfter); err == nil && s > 0 {
					wait = time.Duration(s) * time.Second
				}
				log.Info("provider rate-limited the deployment; cooling it down", "deployment", d.ID, "cooldown", wait)
				p.opts.Router.Cooldown(d.ID, wait)
				p.opts.Metrics.Cooldown(d.ID, "rate_limited", wait)
				continue
			case retry:
				if p.opts.Router.Failed(d.ID, pol.AllowedFails, failWindow, pol.CooldownTime) {
					p.opts.Metrics.Cooldown(d.ID, "failures", pol.CooldownTime)
				}
				if retries < pol.NumRetries {
					delay := pol.Backoff << retries
					retries++
					log.Info("provider call failed; retrying", "deployment", d.ID, "retry", retries, "delay", delay, "error", e.Message)
					if err := sleep(ctx, delay); err != nil {
						return deployment, attempt{err: errors.Join(messages.ErrCancelled, err)}
					}
					continue
				}
			case final:
				return deployment, a
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
	retry                    // count a retry, then fall back
	fallback                 // go to the next fallback group at once
)

func classify(e *messages.Error) nextStep {
	if e == nil {
		return final
	}
	switch e.Outcome {
	case messages.OutcomeProviderTimeout:
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

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-t.C:
		return nil
	}
}
