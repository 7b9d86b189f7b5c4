package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/llmq/llmq/internal/app"
	llmqconfig "github.com/llmq/llmq/internal/config"
)

// workerCommand is the hidden subcommand that makes this program a worker
// process: app.RunWorker with LLMQ_* settings from the environment, as
// cmd/worker runs it.
const workerCommand = "worker"

func runWorker(ctx context.Context) error {
	var env llmqconfig.Env
	if err := envconfig.Process("LLMQ", &env); err != nil {
		return err
	}
	return app.RunWorker(ctx, env, os.LookupEnv, os.Stderr)
}

// readyLine is what a worker process logs once its slots run.
const readyLine = "worker slots started"

// workerProc is a started worker process.
type workerProc struct {
	cmd  *exec.Cmd
	done chan error
}

// startWorker starts exe as a worker process with slots slots and waits
// until it serves. Its log goes to log when verbose (warnings and errors only).
func startWorker(ctx context.Context, exe, cfgPath, natsURL string, slots int, verbose bool) (*workerProc, error) {
	cmd := exec.Command(exe, workerCommand)
	cmd.Env = append(os.Environ(),
		"LLMQ_CONFIG="+cfgPath,
		"LLMQ_NATS_URL="+natsURL,
		"LLMQ_WORKER_SLOTS="+strconv.Itoa(slots),
		"LLMQ_LOG_LEVEL=info",
		"LLMQ_LOG_FORMAT=text",
		"LLMQ_SHUTDOWN_TIMEOUT=5s",
		"LLMQ_METRICS_LISTEN=",
	)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start a worker process: %w", err)
	}
	w := &workerProc{cmd: cmd, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		signalled := false
		for sc.Scan() {
			line := sc.Text()
			if !signalled && strings.Contains(line, readyLine) {
				close(ready)
				signalled = true
			}
			if verbose && (strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") || !strings.Contains(line, "level=")) {
				fmt.Fprintf(os.Stderr, "worker %d: %s\n", cmd.Process.Pid, line)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		w.done <- cmd.Wait()
	}()
	select {
	case <-ready:
		return w, nil
	case err := <-w.done:
		return nil, fmt.Errorf("the worker process exited before serving: %v", err)
	case <-time.After(30 * time.Second):
		_ = w.stop()
		return nil, errors.New("the worker process did not start serving within 30 s")
	case <-ctx.Done():
		_ = w.stop()
		return nil, ctx.Err()
	}
}

// stop ends the process: SIGTERM, then SIGKILL after 15 s.
func (w *workerProc) stop() error {
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-w.done:
		return exitErr(err)
	case <-time.After(15 * time.Second):
		_ = w.cmd.Process.Kill()
		return fmt.Errorf("worker process %d did not stop within 15 s of SIGTERM: %v", w.cmd.Process.Pid, <-w.done)
	}
}

// exitErr ignores the exit caused by our own SIGTERM.
func exitErr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
			return nil
		}
	}
	return err
}
