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
}

// IdleResult is the idle phase's outcome.
type IdleResult struct {
	Config IdleConfig
	Wall   time.Duration
	CPU    time.Duration // this process: gateway, NATS and workers
	// Percent is CPU / Wall in percent of one core.
	Percent float64
}

// Idle measures the CPU a gateway and idle workers use with nothing queued.
func Idle(ctx context.Context, env Env, cfg IdleConfig) (_ *IdleResult, err error) {
	fake := fakeupstream.New(fakeupstream.Options{})
	defer fake.Close()
	po, err := env.processOptions("idle", system.Config{UpstreamURL: fake.URL, QueueTimeout: 10 * time.Minute})
	if err != nil {
		return nil, err
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
	env.logf("idle: gateway and %d workers × %d slots, nothing queued, measuring %s", cfg.Workers, cfg.Slots, cfg.Duration)
	cpu0, err := cputime.Self()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := sleep(ctx, cfg.Duration); err != nil {
		return nil, err
	}
	cpu1, err := cputime.Self()
	if err != nil {
		return nil, err
	}
	res := &IdleResult{Config: cfg, Wall: time.Since(start), CPU: cpu1 - cpu0}
	res.Percent = 100 * res.CPU.Seconds() / res.Wall.Seconds()
	env.logf("idle: %s CPU in %s = %.2f %% of one core", res.CPU, res.Wall.Round(time.Millisecond), res.Percent)
	return res, nil
}
