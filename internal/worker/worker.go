// Package worker is llmq's dispatch: one loop per process that takes requests
// from JetStream in strict priority order and hands them to worker slots,
// which call a deployment with headroom and reply to the caller's inbox.
//
// # One owner for dispatch
//
// One loop per worker process, the dispatcher (dispatch.go), alone owns
// what the process knows is pending, the retry timers and the admission
// state, and it alone decides what is fetched next. It hears wake-up hints,
// fetch answers, timers, the safety-net poll, changes of capacity and slots
// that finished, as events on one channel; slots only pick up, call and
// deliver: they receive (message, lease) over a channel. This is the shape
// of llm-d's flow-control processor (a single writer over its queues),
// applied to queues that live in JetStream.
//
// # The policy
//
// Bands strictly, 0 first (unless aging, off by default, lifts a request
// that waited); inside a band, model groups from a rotating start; inside a
// band and group, tenants by weighted fair share (below); inside a tenant,
// stream order: first come, first served. The least important bands
// (headroom, on by default for the last band) start only while a share of
// the slots and of the deployment's limits stays free, so a more important
// arrival finds room at once. The policy, and why priority
// cannot invert, is written next to the function that applies it
// (policy.go). For a free slot, the loop picks the
// first queue in that order that may hold a message no fetch in flight will
// take, and whose group has a deployment with headroom: it leases that
// headroom before it fetches, so a slot never holds a request it cannot
// start. For a group with shared limits the fetch first takes the global
// reservation (one admission of the process at a time per group): only an
// admitted process fetches, so the limit releases the head of the queue
// whichever process wins the room. It fetches one message with a no-wait
// pull request (see puller) from the durable consumer of that band, group
// and tenant lane, in a goroutine of its own, and hands the message with its lease to
// the slot it kept free for it. So a lower band gets a slot only when no
// higher band of the same group has a message, or when that group is
// saturated — and then the higher band's request could not have started
// anyway; a group refused at one band is not admitted at a worse one in the
// same pass. Priority cannot invert within a group except for the time a
// wake-up hint takes to arrive (well under a millisecond on one machine).
//
// # Tenants: fair shares across the pool
//
// Inside one band and group, tenants with waiting requests share the
// capacity by weight, counted in tokens served (prompt plus completion, as
// the provider reported them), not in requests; a tenant alone gets
// everything; inside a tenant, first come, first served; between bands,
// strictly as above. The design has three parts.
//
// Lanes, so the dispatcher sees the tenant before it fetches. A request of
// a named tenant is published to a lane of its band and group,
// <prefix>.req.<band>.<group>.t<n> with n = messages.Lane(tenant), a hash
// of the name into messages.TenantLanes (32) lanes; the anonymous tenant
// (and every publisher older than tenants) keeps the band and group's own
// subject. Each lane has a durable consumer of its own (a work-queue stream
// allows only consumers whose subjects do not overlap); the dispatcher
// creates one the first time its lane has a message, and the server removes
// it after topology.LaneIdle without a fetch. The wake-up hint names the
// lane and carries the request's headers, its tenant among them. So the
// consumers stay bounded by 33 per band and group in use however many
// tenants there are, and an idle installation keeps only its own ones.
// Tenants hashed to the same lane share it: first come, first served
// between themselves, one share between them (the weight of the tenant seen
// last in it).
//
// Fair queueing over the lanes (policy.go: fairness). Each lane has a
// virtual finish time; the lane that wants a fetch with the least goes
// next; a lane is charged tokens/weight for every request it is served. A
// lane that becomes pending starts at the pool's virtual time, so an idle
// tenant earns no credit, and a tenant alone is never held back.
//
// Shared state without a round trip. Every worker process sums the tokens
// it served per tenant, band and group, and every 20 ms while it serves
// (servedFlush) publishes the sums as served-tokens hints (headers only:
// tenant, tokens, its id) to <prefix>.served.<band>.<group>[.t<n>]; every
// worker process subscribes to them, as to wake-up hints, so every process
// charges every lane for what the whole pool served. The process that
// fetched a request charges its lane at once (its usual size, then the
// request's estimate when it is read, then the tokens served when the call
// ends), and skips its own hints.
//
// Unfairness bound. For two tenants i and j backlogged over an interval,
// in separate lanes, start-time fair queueing in one process keeps the
// tokens served within |S_i/w_i - S_j/w_j| <= L_i/w_i + L_j/w_j, L being
// the largest request of each (in tokens). Across processes a lane is
// charged for another process's request only when the hint with its
// served tokens arrives, up to servedFlush after its call: every request
// in flight elsewhere, or served there in the last servedFlush, may be one
// the others did not count. So the bound is (N+1+F)(L_i/w_i + L_j/w_j)
// for a pool with N slots in all that serves F requests per servedFlush,
// plus, in the process that served it, the error of a request's estimate
// until its call ends. It bounds the difference, not the ratio: over a
// long backlog the shares converge to the weights.
//
// Cost. Per worker process, one headers-only publish (about 200 bytes)
// per lane and tenant served in each 20 ms, delivered to every worker
// process (at most 50 a second per lane and tenant, however many requests);
// no request waits for it. Per lane in
// use, one consumer (on the R3 cluster a replicated consumer, like the
// others, created with one JetStream API call when its lane first has a
// message after LaneIdle); the dispatcher keeps 33 small records per band
// and group. The backlog cap (llmq_settings.max_queued) counts per subject,
// so per lane: a flooding tenant fills its own lane, not its band's.
//
// # Knowing what is pending without polling
//
// The request stream republishes a headers-only copy of every stored message
// to <prefix>.wake.<band>.<group>. Each worker process subscribes to these
// hints (a plain subscription, not a queue group: with a queue group only one
// process would learn about a message, and a busy process's view would go
// stale, letting a later pass take a lower band first), and the dispatcher
// marks the pair as pending and gives a free slot a fetch. A fetched
// message's metadata carries the consumer's remaining count, which keeps the
// pair marked while it has more.
// A slow safety-net poll (one stream-info request listing the subjects that
// hold messages) repairs the view after lost hints or reconnects. An idle pool
// sends nothing but that poll.
//
// # One fetch per message
//
// A fetch that finds nothing costs a round trip and the server's parsing of
// a pull request, so the dispatcher avoids them. A hint names the stored
// message's stream sequence, and a fetched message its own; a consumer delivers in
// stream order, so once the pool has fetched a sequence at least as high as
// the last hinted one, a marked pair holds nothing the pool knows of and is
// not fetched. While fetches are in flight for a pair, another is started
// only if they are fewer than the messages known to wait (hinted and not
// fetched here, or left by the last answer); an answer that leaves more
// starts another. Marks no sequence explains (start, the safety-net poll, a
// request handed back) make the next pass fetch regardless. A release of
// capacity wakes the dispatcher only when it can let a refused admission
// through.
// Under a closed loop this brought fetches from about seven per request to
// about one.
//
// # Ownership of a message
//
// The slot a message is handed to owns it until it acks or terminates it,
// or hands the ack to the caller. Before calling a provider it checks the
// queue deadline and asks the caller (a pickup request to the caller's
// inbox) whether it still waits; if not, it terminates the message and no
// provider is called. A request published a moment ago may instead be
// started without asking, the caller being told afterwards (left.go).
// During the call it sends in-progress acks so JetStream does not
// redeliver. It publishes the answer to the caller's inbox first and acks
// once the caller confirmed it, so a worker that dies in between causes a
// redelivery, never a lost answer; the caller keeps only the first answer
// it receives. A caller that acks its requests itself (pkg/client) gets the
// served answer with the message's ack subject and acks it there: nothing
// is confirmed, and an answer lost on the way shows as a redelivery. The
// slot does not wait for either: it takes the next request while the
// answer's delivery (deliver.go) settles the message. A pickup or an answer
// that finds nobody on the caller's inbox is held for as long as the caller
// said it waits (its gateway may be reconnecting; see hold.go).
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
// When the context passed to Run ends, the dispatcher starts no more
// fetches, hands what the fetches in flight bring to their slots, and
// closes the slots' channel; calls in progress finish within DrainTimeout, the rest are cancelled and their
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

	"github.com/llmq/llmq/internal/jsretry"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/topology"
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
	// Tenants are the tenants whose names may be metric labels (the
	// operator's list); any other is counted as "other".
	Tenants []string
	// TenantWeights are the tenants' weights; a tenant not in it has
	// weight 1.
	TenantWeights map[string]float64
	// Replicas is the replica count of the tenant lanes' consumers, which
	// workers create as they are needed; 0 means 1.
	Replicas int
	// Aging lifts waiting requests to more important bands; off by default.
	Aging Aging
	// Headroom keeps a share of the capacity free for the more important
	// bands; off when its Share is 0.
	Headroom Headroom
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

	pullers  [][][]*puller // [band][group][lane index]
	groupIdx map[string]int
	limits   bool        // some deployment (of any group, fallbacks included) has a shared limiter
	d        *dispatcher // the one owner of what is pending and who fetches next
	// retired is closed by Retire.
	retired    chan struct{}
	retireOnce sync.Once
	inFlight   workCount

	control   string         // prefix of this pool's control subjects
	calls     sync.Map       // request id -> context.CancelCauseFunc of its call
	reconnect reconnectWatch // onControl's
	delivered deliveries
	draining  atomic.Bool // drain has begun (see drainAcked)
	callers   callers
	left      leftSet // requests their callers left (left.go)
	keeper    *keeper
	hints     *servedHints
	tenants   metrics.TenantLabels
}

// Causes of a cancelled call.
var (
	errCallerGone = errors.New("the caller went away")
	errShutdown   = errors.New("the worker is shutting down")
	errNobody     = errors.New("nobody was on the caller's inbox when the call started")
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
		retired:  make(chan struct{}),
		control:  nc.NewRespInbox(),
		keeper:   newKeeper(nc, opts.AckWait),
		tenants:  metrics.NewTenantLabels(opts.Tenants),
	}
	p.hints = newServedHints(nc, opts.Subjects, p.control)
	p.reconnect.nc = nc
	p.delivered.pending = make(map[string]*delivery)
	limited := make([]*limitedGroup, len(opts.Groups))
	for i, g := range opts.Groups {
		p.groupIdx[g] = i
	}
	for _, d := range opts.Router.Deployments() {
		p.limits = p.limits || d.Limiter != nil
		if gi, ok := p.groupIdx[d.Group]; ok && d.Limiter != nil && limited[gi] == nil {
			limited[gi] = &limitedGroup{tokens: opts.DefaultCompletionTokens}
		}
	}
	p.d = newDispatcher(p, limited)
	opts.Router.SetOnRelease(func(string) { p.d.wake() })
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
			for _, group := range band {
				for _, pl := range group {
					pl.close()
				}
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
	served, err := p.nc.Subscribe(p.opts.Subjects.ServedWildcard(), p.onServed)
	if err != nil {
		return fmt.Errorf("worker: subscribe served-tokens hints: %w", err)
	}
	defer served.Unsubscribe()
	_ = served.SetPendingLimits(-1, -1)
	defer p.hints.stop()
	gone, err := p.nc.Subscribe(p.opts.Subjects.Gone(), p.onGone)
	if err != nil {
		return fmt.Errorf("worker: subscribe closed callers: %w", err)
	}
	defer gone.Unsubscribe()
	left, err := p.nc.Subscribe(p.opts.Subjects.Left(), p.onLeft)
	if err != nil {
		return fmt.Errorf("worker: subscribe left requests: %w", err)
	}
	defer left.Unsubscribe()
	_ = left.SetPendingLimits(-1, -1)
	bounce, err := p.nc.Subscribe(p.startedSubject("*"), p.onStartedBounce)
	if err != nil {
		return fmt.Errorf("worker: subscribe started events: %w", err)
	}
	defer bounce.Unsubscribe()

	// The keep-alives go on until Run returns: calls and deliveries outlive
	// ctx by the drain.
	kctx, stopKeeper := context.WithCancel(context.Background())
	defer stopKeeper()
	go p.keeper.run(kctx)

	var wg sync.WaitGroup
	wg.Go(func() { p.d.run(ctx) })
	p.d.post(event{kind: evMarkAll}) // requests queued before we started
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
					p.d.post(event{kind: evMarkAll})
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
	p.drainAcked()
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

// bind looks up the request stream and every band and group's consumer,
// and makes a puller per lane. Its lookups are repeated while JetStream does
// not answer (a cluster electing a leader), as the rest of start-up's are
// (internal/jsretry).
func (p *Pool) bind(ctx context.Context) error {
	if _, err := jsretry.Do(ctx, func(ctx context.Context) (err error) {
		p.stream, err = p.js.Stream(ctx, p.opts.Subjects.RequestStream())
		return err
	}); err != nil {
		return fmt.Errorf("worker: stream %s: %w", p.opts.Subjects.RequestStream(), err)
	}
	p.pullers = make([][][]*puller, p.opts.Bands)
	for b := range p.opts.Bands {
		p.pullers[b] = make([][]*puller, len(p.opts.Groups))
		for gi, g := range p.opts.Groups {
			name := p.opts.Subjects.Consumer(b, g)
			if _, err := jsretry.Do(ctx, func(ctx context.Context) error {
				_, err := p.stream.Consumer(ctx, name)
				return err
			}); err != nil {
				return fmt.Errorf("worker: consumer %s: %w", name, err)
			}
			p.pullers[b][gi] = make([]*puller, lanes)
			for li := range lanes {
				name := p.opts.Subjects.ConsumerLane(b, g, laneOf(li))
				p.pullers[b][gi][li] = newPuller(p.nc, p.opts.Subjects.RequestStream(), name, pullTimeout)
			}
		}
	}
	return nil
}

// puller returns the puller of one lane.
func (p *Pool) puller(band, gi, li int) *puller { return p.pullers[band][gi][li] }

// createLane creates (or finds) the consumer of a tenant lane.
func (p *Pool) createLane(ctx context.Context, band, gi, lane int) error {
	spec := topology.Spec{Subjects: p.opts.Subjects, Replicas: p.opts.Replicas, AckWait: p.opts.AckWait}
	cctx, cancel := context.WithTimeout(ctx, topology.CallTimeout)
	defer cancel()
	_, err := p.stream.CreateOrUpdateConsumer(cctx, spec.LaneConsumerConfig(band, p.opts.Groups[gi], lane))
	return err
}
