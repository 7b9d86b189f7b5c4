package system

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Build compiles cmd/gateway and cmd/worker into dir and returns dir. It runs
// "go build", so the working directory must be inside the llmq module.
func Build(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"github.com/llmq/llmq/cmd/gateway", "github.com/llmq/llmq/cmd/worker")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build the gateway and worker (run llmqbench from inside the llmq module, or pass -processes=false): %w\n%s", err, out.Bytes())
	}
	return nil
}

// External is an llmq gateway and a worker running as two processes: the
// gateway embeds the NATS server (with no workers of its own) and the worker
// connects to it over TCP, as a deployment with separate workers would.
type External struct {
	// URL is the gateway's base URL (ending in /v1).
	URL string
	// NATSURL is the gateway's embedded NATS server.
	NATSURL string
	procs   []*proc // worker first: Close stops them in this order
}

// startTimeout bounds how long a process may take to log that it is ready.
const startTimeout = 30 * time.Second

// StartExternal starts binDir/gateway and binDir/worker (built by Build) with
// o's config and store, and slots worker slots.
func StartExternal(ctx context.Context, binDir string, o ProcessOptions, slots int) (*External, error) {
	common := []string{
		"LLMQ_CONFIG=" + o.Config, "LLMQ_LOG_FORMAT=json", "LLMQ_LOG_LEVEL=info",
		"LLMQ_SHUTDOWN_TIMEOUT=5s", "LLMQ_NATS_URL=",
	}
	gw, err := startProc(ctx, filepath.Join(binDir, "gateway"), append(common,
		"LLMQ_LISTEN=127.0.0.1:0", "LLMQ_DATA_DIR="+o.DataDir,
		"LLMQ_EMBEDDED_NATS_LISTEN=127.0.0.1:0", "LLMQ_EMBEDDED_WORKERS=0"), "gateway listening", o.LogOut)
	if err != nil {
		return nil, err
	}
	e := &External{URL: "http://" + gw.ready["addr"] + "/v1", NATSURL: gw.ready["nats"], procs: []*proc{gw}}
	wk, err := startProc(ctx, filepath.Join(binDir, "worker"), append(common,
		"LLMQ_NATS_URL="+e.NATSURL, "LLMQ_WORKER_SLOTS="+strconv.Itoa(slots)), "worker slots started", o.LogOut)
	if err != nil {
		return nil, errors.Join(err, e.Close())
	}
	e.procs = []*proc{wk, gw}
	return e, nil
}

// Proc names one started process.
type Proc struct {
	Name string // "gateway" (with the embedded NATS server) or "worker"
	PID  int
}

// Procs returns the processes, gateway first, for CPU accounting.
func (e *External) Procs() []Proc {
	var out []Proc
	for i := len(e.procs) - 1; i >= 0; i-- {
		p := e.procs[i]
		out = append(out, Proc{Name: p.name, PID: p.cmd.Process.Pid})
	}
	return out
}

// Close stops the processes (SIGTERM, then SIGKILL after 10 s) and waits for them.
func (e *External) Close() error {
	var errs []error
	for _, p := range e.procs {
		errs = append(errs, p.stop())
	}
	return errors.Join(errs...)
}

// proc is one started process.
type proc struct {
	name  string
	cmd   *exec.Cmd
	ready map[string]string // the fields of its ready log line
	done  chan error
}

// startProc starts path with env added to this process's environment and
// waits until it logs a JSON line with msg readyMsg. Warnings and errors it
// logs are copied to logOut.
func startProc(ctx context.Context, path string, env []string, readyMsg string, logOut io.Writer) (*proc, error) {
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	ready := make(chan map[string]string, 1)
	cmd.Stderr = &logLines{out: logOut, on: func(m map[string]string) {
		if m["msg"] == readyMsg {
			select {
			case ready <- m:
			default:
			}
		}
	}}
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{name: filepath.Base(path), cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t := time.NewTimer(startTimeout)
	defer t.Stop()
	select {
	case p.ready = <-ready:
		return p, nil
	case err := <-p.done:
		return nil, fmt.Errorf("%s exited before it was ready: %v", filepath.Base(path), err)
	case <-t.C:
		return nil, errors.Join(fmt.Errorf("%s not ready after %s", filepath.Base(path), startTimeout), p.stop())
	case <-ctx.Done():
		return nil, errors.Join(ctx.Err(), p.stop())
	}
}

// stop sends SIGTERM, and SIGKILL if the process is still there 10 s later.
func (p *proc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case err := <-p.done:
		return err
	case <-t.C:
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("%s did not stop within 10 s after SIGTERM: killed: %v", filepath.Base(p.cmd.Path), <-p.done)
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
