package worker

import (
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// servedFlush is how long a process sums the tokens it served before it
// tells the others: one served-tokens hint per lane and tenant served in
// the interval, not one per request. The other processes' view of a lane
// lags by at most this (plus delivery); the serving process charges its own
// lanes at once.
const servedFlush = 20 * time.Millisecond

// servedHints sums what this process served per lane and tenant and
// publishes the sums every servedFlush, while there are any. Safe for
// concurrent use: slots add, a timer flushes.
type servedHints struct {
	nc       *nats.Conn
	subjects messages.Subjects
	worker   string // this process's id (its control prefix), so it skips its own hints

	mu    sync.Mutex
	sums  map[servedKey]int64
	timer *time.Timer // runs while sums is not empty
}

type servedKey struct {
	band   int
	group  string
	lane   int
	tenant string
}

func newServedHints(nc *nats.Conn, subjects messages.Subjects, worker string) *servedHints {
	h := &servedHints{nc: nc, subjects: subjects, worker: worker, sums: make(map[servedKey]int64)}
	h.timer = time.AfterFunc(time.Hour, h.flush)
	h.timer.Stop()
	return h
}

// add counts tokens served to a request of tenant (in lane) in band and group.
func (h *servedHints) add(band int, group string, lane int, tenant string, tokens int64) {
	k := servedKey{band: band, group: group, lane: lane, tenant: tenant}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.sums) == 0 {
		h.timer.Reset(servedFlush)
	}
	h.sums[k] += tokens
}

// flush publishes the sums: headers only, to <prefix>.served.<band>.<group>[.t<n>]
// (messages.Subjects.Served).
func (h *servedHints) flush() {
	h.mu.Lock()
	sums := h.sums
	h.sums = make(map[servedKey]int64, len(sums))
	h.mu.Unlock()
	for k, tokens := range sums {
		m := nats.NewMsg(h.subjects.Served(k.band, k.group, k.lane))
		m.Header[messages.HeaderTenant] = []string{k.tenant}
		m.Header[messages.HeaderTokens] = []string{strconv.FormatInt(tokens, 10)}
		m.Header[messages.HeaderWorker] = []string{h.worker}
		_ = h.nc.PublishMsg(m)
	}
}

// stop publishes what is left (the pool stops).
func (h *servedHints) stop() {
	h.timer.Stop()
	h.flush()
}

// served charges a served request's lane in this process at once (its
// estimate was charged at the fetch: the difference is left) and counts its
// tokens for the next hint to the others.
func (p *Pool) served(req *messages.Request, tokens, estimate int64) {
	gi, ok := p.groupIdx[req.Group]
	if !ok || req.Band >= p.opts.Bands {
		return
	}
	lane := messages.Lane(req.Tenant)
	p.d.post(event{kind: evServed, band: req.Band, gi: gi, li: laneIndex(lane), tenant: req.Tenant, tokens: tokens, estimate: estimate})
	p.hints.add(req.Band, req.Group, lane, req.Tenant, tokens)
}

// onServed turns another process's served-tokens hint into an event for
// the loop; this process's own hints were charged when it served them.
func (p *Pool) onServed(m *nats.Msg) {
	if m.Header.Get(messages.HeaderWorker) == p.control {
		return
	}
	band, gi, lane, ok := p.laneOf(m.Subject)
	if !ok {
		return
	}
	tokens, err := strconv.ParseInt(m.Header.Get(messages.HeaderTokens), 10, 64)
	if err != nil || tokens < 0 {
		return
	}
	p.d.post(event{kind: evServed, band: band, gi: gi, li: laneIndex(lane), tenant: m.Header.Get(messages.HeaderTenant), tokens: tokens})
}
