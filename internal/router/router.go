// Package router chooses which deployment of a model group serves the next
// request, among those with headroom, and accounts for their in-flight calls.
//
// A worker slot acquires a [Lease] before it fetches a message, so it never
// holds a request it cannot start; the lease is released when the call ends.
// A release that can let a refused admission through (the deployment was at
// max_parallel_requests, it has shared limits, or a held request waits for
// the group) calls the router's OnRelease hook, which wakes the dispatcher
// so that waiting requests of the group go out at once. Other releases wake
// nobody: nothing was refused for want of what they free.
//
// Strategies (router_settings.routing_strategy): "simple-shuffle" picks at
// random, weighted by weight, else by rpm, else by tpm, else evenly;
// "least-busy" and the usage-based strategies pick the deployment with the
// largest share of its parallel slots free (an unlimited deployment counts
// as all free, its in-flight count breaking ties). In both, litellm_params.order wins first: a
// deployment with a lower order is used while it has capacity.
//
// Headroom: [Router.TryAcquireKeeping] admits a request only if, after it,
// a share of each of the deployment's limits stays free, as this process
// sees them: its max_parallel_requests here, and, with a limiter, the
// concurrency, rpm and tpm every process shares (the mirror's count of the
// period). The share held back is [HeldBack] of each limit. The worker asks
// it for its less important bands (internal/worker, Headroom), so that a
// request of a more important band finds room at once; a release that can
// let such a refused admission through wakes the dispatcher as above.
//
// Global limits: a deployment with a [limiter.Limiter] is also checked
// against the limits every worker process shares. Choosing and leasing look
// only at the limiter's local mirror (no round trip); [Lease.Reserve] then
// takes the global reservation after the message is fetched, and
// [Lease.Finish] settles it with the provider's reported usage.
//
// Router is safe for concurrent use.
package router

import (
	"context"
	"math/rand/v2"
	"sort"
	"sync"
	"time"

	"github.com/llmq/llmq/pkg/limiter"
)

// Deployment is one deployment of a group as the router sees it.
type Deployment struct {
	ID          string
	Group       string
	MaxParallel int     // 0 = unlimited
	Order       int     // lower is preferred while it has capacity; 0 counts as 1 (LiteLLM)
	Weight      float64 // simple-shuffle weight; 0 = derived from RPM/TPM
	RPM, TPM    int64
	// Value is what the caller attaches (the provider caller); the router does not look at it.
	Value any
	// Limiter enforces the deployment's limits across processes; nil = only
	// this process's MaxParallel and cooldowns.
	Limiter *limiter.Limiter

	inFlight  int
	kept      bool        // an admission was refused to keep headroom since the last release
	admitted  time.Time   // this process's last admission
	coolUntil time.Time   // no calls before this time
	fails     []time.Time // recent failures, for allowed_fails
}

// Strategy selects among deployments with headroom.
type Strategy string

// The strategies.
const (
	SimpleShuffle Strategy = "simple-shuffle"
	LeastBusy     Strategy = "least-busy"
)

// ParseStrategy maps LiteLLM's routing_strategy names to a Strategy.
func ParseStrategy(s string) Strategy {
	switch s {
	case "", string(SimpleShuffle):
		return SimpleShuffle
	default:
		return LeastBusy
	}
}

// Router tracks the deployments of every group.
type Router struct {
	mu        sync.Mutex
	groups    map[string][]*Deployment
	byID      map[string]*Deployment
	strategy  Strategy
	onRelease func(group string)
	rnd       *rand.Rand
	changed   chan struct{}  // closed and replaced whenever capacity may have freed
	waiters   map[string]int // per group: held requests waiting for capacity
	now       func() time.Time
}

// New returns a router over deployments. onRelease, if not nil, is called
// (without locks held) whenever capacity may have freed for a refused
// admission: a release from a full or limited deployment or while a held
// request waits, a cooldown's end, [Router.Wake].
func New(strategy Strategy, deployments []Deployment, onRelease func(group string)) *Router {
	r := &Router{groups: make(map[string][]*Deployment), byID: make(map[string]*Deployment), strategy: strategy, onRelease: onRelease,
		rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64())), changed: make(chan struct{}), waiters: make(map[string]int), now: time.Now}
	for i := range deployments {
		d := deployments[i]
		r.groups[d.Group] = append(r.groups[d.Group], &d)
		r.byID[d.ID] = &d
	}
	return r
}

// notify wakes everything waiting for capacity. The caller must not hold r.mu.
func (r *Router) notify(group string) {
	r.mu.Lock()
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
	if r.onRelease != nil {
		r.onRelease(group)
	}
}

// Acquire leases capacity on group, waiting until there is some or ctx
// ends. Waiters come first: while any caller waits in Acquire or holds a
// [Router.Waiting] mark for the group, TryAcquire refuses it, so a request a
// worker already holds (the head of its group) is not overtaken by requests
// fetched after it.
func (r *Router) Acquire(ctx context.Context, group string) (*Lease, error) {
	return r.AcquireTokens(ctx, group, 0)
}

// AcquireTokens is Acquire for a request of tokens: a deployment whose tpm
// has no room for them, as far as this process's mirror tells, does not
// count as having capacity.
func (r *Router) AcquireTokens(ctx context.Context, group string, tokens int64) (*Lease, error) {
	defer r.Waiting(group)()
	for {
		r.mu.Lock()
		changed := r.changed
		paced := false
		for _, d := range r.groups[group] {
			paced = paced || d.Limiter != nil
		}
		if d := r.pick(r.groups[group], tokens, false, 0); d != nil {
			d.admit(r.now())
			r.mu.Unlock()
			return &Lease{r: r, d: d}, nil
		}
		r.mu.Unlock()
		// Room in a rate limit comes back as time passes, which no event
		// announces: a group with shared limits is looked at again shortly.
		var again <-chan time.Time
		if paced {
			t := time.NewTimer(PacedRetry)
			again = t.C
			defer t.Stop()
		}
		select {
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		case <-changed:
		case <-again:
		}
	}
}

// PacedRetry is how soon a wait for capacity looks again at a group whose
// deployments have shared rate limits.
const PacedRetry = 25 * time.Millisecond

// Waiting marks that a held request of group waits for capacity, until the
// returned function is called; meanwhile TryAcquire refuses the group.
func (r *Router) Waiting(group string) (done func()) {
	r.mu.Lock()
	r.waiters[group]++
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			r.waiters[group]--
			r.mu.Unlock()
			r.notify(group)
		})
	}
}

// Changed returns a channel that is closed the next time capacity may have
// freed (a release, a cooldown's end, a Wake).
func (r *Router) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Deployments returns every deployment, for status and metrics. Read only
// their configuration fields.
func (r *Router) Deployments() []*Deployment {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Deployment, 0, len(r.byID))
	for _, ds := range r.groups {
		out = append(out, ds...)
	}
	return out
}

// Wake wakes everything waiting for capacity, e.g. when the shared limiter
// state changed.
func (r *Router) Wake() { r.notify("") }

// Cooldown keeps deployment id out of rotation for d, in every process when
// it has a limiter. The wake-up when it ends goes to the same hook as a
// release.
func (r *Router) Cooldown(id string, d time.Duration, reason string) {
	r.mu.Lock()
	lim := (*limiter.Limiter)(nil)
	if dep := r.byID[id]; dep != nil {
		lim = dep.Limiter
	}
	r.mu.Unlock()
	if lim != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_ = lim.Cooldown(ctx, d, reason) // the local cooldown below holds regardless
		cancel()
	}
	r.coolLocal(id, d)
}

func (r *Router) coolLocal(id string, d time.Duration) {
	r.mu.Lock()
	dep := r.byID[id]
	if dep == nil {
		r.mu.Unlock()
		return
	}
	if until := r.now().Add(d); until.After(dep.coolUntil) {
		dep.coolUntil = until
	}
	group := dep.Group
	r.mu.Unlock()
	time.AfterFunc(d, func() { r.notify(group) })
}

// Failed records a failed call of deployment id. When more than allowed
// calls failed within window, the deployment cools down for cooldown and
// Failed reports true.
func (r *Router) Failed(id string, allowed int, window, cooldown time.Duration) bool {
	r.mu.Lock()
	dep := r.byID[id]
	if dep == nil {
		r.mu.Unlock()
		return false
	}
	now := r.now()
	keep := dep.fails[:0]
	for _, t := range dep.fails {
		if now.Sub(t) < window {
			keep = append(keep, t)
		}
	}
	dep.fails = append(keep, now)
	trip := len(dep.fails) > allowed
	if trip {
		dep.fails = dep.fails[:0]
	}
	r.mu.Unlock()
	if trip {
		r.Cooldown(id, cooldown, "too many failures")
	}
	return trip
}

// SetOnRelease replaces the release hook. Call it before the router is used.
func (r *Router) SetOnRelease(f func(group string)) { r.onRelease = f }

// Lease is one acquired unit of a deployment's capacity: a local in-flight
// count and, after Reserve, the global reservation.
type Lease struct {
	r    *Router
	d    *Deployment
	once sync.Once
	res  *limiter.Reservation
	stop chan struct{} // ends the slot keep-alive
}

// KeepAliveEvery is how often a reservation's concurrency slot is refreshed
// during a call (a third of the limiter's default slot TTL).
const KeepAliveEvery = limiter.DefaultSlotTTL / 3

// settleTimeout bounds the NATS round trips that end a reservation.
const settleTimeout = 5 * time.Second

// Deployment returns the leased deployment.
func (l *Lease) Deployment() *Deployment { return l.d }

// Reserve takes the deployment's global reservation for one request of
// tokens (prompt estimate plus completion budget); on a lease already
// reserved it resizes the reservation to tokens (limiter.Reservation.Resize).
// Without a limiter it does nothing. A refusal matches limiter.ErrLimited and
// names when to retry; it leaves an earlier reservation in place.
func (l *Lease) Reserve(ctx context.Context, tokens int64) error {
	if l.d.Limiter == nil {
		return nil
	}
	if l.res != nil {
		return l.res.Resize(ctx, tokens)
	}
	res, err := l.d.Limiter.Reserve(ctx, tokens)
	if err != nil {
		return err
	}
	l.res, l.stop = res, make(chan struct{})
	go func() {
		t := time.NewTicker(KeepAliveEvery)
		defer t.Stop()
		for {
			select {
			case <-l.stop:
				return
			case <-t.C:
				kctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
				_ = res.KeepAlive(kctx)
				cancel()
			}
		}
	}()
	return nil
}

// Restamp moves the lease's global reservation to the present when it is
// old enough for the provider to count the call in a later window than the
// limiter did (limiter.Reservation.Restamp); call it just before the call.
// A refusal matches limiter.ErrLimited and names when to try again.
func (l *Lease) Restamp(ctx context.Context) error {
	if l.res == nil {
		return nil
	}
	return l.res.Restamp(ctx)
}

// Finish ends a lease whose call was made: the reservation is settled with
// the tokens the provider reported (negative: unknown, keep the estimate) and
// the capacity is released. Finish and Release are safe to call more than
// once, in any mix; only the first counts.
func (l *Lease) Finish(usedTokens int64) {
	l.end(func(ctx context.Context) { _ = l.res.Settle(ctx, usedTokens) })
}

// Release ends a lease whose call was not made: the reservation, if any, is
// cancelled and the capacity released.
func (l *Lease) Release() {
	l.end(func(ctx context.Context) { _ = l.res.Cancel(ctx) })
}

func (l *Lease) end(settle func(ctx context.Context)) {
	l.once.Do(func() {
		if l.res != nil {
			close(l.stop)
			ctx, cancel := context.WithTimeout(context.Background(), settleTimeout)
			settle(ctx)
			cancel()
		}
		l.r.mu.Lock()
		// Only a release that can change an admission wakes anyone: a
		// deployment that was at max_parallel_requests or refused an
		// admission to keep headroom, a shared limit, or a held request
		// waiting for the group. Waking idle slots for every
		// release of an unlimited deployment would have each of them sweep
		// and fetch for nothing.
		freed := l.d.Limiter != nil || l.r.waiters[l.d.Group] > 0 || l.d.kept ||
			(l.d.MaxParallel > 0 && l.d.inFlight >= l.d.MaxParallel)
		l.d.inFlight--
		l.d.kept = false
		l.r.mu.Unlock()
		if freed {
			l.r.notify(l.d.Group)
		}
	})
}

// Has reports whether group exists.
func (r *Router) Has(group string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.groups[group]) > 0
}

// TooLarge reports whether a request of tokens exceeds the tpm limit of
// every deployment of group, so that no deployment can ever serve it.
func (r *Router) TooLarge(group string, tokens int64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	ds := r.groups[group]
	for _, d := range ds {
		if d.Limiter == nil || d.Limiter.Limits().TPM <= 0 || tokens <= d.Limiter.Limits().TPM {
			return false
		}
	}
	return len(ds) > 0
}

// HasHeadroom reports whether some deployment of group could take a call now.
func (r *Router) HasHeadroom(group string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for _, d := range r.groups[group] {
		if d.available(now, 0) {
			return true
		}
	}
	return false
}

// TryAcquire leases capacity on the best deployment of group that has
// headroom, without blocking. ok is false when none has, or when a held
// request of the group waits for capacity (see Acquire).
func (r *Router) TryAcquire(group string) (l *Lease, ok bool) {
	return r.TryAcquireTokens(group, 0, false)
}

// TryAcquireTokens is TryAcquire for a request of tokens (see AcquireTokens).
// With settle, a deployment of a better order that is full only for an
// admission younger than AdmissionSettle keeps the worse orders out (see
// AdmissionSettle); a caller that knows of a backlog passes false.
func (r *Router) TryAcquireTokens(group string, tokens int64, settle bool) (l *Lease, ok bool) {
	return r.TryAcquireKeeping(group, tokens, settle, 0)
}

// TryAcquireKeeping is TryAcquireTokens for a request that may only use a
// deployment which, after admitting it, keeps the share keep (0 to 1) of
// each of its limits free (see HeldBack); keep 0 asks for nothing more.
func (r *Router) TryAcquireKeeping(group string, tokens int64, settle bool, keep float64) (l *Lease, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.waiters[group] > 0 {
		return nil, false
	}
	d := r.pick(r.groups[group], tokens, settle, keep)
	if d == nil {
		return nil, false
	}
	d.admit(r.now())
	return &Lease{r: r, d: d}, true
}

func (d *Deployment) admit(now time.Time) {
	d.inFlight++
	d.admitted = now
}

// settling reports that d is unavailable only for an admission younger
// than AdmissionSettle, which may be given back: a shared limit whose
// latest admission (in any process) is that young, or this process's
// max_parallel_requests reached by an admission that young.
func (d *Deployment) settling(now time.Time) bool {
	switch {
	case now.Before(d.coolUntil):
		return false
	case d.free() == 0:
		return now.Sub(d.admitted) < AdmissionSettle
	default:
		return d.Limiter != nil && d.Limiter.AdmittedWithin(now, AdmissionSettle)
	}
}

// available reports whether d may take a call now, as far as this process
// can tell without a round trip.
func (d *Deployment) available(now time.Time, tokens int64) bool {
	return d.free() != 0 && !now.Before(d.coolUntil) && (d.Limiter == nil || d.Limiter.Headroom(now, tokens))
}

// keeps reports whether d, after admitting a request of tokens, would keep
// the share keep of each of its limits free: of its max_parallel_requests
// in this process and, with a limiter, of the concurrency, rpm and tpm
// that the mirror counts in use by every process.
func (d *Deployment) keeps(now time.Time, tokens int64, keep float64) bool {
	fits := func(used, want, limit int64) bool {
		return limit <= 0 || used+want <= limit-HeldBack(keep, limit)
	}
	if !fits(int64(d.inFlight), 1, int64(d.MaxParallel)) {
		return false
	}
	if d.Limiter == nil {
		return true
	}
	u := d.Limiter.Usage(now)
	return fits(int64(u.InFlight), 1, int64(u.Limits.MaxParallel)) &&
		fits(u.Requests, 1, u.Limits.RPM) && fits(u.Tokens, max(tokens, 0), u.Limits.TPM)
}

// HeldBack is the part of a limit (worker slots, max_parallel_requests,
// rpm, tpm) that a request asked to keep the share keep free may not use:
// keep × limit rounded down, and never the whole limit, so that a request
// held back always has at least one unit to itself when nothing else runs,
// and a limit too small to hold a whole unit back holds none.
func HeldBack(keep float64, limit int64) int64 {
	if keep <= 0 || limit <= 1 {
		return 0
	}
	return min(int64(keep*float64(limit)+1e-9), limit-1) // (1e-9: 0.29 × 100 is 28.999…)
}

// free returns the free parallel slots, or -1 for unlimited.
func (d *Deployment) free() int {
	if d.MaxParallel <= 0 {
		return -1
	}
	return d.MaxParallel - d.inFlight
}

func (d *Deployment) order() int { return max(d.Order, 1) }

func (d *Deployment) weight() float64 {
	switch {
	case d.Weight > 0:
		return d.Weight
	case d.RPM > 0:
		return float64(d.RPM)
	case d.TPM > 0:
		return float64(d.TPM)
	}
	return 1
}

// AdmissionSettle is how long a deployment that just admitted a call and is
// now at its limit keeps deployments of a worse order out of the choice, when
// the caller asks for it (no known backlog). Workers reserve before they
// fetch, so when several processes (or several slots of one process) race
// for one message, an admission is often given back a moment later: the
// preferred deployment then has capacity again, and the message meanwhile
// sent to the worse one would have broken litellm_params.order. This holds
// for a shared limit and for this process's max_parallel_requests alike.
// With a backlog the admissions are real and the overflow goes to the worse
// order at once.
//
// The losers give their admissions back one fetch round trip and one KV
// update later, as this process sees them: on two busy cores, with -race,
// that was seen to take over 50 ms, and a lone request then went to the
// worse order. 250 ms is several times the slowest such round trip seen
// there; the price is that a lone request arriving within 250 ms of the
// admission that filled the preferred deployment waits up to that long
// before it overflows (the preferred deployment may have freed by then).
const AdmissionSettle = 250 * time.Millisecond

// pick chooses among the deployments with headroom of the lowest order.
// With settle, it chooses none while a deployment of a lower order is full
// only for an admission younger than AdmissionSettle. With keep, a
// deployment that would not keep that share of its limits free after the
// admission is passed over (and marked, so its next release wakes the
// dispatcher). The caller holds r.mu.
func (r *Router) pick(ds []*Deployment, tokens int64, settle bool, keep float64) *Deployment {
	var cands []*Deployment
	best, settling := 0, 0
	now := r.now()
	for _, d := range ds {
		if !d.available(now, tokens) {
			if settle && d.settling(now) && (settling == 0 || d.order() < settling) {
				settling = d.order()
			}
			continue
		}
		if keep > 0 && !d.keeps(now, tokens, keep) {
			d.kept = true
			continue
		}
		switch o := d.order(); {
		case len(cands) == 0 || o < best:
			cands, best = append(cands[:0], d), o
		case o == best:
			cands = append(cands, d)
		}
	}
	if settling != 0 && settling < best {
		return nil
	}
	switch len(cands) {
	case 0:
		return nil
	case 1:
		return cands[0]
	}
	if r.strategy == LeastBusy {
		sort.SliceStable(cands, func(i, j int) bool { return headroom(cands[i]) > headroom(cands[j]) })
		return cands[0]
	}
	var total float64
	for _, d := range cands {
		total += d.weight()
	}
	x := r.rnd.Float64() * total
	for _, d := range cands {
		if x -= d.weight(); x < 0 {
			return d
		}
	}
	return cands[len(cands)-1]
}

// headroom is the share of a deployment's parallel slots that is free; an
// unlimited deployment counts as fully free minus a tie-breaker for load.
func headroom(d *Deployment) float64 {
	if d.MaxParallel <= 0 {
		return 1 - float64(d.inFlight)/1e9
	}
	return float64(d.MaxParallel-d.inFlight) / float64(d.MaxParallel)
}
