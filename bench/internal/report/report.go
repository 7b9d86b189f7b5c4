// Package report prints the benchmark's results as markdown: the targets of
// issue 7 with the measured figure and a verdict, then one table per phase.
package report

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/llmq/llmq/bench/internal/phase"
)

// Results are the phases' outcomes; a phase that did not run is nil.
type Results struct {
	Short   bool   // parameters were shrunk: verdicts say little
	Machine string // one line describing the machine
	// LoadBefore and LoadAfter are the machine's load averages (1, 5 and
	// 15 minutes) when the run started and ended: other work on the machine
	// shows in every figure.
	LoadBefore, LoadAfter string
	Latency               *phase.CompareResult
	Closed                *phase.CompareResult
	Priority              *phase.PriorityResult
	Memory                *phase.MemoryResult
	Idle                  *phase.IdleResult
}

// Write prints r as markdown.
func Write(w io.Writer, r Results) error {
	var b strings.Builder
	fmt.Fprintf(&b, "## llmq benchmark summary\n\n")
	if r.Machine != "" {
		fmt.Fprintf(&b, "Machine: %s\n\n", r.Machine)
	}
	if r.LoadBefore != "" {
		fmt.Fprintf(&b, "Load average (1, 5, 15 min) at the start: %s; at the end: %s.\n\n", r.LoadBefore, r.LoadAfter)
	}
	if r.Short {
		fmt.Fprintf(&b, "**Short run**: durations and counts are shrunk to check that the harness works; the verdicts below do not measure the targets.\n\n")
	}
	targets(&b, r)
	if r.Latency != nil {
		compare(&b, "Latency (open loop)", r.Latency)
	}
	if r.Closed != nil {
		compare(&b, "Maximum throughput (closed loop)", r.Closed)
	}
	if r.Priority != nil {
		priority(&b, r.Priority)
	}
	if r.Memory != nil {
		memory(&b, r.Memory)
	}
	if r.Idle != nil {
		idle(&b, r.Idle)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// ms formats d in milliseconds.
func ms(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

// atMost is the verdict for a figure that must not exceed target.
func atMost(v, target float64, unit string) string {
	if v <= target {
		return "met"
	}
	return fmt.Sprintf("**missed** by %.3g %s (%.2f×)", v-target, unit, v/target)
}

// atLeast is the verdict for a figure that must reach target.
func atLeast(v, target float64, unit string) string {
	if v >= target {
		return "met"
	}
	return fmt.Sprintf("**missed** by %.4g %s (%.0f %% of it)", target-v, unit, 100*v/target)
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func targets(b *strings.Builder, r Results) {
	fmt.Fprintf(b, "### Targets (issue 7)\n\n| figure | target | measured | verdict |\n|---|---|---|---|\n")
	row := func(figure, target, measured, verdict string) {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", figure, target, measured, verdict)
	}
	if l := r.Latency; l != nil {
		shape := fmt.Sprintf("%d req/s, upstream %s", l.Config.Shape.Rate, l.Config.UpstreamLatency)
		hop, _ := l.Figure(phase.Hop)
		for _, sys := range []string{phase.LLMQ, phase.LLMQProcess} {
			f, ok := l.Figure(sys)
			if !ok {
				continue
			}
			ratio := l.Ratio
			if sys == phase.LLMQProcess {
				ratio = l.RatioProcesses
			}
			row(fmt.Sprintf("added p50 vs direct, %s, %s", shape, sys), "≤ 1.0 ms", ms(f.AddedP50), atMost(msf(f.AddedP50), 1, "ms"))
			row(fmt.Sprintf("added p99 vs direct, %s, %s", shape, sys), "≤ 5 ms", ms(f.AddedP99), atMost(msf(f.AddedP99), 5, "ms"))
			row(fmt.Sprintf("added p50 ÷ hop's added p50 (%s), %s", ms(hop.AddedP50), sys), "≤ 2.5×", fmt.Sprintf("%.2f×", ratio), atMost(ratio, 2.5, "×"))
		}
		for _, sys := range []string{phase.LLMQProcess, phase.LLMQ} {
			if f, ok := l.Figure(sys); ok {
				how := "gateway+NATS and worker processes, /proc utime+stime"
				if sys == phase.LLMQ {
					how = "in-process, getrusage minus the direct run's share"
				}
				row(fmt.Sprintf("CPU per request at %d req/s (%s)", l.Config.Shape.Rate, how), "≤ 0.8 ms", ms(f.CPUPerRequest), atMost(msf(f.CPUPerRequest), 0.8, "ms"))
			}
		}
	}
	if c := r.Closed; c != nil {
		for _, sys := range []string{phase.LLMQ, phase.LLMQProcess} {
			if f, ok := c.Figure(sys); ok {
				row(fmt.Sprintf("throughput, upstream %s, closed loop %d clients, %s", c.Config.UpstreamLatency, c.Config.Shape.Clients, sys),
					"≥ 5,000 req/s", fmt.Sprintf("%.0f req/s", f.Throughput), atLeast(f.Throughput, 5000, "req/s"))
			}
		}
	}
	if p := r.Priority; p != nil {
		row(fmt.Sprintf("band 0 p99 queue wait, %d slots, upstream %s, %d req/s offered, %s", p.Config.Slots, p.Config.UpstreamLatency, p.Config.Rate, p.Config.Duration),
			"≤ 120 ms", ms(p.High.QueueP99), atMost(msf(p.High.QueueP99), 120, "ms"))
		verdict := "met"
		if p.High.Unserved+p.High.Failed > 0 {
			verdict = "**missed**: band 0 requests were left queued or failed"
		}
		row("band 9 takes the whole backlog", "band 0 all served",
			fmt.Sprintf("band 0: %d/%d served, %d queued at the end; band 9: %d/%d served, %d queued at the end",
				p.High.Served, p.High.Sent, p.High.Unserved, p.Low.Served, p.Low.Sent, p.Low.Unserved), verdict)
		row("priority inversions", "0", fmt.Sprint(p.Inversions), atMost(float64(p.Inversions), 0, "inversions"))
	}
	if m := r.Memory; m != nil {
		above := phase.MB(int64(m.Full) - int64(m.Idle))
		after := phase.MB(int64(m.Drained) - int64(m.Idle))
		row(fmt.Sprintf("%d requests waiting: heap above idle", m.Waiting), "≤ 150 MB (for 10,000)", fmt.Sprintf("%.1f MB", above),
			atMost(above*10000/float64(max(m.Waiting, 1)), 150, "MB (scaled to 10,000)"))
		returned := "—"
		if above > 0 {
			returned = fmt.Sprintf("%.1f MB (%.0f %% of the peak)", after, 100*after/above)
		}
		row("after the queue drained: heap above idle", "all returned (≤ 5 % of the peak)", returned, atMost(after, above/20, "MB"))
	}
	if i := r.Idle; i != nil {
		row(fmt.Sprintf("idle, %d slots over %d worker processes, %s", i.Config.Workers*i.Config.Slots, i.Config.Workers, i.Config.Duration),
			"< 1 % of one core", fmt.Sprintf("%.3f %%", i.Percent), atMost(i.Percent, 1, "%"))
	}
	row("external 3-node NATS cluster (R3)", "same table", "not measured by this harness", "—")
	b.WriteString("\n")
}

func compare(b *strings.Builder, title string, c *phase.CompareResult) {
	cfg := c.Config
	fmt.Fprintf(b, "### %s\n\n%s, upstream latency %s, %d llmq worker slots, median of %d run(s).\n\n",
		title, cfg.Shape, cfg.UpstreamLatency, cfg.Workers, cfg.Runs)
	fmt.Fprintf(b, "| system | requests | errors | throughput | p50 | p90 | p99 | added p50 | added p99 | queue wait p50 / p99 | CPU per request |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range c.Figures {
		added50, added99, queue := "—", "—", "—"
		if f.System != phase.Direct {
			added50, added99 = ms(f.AddedP50), ms(f.AddedP99)
		}
		if f.System == phase.LLMQ || f.System == phase.LLMQProcess {
			queue = fmt.Sprintf("%d / %d ms", f.QueueP50.Milliseconds(), f.QueueP99.Milliseconds())
		}
		fmt.Fprintf(b, "| %s | %d | %d | %.0f req/s | %s | %s | %s | %s | %s | %s | %s |\n",
			f.System, f.Summary.Count, f.Summary.Errors, f.Throughput, ms(f.Summary.P50), ms(f.Summary.P90), ms(f.Summary.P99),
			added50, added99, queue, ms(f.CPUPerRequest))
	}
	fmt.Fprintf(b, "\nllmq added p50 ÷ hop added p50: %.2f× (in-process)", c.Ratio)
	if f, ok := c.Figure(phase.LLMQProcess); ok {
		fmt.Fprintf(b, ", %.2f× (processes). CPU per request of %s by process:", c.RatioProcesses, phase.LLMQProcess)
		names := slices.Sorted(maps.Keys(f.ProcCPUPerRequest))
		for i, name := range names {
			sep := ","
			if i == 0 {
				sep = ""
			}
			fmt.Fprintf(b, "%s %s %s", sep, name, ms(f.ProcCPUPerRequest[name]))
		}
	}
	b.WriteString(". CPU per request of direct is the load generator's and fake upstream's.\n\n")
}

func priority(b *strings.Builder, p *phase.PriorityResult) {
	cfg := p.Config
	fmt.Fprintf(b, "### Priority separation\n\n%d worker slots, upstream %s (capacity %.0f req/s), %d req/s offered for %s (%.1f req/s sent), half priority 0 (band 0), half priority 9 (band 9); answers awaited %s after the last request, then the rest cancelled. Served %.1f req/s.\n\n",
		cfg.Slots, cfg.UpstreamLatency, p.Capacity, cfg.Rate, cfg.Duration, p.Offered, cfg.Grace, p.ServedRate)
	fmt.Fprintf(b, "| band | sent | served | still queued at the end | failed | queue wait p50 | p99 | max | latency p50 | p99 |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range []phase.Band{p.High, p.Low} {
		fmt.Fprintf(b, "| %d | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n", x.Band, x.Sent, x.Served, x.Unserved, x.Failed,
			ms(x.QueueP50), ms(x.QueueP99), ms(x.QueueMax), ms(x.LatencyP50), ms(x.LatencyP99))
	}
	fmt.Fprintf(b, "\nPriority inversions (band 9 picked up after a band 0 request was enqueued and before it was picked up, margin %s): %d.\n\n", cfg.Tolerance, p.Inversions)
}

func memory(b *strings.Builder, m *phase.MemoryResult) {
	fmt.Fprintf(b, "### Memory of waiting requests\n\nGateway with embedded NATS and no workers, in this process; %d requests from a child process (%d answered, %d failed), queue filled in %s, drained by %d worker slots in %s. HeapInuse after GC:\n\n",
		m.Hold.Sent, m.Hold.OK, m.Hold.Failed, m.FillTime.Round(time.Millisecond), m.Config.DrainSlots, m.DrainTime.Round(time.Millisecond))
	fmt.Fprintf(b, "| state | heap | above idle | per waiting request |\n|---|---|---|---|\n")
	per := func(v uint64) string {
		if m.Waiting == 0 {
			return "—"
		}
		return fmt.Sprintf("%.1f KB", float64(int64(v)-int64(m.Idle))/1024/float64(m.Waiting))
	}
	fmt.Fprintf(b, "| idle | %.1f MB | — | — |\n", phase.MB(int64(m.Idle)))
	fmt.Fprintf(b, "| %d waiting | %.1f MB | %.1f MB | %s |\n", m.Waiting, phase.MB(int64(m.Full)), phase.MB(int64(m.Full)-int64(m.Idle)), per(m.Full))
	fmt.Fprintf(b, "| drained | %.1f MB | %.1f MB | — |\n", phase.MB(int64(m.Drained)), phase.MB(int64(m.Drained)-int64(m.Idle)))
	fmt.Fprintf(b, "\n%d more goroutines while the requests waited.\n\n", m.Goroutines)
}

func idle(b *strings.Builder, i *phase.IdleResult) {
	fmt.Fprintf(b, "### Idle\n\nGateway (embedded NATS, no workers of its own) and %d worker processes (app.RunWorker, own NATS connection each) × %d slots, nothing queued: %s CPU in %s = %.3f %% of one core.\n\n",
		i.Config.Workers, i.Config.Slots, i.CPU.Round(time.Millisecond), i.Wall.Round(time.Millisecond), i.Percent)
}
