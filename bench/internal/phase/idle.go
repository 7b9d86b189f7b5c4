package phase

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/llmq/llmq/bench/internal/cputime"
	"github.com/llmq/llmq/bench/internal/system"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// IdleConfig configures the idle phase.
type IdleConfig struct {
	// Workers worker processes (app.RunWorker, each with its own NATS
	// connection) of Slots slots each wait on an empty queue for Duration.
	Workers, Slots int
	Duration       time.Duration
	// Settle is the time allowed to start up before measuring.
	Settle time.Duration
	// R3 keeps the queue in a fresh 3-node NATS cluster (replicas 3)
	// instead of the gateway's embedded server.
	R3 bool
}

// IdleResult is the idle phase's outcome.
type IdleResult struct {
	Config IdleConfig
	Wall   time.Duration
	// CPU is the total: this process (gateway, workers and, unless R3, the
	// NATS server) and, with R3, the cluster's nodes.
	CPU time.Duration
	// SelfCPU is this process's share; NodeCPU that of each cluster node,
	// by name (R3 only).
	SelfCPU time.Duration
	NodeCPU map[string]time.Duration
	// Percent is CPU / Wall in percent of one core.
	Percent float64
	// BarePercent is, with R3, the baseline measured first on the same
	// cluster for the same duration before llmq started: the three nodes'
	// CPU with no client, stream or consumer, in percent of one core.
	BarePercent float64
}

// Idle measures the CPU a gateway and idle workers use with nothing queued.
func Idle(ctx context.Context, env Env, cfg IdleConfig) (_ *IdleResult, err error) {
	fake := fakeupstream.New(fakeupstream.Options{})
	defer fake.Close()
	po, nodes, closeNATS, err := env.natsFor(ctx, "idle", cfg.R3, system.Config{UpstreamURL: fake.URL, QueueTimeout: 10 * time.Minute})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeNATS()) }()
	name := phaseName("idle", cfg.R3)
	var bare float64
	if cfg.R3 {
		if bare, err = bareCluster(ctx, env, name, nodes, cfg); err != nil {
			return nil, err
		}
	}
	gw, err := system.StartGateway(ctx, po, 0)
	if err != nil {
		return nil, fmt.Errorf("start the gateway: %w", err)
	}
	defer func() { err = errors.Join(err, gw.Close()) }()
	for range cfg.Workers {
		w := system.StartWorker(ctx, po, gw.NATSURL, cfg.Slots)
		defer func() { err = errors.Join(err, w.Close()) }()
	}
	if err := sleep(ctx, cfg.Settle); err != nil {
		return nil, err
	}
	// Collect garbage and hand free memory back to the OS now, so that the
	// runtime's background scavenging of garbage left by start-up (or by
	// earlier phases) does not count as idle CPU.
	debug.FreeOSMemory()
	env.logf("%s: gateway and %d workers × %d slots, nothing queued, measuring %s", name, cfg.Workers, cfg.Slots, cfg.Duration)
	self0, err := cputime.Self()
	if err != nil {
		return nil, err
	}
	nodes0, err := procTimes(nodes)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := sleep(ctx, cfg.Duration); err != nil {
		return nil, err
	}
	self1, err := cputime.Self()
	if err != nil {
		return nil, err
	}
	nodes1, err := procTimes(nodes)
	if err != nil {
		return nil, err
	}
	res := &IdleResult{Config: cfg, Wall: time.Since(start), SelfCPU: self1 - self0, BarePercent: bare}
	res.CPU = res.SelfCPU
	if cfg.R3 {
		var nodeCPU time.Duration
		res.NodeCPU, nodeCPU = cpuSince(nodes0, nodes1)
		res.CPU += nodeCPU
	}
	res.Percent = 100 * res.CPU.Seconds() / res.Wall.Seconds()
	env.logf("%s: %s CPU in %s = %.2f %% of one core (this process %s)", name, res.CPU, res.Wall.Round(time.Millisecond), res.Percent, res.SelfCPU)
	return res, nil
}

// bareCluster measures the CPU of the cluster's nodes, with nothing of llmq
// started yet, over cfg.Settle plus cfg.Duration, and returns the part
// after the settle in percent of one core: what the three servers cost on
// their own.
func bareCluster(ctx context.Context, env Env, name string, nodes []system.Proc, cfg IdleConfig) (float64, error) {
	if err := sleep(ctx, cfg.Settle); err != nil {
		return 0, err
	}
	env.logf("%s: the bare cluster (no llmq yet), measuring %s", name, cfg.Duration)
	t0, err := procTimes(nodes)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	if err := sleep(ctx, cfg.Duration); err != nil {
		return 0, err
	}
	t1, err := procTimes(nodes)
	if err != nil {
		return 0, err
	}
	_, cpu := cpuSince(t0, t1)
	pct := 100 * cpu.Seconds() / time.Since(start).Seconds()
	env.logf("%s: the bare cluster used %s CPU = %.2f %% of one core", name, cpu, pct)
	return pct, nil
}
