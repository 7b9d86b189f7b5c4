package phase

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"runtime/pprof"
	"slices"
	"time"

	"github.com/llmq/llmq/bench/internal/cputime"
	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/natscount"
	"github.com/llmq/llmq/bench/internal/stats"
	"github.com/llmq/llmq/bench/internal/system"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// Names of the systems a comparison measures.
const (
	Direct      = "direct"         // the fake upstream itself
	Hop         = "hop"            // a plain Go HTTP forwarding hop in front of it
	LLMQ        = "llmq"           // the gateway in this process: embedded NATS and workers
	LLMQProcess = "llmq-processes" // gateway (embedded NATS) and worker as two processes
	LLMQR3      = "llmq-r3"        // gateway and worker processes on a 3-node NATS cluster, replicas 3
)

// llmqSystems are the systems that are llmq, in the order they are measured.
var llmqSystems = []string{LLMQ, LLMQProcess, LLMQR3}

// IsLLMQ reports whether system is one of llmq's (it has a queue wait).
func IsLLMQ(system string) bool { return slices.Contains(llmqSystems, system) }

// CompareConfig configures a comparison of the systems under one load.
type CompareConfig struct {
	Shape load.Shape
	// Runs is how often every system is measured; figures are medians.
	Runs int
	// Warmup is a load of the same shape, not measured, sent to every
	// system before the first run.
	Warmup time.Duration
	// UpstreamLatency is the fake upstream's answer delay.
	UpstreamLatency time.Duration
	// Workers is the number of llmq worker slots.
	Workers int
	// Processes adds LLMQProcess (needs Env.BinDir).
	Processes bool
	// R3 adds LLMQR3 (needs Env.BinDir and Env.NodeCmd): the same two
	// processes on a fresh 3-node NATS cluster (three more processes).
	R3 bool
	// CPUProfile, when set, is where a CPU profile of this process during
	// the first run of LLMQ is written.
	CPUProfile string
}

// Measure is one system under load once.
type Measure struct {
	System  string
	Summary stats.Summary
	// QueueP50 and QueueP99 are percentiles of the gateway's x-llmq-queue-ms
	// (llmq only): the time from enqueue to pickup by a worker.
	QueueP50, QueueP99, QueueMax time.Duration
	Wall                         time.Duration // from the first request sent to the last answer
	// SelfCPU is this process's CPU time during the attack.
	SelfCPU time.Duration
	// ProcCPU is that of each of the system's own processes, by name
	// (LLMQProcess and LLMQR3 only).
	ProcCPU map[string]time.Duration
	// Msgs are the messages its NATS server(s) counted during the attack
	// and MsgSettle after it (llmq systems only; see natscount).
	Msgs *natscount.Counts
}

// procCPU is the sum of m.ProcCPU.
func (m Measure) procCPU() time.Duration {
	var sum time.Duration
	for _, d := range m.ProcCPU {
		sum += d
	}
	return sum
}

// Figures are one system's results, derived from a run or the medians over
// runs.
type Figures struct {
	System     string
	Summary    stats.Summary
	Throughput float64 // successful requests per second
	// AddedP50 and AddedP99 are the system's p50 and p99 minus Direct's.
	AddedP50, AddedP99 time.Duration
	// QueueP50 and QueueP99 are as in Measure.
	QueueP50, QueueP99 time.Duration
	// CPUPerRequest is the system's own CPU time per request. For Direct
	// it is the load generator's and the fake upstream's; for the
	// in-process systems it is this process's CPU per request minus
	// Direct's; for the systems with processes of their own (LLMQProcess,
	// LLMQR3) it is those processes': gateway, worker and NATS nodes.
	CPUPerRequest time.Duration
	// ProcCPUPerRequest splits CPUPerRequest by process (the systems with
	// processes of their own only).
	ProcCPUPerRequest map[string]time.Duration
	// MsgsPerRequest are Measure.Msgs divided by the requests served (llmq
	// systems only, else nil).
	MsgsPerRequest *natscount.PerRequest
}

// CompareResult is a comparison's outcome.
type CompareResult struct {
	Config CompareConfig
	Runs   [][]Measure
	// Figures are the medians over the runs of each figure, in system order.
	Figures []Figures
	// Ratios are, per llmq system measured, the median over runs of its
	// AddedP50 / Hop's AddedP50.
	Ratios map[string]float64
}

// Figure returns the figures of system, or false.
func (r *CompareResult) Figure(system string) (Figures, bool) {
	for _, f := range r.Figures {
		if f.System == system {
			return f, true
		}
	}
	return Figures{}, false
}

// sut is one system under test during a comparison.
type sut struct {
	name   string
	url    string
	client *http.Client
	procs  []system.Proc // its own processes; none when it runs in this one
	// natsMonitors are its NATS servers' monitoring URLs (llmq only).
	natsMonitors []string
}

// Compare measures the fake upstream directly, a plain hop in front of it and
// llmq in front of it, under the same load, cfg.Runs times, interleaved.
func Compare(ctx context.Context, env Env, name string, cfg CompareConfig) (_ *CompareResult, err error) {
	if cfg.Runs < 1 {
		return nil, errors.New("runs must be at least 1")
	}
	if (cfg.Processes || cfg.R3) && env.BinDir == "" {
		return nil, errors.New("the gateway and worker binaries were not built")
	}
	// closers stop what was started, last first, whatever happens.
	var closers []func() error
	defer func() {
		for i := len(closers) - 1; i >= 0; i-- {
			err = errors.Join(err, closers[i]())
		}
	}()
	fake := fakeupstream.New(fakeupstream.Options{Latency: cfg.UpstreamLatency})
	defer fake.Close()
	hop, err := system.StartHop(fake.URL)
	if err != nil {
		return nil, err
	}
	closers = append(closers, hop.Close)
	sysCfg := system.Config{UpstreamURL: fake.URL, QueueTimeout: 5 * time.Minute}
	po, err := env.processOptions(name, sysCfg)
	if err != nil {
		return nil, err
	}
	gw, err := system.StartGateway(ctx, po, cfg.Workers)
	if err != nil {
		return nil, fmt.Errorf("start the gateway: %w", err)
	}
	closers = append(closers, gw.Close)

	conns := 1024
	if cfg.Shape.Rate <= 0 {
		conns = cfg.Shape.Clients
	}
	newSUT := func(name, base string, procs []system.Proc, natsMonitors []string) sut {
		return sut{name: name, url: system.ChatURL(base), client: load.NewClient(conns, time.Minute), procs: procs, natsMonitors: natsMonitors}
	}
	suts := []sut{newSUT(Direct, fake.URL, nil, nil), newSUT(Hop, hop.URL, nil, nil), newSUT(LLMQ, gw.URL, nil, gw.NATSMonitors)}
	if cfg.Processes {
		po := po
		po.DataDir += "-processes"
		ext, err := system.StartExternal(ctx, env.BinDir, po, cfg.Workers)
		if err != nil {
			return nil, fmt.Errorf("start the gateway and worker processes: %w", err)
		}
		closers = append(closers, ext.Close)
		suts = append(suts, newSUT(LLMQProcess, ext.URL, ext.Procs(), ext.NATSMonitors))
	}
	if cfg.R3 {
		po, nodes, closeNATS, err := env.natsFor(ctx, name, true, sysCfg)
		if err != nil {
			return nil, err
		}
		closers = append(closers, closeNATS)
		ext, err := system.StartExternal(ctx, env.BinDir, po, cfg.Workers)
		if err != nil {
			return nil, fmt.Errorf("start the gateway and worker processes on the 3-node cluster: %w", err)
		}
		closers = append(closers, ext.Close)
		suts = append(suts, newSUT(LLMQR3, ext.URL, append(ext.Procs(), nodes...), ext.NATSMonitors))
	}
	for _, s := range suts {
		defer s.client.CloseIdleConnections()
	}

	if cfg.Warmup > 0 {
		warm := cfg.Shape
		warm.Duration = cfg.Warmup
		for _, s := range suts {
			env.logf("%s: warm-up %s: %s", name, s.name, warm)
			if _, err := measure(ctx, s, warm, fake, ""); err != nil {
				return nil, err
			}
		}
	}
	res := &CompareResult{Config: cfg}
	for run := range cfg.Runs {
		var ms []Measure
		for _, s := range suts {
			profile := ""
			if run == 0 && s.name == LLMQ {
				profile = cfg.CPUProfile
			}
			m, err := measure(ctx, s, cfg.Shape, fake, profile)
			if err != nil {
				return nil, err
			}
			env.logf("%s: run %d/%d %-15s n=%d errors=%d p50=%s p90=%s p99=%s max=%s queue p50=%s p99=%s max=%s cpu=%s",
				name, run+1, cfg.Runs, s.name, m.Summary.Count, m.Summary.Errors,
				m.Summary.P50.Round(time.Microsecond), m.Summary.P90.Round(time.Microsecond), m.Summary.P99.Round(time.Microsecond), m.Summary.Max.Round(time.Microsecond),
				m.QueueP50, m.QueueP99, m.QueueMax, (m.SelfCPU + m.procCPU()).Round(time.Millisecond))
			ms = append(ms, m)
		}
		res.Runs = append(res.Runs, ms)
	}
	res.Figures, res.Ratios = medians(res.Runs)
	return res, nil
}

// MsgSettle is how long after an attack its NATS messages are still counted:
// a worker acknowledges a request after its answer is sent.
const MsgSettle = 250 * time.Millisecond

// measure sends shape to s and returns the summary, the CPU time spent and
// the NATS messages counted.
func measure(ctx context.Context, s sut, shape load.Shape, fake *fakeupstream.Server, profile string) (Measure, error) {
	m := Measure{System: s.name}
	targets := []load.Target{{Tag: s.name, URL: s.url, Body: system.ChatBody(-1)}}
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return m, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return m, err
		}
		defer pprof.StopCPUProfile()
	}
	self0, err := cputime.Self()
	if err != nil {
		return m, err
	}
	proc0, err := procTimes(s.procs)
	if err != nil {
		return m, err
	}
	mon := &http.Client{Timeout: 10 * time.Second}
	defer mon.CloseIdleConnections()
	var msgs0 natscount.Counts
	if len(s.natsMonitors) > 0 {
		if msgs0, err = natscount.Read(ctx, mon, s.natsMonitors); err != nil {
			return m, fmt.Errorf("%s: %w", s.name, err)
		}
	}
	samples, err := load.Attack(ctx, s.client, targets, shape)
	if err != nil {
		return m, fmt.Errorf("%s: %w", s.name, err)
	}
	self1, err := cputime.Self()
	if err != nil {
		return m, err
	}
	m.SelfCPU = self1 - self0
	proc1, err := procTimes(s.procs)
	if err != nil {
		return m, err
	}
	if len(s.procs) > 0 {
		m.ProcCPU, _ = cpuSince(proc0, proc1)
	}
	if len(s.natsMonitors) > 0 {
		select {
		case <-time.After(MsgSettle):
		case <-ctx.Done():
			return m, ctx.Err()
		}
		msgs1, err := natscount.Read(ctx, mon, s.natsMonitors)
		if err != nil {
			return m, fmt.Errorf("%s: %w", s.name, err)
		}
		d := msgs1.Sub(msgs0)
		m.Msgs = &d
	}
	fake.Reset() // forget the recorded requests: memory stays flat
	var ok, queue []time.Duration
	var first, last time.Time
	for _, smp := range samples {
		if smp.OK() {
			ok = append(ok, smp.Latency)
			if smp.QueueMs >= 0 {
				queue = append(queue, time.Duration(smp.QueueMs)*time.Millisecond)
			}
		}
		if first.IsZero() || smp.Sent.Before(first) {
			first = smp.Sent
		}
		if end := smp.Sent.Add(smp.Latency); end.After(last) {
			last = end
		}
	}
	m.Summary = stats.Summarize(ok, len(samples)-len(ok))
	slices.Sort(queue)
	m.QueueP50, m.QueueP99 = stats.Percentile(queue, 50), stats.Percentile(queue, 99)
	if len(queue) > 0 {
		m.QueueMax = queue[len(queue)-1]
	}
	m.Wall = last.Sub(first)
	return m, nil
}

// cpuSince returns each process's CPU time from t0 to t1 (procTimes
// readings), by name, and their sum.
func cpuSince(t0, t1 map[string]time.Duration) (byName map[string]time.Duration, total time.Duration) {
	byName = make(map[string]time.Duration, len(t1))
	for name, t := range t1 {
		byName[name] = t - t0[name]
		total += byName[name]
	}
	return byName, total
}

// procTimes reads the CPU time of each process so far, by name.
func procTimes(procs []system.Proc) (map[string]time.Duration, error) {
	out := make(map[string]time.Duration, len(procs))
	for _, p := range procs {
		t, err := cputime.Proc(p.PID)
		if err != nil {
			return nil, fmt.Errorf("CPU time of the %s process: %w", p.Name, err)
		}
		out[p.Name] = t
	}
	return out, nil
}

// derive computes one run's figures, and each llmq system's added p50 over
// Hop's (none when Hop added nothing).
func derive(run []Measure) (fs []Figures, ratios map[string]float64) {
	perReq := func(d time.Duration, n int) time.Duration {
		if n == 0 {
			return 0
		}
		return d / time.Duration(n)
	}
	var direct Measure
	for _, m := range run {
		if m.System == Direct {
			direct = m
		}
	}
	directCPU := perReq(direct.SelfCPU, direct.Summary.Count)
	for _, m := range run {
		f := Figures{System: m.System, Summary: m.Summary, QueueP50: m.QueueP50, QueueP99: m.QueueP99}
		if m.Wall > 0 {
			f.Throughput = float64(m.Summary.Count-m.Summary.Errors) / m.Wall.Seconds()
		}
		switch {
		case m.System == Direct:
			f.CPUPerRequest = directCPU
		case m.ProcCPU != nil: // its own processes
			f.CPUPerRequest = perReq(m.procCPU(), m.Summary.Count)
			f.ProcCPUPerRequest = make(map[string]time.Duration, len(m.ProcCPU))
			for name, d := range m.ProcCPU {
				f.ProcCPUPerRequest[name] = perReq(d, m.Summary.Count)
			}
		default:
			f.CPUPerRequest = perReq(m.SelfCPU, m.Summary.Count) - directCPU
		}
		if served := m.Summary.Count - m.Summary.Errors; m.Msgs != nil && served > 0 {
			p := m.Msgs.Per(served)
			f.MsgsPerRequest = &p
		}
		if m.System != Direct {
			f.AddedP50 = m.Summary.P50 - direct.Summary.P50
			f.AddedP99 = m.Summary.P99 - direct.Summary.P99
		}
		fs = append(fs, f)
	}
	var hop Figures
	for _, f := range fs {
		if f.System == Hop {
			hop = f
		}
	}
	ratios = make(map[string]float64)
	for _, f := range fs {
		if hop.AddedP50 > 0 && IsLLMQ(f.System) {
			ratios[f.System] = float64(f.AddedP50) / float64(hop.AddedP50)
		}
	}
	return fs, ratios
}

// medians derives every run's figures and returns, per system, the median of
// each figure over the runs, and the median of each ratio.
func medians(runs [][]Measure) ([]Figures, map[string]float64) {
	var per [][]Figures
	ratioRuns := make(map[string][]float64)
	for _, run := range runs {
		fs, ratios := derive(run)
		per = append(per, fs)
		for sys, r := range ratios {
			ratioRuns[sys] = append(ratioRuns[sys], r)
		}
	}
	ratios := make(map[string]float64, len(ratioRuns))
	for sys, rs := range ratioRuns {
		ratios[sys] = stats.Median(rs)
	}
	out := make([]Figures, len(per[0]))
	for i := range out {
		col := func(get func(Figures) time.Duration) time.Duration {
			var xs []time.Duration
			for _, fs := range per {
				xs = append(xs, get(fs[i]))
			}
			return stats.Median(xs)
		}
		colInt := func(get func(Figures) int) int {
			return int(col(func(f Figures) time.Duration { return time.Duration(get(f)) }))
		}
		var tps []float64
		for _, fs := range per {
			tps = append(tps, fs[i].Throughput)
		}
		var parts map[string]time.Duration
		for name := range per[0][i].ProcCPUPerRequest {
			if parts == nil {
				parts = make(map[string]time.Duration)
			}
			parts[name] = col(func(f Figures) time.Duration { return f.ProcCPUPerRequest[name] })
		}
		out[i] = Figures{
			MsgsPerRequest:    medianMsgs(per, i),
			ProcCPUPerRequest: parts,
			System:            per[0][i].System,
			Summary: stats.Summary{
				Count:  colInt(func(f Figures) int { return f.Summary.Count }),
				Errors: colInt(func(f Figures) int { return f.Summary.Errors }),
				P50:    col(func(f Figures) time.Duration { return f.Summary.P50 }),
				P90:    col(func(f Figures) time.Duration { return f.Summary.P90 }),
				P99:    col(func(f Figures) time.Duration { return f.Summary.P99 }),
				Max:    col(func(f Figures) time.Duration { return f.Summary.Max }),
			},
			Throughput:    stats.Median(tps),
			AddedP50:      col(func(f Figures) time.Duration { return f.AddedP50 }),
			AddedP99:      col(func(f Figures) time.Duration { return f.AddedP99 }),
			QueueP50:      col(func(f Figures) time.Duration { return f.QueueP50 }),
			QueueP99:      col(func(f Figures) time.Duration { return f.QueueP99 }),
			CPUPerRequest: col(func(f Figures) time.Duration { return f.CPUPerRequest }),
		}
	}
	return out, ratios
}

// medianMsgs is the median over runs of each of system i's messages per
// request, or nil when a run lacks them.
func medianMsgs(per [][]Figures, i int) *natscount.PerRequest {
	var runs []*natscount.PerRequest
	for _, fs := range per {
		if fs[i].MsgsPerRequest == nil {
			return nil
		}
		runs = append(runs, fs[i].MsgsPerRequest)
	}
	rate := func(get func(*natscount.PerRequest) natscount.Rate) natscount.Rate {
		var in, out []float64
		for _, p := range runs {
			in, out = append(in, get(p).In), append(out, get(p).Out)
		}
		return natscount.Rate{In: stats.Median(in), Out: stats.Median(out)}
	}
	m := &natscount.PerRequest{
		All:     rate(func(p *natscount.PerRequest) natscount.Rate { return p.All }),
		Clients: rate(func(p *natscount.PerRequest) natscount.Rate { return p.Clients }),
		Routes:  rate(func(p *natscount.PerRequest) natscount.Rate { return p.Routes }),
		ByConn:  make(map[string]natscount.Rate),
	}
	for name := range runs[0].ByConn {
		m.ByConn[name] = rate(func(p *natscount.PerRequest) natscount.Rate { return p.ByConn[name] })
	}
	m.BySub = make(map[string]float64)
	for _, p := range runs {
		for class := range p.BySub {
			if _, done := m.BySub[class]; done {
				continue
			}
			var xs []float64
			for _, q := range runs {
				xs = append(xs, q.BySub[class])
			}
			m.BySub[class] = stats.Median(xs)
		}
	}
	return m
}
