package worker

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/internal/router"
)

// The pair states the policy tests are built from.
var (
	// hinted: one message hinted (sequence 7), none fetched.
	hinted = pair{pending: true, hintSeq: 7, hints: 1}
	// backlog: the last fetch said 3 are left.
	backlog = pair{pending: true, hintSeq: 7, fetchedSeq: 7, left: 3, hints: 1, taken: 1}
	// blind: marked by the poll or at start; nothing known beyond that.
	blind = pair{pending: true, blind: 1}
	// empty: never marked.
	empty = pair{}
	// drained: marked, but every hinted message was fetched here and none
	// is left.
	drained = pair{pending: true, hintSeq: 7, fetchedSeq: 9, hints: 2, taken: 2}
	// covered: one hinted message, and a fetch for it is in flight.
	covered = pair{pending: true, hintSeq: 7, hints: 1, fetching: 1}
	// busy: three left, one fetch in flight: room for two more.
	busy = pair{pending: true, hintSeq: 7, fetchedSeq: 7, left: 3, hints: 1, taken: 1, fetching: 1}
	// coveredBlind: a fetch in flight, but a blind mark came since.
	coveredBlind = pair{pending: true, hintSeq: 7, hints: 1, fetching: 1, blind: 1}
)

// at names a queue: band, group and lane index (0: the group's own lane).
type at struct{ band, group, lane int }

// grid builds the pairs and shares of bands x groups, every lane empty but
// those in set.
func grid(bands, groups int, set map[at]pair) ([][][]pair, [][]fairness) {
	pairs := make([][][]pair, bands)
	fair := make([][]fairness, bands)
	for b := range pairs {
		pairs[b] = make([][]pair, groups)
		fair[b] = make([]fairness, groups)
		for g := range pairs[b] {
			pairs[b][g] = make([]pair, lanes)
			fair[b][g] = newFairness(100)
		}
	}
	for q, pr := range set {
		pairs[q.band][q.group][q.lane] = pr
	}
	return pairs, fair
}

func TestPick(t *testing.T) {
	tests := []struct {
		name          string
		bands, groups int
		set           map[at]pair
		vt            map[at]float64 // lanes' virtual finish times
		start         int
		skip          []at // band and group paused or refused in this pass
		want          *at  // nil: nothing to fetch
	}{
		{name: "nothing pending", bands: 2, groups: 2},
		{name: "the better band first", bands: 2, groups: 2,
			set: map[at]pair{{0, 1, 0}: hinted, {1, 0, 0}: hinted}, want: &at{0, 1, 0}},
		{name: "a worse band when the better is empty", bands: 2, groups: 2,
			set: map[at]pair{{1, 1, 0}: backlog}, want: &at{1, 1, 0}},
		{name: "band 9 under band 0 waits", bands: 10, groups: 1,
			set: map[at]pair{{0, 0, 0}: backlog, {9, 0, 3}: backlog}, want: &at{0, 0, 0}},
		{name: "blind marks are fetched", bands: 2, groups: 1,
			set: map[at]pair{{1, 0, 5}: blind}, want: &at{1, 0, 5}},
		{name: "drained lane is not fetched", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 0}: drained, {1, 0, 0}: hinted}, want: &at{1, 0, 0}},
		{name: "a lane whose messages are being fetched lets the next band go", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 0}: covered, {1, 0, 0}: hinted}, want: &at{1, 0, 0}},
		{name: "a backlog takes more fetches than are in flight", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 0}: busy, {1, 0, 0}: hinted}, want: &at{0, 0, 0}},
		{name: "a blind mark since the fetch began fetches again", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 0}: coveredBlind, {1, 0, 0}: hinted}, want: &at{0, 0, 0}},
		{name: "groups from the rotating start", bands: 1, groups: 3,
			set: map[at]pair{{0, 0, 0}: hinted, {0, 1, 0}: hinted, {0, 2, 0}: hinted}, start: 1, want: &at{0, 1, 0}},
		{name: "rotation wraps", bands: 1, groups: 3,
			set: map[at]pair{{0, 0, 0}: hinted}, start: 2, want: &at{0, 0, 0}},
		{name: "rotation never beats band order", bands: 2, groups: 2,
			set: map[at]pair{{0, 0, 0}: hinted, {1, 1, 0}: hinted}, start: 1, want: &at{0, 0, 0}},
		{name: "a paused queue is passed over", bands: 2, groups: 2,
			set: map[at]pair{{0, 0, 0}: hinted, {1, 0, 0}: hinted, {1, 1, 0}: hinted}, skip: []at{{0, 0, 0}}, want: &at{1, 0, 0}},
		{name: "everything skipped", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 0}: hinted, {1, 0, 0}: hinted}, skip: []at{{0, 0, 0}, {1, 0, 0}}},
		{name: "the tenant furthest behind its share goes first", bands: 1, groups: 1,
			set: map[at]pair{{0, 0, 0}: backlog, {0, 0, 4}: backlog, {0, 0, 9}: hinted},
			vt:  map[at]float64{{0, 0, 0}: 900, {0, 0, 4}: 500, {0, 0, 9}: 700}, want: &at{0, 0, 4}},
		{name: "a tenant behind its share but empty does not block", bands: 1, groups: 1,
			set: map[at]pair{{0, 0, 0}: backlog, {0, 0, 4}: drained},
			vt:  map[at]float64{{0, 0, 0}: 900, {0, 0, 4}: 0}, want: &at{0, 0, 0}},
		{name: "a flooding tenant of band 0 still beats every tenant of band 1", bands: 2, groups: 1,
			set: map[at]pair{{0, 0, 2}: backlog, {1, 0, 7}: hinted},
			vt:  map[at]float64{{0, 0, 2}: 1e12, {1, 0, 7}: 0}, want: &at{0, 0, 2}},
		{name: "fairness is per band and group", bands: 1, groups: 2,
			set: map[at]pair{{0, 0, 1}: backlog, {0, 1, 2}: hinted},
			vt:  map[at]float64{{0, 0, 1}: 1e9, {0, 1, 2}: 0}, want: &at{0, 0, 1}},
		{name: "equal shares: the lower lane", bands: 1, groups: 1,
			set: map[at]pair{{0, 0, 6}: hinted, {0, 0, 3}: hinted}, want: &at{0, 0, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pairs, fair := grid(tt.bands, tt.groups, tt.set)
			for q, v := range tt.vt {
				fair[q.band][q.group].vt[q.lane] = v
			}
			skip := func(band, gi int) bool {
				for _, s := range tt.skip {
					if s.band == band && s.group == gi {
						return true
					}
				}
				return false
			}
			band, gi, li, ok := pick(pairs, fair, tt.start, skip, Aging{}, time.Time{}, tt.bands-1)
			got := at{band, gi, li}
			switch {
			case tt.want == nil && ok:
				t.Errorf("pick = %+v, want nothing", got)
			case tt.want != nil && !ok:
				t.Errorf("pick = nothing, want %+v", *tt.want)
			case tt.want != nil && got != *tt.want:
				t.Errorf("pick = %+v, want %+v", got, *tt.want)
			}
		})
	}
}

// TestFairShares drives one band and group's shares the way the dispatcher
// does (pick, then the served tokens) with every lane backlogged, and
// checks the tokens each tenant gets.
func TestFairShares(t *testing.T) {
	tests := []struct {
		name    string
		weights []float64 // per lane 1..n
		sizes   []int64   // tokens of each lane's requests
		want    []float64 // share of the tokens served, per lane
	}{
		{name: "equal weights, equal sizes", weights: []float64{1, 1}, sizes: []int64{100, 100}, want: []float64{0.5, 0.5}},
		{name: "weights 3:1", weights: []float64{3, 1}, sizes: []int64{100, 100}, want: []float64{0.75, 0.25}},
		{name: "4,000-token against 100-token requests: shares in tokens", weights: []float64{1, 1}, sizes: []int64{4000, 100}, want: []float64{0.5, 0.5}},
		{name: "three tenants 1:2:5", weights: []float64{1, 2, 5}, sizes: []int64{300, 50, 1000}, want: []float64{0.125, 0.25, 0.625}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set := map[at]pair{}
			for i := range tt.weights {
				set[at{0, 0, i + 1}] = backlog
			}
			pairs, fair := grid(1, 1, set)
			f := &fair[0][0]
			for i, w := range tt.weights {
				f.setWeight(i+1, w)
			}
			served := make([]float64, len(tt.weights))
			var total float64
			for total < 2e6 {
				_, _, li, ok := pick(pairs, fair, 0, nil, Aging{}, time.Time{}, 0)
				if !ok {
					t.Fatal("nothing to pick with every lane backlogged")
				}
				charged := f.pick(li)
				size := tt.sizes[li-1]
				f.saw(li, size)
				f.charge(li, float64(size-charged)/f.weight[li])
				served[li-1] += float64(size)
				total += float64(size)
			}
			for i := range served {
				if got := served[i] / total; got < tt.want[i]-0.01 || got > tt.want[i]+0.01 {
					t.Errorf("lane %d (weight %v, %d-token requests) got %.3f of the tokens, want %.3f", i+1, tt.weights[i], tt.sizes[i], got, tt.want[i])
				}
			}
		})
	}
}

// TestFairnessIdleEarnsNoCredit: a lane that was idle while another was
// served starts at the pool's virtual time, not at its old finish time, so
// it does not then take every slot until it catches up.
func TestFairnessIdleEarnsNoCredit(t *testing.T) {
	f := newFairness(100)
	for range 100 {
		f.pick(1) // lane 1 alone is served 100 requests
	}
	f.activate(2) // lane 2 arrives
	if f.vt[2] < f.v {
		t.Fatalf("a lane that arrives starts at %v, behind the virtual time %v", f.vt[2], f.v)
	}
	if f.vt[1]-f.vt[2] > 100 {
		t.Errorf("the newcomer starts %v tokens ahead of the busy lane: more than one request's credit", f.vt[1]-f.vt[2])
	}
}

// TestDispatchPass runs the dispatcher's pass (admission through a real
// router, fetches recorded instead of sent): free slots get fetches in
// policy order; a group refused capacity at a band is not admitted at a
// worse band in the same pass, while another group goes on.
func TestDispatchPass(t *testing.T) {
	rt := router.New(router.LeastBusy, []router.Deployment{
		{ID: "full-0", Group: "full", MaxParallel: 1},
		{ID: "open-0", Group: "open"},
	}, nil)
	held, ok := rt.TryAcquire("full") // the one call "full" may make is running
	if !ok {
		t.Fatal("no lease on an idle deployment")
	}
	defer held.Release()
	p := &Pool{opts: Options{Bands: 3, Groups: []string{"full", "open"}, Slots: 3, Router: rt}, log: slog.New(slog.DiscardHandler)}
	d := newDispatcher(p, make([]*limitedGroup, 2))
	var started []at
	d.startFetch = func(_ context.Context, band, gi, li int, _ int64, f *fetchResult) {
		started = append(started, at{band, gi, li})
		f.lease.Release()
	}
	d.pairs[0][0][0], d.pairs[0][1][0] = hinted, hinted
	d.pairs[1][0][0], d.pairs[1][1][0] = hinted, backlog
	d.pairs[2][0][0], d.pairs[2][1][0] = hinted, hinted
	d.rotate = -1 // the pass starts at group 0
	d.dispatch(t.Context())
	want := []at{{0, 1, 0}, {1, 1, 0}, {1, 1, 0}}
	if fmt.Sprint(started) != fmt.Sprint(want) {
		t.Errorf("fetches started %v, want %v (the saturated group never; the open one by band, its backlog twice)", started, want)
	}
	if d.free != 0 || d.fetches != 3 {
		t.Errorf("free %d, fetches in flight %d; want 0, 3", d.free, d.fetches)
	}
	// Nothing more while every slot is promised to a fetch.
	started = nil
	d.dispatch(t.Context())
	if len(started) != 0 {
		t.Errorf("with no slot free, fetches %v were started", started)
	}
}

// TestPairMarks: an answer clears a pair's pending mark only if nothing
// marked it since its fetch began, and what a fetch took is counted.
func TestPairMarks(t *testing.T) {
	var pr pair
	pr.hintSeq, pr.hints = 3, 1
	pr.mark()
	gen := pr.gen
	pr.hintSeq, pr.hints = 4, 2
	pr.mark() // a hint during the fetch
	pr.clearIf(gen)
	if !pr.pending {
		t.Fatal("an empty answer cleared a mark that came after its fetch began")
	}
	pr.took(&nats.MsgMetadata{Sequence: nats.SequencePair{Stream: 3}, NumDelivered: 1})
	pr.took(&nats.MsgMetadata{Sequence: nats.SequencePair{Stream: 4}, NumDelivered: 1})
	pr.took(&nats.MsgMetadata{Sequence: nats.SequencePair{Stream: 5}, NumDelivered: 1}) // not hinted here
	if pr.taken != 2 || pr.fetchedSeq != 5 {
		t.Errorf("taken %d, fetchedSeq %d; want 2 (never more than hinted), 5", pr.taken, pr.fetchedSeq)
	}
	if !pr.explained() {
		t.Error("every hinted message was fetched here and none is left, but the pair is not explained")
	}
	pr.took(&nats.MsgMetadata{Sequence: nats.SequencePair{Stream: 2}, NumDelivered: 2}) // a redelivery
	if pr.taken != 2 || pr.fetchedSeq != 5 {
		t.Errorf("a redelivery changed taken to %d or fetchedSeq to %d", pr.taken, pr.fetchedSeq)
	}
}

// TestDispatchPassTakesTurns: with slots free and two tenant lanes
// backlogged in one band and group, one pass gives them fetches in turn:
// each pick charges the lane at once, so the next pick sees it.
func TestDispatchPassTakesTurns(t *testing.T) {
	rt := router.New(router.LeastBusy, []router.Deployment{{ID: "g-0", Group: "g"}}, nil)
	p := &Pool{opts: Options{Bands: 1, Groups: []string{"g"}, Slots: 6, Router: rt, DefaultCompletionTokens: 100,
		TenantWeights: map[string]float64{}}, log: slog.New(slog.DiscardHandler)}
	d := newDispatcher(p, make([]*limitedGroup, 1))
	var started []int
	d.startFetch = func(_ context.Context, _, _, li int, _ int64, f *fetchResult) {
		started = append(started, li)
		f.lease.Release()
	}
	busyLane := pair{pending: true, left: 10}
	d.pairs[0][0][5], d.pairs[0][0][9] = busyLane, busyLane
	d.fair[0][0].vt[9] = 250 // lane 9 was served 2.5 requests more
	d.dispatch(t.Context())
	want := []int{5, 5, 5, 9, 5, 9} // lane 5 catches up, then they alternate (ties: the lower lane)
	if fmt.Sprint(started) != fmt.Sprint(want) {
		t.Errorf("fetches went to lanes %v, want %v", started, want)
	}
}

// TestPickAging: with aging on, a lane is treated as one band more
// important for every step its oldest request waited, up to the limit
// band; at one level, the band whose lane's oldest request arrived first
// goes first.
func TestPickAging(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	with := func(pr pair, since time.Time) pair { pr.since = since; return pr }
	step := time.Second
	tests := []struct {
		name  string
		aging Aging
		set   map[at]pair
		want  at
	}{
		{name: "off: band 9 waits behind band 0 however long it waited", aging: Aging{},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(time.Second)), {9, 0, 2}: with(hinted, ago(time.Hour))},
			want: at{0, 0, 1}},
		{name: "not yet lifted to band 0: 8 steps lift band 9 to band 1", aging: Aging{Step: step},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(time.Minute)), {9, 0, 2}: with(hinted, ago(8*step+step/2))},
			want: at{0, 0, 1}},
		{name: "lifted to band 0 and older than band 0's oldest", aging: Aging{Step: step},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(2*step)), {9, 0, 2}: with(hinted, ago(9*step))},
			want: at{9, 0, 2}},
		{name: "lifted to band 0 but band 0's oldest came first", aging: Aging{Step: step},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(time.Hour)), {9, 0, 2}: with(hinted, ago(9*step))},
			want: at{0, 0, 1}},
		{name: "the limit band stops the lift", aging: Aging{Step: step, LimitBand: 1},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(time.Second)), {9, 0, 2}: with(hinted, ago(time.Hour))},
			want: at{0, 0, 1}},
		{name: "lifted to the limit band, ahead of that band's newer requests", aging: Aging{Step: step, LimitBand: 1},
			set:  map[at]pair{{1, 0, 1}: with(backlog, ago(time.Second)), {9, 0, 2}: with(hinted, ago(time.Hour))},
			want: at{9, 0, 2}},
		{name: "a lift is per lane: the young lane of band 9 stays", aging: Aging{Step: step},
			set:  map[at]pair{{0, 0, 1}: with(backlog, ago(time.Second)), {9, 0, 2}: with(hinted, ago(time.Millisecond)), {9, 0, 3}: with(hinted, ago(time.Hour))},
			want: at{9, 0, 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pairs, fair := grid(10, 1, tt.set)
			band, gi, li, ok := pick(pairs, fair, 0, nil, tt.aging, now, 9)
			if got := (at{band, gi, li}); !ok || got != tt.want {
				t.Errorf("pick = %+v (ok %v), want %+v", got, ok, tt.want)
			}
		})
	}
}

// TestPairArrivals: a lane's oldest request is the oldest hint it has not
// fetched past; past the remembered hints, the last fetched one's store
// time.
func TestPairArrivals(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var pr pair
	for i := range 3 {
		pr.arrived(uint64(10+i), t0.Add(time.Duration(i)*time.Second))
	}
	if got := pr.nextArrival(10, t0); !got.Equal(t0.Add(time.Second)) {
		t.Errorf("after fetching 10: %v, want the hint of 11", got)
	}
	if got := pr.nextArrival(12, t0.Add(time.Minute)); !got.Equal(t0.Add(time.Minute)) {
		t.Errorf("after fetching past every hint: %v, want the fetched request's store time", got)
	}
	pr.pending, pr.gen = true, 1
	pr.arrived(20, t0)
	pr.clearIf(1)
	if pr.pending || !pr.since.IsZero() || len(pr.arrivals) != 0 {
		t.Errorf("a cleared lane keeps pending %v, since %v, %d arrivals", pr.pending, pr.since, len(pr.arrivals))
	}
}

// TestHeadroomLowest: the worst level a pass may start at, by the slots
// free: the held-back bands stop once one more would leave less than the
// share of the slots free.
func TestHeadroomLowest(t *testing.T) {
	tests := []struct {
		name              string
		h                 Headroom
		bands, free, slot int
		want              int
	}{
		{name: "off", h: Headroom{}, bands: 10, free: 1, slot: 40, want: 9},
		{name: "room for one more and the share", h: Headroom{Share: 0.1, FromBand: 9}, bands: 10, free: 5, slot: 40, want: 9},
		{name: "one more would leave less than 10 % of 40", h: Headroom{Share: 0.1, FromBand: 9}, bands: 10, free: 4, slot: 40, want: 8},
		{name: "from band 5: bands 5 to 9 wait", h: Headroom{Share: 0.25, FromBand: 5}, bands: 10, free: 2, slot: 8, want: 4},
		{name: "too few slots to hold one back", h: Headroom{Share: 0.1, FromBand: 9}, bands: 10, free: 1, slot: 9, want: 9},
		{name: "one slot is never held back", h: Headroom{Share: 0.9, FromBand: 1}, bands: 2, free: 1, slot: 1, want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.lowest(tt.bands, tt.free, tt.slot); got != tt.want {
				t.Errorf("lowest = %d, want %d", got, tt.want)
			}
		})
	}
}

// TestPickHeadroom: with the slots' free share reached, a held-back band
// is not picked and a more important band is; a lane that aging lifted
// before FromBand is treated as its level.
func TestPickHeadroom(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	with := func(pr pair, since time.Time) pair { pr.since = since; return pr }
	h := Headroom{Share: 0.1, FromBand: 9}
	tests := []struct {
		name  string
		aging Aging
		free  int // of 40 slots
		set   map[at]pair
		want  *at
	}{
		{name: "room beyond the share: the last band starts", free: 5,
			set: map[at]pair{{9, 0, 0}: backlog}, want: &at{9, 0, 0}},
		{name: "at the share: the last band waits", free: 4,
			set: map[at]pair{{9, 0, 0}: backlog}},
		{name: "at the share: band 8 starts", free: 4,
			set: map[at]pair{{8, 0, 0}: hinted, {9, 0, 0}: backlog}, want: &at{8, 0, 0}},
		{name: "band 0 uses the last free slot", free: 1,
			set: map[at]pair{{0, 1, 0}: hinted, {9, 0, 0}: backlog}, want: &at{0, 1, 0}},
		{name: "lifted by aging to band 8: not held back", aging: Aging{Step: time.Second}, free: 4,
			set: map[at]pair{{9, 0, 0}: with(backlog, now.Add(-time.Second))}, want: &at{9, 0, 0}},
		{name: "not yet lifted: held back", aging: Aging{Step: time.Second}, free: 4,
			set: map[at]pair{{9, 0, 0}: with(backlog, now.Add(-time.Second/2))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pairs, fair := grid(10, 2, tt.set)
			band, gi, li, ok := pick(pairs, fair, 0, nil, tt.aging, now, h.lowest(10, tt.free, 40))
			got := at{band, gi, li}
			switch {
			case tt.want == nil && ok:
				t.Errorf("pick = %+v, want nothing", got)
			case tt.want != nil && (!ok || got != *tt.want):
				t.Errorf("pick = %+v (ok %v), want %+v", got, ok, *tt.want)
			}
		})
	}
}

// TestDispatchPassHeadroom runs the dispatcher's pass with a real router
// (fetches recorded, their leases held as by running calls): a backlog of
// the last band takes the slots, or the deployment's
// max_parallel_requests, only up to what leaves the share free; a band-0
// arrival then starts at once and may take everything left.
func TestDispatchPassHeadroom(t *testing.T) {
	tests := []struct {
		name        string
		slots       int
		maxParallel int
		low, high   int // fetches started for the last band, then for band 0
	}{
		{name: "worker slots", slots: 10, low: 8, high: 2},
		{name: "max_parallel_requests", slots: 20, maxParallel: 10, low: 8, high: 2},
		{name: "too small to hold back", slots: 4, low: 4, high: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := router.New(router.LeastBusy, []router.Deployment{{ID: "g-0", Group: "g", MaxParallel: tt.maxParallel}}, nil)
			p := &Pool{opts: Options{Bands: 10, Groups: []string{"g"}, Slots: tt.slots, Router: rt,
				Headroom: Headroom{Share: 0.2, FromBand: 9}}, log: slog.New(slog.DiscardHandler)}
			d := newDispatcher(p, make([]*limitedGroup, 1))
			started := map[int]int{}
			d.startFetch = func(_ context.Context, band, _, _ int, _ int64, f *fetchResult) {
				started[band]++
				t.Cleanup(f.lease.Release)
			}
			d.pairs[9][0][0] = pair{pending: true, left: 100}
			d.dispatch(t.Context())
			if started[9] != tt.low {
				t.Errorf("the last band's backlog was given %d fetches, want %d", started[9], tt.low)
			}
			d.pairs[0][0][0] = pair{pending: true, left: 100}
			d.dispatch(t.Context())
			if started[0] != tt.high || started[9] != tt.low {
				t.Errorf("after band 0 arrived: band 0 %d fetches, the last band %d; want %d and still %d", started[0], started[9], tt.high, tt.low)
			}
		})
	}
}
