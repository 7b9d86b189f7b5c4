package system

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Bounds on a started process: how long it may take to log that it is
// ready, and how long it has to exit after SIGTERM before it gets SIGKILL.
const (
	startTimeout = 30 * time.Second
	stopTimeout  = 10 * time.Second
)

// Proc names one started process.
type Proc struct {
	Name string // "gateway", "worker", "nats-1", …
	PID  int
}

// proc is one started process.
type proc struct {
	name   string
	cmd    *exec.Cmd
	ready  chan map[string]string // receives the fields of its ready log line
	done   chan error             // receives cmd.Wait's result once
	fields map[string]string      // the ready line, once awaitReady returned
}

// startProc starts cmd as name and waits until it logs readyMsg (see spawn
// and awaitReady).
func startProc(ctx context.Context, name string, cmd *exec.Cmd, readyMsg string, logOut io.Writer) (*proc, error) {
	p, err := spawn(name, cmd, readyMsg, logOut)
	if err != nil {
		return nil, err
	}
	if err := p.awaitReady(ctx, time.Now().Add(startTimeout)); err != nil {
		return nil, errors.Join(err, p.stop())
	}
	return p, nil
}

// spawn starts cmd, whose stderr must be a JSON log (one object a line),
// and returns at once. Its first line with msg readyMsg goes to p.ready;
// warnings and errors it logs are copied to logOut.
func spawn(name string, cmd *exec.Cmd, readyMsg string, logOut io.Writer) (*proc, error) {
	p := &proc{name: name, cmd: cmd, ready: make(chan map[string]string, 1), done: make(chan error, 1)}
	cmd.Stderr = &logLines{out: logOut, on: func(m map[string]string) {
		if m["msg"] == readyMsg {
			select {
			case p.ready <- m:
			default:
			}
		}
	}}
	cmd.WaitDelay = stopTimeout
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// awaitReady waits until the process logs its ready line, exits, the
// deadline passes or ctx ends. It leaves stopping the process to the caller.
func (p *proc) awaitReady(ctx context.Context, deadline time.Time) error {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case p.fields = <-p.ready:
		return nil
	case err := <-p.done:
		p.done <- err // for stop
		return fmt.Errorf("%s exited before it was ready: %v", p.name, err)
	case <-t.C:
		return fmt.Errorf("%s not ready in time (start-up bound %s)", p.name, startTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pid is the process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// stop sends SIGTERM and waits for the process to exit (see awaitExit).
func (p *proc) stop() error {
	p.terminate()
	return p.awaitExit()
}

// terminate sends SIGTERM.
func (p *proc) terminate() { _ = p.cmd.Process.Signal(syscall.SIGTERM) }

// awaitExit waits up to stopTimeout for the process to exit, then kills it
// and waits for that. An exit after SIGTERM with status 0 is nil.
func (p *proc) awaitExit() error {
	t := time.NewTimer(stopTimeout)
	defer t.Stop()
	select {
	case err := <-p.done:
		return err
	case <-t.C:
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("%s did not stop within %s after SIGTERM: killed: %v", p.name, stopTimeout, <-p.done)
	}
}

// logLines reads a process's JSON log: each line goes to on, decoded (only
// string fields), and lines at level WARN or ERROR are copied to out.
type logLines struct {
	out io.Writer
	on  func(map[string]string)
	mu  sync.Mutex
	buf []byte
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := l.buf[:i+1]
		var raw map[string]any
		if json.Unmarshal(line, &raw) != nil {
			_, _ = l.out.Write(line) // not a log line: a panic, say
		} else {
			m := make(map[string]string, len(raw))
			for k, v := range raw {
				if s, ok := v.(string); ok {
					m[k] = s
				}
			}
			l.on(m)
			if m["level"] == "WARN" || m["level"] == "ERROR" {
				_, _ = l.out.Write(line)
			}
		}
		l.buf = l.buf[i+1:]
	}
}
