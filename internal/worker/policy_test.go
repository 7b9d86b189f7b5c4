package worker

import (
	"context"
	"fmt"
	"log/slog"
	"testing"

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

func TestPick(t *testing.T) {
	type at struct{ band, group int }
	tests := []struct {
		name  string
		pairs [][]pair // [band][group]
		start int
		skip  []at // paused or refused in this pass
		want  *at  // nil: nothing to fetch
	}{
		{name: "nothing pending", pairs: [][]pair{{empty, empty}, {empty, empty}}},
		{name: "the better band first", pairs: [][]pair{{empty, hinted}, {hinted, empty}}, want: &at{0, 1}},
		{name: "a worse band when the better is empty", pairs: [][]pair{{empty, empty}, {empty, backlog}}, want: &at{1, 1}},
		{name: "band 9 under band 0 waits", pairs: append([][]pair{{backlog}}, repeat(8, []pair{empty})...), want: &at{0, 0}},
		{name: "blind marks are fetched", pairs: [][]pair{{empty}, {blind}}, want: &at{1, 0}},
		{name: "drained pair is not fetched", pairs: [][]pair{{drained}, {hinted}}, want: &at{1, 0}},
		{name: "a pair whose messages are being fetched lets the next band go",
			pairs: [][]pair{{covered}, {hinted}}, want: &at{1, 0}},
		{name: "a backlog takes more fetches than are in flight", pairs: [][]pair{{busy}, {hinted}}, want: &at{0, 0}},
		{name: "a blind mark since the fetch began fetches again", pairs: [][]pair{{coveredBlind}, {hinted}}, want: &at{0, 0}},
		{name: "groups from the rotating start", pairs: [][]pair{{hinted, hinted, hinted}}, start: 1, want: &at{0, 1}},
		{name: "rotation wraps", pairs: [][]pair{{hinted, empty, empty}}, start: 2, want: &at{0, 0}},
		{name: "rotation never beats band order", pairs: [][]pair{{hinted, empty}, {empty, hinted}}, start: 1, want: &at{0, 0}},
		{name: "a paused queue is passed over", pairs: [][]pair{{hinted, empty}, {hinted, hinted}}, skip: []at{{0, 0}}, want: &at{1, 0}},
		{name: "everything skipped", pairs: [][]pair{{hinted}, {hinted}}, skip: []at{{0, 0}, {1, 0}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			skip := func(band, gi int) bool {
				for _, s := range tt.skip {
					if s == (at{band, gi}) {
						return true
					}
				}
				return false
			}
			band, gi, ok := pick(tt.pairs, tt.start, skip)
			switch {
			case tt.want == nil && ok:
				t.Errorf("pick = (band %d, group %d), want nothing", band, gi)
			case tt.want != nil && !ok:
				t.Errorf("pick = nothing, want (band %d, group %d)", tt.want.band, tt.want.group)
			case tt.want != nil && (at{band, gi}) != *tt.want:
				t.Errorf("pick = (band %d, group %d), want (band %d, group %d)", band, gi, tt.want.band, tt.want.group)
			}
		})
	}
}

func repeat(n int, row []pair) [][]pair {
	out := make([][]pair, n)
	for i := range out {
		out[i] = append([]pair(nil), row...)
	}
	return out
}

// TestDispatchPass runs the dispatcher's pass (admission through a real
// router, fetches recorded instead of sent): free slots get fetches in
// policy order; a group refused capacity at a band is not admitted at a
// worse band in the same pass, while another group goes on.
func TestDispatchPass(t *testing.T) {
	type at struct{ band, group int }
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
	d.startFetch = func(_ context.Context, band, gi int, _ int64, f *fetchResult) {
		started = append(started, at{band, gi})
		f.lease.Release()
	}
	d.pairs[0] = []pair{hinted, hinted}
	d.pairs[1] = []pair{hinted, backlog}
	d.pairs[2] = []pair{hinted, hinted}
	d.rotate = -1 // the pass starts at group 0
	d.dispatch(t.Context())
	want := []at{{0, 1}, {1, 1}, {1, 1}}
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
