package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/llmq/llmq/bench/internal/phase"
	"github.com/llmq/llmq/bench/internal/report"
	"github.com/llmq/llmq/bench/internal/system"
)

// run parses the flags and runs the selected phases in the order of allPhases.
func run(ctx context.Context, args []string) (err error) {
	o, err := parseOptions(args)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	dir, err := os.MkdirTemp("", "llmqbench-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dir)) }()

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	env := phase.Env{
		Dir:       dir,
		LogOut:    os.Stderr,
		Progress:  os.Stderr,
		ParkAfter: o.parkAfter,
		HoldCmd: func(ctx context.Context, url string, n, rate int) *exec.Cmd {
			return exec.CommandContext(ctx, exe, holdCommand, "-url", url, "-n", strconv.Itoa(n), "-rate", strconv.Itoa(rate))
		},
		NodeCmd: func(args []string) *exec.Cmd {
			return exec.Command(exe, append([]string{natsNodeCommand}, args...)...)
		},
	}
	if !o.verbose {
		env.LogOut = io.Discard
	}
	if (o.processes || o.r3) && (o.has("latency") || o.has("closed")) {
		env.BinDir = filepath.Join(dir, "bin")
		fmt.Fprintln(env.Progress, "building cmd/gateway and cmd/worker for the separate-process measurements")
		if err := system.Build(ctx, env.BinDir); err != nil {
			return err
		}
	}

	res := report.Results{Short: o.short, Machine: machine(), LoadBefore: loadAverage()}
	defer func() {
		res.LoadAfter = loadAverage()
		if werr := report.Write(os.Stdout, res); werr != nil {
			err = errors.Join(err, werr)
		}
	}()
	// The steps in order; the R3 run of a phase follows its embedded run.
	steps := []struct {
		name string
		on   bool
		run  func() error
	}{
		{"idle", o.has("idle"), func() (err error) { res.Idle, err = phase.Idle(ctx, env, o.idle); return err }},
		{"idle (R3)", o.has("idle") && o.r3, func() (err error) { res.IdleR3, err = phase.Idle(ctx, env, o.idleR3()); return err }},
		{"memory", o.has("memory"), func() (err error) { res.Memory, err = phase.Memory(ctx, env, o.memory); return err }},
		{"memory (R3)", o.has("memory") && o.r3, func() (err error) { res.MemoryR3, err = phase.Memory(ctx, env, o.memoryR3()); return err }},
		{"latency", o.has("latency"), func() (err error) { res.Latency, err = phase.Compare(ctx, env, "latency", o.latency); return err }},
		{"closed", o.has("closed"), func() (err error) { res.Closed, err = phase.Compare(ctx, env, "closed", o.closed); return err }},
		{"priority", o.has("priority"), func() (err error) { res.Priority, err = phase.Priority(ctx, env, o.priority); return err }},
		{"priority (R3)", o.has("priority") && o.r3, func() (err error) {
			res.PriorityR3, err = phase.Priority(ctx, env, o.priorityR3())
			return err
		}},
	}
	start := time.Now()
	for _, s := range steps {
		if !s.on {
			continue
		}
		if err := s.run(); err != nil {
			return fmt.Errorf("%s phase: %w", s.name, err)
		}
	}
	fmt.Fprintf(env.Progress, "done in %s\n", time.Since(start).Round(time.Second))
	return nil
}
