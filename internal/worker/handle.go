package worker

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/internal/deadletter"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// onControl cancels a call when its caller says so, or when NATS reports
// that nobody listens on the caller's inbox any more ("no responders" to a
// heartbeat or chunk sent with this control subject as reply), unless the
// caller is one that may be reconnecting (see hold.go: the answer of a known
// caller's call is held for it instead) or this worker's own connection came
// back only just now (see reconnectWatch).
func (p *Pool) onControl(m *nats.Msg) {
	id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
	switch {
	case m.Header.Get(messages.HeaderEvent) == messages.EventCancel:
	case m.Header.Get("Status") == "503":
		if p.reconnect.settling(time.Now()) {
			return
		}
		if inbox := p.keeper.inboxOf(m.Subject); inbox != "" && p.mayReconnect(inbox) {
			return
		}
	default:
		return
	}
	if cancel, ok := p.calls.Load(id); ok {
		cancel.(context.CancelCauseFunc)(errCallerGone)
	}
}

// requestLog adds a request's id, band, group and tenant to every record, like
// Logger.With, but formats them only for records that are written: With
// formats them at once, for every request, most of which log nothing.
type requestLog struct {
	slog.Handler
	req *messages.Request
}

func (h requestLog) attrs() []slog.Attr {
	return []slog.Attr{slog.String("request_id", h.req.ID), slog.Int("band", h.req.Band), slog.String("group", h.req.Group), slog.String("tenant", h.req.Tenant)}
}

func (h requestLog) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(h.attrs()...)
	return h.Handler.Handle(ctx, r)
}

// WithAttrs and WithGroup format the request's attributes first, as With
// would have, so they stay outside any group.
func (h requestLog) WithAttrs(as []slog.Attr) slog.Handler {
	return h.Handler.WithAttrs(append(h.attrs(), as...))
}

func (h requestLog) WithGroup(name string) slog.Handler {
	return h.Handler.WithAttrs(h.attrs()).WithGroup(name)
}

// handle serves one job (a message under its lease) and settles it.
func (p *Pool) handle(ctx context.Context, j job) {
	m, lease := j.m, j.lease
	defer func() {
		if lease != nil {
			lease.Release()
		}
	}()
	req, err := p.opts.Subjects.DecodeRequest(m.Subject(), m.Headers(), m.Data())
	if err != nil {
		p.log.Warn("terminating undecodable request", "subject", m.Subject(), "error", err)
		p.deadLetter(m, "undecodable", err.Error())
		return
	}
	log := slog.New(requestLog{Handler: p.log.Handler(), req: req})
	if !req.Deadline.IsZero() && time.Now().After(req.Deadline) {
		p.expire(log, m, req, "dropping request past its queue deadline")
		return
	}
	control := p.control + "." + req.ID
	stop := p.keeper.hold(m, req.ReplyTo, control) // start owns it

	// Complete the global reservation: the dispatcher reserved a guess
	// (recent request sizes) before the fetch; it is resized to this
	// request's estimate (only shared limits count tokens: without them it
	// is 0). If a larger size is refused (the tokens are not there yet),
	// the request goes back to the queue, first in its band again, and the
	// guess has grown to its size: the next admission, in whichever process
	// has room for it first, takes it. Holding it here instead would let a
	// process whose guess fits the room sooner serve the requests behind it.
	tokens := j.tokens
	if err := lease.Reserve(ctx, tokens); err != nil {
		lease.Release()
		lease = nil
		if errors.Is(err, limiter.ErrLimited) {
			log.Debug("no room yet for the request's tokens; it goes back to the head of its band", "tokens", tokens)
			stop()
			p.nakAndHint(m, req)
			return
		}
		// ErrTooLarge, or the limiter is unavailable: start says so or waits.
	}
	p.start(ctx, log, m, req, lease, tokens, j.estimate, control, stop)
	lease = nil // start owns it
}

// start serves req under lease, or, when lease is nil, under a lease it
// waits for (until the queue deadline), and settles m. It calls stop (which
// ends m's keep-alive) once m is settled.
// estimate is what the dispatcher charged the request's tenant lane; the
// served-tokens hint corrects it.
func (p *Pool) start(ctx context.Context, log *slog.Logger, m *pulled, req *messages.Request, lease *router.Lease, tokens, estimate int64, control string, stop func()) {
	keep := true // stop is called on return unless the answer's delivery took it over
	defer func() {
		if lease != nil {
			lease.Release()
		}
		if keep {
			stop()
		}
	}()
	if lease == nil {
		var err error
		lease, err = p.reserve(ctx, req.Group, tokens, req.Deadline)
		if err != nil {
			p.abandon(log, m, req, err)
			return
		}
	}
	d := lease.Deployment()
	answer := p.pickup(m, req, control, d.ID)
	switch answer {
	case pickupGone:
		log.Info("dropping request whose caller is gone")
		_ = m.TermWithReason("caller gone")
		return
	case pickupUnsure:
		log.Info("the caller did not answer the pickup; the request goes back to the queue")
		p.nakAndHint(m, req)
		return
	case pickupLater: // e.g. the caller's gateway is reconnecting to NATS
		log.Info("nobody listens on the caller's inbox yet; the request goes back to the queue for a later try")
		p.nakLater(m, req)
		return
	}

	// The call is finished even if the pool is shutting down (bounded by the
	// provider timeout and DrainTimeout); otherwise only its caller cancels it.
	callCtx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
	defer cancel(nil)
	p.calls.Store(req.ID, cancel)
	defer p.calls.Delete(req.ID)
	if answer == pickupNotify {
		p.notifyStarted(req, control, d.ID) // once the call can be cancelled
	}
	started := time.Now()
	var emit relay
	seq := 0
	if req.Stream {
		emit = func(deployment string, data []byte) error {
			seq++
			msg := messages.EventMsg(req.ReplyTo, messages.EventChunk, seq, data)
			msg.Reply = control
			if seq == 1 { // after fallbacks, not necessarily the one picked first
				msg.Header[messages.HeaderDeployment] = []string{deployment}
			}
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
		p.nakAndHint(m, req)
		return
	case context.Cause(callCtx) == errNobody:
		// Its "started" event found nobody on the caller's inbox: as a
		// pickup that found nobody.
		if now := time.Now(); now.Before(p.holdFor(req.ReplyTo, pickupDeadline(req), now)) && !p.callers.closed(req.ReplyTo) {
			log.Info("nobody listened on the caller's inbox when the call started; the request goes back to the queue for a later try")
			p.nakLater(m, req)
			return
		}
		log.Info("call stopped: nobody listened on the caller's inbox when it started")
		_ = m.TermWithReason("caller gone")
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
		p.opts.Metrics.TenantTokens(p.tenants.Label(req.Tenant), usage.PromptTokens+usage.CompletionTokens)
		served := usage.PromptTokens + usage.CompletionTokens
		if served <= 0 {
			served = estimate // the provider reported no usage
		}
		p.served(req, served, estimate)
		log.Debug("served", "duration", time.Since(started), "prompt_tokens", usage.PromptTokens, "completion_tokens", usage.CompletionTokens)
	}
	// The slot is free once the answer is out; the caller's confirmation
	// settles the message, or, for a caller that acks a served request
	// itself, the caller's ack does.
	keep = false
	failed := err != nil
	if !failed && req.CallerAcks {
		rep.Ack = m.msg.Reply
	}
	p.keeper.quiet(control) // the answer says all a heartbeat would
	p.deliver(req.ReplyTo, req.AnswerDeadline, rep, func(o replyOutcome) {
		defer stop()
		switch o {
		case replyConfirmed:
			if rep.Ack != "" {
				return // the caller acks it
			}
		case replyUnconfirmed:
			log.Warn("the caller did not confirm the answer; the request goes back to the queue")
			p.nakAndHint(m, req)
			return
		case replyNobody:
			log.Info("the caller is gone; dropping the answer")
			_ = m.Ack()
			return
		}
		if failed {
			// Failed for good (after the policy's retries and fallbacks):
			// keep a copy with the reason; the caller already has the error.
			p.deadLetter(m, "failed", rep.Outcome.String()+": "+string(rep.Body))
			return
		}
		if err := m.Ack(); err != nil {
			log.Warn("ack failed", "error", err)
		}
	})
}

// deadLetter copies m with reason to the dead-letter stream and terminates
// it; class is the bounded metric label ("undecodable" or "failed").
func (p *Pool) deadLetter(m *pulled, class, reason string) {
	p.copyDead(m.Subject(), m.Headers(), m.Data(), class, reason)
	_ = m.TermWithReason(reason)
}

// copyDead stores a copy of a request in the dead-letter stream.
func (p *Pool) copyDead(subject string, h nats.Header, data []byte, class, reason string) {
	dead := deadletter.Msg(p.opts.Subjects, subject, h, data, reason)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := p.js.PublishMsg(ctx, dead); err != nil {
		p.log.Warn("dead-letter copy failed", "subject", subject, "error", err)
	}
	p.opts.Metrics.DeadLetter(class)
}

// nakAndHint hands m back to JetStream, tells the caller so (its next pickup
// may then start the request again) and publishes a wake-up hint (a nak does
// not republish one), so an idle worker takes it at once.
func (p *Pool) nakAndHint(m *pulled, req *messages.Request) {
	_ = p.nc.PublishMsg(messages.EventMsg(req.ReplyTo, messages.EventRequeue, 0, nil))
	_ = m.Nak()
	_ = p.nc.Publish(p.opts.Subjects.WakeLane(req.Band, req.Group, messages.Lane(req.Tenant)), nil)
}

// pickupAnswer is what a pickup check found out.
type pickupAnswer int

const (
	pickupGo     pickupAnswer = iota // the caller waits: call the provider
	pickupNotify                     // call the provider without asking, and tell the caller (left.go)
	pickupGone                       // the caller said no, or stopped waiting and nobody listens on its inbox
	pickupUnsure                     // no answer in time: try again now
	pickupLater                      // nobody listens on the caller's inbox, but it may still wait: try again later (see hold.go)
)

// pickup asks the caller whether it still waits for m's request req, and
// names the control subject it can cancel the call on, unless the request
// may be started without asking (left.go). A pickup that finds nobody on
// the caller's inbox is tried again (see hold.go).
func (p *Pool) pickup(m *pulled, req *messages.Request, control, deployment string) pickupAnswer {
	if p.mayStartUnasked(m, req) {
		return pickupNotify
	}
	msg := messages.EventMsg(req.ReplyTo, messages.EventPickup, 0, nil)
	msg.Header.Set(messages.HeaderControl, control)
	msg.Header.Set(messages.HeaderDeployment, deployment)
	var hold time.Time // until when nobody on the inbox may mean "reconnecting"
	for try := 0; ; try++ {
		messages.SetRedeliverIn(msg, p.keeper.redeliverIn(control, time.Now()))
		resp, err := p.nc.RequestMsg(msg, p.opts.PickupTimeout)
		switch {
		case err == nil && string(resp.Data) == messages.PickupAccept:
			p.callers.heard(inboxPrefix(req.ReplyTo), false)
			return pickupGo
		case err == nil:
			p.callers.heard(inboxPrefix(req.ReplyTo), false)
			return pickupGone
		case !errors.Is(err, nats.ErrNoResponders):
			return pickupUnsure
		}
		now := time.Now()
		if hold.IsZero() {
			hold = p.holdFor(req.ReplyTo, pickupDeadline(req), now)
		}
		switch {
		case !now.Before(hold) || p.callers.closed(req.ReplyTo):
			return pickupGone
		case try >= noResponderRetries || timesDelivered(m) > 1:
			return pickupLater
		}
		time.Sleep(min(retryGap, hold.Sub(now)))
	}
}
