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
		Dir:      dir,
		LogOut:   os.Stderr,
		Progress: os.Stderr,
		HoldCmd: func(ctx context.Context, url string, n, rate int) *exec.Cmd {
			return exec.CommandContext(ctx, exe, holdCommand, "-url", url, "-n", strconv.Itoa(n), "-rate", strconv.Itoa(rate))
		},
	}
	if !o.verbose {
		env.LogOut = io.Discard
	}
	if o.processes && (o.has("latency") || o.has("closed")) {
		env.BinDir = filepath.Join(dir, "bin")
		fmt.Fprintln(env.Progress, "building cmd/gateway and cmd/worker for the separate-process measurement")
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
	start := time.Now()
	if o.has("idle") {
		if res.Idle, err = phase.Idle(ctx, env, o.idle); err != nil {
			return fmt.Errorf("idle phase: %w", err)
		}
	}
	if o.has("memory") {
		if res.Memory, err = phase.Memory(ctx, env, o.memory); err != nil {
			return fmt.Errorf("memory phase: %w", err)
		}
	}
	if o.has("latency") {
		if res.Latency, err = phase.Compare(ctx, env, "latency", o.latency); err != nil {
			return fmt.Errorf("latency phase: %w", err)
		}
	}
	if o.has("closed") {
		if res.Closed, err = phase.Compare(ctx, env, "closed", o.closed); err != nil {
			return fmt.Errorf("closed phase: %w", err)
		}
	}
	if o.has("priority") {
		if res.Priority, err = phase.Priority(ctx, env, o.priority); err != nil {
			return fmt.Errorf("priority phase: %w", err)
		}
	}
	fmt.Fprintf(env.Progress, "done in %s\n", time.Since(start).Round(time.Second))
	return nil
}
