// Package report prints the benchmark's results as markdown: the targets of
// issue 7 with the measured figure and a verdict, then one table per phase.
package report

import (
	"cmp"
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
	// The runs of the phases with the 3-node NATS cluster (-r3); the
	// latency and closed phases hold it as one more system.
	PriorityR3 *phase.PriorityResult
	MemoryR3   *phase.MemoryResult
	IdleR3     *phase.IdleResult
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
	for _, p := range measured(r.Priority, r.PriorityR3) {
		priority(&b, p)
	}
	for _, m := range measured(r.Memory, r.MemoryR3) {
		memory(&b, m)
	}
	for _, i := range measured(r.Idle, r.IdleR3) {
		idle(&b, i)
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
	if target <= 0 {
		return fmt.Sprintf("**missed** by %.3g %s", v-target, unit)
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

// rowFunc writes one row of the targets table.
type rowFunc func(figure, target, measured, verdict string)

func targets(b *strings.Builder, r Results) {
	fmt.Fprintf(b, "### Targets (issue 7)\n\n| figure | target | measured | verdict |\n|---|---|---|---|\n")
	row := func(figure, target, measured, verdict string) {
		fmt.Fprintf(b, "| %s | %s | %s | %s |\n", figure, target, measured, verdict)
	}
	if r.Latency != nil {
		latencyRows(row, r.Latency)
	}
	if r.Closed != nil {
		closedRows(row, r.Closed)
	}
	for _, p := range measured(r.Priority, r.PriorityR3) {
		priorityRows(row, p)
	}
	for _, m := range measured(r.Memory, r.MemoryR3) {
		memoryRows(row, m)
	}
	for _, i := range measured(r.Idle, r.IdleR3) {
		idleRows(row, i)
	}
	if !r.r3Measured() {
		row("external 3-node NATS cluster (R3)", "same table", "not measured in this run (-r3=false)", "—")
	}
	b.WriteString("\n")
}

// measured returns the results of the phase runs that ran (the embedded
// one and the R3 one), leaving out those that did not (nil).
func measured[T any](results ...*T) []*T {
	return slices.DeleteFunc(results, func(r *T) bool { return r == nil })
}

// r3Measured reports whether any figure with the 3-node cluster is in r.
func (r Results) r3Measured() bool {
	for _, c := range []*phase.CompareResult{r.Latency, r.Closed} {
		if c != nil {
			if _, ok := c.Figure(phase.LLMQR3); ok {
				return true
			}
		}
	}
	return r.IdleR3 != nil || r.MemoryR3 != nil || r.PriorityR3 != nil
}

// r3Label is what the figures of a phase's R3 run add to their name.
func r3Label(r3 bool) string {
	if r3 {
		return ", 3-node NATS cluster (R3)"
	}
	return ""
}

// cpuHow says how a system's CPU per request is counted.
func cpuHow(system string) string {
	switch system {
	case phase.LLMQProcess:
		return "gateway+NATS and worker processes, /proc utime+stime"
	case phase.LLMQR3:
		return "gateway, worker and 3 NATS processes, /proc utime+stime"
	default:
		return "in-process, getrusage minus the direct run's share"
	}
}

func latencyRows(row rowFunc, l *phase.CompareResult) {
	shape := fmt.Sprintf("%d req/s, upstream %s", l.Config.Shape.Rate, l.Config.UpstreamLatency)
	hop, _ := l.Figure(phase.Hop)
	for _, f := range l.Figures {
		if !phase.IsLLMQ(f.System) {
			continue
		}
		sys := f.System
		row(fmt.Sprintf("added p50 vs direct, %s, %s", shape, sys), "≤ 1.0 ms", ms(f.AddedP50), atMost(msf(f.AddedP50), 1, "ms"))
		row(fmt.Sprintf("added p99 vs direct, %s, %s", shape, sys), "≤ 5 ms", ms(f.AddedP99), atMost(msf(f.AddedP99), 5, "ms"))
		name := fmt.Sprintf("added p50 ÷ hop's added p50 (%s), %s", ms(hop.AddedP50), sys)
		if ratio, ok := l.Ratios[sys]; ok {
			row(name, "≤ 2.5×", fmt.Sprintf("%.2f×", ratio), atMost(ratio, 2.5, "×"))
		} else {
			row(name, "≤ 2.5×", "— (the hop added nothing)", "—")
		}
	}
	for _, f := range l.Figures {
		if phase.IsLLMQ(f.System) {
			row(fmt.Sprintf("CPU per request at %d req/s, %s (%s)", l.Config.Shape.Rate, f.System, cpuHow(f.System)),
				"≤ 0.8 ms", ms(f.CPUPerRequest), atMost(msf(f.CPUPerRequest), 0.8, "ms"))
		}
	}
}

func closedRows(row rowFunc, c *phase.CompareResult) {
	for _, f := range c.Figures {
		if phase.IsLLMQ(f.System) {
			row(fmt.Sprintf("throughput, upstream %s, closed loop %d clients, %s", c.Config.UpstreamLatency, c.Config.Shape.Clients, f.System),
				"≥ 5,000 req/s", fmt.Sprintf("%.0f req/s", f.Throughput), atLeast(f.Throughput, 5000, "req/s"))
		}
	}
}

func priorityRows(row rowFunc, p *phase.PriorityResult) {
	label := r3Label(p.Config.R3)
	row(fmt.Sprintf("band 0 p99 queue wait, %d slots, upstream %s, %d req/s offered, %s%s", p.Config.Slots, p.Config.UpstreamLatency, p.Config.Rate, p.Config.Duration, label),
		"≤ 120 ms", ms(p.High.QueueP99), atMost(msf(p.High.QueueP99), 120, "ms"))
	verdict := "met"
	if p.High.Unserved+p.High.Failed > 0 {
		verdict = "**missed**: band 0 requests were left queued or failed"
	}
	row("band 9 takes the whole backlog"+label, "band 0 all served",
		fmt.Sprintf("band 0: %d/%d served, %d queued at the end; band 9: %d/%d served, %d queued at the end",
			p.High.Served, p.High.Sent, p.High.Unserved, p.Low.Served, p.Low.Sent, p.Low.Unserved), verdict)
	row("priority inversions"+label, "0", fmt.Sprint(p.Inversions), atMost(float64(p.Inversions), 0, "inversions"))
}

func memoryRows(row rowFunc, m *phase.MemoryResult) {
	label := r3Label(m.Config.R3)
	if m.Config.R3 {
		label += ", gateway only"
	}
	heap, stacks, above := m.Full.Above(m.Idle)
	_, _, after := m.Drained.Above(m.Idle)
	row(fmt.Sprintf("%d requests waiting: heap and stacks above idle%s", m.Waiting, label), "≤ 150 MB (for 10,000)",
		fmt.Sprintf("%.1f MB (heap %.1f, stacks %.1f)", above, heap, stacks),
		atMost(above*10000/float64(max(m.Waiting, 1)), 150, "MB (scaled to 10,000)"))
	returned := "—"
	if above > 0 {
		returned = fmt.Sprintf("%.1f MB (%.0f %% of the peak)", after, 100*after/above)
	}
	row("after the queue drained: heap and stacks above idle"+label, "all returned (≤ 5 % of the peak)", returned, atMost(after, above/20, "MB"))
}

func idleRows(row rowFunc, i *phase.IdleResult) {
	measured := fmt.Sprintf("%.3f %%", i.Percent)
	if i.Config.R3 {
		measured += fmt.Sprintf(" (the bare cluster alone: %.3f %%)", i.BarePercent)
	}
	row(fmt.Sprintf("idle, %d slots over %d worker processes, %s%s", i.Config.Workers*i.Config.Slots, i.Config.Workers, i.Config.Duration, r3Label(i.Config.R3)),
		"< 1 % of one core", measured, atMost(i.Percent, 1, "%"))
}

func compare(b *strings.Builder, title string, c *phase.CompareResult) {
	cfg := c.Config
	fmt.Fprintf(b, "### %s\n\n%s, upstream latency %s, %d llmq worker slots, median of %d run(s).",
		title, cfg.Shape, cfg.UpstreamLatency, cfg.Workers, cfg.Runs)
	if _, ok := c.Figure(phase.LLMQR3); ok {
		fmt.Fprintf(b, " %s: the gateway and worker processes on a 3-node NATS cluster (three nats-server processes on 127.0.0.1, replicas 3).", phase.LLMQR3)
	}
	fmt.Fprintf(b, "\n\n| system | requests | errors | throughput | p50 | p90 | p99 | added p50 | added p99 | queue wait p50 / p99 | CPU per request |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, f := range c.Figures {
		added50, added99, queue := "—", "—", "—"
		if f.System != phase.Direct {
			added50, added99 = ms(f.AddedP50), ms(f.AddedP99)
		}
		if phase.IsLLMQ(f.System) {
			queue = fmt.Sprintf("%d / %d ms", f.QueueP50.Milliseconds(), f.QueueP99.Milliseconds())
		}
		fmt.Fprintf(b, "| %s | %d | %d | %.0f req/s | %s | %s | %s | %s | %s | %s | %s |\n",
			f.System, f.Summary.Count, f.Summary.Errors, f.Throughput, ms(f.Summary.P50), ms(f.Summary.P90), ms(f.Summary.P99),
			added50, added99, queue, ms(f.CPUPerRequest))
	}
	var ratios, parts []string
	for _, f := range c.Figures {
		if r, ok := c.Ratios[f.System]; ok {
			ratios = append(ratios, fmt.Sprintf("%.2f× (%s)", r, f.System))
		}
		if len(f.ProcCPUPerRequest) > 0 {
			var byProc []string
			for _, name := range slices.Sorted(maps.Keys(f.ProcCPUPerRequest)) {
				byProc = append(byProc, name+" "+ms(f.ProcCPUPerRequest[name]))
			}
			parts = append(parts, f.System+": "+strings.Join(byProc, ", "))
		}
	}
	b.WriteString("\n")
	if len(ratios) > 0 {
		fmt.Fprintf(b, "llmq added p50 ÷ hop added p50: %s. ", strings.Join(ratios, ", "))
	}
	if len(parts) > 0 {
		fmt.Fprintf(b, "CPU per request by process: %s. ", strings.Join(parts, "; "))
	}
	b.WriteString("CPU per request of direct is the load generator's and fake upstream's.\n\n")
	natsMessages(b, c)
}

// natsMessages writes the table of NATS messages per request of the llmq
// systems that have the figure.
func natsMessages(b *strings.Builder, c *phase.CompareResult) {
	var rows []phase.Figures
	for _, f := range c.Figures {
		if f.MsgsPerRequest != nil {
			rows = append(rows, f)
		}
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(b, "NATS messages per request served, counted at the NATS server(s) from before a run to %s after it (varz in_msgs and out_msgs, summed over the nodes: in = received from a connection, out = delivered to one; JetStream storing a message or handling an API request or ack is one in and no out, its replies and deliveries to clients are out, its replication between nodes is on the routes; by connection: connz of the named client connections).\n\n", phase.MsgSettle)
	fmt.Fprintf(b, "| system | in | out | in + out | clients in / out | routes in / out | by connection (in / out) |\n|---|---|---|---|---|---|---|\n")
	for _, f := range rows {
		m := f.MsgsPerRequest
		var conns []string
		for _, name := range slices.Sorted(maps.Keys(m.ByConn)) {
			r := m.ByConn[name]
			if name == "" {
				name = "(unnamed)"
			}
			conns = append(conns, fmt.Sprintf("%s %.2f / %.2f", name, r.In, r.Out))
		}
		fmt.Fprintf(b, "| %s | %.2f | %.2f | %.2f | %.2f / %.2f | %.2f / %.2f | %s |\n", f.System, m.All.In, m.All.Out, m.All.Sum(),
			m.Clients.In, m.Clients.Out, m.Routes.In, m.Routes.Out, strings.Join(conns, "; "))
	}
	fmt.Fprintf(b, "\nMessages delivered per request, by subscription (subsz; owner, then subject with generated names as *; \"server\" is the NATS server's own: what clients send to JetStream, and on R3 the replication between nodes; `$JS.API.>` also receives every `$JS.API.CONSUMER.MSG.NEXT`; subscriptions closed during a run are missing):\n\n")
	for _, f := range rows {
		bySub := f.MsgsPerRequest.BySub
		classes := slices.SortedFunc(maps.Keys(bySub), func(a, b string) int {
			if c := cmp.Compare(bySub[b], bySub[a]); c != 0 {
				return c
			}
			return strings.Compare(a, b)
		})
		var parts []string
		for _, c := range classes {
			if bySub[c] >= 0.005 {
				parts = append(parts, fmt.Sprintf("`%s` %.2f", c, bySub[c]))
			}
		}
		fmt.Fprintf(b, "- %s: %s\n", f.System, strings.Join(parts, ", "))
	}
	b.WriteString("\n")
}

func priority(b *strings.Builder, p *phase.PriorityResult) {
	cfg := p.Config
	where := "Gateway with embedded NATS and its worker slots in this process"
	if cfg.R3 {
		where = "Gateway in this process on a 3-node NATS cluster (three nats-server processes, replicas 3), its worker slots an app.RunWorker beside it"
	}
	fmt.Fprintf(b, "### Priority separation%s\n\n%s; %d worker slots, upstream %s (capacity %.0f req/s), %d req/s offered for %s (%.1f req/s sent), half priority 0 (band 0), half priority 9 (band 9); answers awaited %s after the last request, then the rest cancelled. Served %.1f req/s.\n\n",
		r3Label(cfg.R3), where, cfg.Slots, cfg.UpstreamLatency, p.Capacity, cfg.Rate, cfg.Duration, p.Offered, cfg.Grace, p.ServedRate)
	fmt.Fprintf(b, "| band | sent | served | still queued at the end | failed | queue wait p50 | p99 | max | latency p50 | p99 |\n|---|---|---|---|---|---|---|---|---|---|\n")
	for _, x := range []phase.Band{p.High, p.Low} {
		fmt.Fprintf(b, "| %d | %d | %d | %d | %d | %s | %s | %s | %s | %s |\n", x.Band, x.Sent, x.Served, x.Unserved, x.Failed,
			ms(x.QueueP50), ms(x.QueueP99), ms(x.QueueMax), ms(x.LatencyP50), ms(x.LatencyP99))
	}
	fmt.Fprintf(b, "\nPriority inversions (band 9 picked up after a band 0 request was enqueued and before it was picked up, margin %s): %d.\n\n", cfg.Tolerance, p.Inversions)
}

func memory(b *strings.Builder, m *phase.MemoryResult) {
	where := "Gateway with embedded NATS and no workers, in this process"
	if m.Config.R3 {
		where = "Gateway with no workers, in this process, on a 3-node NATS cluster (replicas 3: the NATS servers and the stored requests are in three other processes, not in this heap)"
	}
	fmt.Fprintf(b, "### Memory of waiting requests%s\n\n%s; %d requests from a child process (%d answered, %d failed), queue filled in %s, drained by %d worker slots in %s. HeapInuse and StackInuse after GC:\n\n",
		r3Label(m.Config.R3), where, m.Hold.Sent, m.Hold.OK, m.Hold.Failed, m.FillTime.Round(time.Millisecond), m.Config.DrainSlots, m.DrainTime.Round(time.Millisecond))
	fmt.Fprintf(b, "| state | heap | stacks | heap and stacks | above idle: heap | stacks | total | total per waiting request |\n|---|---|---|---|---|---|---|---|\n")
	line := func(state string, v phase.Mem, per bool) {
		h, st, tot := v.Above(m.Idle)
		perReq := "—"
		if per && m.Waiting > 0 {
			perReq = fmt.Sprintf("%.1f KB", tot*1024/float64(m.Waiting))
		}
		fmt.Fprintf(b, "| %s | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %.1f MB | %s |\n", state,
			phase.MB(int64(v.Heap)), phase.MB(int64(v.Stacks)), phase.MB(int64(v.Total())), h, st, tot, perReq)
	}
	line("idle", m.Idle, false)
	line(fmt.Sprintf("%d waiting", m.Waiting), m.Full, true)
	line("drained", m.Drained, false)
	fmt.Fprintf(b, "\n%d more goroutines while the requests waited.\n\n", m.Goroutines)
}

func idle(b *strings.Builder, i *phase.IdleResult) {
	gateway, counted := "Gateway (embedded NATS, no workers of its own)", ""
	if i.Config.R3 {
		gateway = "Gateway on a 3-node NATS cluster (three nats-server processes, replicas 3)"
		var nodes []string
		for _, name := range slices.Sorted(maps.Keys(i.NodeCPU)) {
			nodes = append(nodes, name+" "+i.NodeCPU[name].Round(time.Millisecond).String())
		}
		counted = fmt.Sprintf(", counting this process (%s) and the NATS processes (%s)", i.SelfCPU.Round(time.Millisecond), strings.Join(nodes, ", "))
	}
	fmt.Fprintf(b, "### Idle%s\n\n%s and %d worker processes (app.RunWorker, own NATS connection each) × %d slots, nothing queued: %s CPU in %s = %.3f %% of one core%s.",
		r3Label(i.Config.R3), gateway, i.Config.Workers, i.Config.Slots, i.CPU.Round(time.Millisecond), i.Wall.Round(time.Millisecond), i.Percent, counted)
	if i.Config.R3 {
		fmt.Fprintf(b, " Baseline, measured first on the same three nodes for the same time before llmq started (no client, stream or consumer): %.3f %% of one core; with llmq %.3f %% more.",
			i.BarePercent, i.Percent-i.BarePercent)
	}
	b.WriteString("\n\n")
}
