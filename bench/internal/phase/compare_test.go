package phase

import (
	"testing"
	"time"

	"github.com/llmq/llmq/bench/internal/natscount"
	"github.com/llmq/llmq/bench/internal/stats"
)

// TestDeriveR3 checks that a system with processes of its own (llmq-r3:
// gateway, worker and three NATS nodes) is charged their CPU, not this
// process's, and that each llmq system gets its ratio to the hop.
func TestDeriveR3(t *testing.T) {
	ms := time.Millisecond
	run := []Measure{
		{System: Direct, Summary: stats.Summary{Count: 100, P50: 50 * ms, P99: 60 * ms}, SelfCPU: 20 * ms},
		{System: Hop, Summary: stats.Summary{Count: 100, P50: 51 * ms, P99: 62 * ms}, SelfCPU: 30 * ms},
		{System: LLMQ, Summary: stats.Summary{Count: 100, P50: 52 * ms, P99: 65 * ms}, SelfCPU: 60 * ms},
		{System: LLMQR3, Summary: stats.Summary{Count: 100, P50: 60 * ms, P99: 90 * ms}, SelfCPU: 25 * ms,
			ProcCPU: map[string]time.Duration{"gateway": 100 * ms, "worker": 100 * ms, "nats-1": 50 * ms, "nats-2": 30 * ms, "nats-3": 20 * ms}},
	}
	figs, ratios := medians([][]Measure{run})
	byName := map[string]Figures{}
	for _, f := range figs {
		byName[f.System] = f
	}
	if got := byName[LLMQ].CPUPerRequest; got != 400*time.Microsecond {
		t.Errorf("llmq CPU per request %s, want 0.4ms (0.6 ms minus direct's 0.2 ms)", got)
	}
	r3 := byName[LLMQR3]
	if r3.CPUPerRequest != 3*ms {
		t.Errorf("llmq-r3 CPU per request %s, want 3ms (300 ms over 100 requests, all five processes)", r3.CPUPerRequest)
	}
	if got := r3.ProcCPUPerRequest["nats-1"]; got != 500*time.Microsecond {
		t.Errorf("llmq-r3 nats-1 CPU per request %s, want 0.5ms", got)
	}
	if r3.AddedP50 != 10*ms || r3.AddedP99 != 30*ms {
		t.Errorf("llmq-r3 added p50/p99 %s/%s, want 10ms/30ms", r3.AddedP50, r3.AddedP99)
	}
	if ratios[LLMQ] != 2 || ratios[LLMQR3] != 10 {
		t.Errorf("ratios %v, want llmq 2 and llmq-r3 10", ratios)
	}
	if _, ok := ratios[Hop]; ok {
		t.Errorf("ratios %v: the hop has none", ratios)
	}
}

// TestMediansMsgs checks that messages per request are divided by the
// requests served and that the median is taken per figure over the runs.
func TestMediansMsgs(t *testing.T) {
	run := func(in, out int64) []Measure {
		return []Measure{
			{System: Direct, Summary: stats.Summary{Count: 100}},
			{System: LLMQ, Summary: stats.Summary{Count: 110, Errors: 10}, Msgs: &natscount.Counts{
				All: natscount.InOut{In: in, Out: out}, Clients: natscount.InOut{In: in, Out: out},
				ByConn: map[string]natscount.InOut{"llmq-gateway": {In: in, Out: 0}},
			}},
		}
	}
	figs, _ := medians([][]Measure{run(300, 400), run(500, 200), run(400, 300)})
	if figs[0].MsgsPerRequest != nil {
		t.Errorf("direct has messages per request: %+v", figs[0].MsgsPerRequest)
	}
	m := figs[1].MsgsPerRequest
	if m == nil {
		t.Fatal("llmq has no messages per request")
	}
	if m.All != (natscount.Rate{In: 4, Out: 3}) || m.ByConn["llmq-gateway"].In != 4 || m.Routes != (natscount.Rate{}) {
		t.Errorf("medians %+v, want 4 in and 3 out per request served (100 of 110)", m)
	}
}
