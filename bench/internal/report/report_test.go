package report

import (
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/bench/internal/natscount"
	"github.com/llmq/llmq/bench/internal/phase"
)

// TestR3Rows checks that the R3 figures get rows of their own beside the
// embedded ones, and that a run without them says so.
func TestR3Rows(t *testing.T) {
	idle := &phase.IdleResult{Config: phase.IdleConfig{Workers: 2, Slots: 8, Duration: time.Minute}, Percent: 0.5}
	idleR3 := &phase.IdleResult{Config: phase.IdleConfig{Workers: 2, Slots: 8, Duration: time.Minute, R3: true}, Percent: 2, BarePercent: 1.25,
		NodeCPU: map[string]time.Duration{"nats-1": time.Second}}

	var without strings.Builder
	if err := Write(&without, Results{Idle: idle}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(without.String(), "not measured in this run (-r3=false)") {
		t.Errorf("a run without R3 does not say so:\n%s", without.String())
	}

	var with strings.Builder
	if err := Write(&with, Results{Idle: idle, IdleR3: idleR3}); err != nil {
		t.Fatal(err)
	}
	out := with.String()
	for _, want := range []string{
		"| idle, 16 slots over 2 worker processes, 1m0s | < 1 % of one core | 0.500 % | met |",
		"| idle, 16 slots over 2 worker processes, 1m0s, 3-node NATS cluster (R3) | < 1 % of one core | 2.000 % (the bare cluster alone: 1.250 %) | **missed**",
		"no client, stream or consumer): 1.250 % of one core; with llmq 0.750 % more.",
		"### Idle, 3-node NATS cluster (R3)",
		"nats-1 1s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "not measured") {
		t.Errorf("R3 measured but reported as not measured:\n%s", out)
	}
}

// TestAtMostZero checks the verdict of a figure whose target is 0: no ratio.
func TestAtMostZero(t *testing.T) {
	if got, want := atMost(2, 0, "inversions"), "**missed** by 2 inversions"; got != want {
		t.Errorf("atMost(2, 0) = %q, want %q", got, want)
	}
}

// TestNATSMessages checks the messages-per-request table and the
// by-subscription list, and that systems without the figure get no row.
func TestNATSMessages(t *testing.T) {
	c := &phase.CompareResult{Config: phase.CompareConfig{Runs: 1}, Figures: []phase.Figures{
		{System: phase.Direct},
		{System: phase.LLMQProcess, MsgsPerRequest: &natscount.PerRequest{
			All: natscount.Rate{In: 8, Out: 9}, Clients: natscount.Rate{In: 8, Out: 9},
			ByConn: map[string]natscount.Rate{"llmq-gateway": {In: 3, Out: 3}, "llmq-worker": {In: 5, Out: 6}},
			BySub:  map[string]float64{"llmq-worker llmq.wake.>": 1, "server llmq.req.>": 1, "server $JS.API.>": 0.001},
		}},
	}}
	var b strings.Builder
	compare(&b, "Latency", c)
	out := b.String()
	for _, want := range []string{
		"| llmq-processes | 8.00 | 9.00 | 17.00 | 8.00 / 9.00 | 0.00 / 0.00 | llmq-gateway 3.00 / 3.00; llmq-worker 5.00 / 6.00 |",
		"- llmq-processes: `llmq-worker llmq.wake.>` 1.00, `server llmq.req.>` 1.00\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in:\n%s", want, out)
		}
	}
	if strings.Contains(out, "| direct | 0.00") {
		t.Errorf("direct has a messages row:\n%s", out)
	}
}
