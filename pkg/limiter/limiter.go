package limiter

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Limits of one deployment. Zero means unlimited, for each field.
type Limits struct {
	// RPM is the number of requests allowed per period (per minute by default).
	RPM int64
	// TPM is the number of tokens allowed per period.
	TPM int64
	// MaxParallel is the number of calls allowed in flight at once.
	MaxParallel int
}

func (l Limits) unlimited() bool { return l.RPM <= 0 && l.TPM <= 0 && l.MaxParallel <= 0 }

// Limiter enforces the limits of one deployment across every process that
// shares the Set's bucket. Get one with Set.Deployment. It is safe for
// concurrent use.
type Limiter struct {
	set    *Set
	id     string
	tok    string
	sem    chan struct{} // serialises this process's rate updates of the deployment
	limits atomic.Pointer[Limits]
}

func (l *Limiter) setLimits(lim Limits) { l.limits.Store(&lim) }

// ID returns the deployment id.
func (l *Limiter) ID() string { return l.id }

// Limits returns the deployment's current limits.
func (l *Limiter) Limits() Limits { return *l.limits.Load() }

// Reservation is one admitted call: one request, its estimated tokens and a
// concurrency slot. End it exactly once with Settle (the call was made) or
// Cancel (it was not); later calls of either are no-ops. It is safe for
// concurrent use, so KeepAlive may run in another goroutine.
type Reservation struct {
	l       *Limiter // nil: nothing was reserved (unlimited deployment)
	lim     Limits
	tokens  int64
	at      time.Time
	rpm     Grant
	tpm     Grant
	mu      sync.Mutex
	slot    int // -1: none
	slotRev uint64
	done    bool
}

// Tokens returns the number of tokens reserved (the estimate).
func (r *Reservation) Tokens() int64 { return r.tokens }

// At returns the admission time.
func (r *Reservation) At() time.Time { return r.at }

// Reserve admits one call of deployment l, estimated at tokens tokens. It
// takes a concurrency slot, then reserves one request and the tokens in a
// single compare-and-set of the rate state; if any part is refused the parts
// already taken are given back. A refusal is a *LimitedError (matching
// ErrLimited) that says until when to wait; a reservation larger than the tpm
// limit fails with ErrTooLarge. Refusals that the local mirror can already
// tell cost no NATS round trip, and a deployment without limits never touches
// NATS.
//
// Reserve does not wait for capacity: wait for LimitedError.Until or
// Set.Changed, whichever comes first, and call it again.
func (l *Limiter) Reserve(ctx context.Context, tokens int64) (*Reservation, error) {
	s := l.set
	lim := l.Limits()
	tokens = max(tokens, 0)
	if lim.unlimited() {
		return &Reservation{slot: -1, tokens: tokens, at: s.now(), done: true}, nil
	}
	if lim.TPM > 0 && tokens > lim.TPM {
		return nil, fmt.Errorf("%w: %d tokens, tpm %d", ErrTooLarge, tokens, lim.TPM)
	}
	if err := ctx.Err(); err != nil {
		return nil, context.Cause(ctx)
	}
	if s.isClosed() {
		return nil, ErrClosed
	}
	now := s.now()
	if err := l.check(now, lim, tokens); err != nil {
		return nil, err
	}
	r := &Reservation{l: l, lim: lim, tokens: tokens, at: now, slot: -1}
	if lim.MaxParallel > 0 {
		idx, rev, err := l.takeSlot(ctx, lim.MaxParallel)
		if err != nil {
			return nil, err
		}
		r.slot, r.slotRev = idx, rev
	}
	if lim.RPM > 0 || lim.TPM > 0 {
		if err := l.reserveRates(ctx, lim, r); err != nil {
			if r.slot >= 0 {
				gctx, cancel := giveBackContext(ctx)
				_ = l.releaseSlot(gctx, r) // if this fails, the slot expires after SlotTTL
				cancel()
			}
			return nil, err
		}
	}
	return r, nil
}

func giveBackContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), giveBackTimeout)
}

func (s *Set) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// check answers from the mirror whether a reservation would be refused, and
// why. It is what Headroom reports.
func (l *Limiter) check(now time.Time, lim Limits, tokens int64) error {
	s := l.set
	s.mu.Lock()
	d := s.depLocked(l.tok)
	cool := d.cool
	busy := 0
	for i, sm := range d.slots {
		if i < lim.MaxParallel && (sm.live || sm.claiming) {
			busy++
		}
	}
	st := d.rate // read only below; the mirror replaces, never mutates, it
	s.mu.Unlock()

	if cool.until > now.UnixNano() {
		return &LimitedError{Until: time.Unix(0, cool.until), Reason: ReasonCooldown, Detail: cool.reason}
	}
	if lim.MaxParallel > 0 && busy >= lim.MaxParallel {
		return &LimitedError{Until: now.Add(s.opts.SlotTTL), Reason: ReasonParallel}
	}
	rpm, tpm := l.gcras(lim, st)
	var until time.Time
	reason := ""
	if at, _ := rpm.NextN(now, 1); at.After(now) {
		until, reason = at, ReasonRPM
	}
	if at, ok := tpm.NextN(now, tokens); !ok {
		return fmt.Errorf("%w: %d tokens, tpm %d", ErrTooLarge, tokens, lim.TPM)
	} else if at.After(now) && at.After(until) {
		until, reason = at, ReasonTPM
	}
	if reason != "" {
		return &LimitedError{Until: until, Reason: reason}
	}
	return nil
}

// gcras returns the rpm and tpm GCRAs over st. They share st's logs: clone st
// before reserving or settling on them.
func (l *Limiter) gcras(lim Limits, st rateState) (rpm, tpm *GCRA) {
	rpm, tpm = &GCRA{margin: int64(l.set.opts.Margin)}, &GCRA{margin: int64(l.set.opts.Margin)}
	rpm.init(lim.RPM, l.set.opts.Period, st.rpm)
	tpm.init(lim.TPM, l.set.opts.Period, st.tpm)
	return rpm, tpm
}

// rateTTL is the TTL of a rate key: two periods after the last update the
// state is equivalent to an empty one, so it may disappear.
func (l *Limiter) rateTTL() time.Duration { return ttlSeconds(2 * l.set.opts.Period) }

func (l *Limiter) mirroredRate() (rateState, uint64) {
	s := l.set
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.depLocked(l.tok)
	return d.rate, d.rateRev
}

// updateRate applies fn to the deployment's rate state with compare-and-set:
// first on the mirrored revision, then, after each lost race, on a fresh
// read. fn returning an error aborts without writing. Nothing is written if
// fn leaves the state unchanged.
func (l *Limiter) updateRate(ctx context.Context, lim Limits, fn func(now time.Time, rpm, tpm *GCRA) error) error {
	select {
	case l.sem <- struct{}{}:
	case <-ctx.Done():
		return context.Cause(ctx)
	}
	defer func() { <-l.sem }()
	s := l.set
	key := rateKey(l.tok)
	st, rev := l.mirroredRate()
	for range maxCAS {
		rpm, tpm := l.gcras(lim, st.clone())
		if err := fn(s.now(), rpm, tpm); err != nil {
			return err
		}
		next := rateState{rpm: rpm.st, tpm: tpm.st}
		if next.equal(st) {
			return nil
		}
		_, err := s.put(ctx, key, encodeRate(next), rev, l.rateTTL())
		if !errors.Is(err, errConflict) {
			return err
		}
		v, rv, deleted, err := s.fetch(ctx, key)
		if err != nil {
			return err
		}
		st, rev = rateState{}, rv
		if !deleted {
			st, _ = decodeRate(v) // a malformed state is replaced by a fresh one
		}
	}
	return errContention
}

var errContention = fmt.Errorf("%w: rate state", ErrContention)

func (l *Limiter) reserveRates(ctx context.Context, lim Limits, r *Reservation) error {
	err := l.updateRate(ctx, lim, func(now time.Time, rpm, tpm *GCRA) error {
		var until time.Time
		reason := ""
		gR, next, ok := rpm.ReserveN(now, 1)
		if !ok {
			until, reason = next, ReasonRPM
		}
		gT, next, ok := tpm.ReserveN(now, r.tokens)
		if !ok {
			if next.IsZero() {
				return fmt.Errorf("%w: %d tokens, tpm %d", ErrTooLarge, r.tokens, lim.TPM)
			}
			if next.After(until) {
				until, reason = next, ReasonTPM
			}
		}
		if reason != "" {
			return &LimitedError{Until: until, Reason: reason} // the clones are dropped: nothing taken
		}
		r.rpm, r.tpm, r.at = gR, gT, now
		return nil
	})
	if errors.Is(err, errContention) {
		return &LimitedError{Until: l.set.now().Add(contentionJitter()), Reason: ReasonContention}
	}
	return err
}

// takeSlot creates a free slot key of the deployment with the slot TTL.
func (l *Limiter) takeSlot(ctx context.Context, n int) (int, uint64, error) {
	s := l.set
	start := rand.IntN(n)
	tries := 0
	for i := 0; i < n && tries < maxCAS; i++ {
		idx := (start + i) % n
		s.mu.Lock()
		sm := s.depLocked(l.tok).slot(idx)
		if sm.live || sm.claiming {
			s.mu.Unlock()
			continue
		}
		sm.claiming = true
		rev := sm.rev
		s.mu.Unlock()

		newRev, err := l.claim(ctx, idx, rev, &tries)

		s.mu.Lock()
		sm.claiming = false
		s.mu.Unlock()
		if err == nil {
			return idx, newRev, nil
		}
		if !errors.Is(err, errConflict) {
			return 0, 0, err
		}
	}
	return 0, 0, &LimitedError{Until: s.now().Add(s.opts.SlotTTL), Reason: ReasonParallel}
}

// claim creates slot idx expecting revision rev; after a lost race it re-reads
// the key once and tries again if the slot is still free.
func (l *Limiter) claim(ctx context.Context, idx int, rev uint64, tries *int) (uint64, error) {
	s := l.set
	key := slotKey(l.tok, idx)
	for range 2 {
		*tries++
		newRev, err := s.put(ctx, key, s.id, rev, s.opts.SlotTTL)
		if !errors.Is(err, errConflict) {
			return newRev, err
		}
		_, rv, deleted, err := s.fetch(ctx, key)
		if err != nil {
			return 0, err
		}
		if !deleted {
			return 0, errConflict
		}
		rev = rv
	}
	return 0, errConflict
}

// releaseSlot deletes the reservation's slot key if it still holds it.
func (l *Limiter) releaseSlot(ctx context.Context, r *Reservation) error {
	if r.slot < 0 {
		return nil
	}
	err := l.set.del(ctx, slotKey(l.tok, r.slot), r.slotRev)
	if errors.Is(err, errConflict) {
		err = nil // it expired and is someone else's now: nothing to release
	}
	if err == nil {
		r.slot = -1
	}
	return err
}

// Resize changes the reservation's token estimate to tokens, for a caller
// that reserved on a guess before it knew the request's size. A smaller
// estimate gives the difference back at once (to the pacing too, while the
// reservation is still the latest admission); it is never refused. A larger
// one is reserved anew in one compare-and-set: the tokens held are given back
// and tokens reserved in their place; a refusal (a *LimitedError, or
// ErrTooLarge beyond the tpm limit) leaves the reservation as it was.
// Resizing an ended reservation does nothing.
func (r *Reservation) Resize(ctx context.Context, tokens int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	tokens = max(tokens, 0)
	if r.done || tokens == r.tokens {
		return nil
	}
	if r.lim.TPM <= 0 {
		r.tokens = tokens
		return nil
	}
	if tokens > r.lim.TPM {
		return fmt.Errorf("%w: %d tokens, tpm %d", ErrTooLarge, tokens, r.lim.TPM)
	}
	var grant Grant
	err := r.l.updateRate(ctx, r.lim, func(now time.Time, _, tpm *GCRA) error {
		if tokens < r.tokens {
			grant = tpm.Resize(now, r.tpm, tokens)
			return nil
		}
		tpm.Cancel(now, r.tpm)
		g, next, ok := tpm.ReserveN(now, tokens)
		if !ok {
			if next.IsZero() {
				return fmt.Errorf("%w: %d tokens, tpm %d", ErrTooLarge, tokens, r.lim.TPM)
			}
			return &LimitedError{Until: next, Reason: ReasonTPM}
		}
		grant = g
		return nil
	})
	if errors.Is(err, errContention) {
		return &LimitedError{Until: r.l.set.now().Add(contentionJitter()), Reason: ReasonContention}
	}
	if err != nil {
		return err
	}
	r.tpm, r.tokens = grant, tokens
	return nil
}

// Restamp moves the reservation's request and tokens to the present when
// they were admitted more than half the margin (Options.Margin) ago, and
// does nothing otherwise. Call it just before the call goes out: the window
// log bounds what the provider sees only while the delay from admission to
// arrival varies by less than the margin (see the package doc), and a
// reservation taken before a fetch, a pickup and a starved scheduler may
// be older than that. It is one compare-and-set that gives the old
// admission back and admits anew at now; a refusal (*LimitedError, with
// when to try again) leaves the reservation as it was.
func (r *Reservation) Restamp(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || r.l == nil || (r.lim.RPM <= 0 && r.lim.TPM <= 0) {
		return nil
	}
	if r.l.set.now().Sub(r.at) <= r.l.set.opts.Margin/2 {
		return nil
	}
	var gR, gT Grant
	var at time.Time
	err := r.l.updateRate(ctx, r.lim, func(now time.Time, rpm, tpm *GCRA) error {
		rpm.Cancel(now, r.rpm)
		tpm.Cancel(now, r.tpm)
		var until time.Time
		reason := ""
		var next time.Time
		var ok bool
		if gR, next, ok = rpm.ReserveN(now, 1); !ok {
			until, reason = next, ReasonRPM
		}
		if gT, next, ok = tpm.ReserveN(now, r.tokens); !ok && (next.IsZero() || next.After(until)) {
			until, reason = next, ReasonTPM // zero: never (it was admitted under other limits)
		}
		if reason != "" {
			return &LimitedError{Until: until, Reason: reason}
		}
		at = now
		return nil
	})
	if errors.Is(err, errContention) {
		return &LimitedError{Until: r.l.set.now().Add(contentionJitter()), Reason: ReasonContention}
	}
	if err != nil {
		return err
	}
	r.rpm, r.tpm, r.at = gR, gT, at
	return nil
}

// contentionJitter is how long to wait after losing every compare-and-set
// race of one attempt.
func contentionJitter() time.Duration { return time.Duration(1+rand.IntN(10)) * time.Millisecond }

// Settle ends a reservation whose call was made: it releases the concurrency
// slot and replaces the token estimate by usedTokens, the provider-reported
// usage (a refund when lower, an extra charge when higher). A negative
// usedTokens means the usage is unknown: the estimate stands. Use a context
// that outlives the caller's request: settle even when the caller is gone.
func (r *Reservation) Settle(ctx context.Context, usedTokens int64) error {
	return r.end(ctx, func(now time.Time, _, tpm *GCRA) error {
		if usedTokens >= 0 {
			tpm.Settle(now, r.tpm, usedTokens)
		}
		return nil
	})
}

// Cancel ends a reservation whose call was not made: it gives back the
// request, the tokens and the slot. The request and tokens are given back to
// the pacing only if nothing was admitted after them, and always to the
// window log (see the package doc).
func (r *Reservation) Cancel(ctx context.Context) error {
	return r.end(ctx, func(now time.Time, rpm, tpm *GCRA) error {
		rpm.Cancel(now, r.rpm)
		tpm.Cancel(now, r.tpm)
		return nil
	})
}

func (r *Reservation) end(ctx context.Context, fn func(now time.Time, rpm, tpm *GCRA) error) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || r.l == nil {
		return nil
	}
	r.done = true
	var errs []error
	if r.slot >= 0 {
		errs = append(errs, r.l.releaseSlot(ctx, r))
	}
	if r.lim.RPM > 0 || r.lim.TPM > 0 {
		errs = append(errs, r.l.updateRate(ctx, r.lim, fn))
	}
	return errors.Join(errs...)
}

// KeepAlive refreshes the TTL of the reservation's concurrency slot. Call it
// every SlotTTL/3 while the call runs. If the slot already expired it returns
// an error matching ErrSlotLost: another holder may have it, and
// MaxParallel may be exceeded until this call ends.
func (r *Reservation) KeepAlive(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done || r.l == nil || r.slot < 0 {
		return nil
	}
	s := r.l.set
	rev, err := s.put(ctx, slotKey(r.l.tok, r.slot), s.id, r.slotRev, s.opts.SlotTTL)
	if errors.Is(err, errConflict) {
		return fmt.Errorf("%w: slot %d of %q", ErrSlotLost, r.slot, r.l.id)
	}
	if err != nil {
		return err
	}
	r.slotRev = rev
	return nil
}

// Cooldown puts the deployment in a cooldown of d that every process sees
// until it ends: Reserve refuses with ReasonCooldown and Headroom reports
// false. A longer cooldown already in place is kept. The reason is shown in
// LimitedError.Detail; never put secrets in it.
func (l *Limiter) Cooldown(ctx context.Context, d time.Duration, reason string) error {
	if d <= 0 {
		return nil
	}
	s := l.set
	if s.isClosed() {
		return ErrClosed
	}
	until := s.now().Add(d).UnixNano()
	key := coolKey(l.tok)
	s.mu.Lock()
	dm := s.depLocked(l.tok)
	cur, rev := dm.cool, dm.coolRev
	s.mu.Unlock()
	for range maxCAS {
		if cur.until >= until {
			return nil
		}
		// The key outlives the value by up to two seconds; the value decides.
		_, err := s.put(ctx, key, encodeCool(cooldown{until: until, reason: reason}), rev, ttlSeconds(d)+time.Second)
		if !errors.Is(err, errConflict) {
			return err
		}
		v, rv, deleted, err := s.fetch(ctx, key)
		if err != nil {
			return err
		}
		cur, rev = cooldown{}, rv
		if !deleted {
			cur, _ = decodeCool(v)
		}
	}
	return fmt.Errorf("%w: cooldown", ErrContention)
}

// CoolingDown reports whether the deployment is cooling down at now, and
// until when, from the local mirror.
func (l *Limiter) CoolingDown(now time.Time) (until time.Time, ok bool) {
	s := l.set
	s.mu.Lock()
	c := s.depLocked(l.tok).cool
	s.mu.Unlock()
	if c.until > now.UnixNano() {
		return time.Unix(0, c.until), true
	}
	return time.Time{}, false
}

// Headroom reports from the local mirror alone, without a round trip, whether
// a reservation of tokens would be admitted at now: no cooldown, a free slot,
// and room in rpm and tpm. Another process may take the room first.
func (l *Limiter) Headroom(now time.Time, tokens int64) bool {
	lim := l.Limits()
	if lim.unlimited() {
		return true
	}
	if lim.TPM > 0 && tokens > lim.TPM {
		return false
	}
	return l.check(now, lim, max(tokens, 0)) == nil
}

// AdmittedWithin reports whether this process saw the deployment admit a
// call (take a concurrency slot or a unit of rate) within d before now. Such
// an admission may still be given back: its holder reserved before it knew
// whether a request was there to take.
func (l *Limiter) AdmittedWithin(now time.Time, d time.Duration) bool {
	s := l.set
	s.mu.Lock()
	at := s.depLocked(l.tok).admitted
	s.mu.Unlock()
	return !at.IsZero() && now.Sub(at) < d
}

// Usage is a snapshot of a deployment's use, for metrics and status pages.
type Usage struct {
	// Limits are the deployment's limits.
	Limits Limits
	// InFlight is the number of concurrency slots held, by all processes.
	InFlight int
	// Requests and Tokens are the requests and tokens admitted in the last
	// period (settled tokens once settled), counted by the window log: an
	// upper bound that may include up to Period/120 more. Zero for a limit
	// that is unlimited (nothing is recorded then).
	Requests, Tokens int64
	// CooldownUntil is when the current cooldown ends; zero if none.
	CooldownUntil time.Time
	// CooldownReason is the reason given to Cooldown, while it lasts.
	CooldownReason string
}

// Usage returns the deployment's use at now, from the local mirror.
func (l *Limiter) Usage(now time.Time) Usage {
	lim := l.Limits()
	s := l.set
	s.mu.Lock()
	d := s.depLocked(l.tok)
	u := Usage{Limits: lim}
	for _, sm := range d.slots {
		if sm.live {
			u.InFlight++
		}
	}
	st, cool := d.rate, d.cool
	s.mu.Unlock()
	rpm, tpm := l.gcras(lim, st)
	u.Requests, u.Tokens = rpm.Used(now), tpm.Used(now)
	if cool.until > now.UnixNano() {
		u.CooldownUntil = time.Unix(0, cool.until)
		u.CooldownReason = cool.reason
	}
	return u
}
