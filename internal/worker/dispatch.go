package worker

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/limiter"
)

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
	pr := &p.pairs[band][gi]
	pr.hinted.Store(time.Now().UnixNano())
	// The stream's own hint names the stored message's sequence; a hint a
	// worker publishes for a request it hands back names none.
	if seq, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64); err == nil {
		maxStore(&pr.hintSeq, seq)
		pr.hints.Add(1)
		pr.flag.mark()
	} else {
		pr.markBlind()
	}
	p.signal()
}

// pair is what a pool knows about the messages of one band and group.
type pair struct {
	flag pendingFlag
	// hinted is when the last wake-up hint arrived (unix nanos).
	hinted atomic.Int64
	// hintSeq is the highest stream sequence a hint named; fetchedSeq the
	// highest a fetch of this pool returned. The consumer delivers in stream
	// order, so hintSeq <= fetchedSeq means every hinted message was
	// delivered here.
	hintSeq, fetchedSeq atomic.Uint64
	// left is the consumer's remaining count after the last fetch that
	// answered (0 after an empty one).
	left atomic.Uint64
	// blind counts marks that no sequence explains (start, the safety-net
	// poll, a request handed back) since the last fetch that answered.
	blind atomic.Uint64
	// hints counts the hints that named a sequence, taken the messages
	// fetched here on their first delivery (never more than hints), and
	// fetching the fetches in flight: hints - taken is how many hinted
	// messages this pool has not fetched (an overcount when other
	// processes take some).
	hints, taken atomic.Uint64
	fetching     atomic.Int64
	retry        retryState
}

// startFetch counts a fetch in flight, unless the fetches already in flight
// are enough for every message the pool knows of (those the last answer
// said were left, and those hinted but not fetched here): another would
// find nothing, or only what a fetch in flight will report with its
// remaining count (which wakes a slot). Call endFetch after a started fetch
// answers.
func (pr *pair) startFetch() bool {
	for {
		f := pr.fetching.Load()
		if f > 0 && pr.blind.Load() == 0 &&
			uint64(f) >= max(pr.left.Load(), pr.hints.Load()-pr.taken.Load()) {
			return false
		}
		if pr.fetching.CompareAndSwap(f, f+1) {
			return true
		}
	}
}

func (pr *pair) endFetch() { pr.fetching.Add(-1) }

// fetched records a message a fetch of this pool returned: its sequence,
// and, on its first delivery, one more hinted message taken (never more than
// the hints).
func (pr *pair) fetched(md *nats.MsgMetadata) {
	maxStore(&pr.fetchedSeq, md.Sequence.Stream)
	if md.NumDelivered != 1 {
		return
	}
	for {
		t := pr.taken.Load()
		if t >= pr.hints.Load() || pr.taken.CompareAndSwap(t, t+1) {
			return
		}
	}
}

// markBlind marks the pair for a reason the sequences cannot account for:
// the next sweep fetches whatever the sequences say.
func (pr *pair) markBlind() {
	pr.blind.Add(1)
	pr.flag.mark()
}

// explained reports that a fetch would find nothing this pool does not
// know of: every hinted message was fetched here, the last fetch left none
// behind, and no blind mark came since.
func (pr *pair) explained() bool {
	return pr.blind.Load() == 0 && pr.left.Load() == 0 && pr.hintSeq.Load() <= pr.fetchedSeq.Load()
}

// maxStore raises v to n if n is larger.
func maxStore(v *atomic.Uint64, n uint64) {
	for {
		old := v.Load()
		if n <= old || v.CompareAndSwap(old, n) {
			return
		}
	}
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

// retryRecent looks at a pair again after an empty fetch that may have
// raced its hint, at the next of the retryAt ages of the latest hint, with
// one timer per pair. An empty fetch that the sequences explain (see
// pair.explained) raced nothing but another slot, and is not retried: under
// a steady flow most empty fetches are of that kind, and retrying each
// would keep idle slots fetching in a loop. In a pool whose messages other
// processes also take, an empty fetch is explained only once this pool
// fetches a later message; until then each hint costs at most
// len(retryAt) empty fetches.
func (p *Pool) retryRecent(band, gi int) {
	pr := &p.pairs[band][gi]
	if pr.explained() {
		return
	}
	h := pr.hinted.Load()
	age := time.Since(time.Unix(0, h))
	rs := &pr.retry
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.hint != h {
		rs.hint, rs.n = h, 0
	}
	for rs.n < len(retryAt) && retryAt[rs.n] <= age {
		rs.n++
	}
	if rs.n == len(retryAt) {
		return
	}
	at := time.Unix(0, h).Add(retryAt[rs.n])
	rs.n++
	if rs.timer != nil && !rs.at.IsZero() && !at.Before(rs.at) {
		return // an earlier retry is already set
	}
	rs.at = at
	if rs.timer == nil {
		rs.timer = time.AfterFunc(time.Until(at), func() {
			rs.mu.Lock()
			rs.at = time.Time{}
			rs.mu.Unlock()
			if !pr.explained() {
				pr.flag.mark()
				p.signal()
			}
		})
		return
	}
	rs.timer.Reset(time.Until(at))
}

// retryState is the retry schedule of one pair's latest hint.
type retryState struct {
	mu    sync.Mutex
	hint  int64 // unix nanos of the hint the schedule is for
	n     int   // the next step of retryAt
	timer *time.Timer
	at    time.Time // when the timer fires; zero when it is not set
}

func (p *Pool) markAll() {
	for b := range p.pairs {
		for gi := range p.pairs[b] {
			p.pairs[b][gi].markBlind()
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
		var strays []string
		for subj, n := range info.State.Subjects {
			band, group, err := p.opts.Subjects.ParseRequest(subj)
			gi, ok := p.groupIdx[group]
			switch {
			case n == 0:
			case err == nil && ok && band < p.opts.Bands:
				depth[band][gi] = n
				p.pairs[band][gi].markBlind()
				found = true
			default:
				strays = append(strays, subj)
			}
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
func (p *Pool) next(ctx context.Context) (*pulled, *router.Lease, error) {
	for {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		m, lease, paced := p.sweep(ctx)
		if m != nil {
			return m, lease, nil
		}
		// A group held back by rpm or tpm gets room as time passes, which
		// no message announces: look again shortly.
		var again <-chan time.Time
		var t *time.Timer
		if paced {
			t = time.NewTimer(router.PacedRetry)
			again = t.C
		}
		select {
		case <-ctx.Done():
		case <-p.wake:
		case <-again:
		}
		if t != nil {
			t.Stop()
		}
	}
}

// sweep is the strict-priority pass: bands in order, groups with pending
// messages and headroom, one no-wait fetch each, first hit wins. Groups of a
// band are visited from a rotating start so no group is always last.
// paced reports that a pending group was skipped for lack of room in a
// shared limit.
func (p *Pool) sweep(ctx context.Context) (m *pulled, lease *router.Lease, paced bool) {
	n := len(p.opts.Groups)
	start := int(p.rotate.Add(1)) % max(n, 1)
	// refused: groups refused capacity in this sweep. A group refused at a
	// band is not admitted again at a worse one in the same sweep: the
	// limiter may have room a moment later, and that room belongs to the
	// better band's request.
	var refused []bool
	for band := range p.opts.Bands {
		for i := range n {
			gi := (start + i) % n
			pr := &p.pairs[band][gi]
			flag := &pr.flag
			seen, ok := flag.load()
			if !ok || (refused != nil && refused[gi]) {
				continue
			}
			if p.opts.Paused != nil && p.opts.Paused(band, p.opts.Groups[gi]) {
				continue // paused by an operator: its requests stay queued, the flag set
			}
			if pr.explained() {
				// Marked by a hint for a message another slot of this
				// pool has fetched meanwhile: nothing to fetch.
				pr.taken.Store(pr.hints.Load())
				flag.clearIf(seen)
				continue
			}
			if !pr.startFetch() {
				// Other slots are fetching every message hinted so far;
				// their answers wake a slot if more are left. The flag
				// stays for them.
				continue
			}
			blind := pr.blind.Load()
			// With no backlog known for the pair, slots may be racing for
			// one message: a worse order waits for a better one's young
			// admissions to settle (router.AdmissionSettle), and the slot
			// looks again shortly, as for a shared limit.
			settle := pr.left.Load() == 0
			lease, unlock, ok := p.admit(ctx, gi, settle)
			if !ok {
				pr.endFetch()
				paced = paced || p.limited[gi] != nil || settle
				if refused == nil {
					refused = make([]bool, n)
				}
				refused[gi] = true
				continue // saturated: its requests wait, others go on
			}
			// The flag stays set during the fetch, so a slot sweeping
			// meanwhile does not mistake this band for empty and take a
			// lower one; only an answer clears it, and only if no hint came
			// in since it was read.
			m, more, err := p.fetch(band, gi)
			unlock()
			if err == nil {
				pr.blind.CompareAndSwap(blind, 0)
			}
			if err != nil && ctx.Err() == nil {
				p.log.Warn("fetch failed", "band", band, "group", p.opts.Groups[gi], "error", err)
			}
			if m == nil {
				lease.Release()
				flag.clearIf(seen)
				p.retryRecent(band, gi)
				continue
			}
			if more {
				p.signal()
			} else {
				flag.clearIf(seen)
			}
			return m, lease, false
		}
	}
	return nil, nil, paced
}

// limitedGroup is what the sweep keeps for a group with shared limits.
type limitedGroup struct {
	// fetchMu lets one slot of the process at a time admit and fetch for the
	// group: a slot's admission holds capacity while it fetches, and a
	// second slot must not take that for a full deployment and go to a
	// worse one (litellm_params.order) or give up on the group.
	fetchMu sync.Mutex
	// tokens is the guess an admission reserves before the message (and its
	// size) is known: the largest recent request's estimate, decaying by
	// 1/32 a request. Guessing high keeps a large request at the head from
	// being overtaken while it waits for room; the excess is given back as
	// soon as the message is read.
	tokens atomic.Int64
	// backlog is how many messages the consumer held after the group's last
	// fetch in this process (0 after an empty one).
	backlog atomic.Uint64
}

// sawTokens folds one request's token estimate into the guess.
func (lg *limitedGroup) sawTokens(n int64) {
	for {
		old := lg.tokens.Load()
		if lg.tokens.CompareAndSwap(old, max(n, old-old/32)) {
			return
		}
	}
}

// admit leases capacity on group gi for the next message. For a group with
// shared limits it also takes the global reservation before the fetch: of
// several processes that see room at the same moment, only those the
// limiter admits fetch, so the message each fetches is the head of the
// queue at that moment and the limit releases requests in priority order
// across every process. The returned unlock ends the group's fetch lock
// (call it once the fetch answered). settle is passed to the router for a
// group without shared limits (no backlog known for the pair); a group with
// them settles by the backlog its last fetch saw, in any band.
func (p *Pool) admit(ctx context.Context, gi int, settle bool) (lease *router.Lease, unlock func(), ok bool) {
	group := p.opts.Groups[gi]
	lg := p.limited[gi]
	if lg == nil {
		lease, ok = p.opts.Router.TryAcquireTokens(group, 0, settle)
		return lease, func() {}, ok
	}
	lg.fetchMu.Lock()
	guess := lg.tokens.Load()
	// Asking the mirror for room for the guess (not just for a call) keeps a
	// refusal it can already tell from taking a lease: releasing one wakes
	// the other idle slots, which would refuse and wake each other in turn.
	// With no backlog known, several processes may be racing for one
	// message: let an order-1 admission that may be given back settle first.
	if lease, ok = p.opts.Router.TryAcquireTokens(group, guess, lg.backlog.Load() == 0); !ok {
		lg.fetchMu.Unlock()
		return nil, nil, false
	}
	if err := lease.Reserve(ctx, guess); err != nil {
		lease.Release()
		lg.fetchMu.Unlock()
		if !errors.Is(err, limiter.ErrLimited) && ctx.Err() == nil {
			p.log.Warn("limiter unavailable", "group", group, "error", err)
		}
		return nil, nil, false
	}
	return lease, lg.fetchMu.Unlock, true
}

// fetch takes the next message of a pair whose startFetch returned true.
func (p *Pool) fetch(band, gi int) (*pulled, bool, error) {
	pr := &p.pairs[band][gi]
	m, err := p.pullers[band][gi].fetch()
	pr.endFetch()
	if err != nil {
		return nil, false, err
	}
	var left uint64 // the consumer's remaining count; 0 after an empty fetch
	if m != nil {
		md, err := m.msg.Metadata()
		if err != nil {
			pr.markBlind() // the remaining count is unknown
			return m, true, nil
		}
		pr.fetched(md)
		left = md.NumPending
		p.opts.Metrics.QueueDepth(metrics.Band(band), p.opts.Groups[gi], left)
	}
	pr.left.Store(left)
	if lg := p.limited[gi]; lg != nil {
		lg.backlog.Store(left)
	}
	return m, left > 0, nil
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

// pendingFlag says whether a band and group may hold messages. It packs a
// generation count, raised by every mark, with the flag, so that a sweep
// clears it only if no hint arrived since it read it: a hint that races an
// empty fetch is never lost.
type pendingFlag struct{ v atomic.Uint64 }

// mark sets the flag and starts a new generation.
func (f *pendingFlag) mark() {
	for {
		old := f.v.Load()
		if f.v.CompareAndSwap(old, ((old>>1)+1)<<1|1) {
			return
		}
	}
}

// load returns the current value and whether the flag is set.
func (f *pendingFlag) load() (seen uint64, set bool) {
	v := f.v.Load()
	return v, v&1 == 1
}

// clearIf clears the flag if nothing marked it since seen was loaded.
func (f *pendingFlag) clearIf(seen uint64) { f.v.CompareAndSwap(seen, seen&^1) }
