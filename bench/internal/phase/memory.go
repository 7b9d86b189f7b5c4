package phase

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/system"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/pkg/messages"
)

// MemoryConfig configures the memory phase.
type MemoryConfig struct {
	// Requests is how many requests wait in the queue at once, sent at
	// Rate per second.
	Requests int
	Rate     int
	// DrainSlots is the number of worker slots started to drain the queue.
	DrainSlots int
	// Timeout bounds each wait: for the queue to fill, and to drain.
	Timeout time.Duration
	// HeapProfile, when set, is the prefix of two heap profiles written
	// with the queue full and after it drained: <prefix>-waiting.pprof and
	// <prefix>-drained.pprof.
	HeapProfile string
	// R3 keeps the queue in a fresh 3-node NATS cluster (replicas 3): the
	// NATS servers and the stored messages are then not in this process.
	R3 bool
}

// MemoryResult is the memory phase's outcome. Memory figures are this
// process's HeapInuse and StackInuse after two garbage collections (a
// waiting request holds heap objects and goroutine stacks); the process
// holds the gateway and its embedded NATS server, while the waiting clients
// are a child process.
type MemoryResult struct {
	Config              MemoryConfig
	Waiting             int // messages in the stream when the full heap was read
	Idle, Full, Drained Mem
	Hold                load.HoldResult
	FillTime, DrainTime time.Duration
	// Goroutines is how many more goroutines ran with the queue full than idle.
	Goroutines int
}

// Memory measures what requests waiting in the queue cost the gateway: a
// gateway with no workers takes cfg.Requests requests from a child process
// and holds them; then an in-process worker (app.RunWorker) drains them.
func Memory(ctx context.Context, env Env, cfg MemoryConfig) (_ *MemoryResult, err error) {
	if env.HoldCmd == nil {
		return nil, errors.New("memory: no command for the waiting clients")
	}
	fake := fakeupstream.New(fakeupstream.Options{})
	defer fake.Close()
	po, _, closeNATS, err := env.natsFor(ctx, "memory", cfg.R3, system.Config{UpstreamURL: fake.URL, QueueTimeout: 24 * time.Hour})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeNATS()) }()
	name := phaseName("memory", cfg.R3)
	gw, err := system.StartGateway(ctx, po, 0)
	if err != nil {
		return nil, fmt.Errorf("start the gateway: %w", err)
	}
	defer func() { err = errors.Join(err, gw.Close()) }()
	depth, closeDepth, err := streamDepth(gw.NATSURL)
	if err != nil {
		return nil, err
	}
	defer closeDepth()

	res := &MemoryResult{Config: cfg}
	if err := sleep(ctx, time.Second); err != nil {
		return nil, err
	}
	res.Idle = readMem()
	goroutines0 := numGoroutine()
	env.logf("%s: idle heap and stacks %.1f MB; sending %d requests that wait (no workers)", name, MB(int64(res.Idle.Total())), cfg.Requests)

	cctx, cancel := context.WithTimeout(ctx, 3*cfg.Timeout)
	defer cancel()
	child := env.HoldCmd(cctx, system.ChatURL(gw.URL), cfg.Requests, cfg.Rate)
	var out bytes.Buffer
	child.Stdout, child.Stderr = &out, env.LogOut
	if err := child.Start(); err != nil {
		return nil, fmt.Errorf("start the waiting clients: %w", err)
	}
	childDone := make(chan struct{})
	var childErr error
	go func() { childErr = child.Wait(); close(childDone) }()
	defer func() { cancel(); <-childDone }()

	start := time.Now()
	if err := waitDepth(ctx, depth, func(n uint64) bool { return n >= uint64(cfg.Requests) }, cfg.Timeout, childDone); err != nil {
		return nil, fmt.Errorf("filling the queue: %w", err)
	}
	res.FillTime = time.Since(start)
	if err := sleep(ctx, 500*time.Millisecond); err != nil {
		return nil, err
	}
	n, _ := depth()
	res.Waiting = int(n)
	res.Full = readMem()
	res.Goroutines = numGoroutine() - goroutines0
	if err := writeHeapProfile(cfg.HeapProfile, "waiting"); err != nil {
		return nil, err
	}
	env.logf("%s: %d waiting, heap and stacks %.1f MB; starting %d worker slots to drain", name, n, MB(int64(res.Full.Total())), cfg.DrainSlots)

	start = time.Now()
	w := system.StartWorker(ctx, po, gw.NATSURL, cfg.DrainSlots)
	drainErr := waitDepth(ctx, depth, func(n uint64) bool { return n == 0 }, cfg.Timeout, nil)
	if drainErr == nil {
		t := time.NewTimer(cfg.Timeout)
		select {
		case <-childDone:
			drainErr = childErr
		case <-t.C:
			drainErr = errors.New("the waiting clients did not get all their answers in time")
		}
		t.Stop()
	}
	res.DrainTime = time.Since(start)
	if err := errors.Join(drainErr, w.Close()); err != nil {
		return nil, fmt.Errorf("draining the queue: %w", err)
	}
	if err := json.Unmarshal(out.Bytes(), &res.Hold); err != nil {
		return nil, fmt.Errorf("the waiting clients' report %q: %w", out.Bytes(), err)
	}
	fake.Reset()
	if err := sleep(ctx, time.Second); err != nil {
		return nil, err
	}
	res.Drained = readMem()
	if err := writeHeapProfile(cfg.HeapProfile, "drained"); err != nil {
		return nil, err
	}
	env.logf("%s: drained in %s (%d ok, %d failed), heap and stacks %.1f MB",
		name, res.DrainTime.Round(time.Millisecond), res.Hold.OK, res.Hold.Failed, MB(int64(res.Drained.Total())))
	return res, nil
}

// streamDepth connects to the NATS server at url and returns a function that
// reads the number of messages in the request stream.
func streamDepth(url string) (func() (uint64, error), func(), error) {
	nc, err := nats.Connect(url, nats.Name("llmqbench"))
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	subjects, err := messages.NewSubjects("llmq")
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return func() (uint64, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, subjects.RequestStream())
		if err != nil {
			return 0, err
		}
		return s.CachedInfo().State.Msgs, nil
	}, nc.Close, nil
}

// waitDepth polls depth until done holds, for at most timeout. A value on
// exited closing (the child ended) stops the wait with an error.
func waitDepth(ctx context.Context, depth func() (uint64, error), done func(uint64) bool, timeout time.Duration, exited <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := depth()
		if err != nil {
			return err
		}
		if done(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s with %d messages in the stream", timeout, n)
		}
		select {
		case <-exited:
			return fmt.Errorf("the waiting clients exited early with %d messages in the stream", n)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// writeHeapProfile writes a heap profile to <prefix>-<state>.pprof, or
// nothing when prefix is empty.
func writeHeapProfile(prefix, state string) error {
	if prefix == "" {
		return nil
	}
	f, err := os.Create(prefix + "-" + state + ".pprof")
	if err != nil {
		return err
	}
	return errors.Join(pprof.WriteHeapProfile(f), f.Close())
}
