package worker

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// dispatcher is the one owner of a pool's dispatch state: what it knows is
// pending in each band and group (pair), the retry schedule of each pair,
// the admission state of groups with shared limits, and how many slots are
// free. One goroutine (run) reads and writes all of it, fed by a channel
// of events: wake-up hints, fetch answers, retry timers, the safety-net
// poll's findings, changes of capacity, and slots that finished. It decides
// with the policy (policy.go) which queue a free slot gets a fetch of,
// starts the fetch (a round trip, in a goroutine of its own so the loop
// never waits on the network), and hands the fetched message with its
// lease to an idle slot over the work channel. Slots only pick up, call and
// deliver.
//
// A fetch is started only for a slot that is free and promised to it
// (free), so a fetched message always has a slot waiting for it and the
// work channel never blocks the loop.
type dispatcher struct {
	p       *Pool
	pairs   [][][]pair      // [band][group][lane index]: see laneIndex
	fair    [][]fairness    // [band][group]: the tenant lanes' shares
	limited []*limitedGroup // per group: nil unless some deployment has a shared limiter
	free    int             // slots idle and not promised to a fetch in flight
	fetches int             // fetches in flight
	rotate  int
	refused []bool // per group, in the current pass

	events chan event
	kick   chan struct{} // capacity may have changed (coalesced)
	work   chan job      // to the slots; room for every slot
	done   chan struct{} // a slot finished its job; room for every slot
	quit   chan struct{} // closed when run has returned

	paced    *time.Timer // looks again at groups held back by shared limits
	pacedSet bool
	stopping bool

	// startFetch starts a fetch for a slot (go d.fetch; tests record it).
	startFetch func(ctx context.Context, band, gi, li int, guess int64, f *fetchResult)
}

// job is a fetched message, the lease it runs under, (for shared limits)
// the tokens to reserve, and its token estimate, which its lane was charged.
type job struct {
	m        *pulled
	lease    *router.Lease
	tokens   int64
	estimate int64
}

type eventKind uint8

const (
	evHint    eventKind = iota // a wake-up hint for a lane; seq 0: it names no sequence
	evFetched                  // a fetch answered, failed, or was refused its reservation
	evRetry                    // a lane's retry time came
	evMark                     // the safety-net poll found messages in these lanes (marks)
	evMarkAll                  // look at every lane again (start, pauses changed)
	evServed                   // a served-tokens hint
)

type event struct {
	kind         eventKind
	band, gi, li int // li: lane index (laneIndex)
	seq          uint64
	at           time.Time // evHint: when it arrived
	f            *fetchResult
	tenant       string // evHint, evServed: the tenant named, if any
	tokens       int64  // evServed: tokens served
	estimate     int64  // evServed: what the serving worker charged, when it is this one
	marks        []lane // evMark
}

// lane names one lane of a band and group.
type lane struct{ band, gi, li int }

// laneIndex maps a lane (messages.Lane) to its index in a band and group's
// pairs: the group's own lane (NoLane) is 0, tenant lane n is n+1.
func laneIndex(lane int) int { return lane + 1 }

// laneOf is laneIndex's inverse.
func laneOf(li int) int { return li - 1 }

// lanes is the number of lanes of a band and group.
const lanes = messages.TenantLanes + 1

// fetchResult is what one fetch goroutine found.
type fetchResult struct {
	m        *pulled
	md       *nats.MsgMetadata // nil when m is nil or its metadata is unreadable
	err      error
	lease    *router.Lease // nil when refused
	refused  bool          // the shared limiter refused the reservation
	estimate int64         // m's token estimate
	charged  int64         // what the lane was charged when the fetch started
	gen      uint64        // the pair's mark generation when the fetch started
	blind    uint64        // the pair's blind marks when the fetch started
	create   bool          // create the lane's consumer first
	created  bool          // the consumer exists (created or found)
}

func newDispatcher(p *Pool, limited []*limitedGroup) *dispatcher {
	d := &dispatcher{
		p: p, limited: limited, free: p.opts.Slots,
		refused: make([]bool, len(p.opts.Groups)),
		events:  make(chan event, 1024),
		kick:    make(chan struct{}, 1),
		work:    make(chan job, p.opts.Slots),
		done:    make(chan struct{}, p.opts.Slots),
		quit:    make(chan struct{}),
		paced:   time.NewTimer(time.Hour),
	}
	d.paced.Stop()
	d.startFetch = func(ctx context.Context, band, gi, li int, guess int64, f *fetchResult) {
		go d.fetch(ctx, band, gi, li, guess, f)
	}
	d.pairs = make([][][]pair, p.opts.Bands)
	d.fair = make([][]fairness, p.opts.Bands)
	for b := range d.pairs {
		d.pairs[b] = make([][]pair, len(p.opts.Groups))
		d.fair[b] = make([]fairness, len(p.opts.Groups))
		for gi := range d.pairs[b] {
			d.pairs[b][gi] = make([]pair, lanes)
			d.pairs[b][gi][0].consumer = true // topology.Ensure made it
			d.fair[b][gi] = newFairness(p.opts.DefaultCompletionTokens)
		}
	}
	return d
}

// post hands an event to the loop; after the loop returned it is dropped.
func (d *dispatcher) post(e event) {
	select {
	case d.events <- e:
	case <-d.quit:
	}
}

// wake tells the loop that capacity may have changed. It never blocks, so
// it is safe from any goroutine, the loop's own included (a lease released
// in the loop calls it through the router).
func (d *dispatcher) wake() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// run is the loop. When ctx ends it starts no more fetches, hands what the
// fetches in flight bring to their slots, then closes the work channel
// (the slots return once their jobs are done) and returns.
func (d *dispatcher) run(ctx context.Context) {
	defer close(d.quit)
	defer close(d.work)
	defer d.stopRetries()
	stop := ctx.Done()
	for !d.stopping || d.fetches > 0 {
		select {
		case <-stop:
			d.stopping, stop = true, nil
			d.paced.Stop()
		case e := <-d.events:
			d.apply(ctx, e)
		case <-d.done:
			d.free++
		case <-d.kick:
			for _, lg := range d.limited {
				if lg != nil {
					lg.heldUntil = time.Time{}
				}
			}
		case <-d.paced.C:
			d.pacedSet = false
		}
		// Take in what else is already waiting before deciding: one pass
		// for a burst of hints instead of one per hint.
		for drained := false; !drained; {
			select {
			case e := <-d.events:
				d.apply(ctx, e)
			case <-d.done:
				d.free++
			default:
				drained = true
			}
		}
		d.dispatch(ctx)
	}
}

// apply folds one event into the state.
func (d *dispatcher) apply(ctx context.Context, e event) {
	switch e.kind {
	case evHint:
		pr := &d.pairs[e.band][e.gi][e.li]
		d.activate(e.band, e.gi, e.li)
		if e.seq != 0 && d.p.opts.Aging.Step > 0 {
			pr.arrived(e.seq, e.at)
		}
		if pr.since.IsZero() {
			// The oldest request this process knows of in the lane; a
			// blind mark (start, the poll) says nothing of when.
			pr.since = e.at
		}
		if e.tenant != "" {
			d.fair[e.band][e.gi].setWeight(e.li, d.weight(e.tenant))
		}
		pr.hinted = e.at
		if e.seq != 0 {
			pr.hintSeq = max(pr.hintSeq, e.seq)
			pr.hints++
			pr.mark()
		} else {
			pr.markBlind()
		}
	case evFetched:
		d.fetched(ctx, e.band, e.gi, e.li, e.f)
	case evRetry:
		pr := &d.pairs[e.band][e.gi][e.li]
		pr.retry.at = time.Time{}
		if !pr.explained() {
			d.activate(e.band, e.gi, e.li)
			pr.mark()
		}
	case evMark:
		for _, m := range e.marks {
			d.activate(m.band, m.gi, m.li)
			d.pairs[m.band][m.gi][m.li].markBlind()
		}
	case evMarkAll:
		// Only the lanes whose consumers this process knows of: the poll
		// finds the others' messages.
		for b := range d.pairs {
			for gi := range d.pairs[b] {
				for li := range d.pairs[b][gi] {
					if d.pairs[b][gi][li].consumer {
						d.activate(b, gi, li)
						d.pairs[b][gi][li].markBlind()
					}
				}
			}
		}
	case evServed:
		f := &d.fair[e.band][e.gi]
		w := d.weight(e.tenant)
		f.setWeight(e.li, w)
		f.charge(e.li, float64(e.tokens-e.estimate)/w)
	}
}

// activate starts a lane's share afresh when it becomes pending (see
// fairness.activate).
func (d *dispatcher) activate(band, gi, li int) {
	if !d.pairs[band][gi][li].pending {
		d.fair[band][gi].activate(li)
	}
}

// weight returns a tenant's weight.
func (d *dispatcher) weight(tenant string) float64 {
	if w, ok := d.p.opts.TenantWeights[tenant]; ok && w > 0 {
		return w
	}
	return 1
}

// dispatch gives every free slot a fetch, as the policy orders, until no
// queue wants one or no slot is free.
func (d *dispatcher) dispatch(ctx context.Context) {
	if d.stopping || d.free == 0 {
		return
	}
	n := len(d.p.opts.Groups)
	if n == 0 {
		return
	}
	d.rotate++
	start := d.rotate % n
	clear(d.refused)
	now := time.Now()
	paced := false
	skip := func(band, gi int) bool {
		if d.refused[gi] {
			return true
		}
		if lg := d.limited[gi]; lg != nil && (lg.admitting || now.Before(lg.heldUntil)) {
			// One admission of the group at a time (see limitedGroup);
			// the answer of the one in flight starts the next pass. A
			// group whose reservation was just refused waits for room.
			d.refused[gi] = true
			return true
		}
		return d.p.opts.Paused != nil && d.p.opts.Paused(band, d.p.opts.Groups[gi])
	}
	hr := d.p.opts.Headroom
	for d.free > 0 {
		band, gi, li, ok := pick(d.pairs, d.fair, start, skip, d.p.opts.Aging, now, hr.lowest(len(d.pairs), d.free, d.p.opts.Slots))
		if !ok {
			break
		}
		pr := &d.pairs[band][gi][li]
		// Headroom goes by the level pick chose the lane at: its band, or
		// the band aging lifted it to.
		lease, guess, settle, ok := d.admit(gi, pr, hr.keep(d.p.opts.Aging.level(band, pr.since, now)))
		if !ok {
			paced = paced || d.limited[gi] != nil || settle
			d.refused[gi] = true // saturated: its requests wait, others go on
			continue
		}
		d.free--
		d.fetches++
		pr.fetching++
		f := &fetchResult{lease: lease, gen: pr.gen, blind: pr.blind, create: !pr.consumer}
		// Charge the lane its usual size now, so the next pick sees it
		// (corrected when the message's estimate is known, and again when
		// the served tokens are).
		f.charged = d.fair[band][gi].pick(li)
		d.startFetch(ctx, band, gi, li, guess, f)
	}
	if paced && !d.pacedSet {
		// A group held back by rpm or tpm gets room as time passes, which
		// no message announces: look again shortly.
		d.pacedSet = true
		d.paced.Reset(router.PacedRetry)
	}
}

// admit leases capacity on group gi for the next message of pr, without
// blocking: the router's local view decides. For a group with shared
// limits the fetch goroutine then takes the global reservation for guess
// tokens before it fetches (see fetch). settle is passed to the router:
// with no backlog known, slots of several processes may be racing for one
// message, and a worse order waits for a better one's young admissions to
// settle (router.AdmissionSettle). keep is the share of the deployment's
// limits the admission must leave free (Headroom.keep).
func (d *dispatcher) admit(gi int, pr *pair, keep float64) (lease *router.Lease, guess int64, settle, ok bool) {
	group := d.p.opts.Groups[gi]
	lg := d.limited[gi]
	if lg == nil {
		settle = pr.left == 0
		lease, ok = d.p.opts.Router.TryAcquireKeeping(group, 0, settle, keep)
		return lease, 0, settle, ok
	}
	// Asking the mirror for room for the guess (not just for a call) keeps a
	// refusal it can already tell from taking a lease: releasing one wakes
	// the loop, which would try again at once.
	settle = lg.backlog == 0
	if lease, ok = d.p.opts.Router.TryAcquireKeeping(group, lg.tokens, settle, keep); !ok {
		return nil, 0, settle, false
	}
	lg.admitting = true
	return lease, lg.tokens, settle, true
}

// fetch runs in a goroutine of its own: for a group with shared limits it
// takes the global reservation first (only an admitted process fetches, so
// the limit releases the head of the queue whichever process wins the
// room); for a tenant lane whose consumer this process has not seen it
// creates the consumer (idempotent; the server removes it when idle,
// topology.LaneIdle); then it takes one message with a no-wait pull, and
// posts what it found to the loop.
func (d *dispatcher) fetch(ctx context.Context, band, gi, li int, guess int64, f *fetchResult) {
	defer d.post(event{kind: evFetched, band: band, gi: gi, li: li, f: f})
	if d.limited[gi] != nil {
		if err := f.lease.Reserve(ctx, guess); err != nil {
			f.lease.Release()
			f.lease, f.refused = nil, true
			if !errors.Is(err, limiter.ErrLimited) && ctx.Err() == nil {
				d.p.log.Warn("limiter unavailable", "group", d.p.opts.Groups[gi], "error", err)
			}
			return
		}
	}
	if f.create {
		if f.err = d.p.createLane(ctx, band, gi, laneOf(li)); f.err != nil {
			return
		}
	}
	f.created = true
	f.m, f.err = d.p.puller(band, gi, li).fetch()
	if f.m == nil {
		return
	}
	if md, err := f.m.msg.Metadata(); err == nil {
		f.md = md
	}
	f.estimate = limiter.EstimateTokens(f.m.Data(), d.p.opts.DefaultCompletionTokens)
}

// fetched folds a fetch's answer into the state and hands its message, if
// any, to a slot.
func (d *dispatcher) fetched(ctx context.Context, band, gi, li int, f *fetchResult) {
	pr := &d.pairs[band][gi][li]
	fair := &d.fair[band][gi]
	lg := d.limited[gi]
	d.fetches--
	pr.fetching--
	if lg != nil {
		lg.admitting = false
	}
	if f.m == nil {
		fair.charge(li, -float64(f.charged)/fair.weight[li]) // nothing served
	}
	if f.refused {
		d.free++
		lg.heldUntil = time.Now().Add(router.PacedRetry)
		if !d.pacedSet {
			d.pacedSet = true
			d.paced.Reset(router.PacedRetry)
		}
		return
	}
	pr.consumer = f.created && f.err == nil
	if f.err != nil {
		if ctx.Err() == nil {
			d.p.log.Warn("fetch failed", "band", band, "group", d.p.opts.Groups[gi], "lane", laneOf(li), "error", f.err)
		}
		f.lease.Release()
		d.free++
		pr.clearIf(f.gen)
		d.retryRecent(band, gi, li)
		return
	}
	if pr.blind == f.blind {
		pr.blind = 0
	}
	if f.m == nil {
		pr.left = 0
		if lg != nil {
			lg.backlog = 0
		}
		f.lease.Release()
		d.free++
		pr.clearIf(f.gen)
		d.retryRecent(band, gi, li)
		return
	}
	var left uint64 // the consumer's remaining count
	if f.md == nil {
		pr.markBlind() // the remaining count is unknown
	} else {
		pr.took(f.md)
		left = f.md.NumPending
		pr.left = left
		pr.since = pr.nextArrival(f.md.Sequence.Stream, f.md.Timestamp)
		var depth uint64 // what the lanes' last fetches left
		for i := range d.pairs[band][gi] {
			depth += d.pairs[band][gi][i].left
		}
		d.p.opts.Metrics.QueueDepth(metrics.Band(band), d.p.opts.Groups[gi], depth)
		if lg != nil {
			lg.backlog = left
		}
		if left == 0 {
			pr.clearIf(f.gen)
		}
	}
	if pr.explained() {
		// Every hinted message was fetched here: nothing is left to
		// fetch, and hints another process took count for nothing more.
		pr.taken = pr.hints
		pr.pending, pr.since, pr.arrivals = false, time.Time{}, pr.arrivals[:0]
	}
	// The message's tenant decides its lane's weight; its estimate
	// replaces the guess the lane was charged.
	fair.setWeight(li, d.weight(f.m.Headers().Get(messages.HeaderTenant)))
	fair.saw(li, f.estimate)
	fair.charge(li, float64(f.estimate-f.charged)/fair.weight[li])
	var tokens int64 // reserved against shared limits: only they count tokens
	if d.p.limits {
		tokens = f.estimate
	}
	if lg != nil && !d.p.opts.Router.TooLarge(d.p.opts.Groups[gi], tokens) {
		// (A request no deployment can take is refused by its slot; as a
		// guess it would keep every later admission of the group waiting
		// for room that never comes.)
		lg.sawTokens(tokens)
	}
	d.p.inFlight.Add(1) // before the slot has it, so a drain cannot miss it
	d.work <- job{m: f.m, lease: f.lease, tokens: tokens, estimate: f.estimate}
}

// pair is what the dispatcher knows about the messages of one band and
// group.
type pair struct {
	// pending says the pair may hold messages; gen counts the marks, so an
	// answer clears pending only if nothing marked the pair since its
	// fetch started: a hint that races an empty fetch is never lost.
	pending bool
	gen     uint64
	// since is when its oldest waiting request arrived, as far as this
	// process knows (see Aging); zero while not pending or not known (a
	// blind mark). arrivals are the hints since, oldest first.
	since    time.Time
	arrivals []arrival
	// hinted is when the last wake-up hint arrived.
	hinted time.Time
	// hintSeq is the highest stream sequence a hint named; fetchedSeq the
	// highest a fetch of this pool returned. The consumer delivers in stream
	// order, so hintSeq <= fetchedSeq means every hinted message was
	// delivered here.
	hintSeq, fetchedSeq uint64
	// left is the consumer's remaining count after the last fetch that
	// answered (0 after an empty one).
	left uint64
	// blind counts marks that no sequence explains (start, the safety-net
	// poll, a request handed back) since the last fetch that answered.
	blind uint64
	// hints counts the hints that named a sequence, taken the messages
	// fetched here on their first delivery (never more than hints), and
	// fetching the fetches in flight: hints - taken is how many hinted
	// messages this pool has not fetched (an overcount when other
	// processes take some).
	hints, taken uint64
	fetching     int
	retry        retryState
	// consumer says this process knows the lane's consumer exists.
	consumer bool
}

func (pr *pair) mark() {
	pr.pending = true
	pr.gen++
}

// markBlind marks the pair for a reason the sequences cannot account for:
// the next pass fetches whatever the sequences say.
func (pr *pair) markBlind() {
	pr.blind++
	pr.mark()
}

// clearIf clears pending if nothing marked the pair since gen.
func (pr *pair) clearIf(gen uint64) {
	if pr.gen == gen {
		pr.pending, pr.since, pr.arrivals = false, time.Time{}, pr.arrivals[:0]
	}
}

// maxArrivals bounds the hinted arrivals a pair remembers (only with aging
// on); later ones are not kept (the oldest are what aging needs).
const maxArrivals = 1024

// arrival is when a hint for a stream sequence arrived.
type arrival struct {
	seq uint64
	at  time.Time
}

// arrived remembers when the hint for seq arrived.
func (pr *pair) arrived(seq uint64, at time.Time) {
	if len(pr.arrivals) < maxArrivals {
		pr.arrivals = append(pr.arrivals, arrival{seq, at})
	}
}

// nextArrival forgets the arrivals up to seq, which a fetch just returned
// (the consumer delivers in order, so they are taken), and returns when
// the next remembered one arrived; without one, stored (the fetched
// request's store time: the next one arrived no earlier).
func (pr *pair) nextArrival(seq uint64, stored time.Time) time.Time {
	i := 0
	for i < len(pr.arrivals) && pr.arrivals[i].seq <= seq {
		i++
	}
	pr.arrivals = append(pr.arrivals[:0], pr.arrivals[i:]...)
	if len(pr.arrivals) > 0 {
		return pr.arrivals[0].at
	}
	return stored
}

// took records a message a fetch of this pool returned: its sequence, and,
// on its first delivery, one more hinted message taken (never more than
// the hints).
func (pr *pair) took(md *nats.MsgMetadata) {
	pr.fetchedSeq = max(pr.fetchedSeq, md.Sequence.Stream)
	if md.NumDelivered == 1 && pr.taken < pr.hints {
		pr.taken++
	}
}

// explained reports that a fetch would find nothing this pool does not
// know of: every hinted message was fetched here, the last fetch left none
// behind, and no blind mark came since.
func (pr *pair) explained() bool {
	return pr.blind == 0 && pr.left == 0 && pr.hintSeq <= pr.fetchedSeq
}

// wants reports whether the pair should get a fetch now: it may hold a
// message nobody fetches yet. A fetch is not started when the fetches in
// flight are already enough for every message the pool knows of (those the
// last answer said were left, and those hinted but not fetched here):
// another would find nothing, or only what a fetch in flight will report
// with its remaining count. Marks no sequence explains (blind) make it
// fetch regardless.
func (pr *pair) wants() bool {
	switch {
	case !pr.pending || pr.explained():
		return false
	case pr.fetching > 0 && pr.blind == 0:
		return uint64(pr.fetching) < max(pr.left, pr.hints-pr.taken)
	}
	return true
}

// retryAt are the ages of a wake-up hint at which an empty fetch that the
// sequences do not explain is tried again. JetStream publishes the hint when
// the stream stores the message, but the consumer counts the message as
// pending a moment later (another server goroutine; in a cluster, possibly
// another server that applies the replicated message later), and a no-wait
// fetch in between answers "no messages". The lag is usually well under a
// millisecond; under load or with replicas it can be much longer, hence the
// doubling steps: a message that shows up after a lag L is fetched by 2L.
// After the last, the safety-net poll is left.
var retryAt = [...]time.Duration{
	1 * time.Millisecond, 2 * time.Millisecond, 4 * time.Millisecond,
	8 * time.Millisecond, 16 * time.Millisecond, 32 * time.Millisecond,
	64 * time.Millisecond, 128 * time.Millisecond, 256 * time.Millisecond,
	512 * time.Millisecond, 1024 * time.Millisecond,
}

// retryState is the retry schedule of one pair's latest hint.
type retryState struct {
	hint  time.Time // the hint the schedule is for
	n     int       // the next step of retryAt
	timer *time.Timer
	at    time.Time // when the timer fires; zero when it is not set
}

// retryRecent looks at a pair again after an empty fetch that may have
// raced its hint, at the next of the retryAt ages of the latest hint, with
// one timer per pair. An empty fetch that the sequences explain (see
// pair.explained) raced nothing but another fetch of this pool, and is not
// retried: under a steady flow most empty fetches are of that kind, and
// retrying each would keep idle slots fetching in a loop. In a pool whose
// messages other processes also take, an empty fetch is explained only
// once this pool fetches a later message; until then each hint costs at
// most len(retryAt) empty fetches.
func (d *dispatcher) retryRecent(band, gi, li int) {
	pr := &d.pairs[band][gi][li]
	if pr.explained() || pr.hinted.IsZero() {
		return
	}
	rs := &pr.retry
	age := time.Since(pr.hinted)
	if !rs.hint.Equal(pr.hinted) {
		rs.hint, rs.n = pr.hinted, 0
	}
	for rs.n < len(retryAt) && retryAt[rs.n] <= age {
		rs.n++
	}
	if rs.n == len(retryAt) {
		return
	}
	at := pr.hinted.Add(retryAt[rs.n])
	rs.n++
	if !rs.at.IsZero() && !at.Before(rs.at) {
		return // an earlier retry is already set
	}
	rs.at = at
	if rs.timer == nil {
		rs.timer = time.AfterFunc(time.Until(at), func() { d.post(event{kind: evRetry, band: band, gi: gi, li: li}) })
		return
	}
	rs.timer.Reset(time.Until(at))
}

func (d *dispatcher) stopRetries() {
	for b := range d.pairs {
		for gi := range d.pairs[b] {
			for li := range d.pairs[b][gi] {
				if t := d.pairs[b][gi][li].retry.timer; t != nil {
					t.Stop()
				}
			}
		}
	}
}

// limitedGroup is what the dispatcher keeps for a group with shared limits.
type limitedGroup struct {
	// admitting is set while an admission of the group is in flight (its
	// reservation and fetch): one at a time per process, because an
	// admission holds capacity while it fetches, and a second must not
	// take that for a full deployment and go to a worse one
	// (litellm_params.order) or give up on the group.
	admitting bool
	// heldUntil keeps the group out after the limiter refused a
	// reservation, until then or until capacity changes.
	heldUntil time.Time
	// tokens is the guess an admission reserves before the message (and its
	// size) is known: the largest recent request's estimate, decaying by
	// 1/32 a request. Guessing high keeps a large request at the head from
	// being overtaken while it waits for room; the excess is given back as
	// soon as the message is read.
	tokens int64
	// backlog is how many messages the consumer held after the group's last
	// fetch in this process (0 after an empty one).
	backlog uint64
}

// sawTokens folds one request's token estimate into the guess.
func (lg *limitedGroup) sawTokens(n int64) {
	lg.tokens = max(n, lg.tokens-lg.tokens/32)
}

// laneOf returns the band, group index and lane of a hint's subject; ok is
// false for a subject this pool does not serve.
func (p *Pool) laneOf(subject string) (band, gi, lane int, ok bool) {
	band, group, lane, err := p.opts.Subjects.ParseLane(subject)
	if err != nil || band >= p.opts.Bands {
		return 0, 0, 0, false
	}
	gi, ok = p.groupIdx[group]
	return band, gi, lane, ok
}

// onWake turns a wake-up hint into an event for the loop.
func (p *Pool) onWake(m *nats.Msg) {
	band, gi, lane, ok := p.laneOf(m.Subject)
	if !ok {
		return
	}
	// The stream's own hint names the stored message's sequence, and
	// carries its headers (the tenant among them); a hint a worker or a
	// caller publishes for a request handed back names neither.
	seq, _ := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	p.d.post(event{kind: evHint, band: band, gi: gi, li: laneIndex(lane), seq: seq, at: time.Now(),
		tenant: m.Header.Get(messages.HeaderTenant)})
}

// poll is the safety net: one stream-info request names every subject that
// holds messages.
func (p *Pool) poll(ctx context.Context) {
	t := time.NewTicker(p.opts.PollInterval)
	defer t.Stop()
	// The first look is at once: a tenant lane's requests queued before
	// this process started are found by it (the lane's consumer is not
	// known until then).
	for first := true; ; first = false {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		info, err := p.stream.Info(ctx, jetstream.WithSubjectFilter(p.opts.Subjects.RequestWildcard()))
		if err != nil {
			if ctx.Err() == nil {
				p.log.Warn("safety-net poll failed", "error", err)
			}
			continue
		}
		depth := make([][]uint64, p.opts.Bands)
		for b := range depth {
			depth[b] = make([]uint64, len(p.opts.Groups))
		}
		var strays []string
		var marks []lane
		for subj, n := range info.State.Subjects {
			band, group, l, err := p.opts.Subjects.ParseLane(subj)
			gi, ok := p.groupIdx[group]
			switch {
			case n == 0:
			case err == nil && ok && band < p.opts.Bands:
				depth[band][gi] += n
				marks = append(marks, lane{band, gi, laneIndex(l)})
			default:
				strays = append(strays, subj)
			}
		}
		if len(marks) > 0 {
			// One event: the loop sees every lane found before it picks.
			p.d.post(event{kind: evMark, marks: marks})
		}
		if len(strays) > 0 {
			p.clearStrays(ctx, strays)
		}
		for b := range depth {
			for gi, n := range depth[b] {
				p.opts.Metrics.QueueDepth(metrics.Band(b), p.opts.Groups[gi], n)
			}
		}
		p.recordLimits()
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

// slot serves the jobs the dispatcher hands it until it closes the work
// channel.
func (p *Pool) slot(ctx context.Context) {
	for j := range p.d.work {
		p.handle(ctx, j)
		p.inFlight.Done()
		p.d.done <- struct{}{} // never blocks: one per slot at most
	}
}

// maxStraysPerPoll bounds the work one poll spends on stray messages.
const maxStraysPerPoll = 100

// clearStrays moves messages that no consumer of the stream will ever take
// (an unknown model group, a band beyond the table: an internal service got
// the contract wrong) to the dead-letter stream. Subjects that another
// worker's consumers serve (its config may differ) are left alone.
func (p *Pool) clearStrays(ctx context.Context, subjects []string) {
	served := map[string]bool{}
	list := p.stream.ListConsumers(ctx)
	for ci := range list.Info() {
		served[ci.Config.FilterSubject] = true
		for _, f := range ci.Config.FilterSubjects {
			served[f] = true
		}
	}
	if err := list.Err(); err != nil {
		return
	}
	cleared := 0
	for _, subj := range subjects {
		for !served[subj] && cleared < maxStraysPerPoll {
			m, err := p.stream.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
			if err != nil {
				break
			}
			// Delete first: of several workers racing, only the one whose
			// delete succeeds keeps the copy.
			if err := p.stream.DeleteMsg(ctx, m.Sequence); err != nil {
				break
			}
			p.log.Warn("dead-lettering a request no worker serves", "subject", subj)
			p.copyDead(subj, m.Header, m.Data, "unserved", "no consumer serves subject "+subj)
			cleared++
		}
	}
}
