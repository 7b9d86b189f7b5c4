package system

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

// Build compiles cmd/gateway and cmd/worker into dir and returns dir. It runs
// "go build", so the working directory must be inside the llmq module.
func Build(ctx context.Context, dir string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", dir+string(filepath.Separator),
		"github.com/llmq/llmq/cmd/gateway", "github.com/llmq/llmq/cmd/worker")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build the gateway and worker (run llmqbench from inside the llmq module, or pass -processes=false -r3=false): %w\n%s", err, out.Bytes())
	}
	return nil
}

// External is an llmq gateway and a worker running as two processes. With no
// NATS URL the gateway embeds the NATS server (with no workers of its own)
// and the worker connects to it over TCP, as a deployment with separate
// workers would; with one, both connect to that NATS server or cluster.
type External struct {
	// URL is the gateway's base URL (ending in /v1).
	URL string
	// NATSURL is the NATS URL the worker uses: the gateway's embedded
	// server's, or ProcessOptions.NATSURL.
	NATSURL string
	// NATSMonitors are the monitoring base URLs of the NATS server(s): the
	// embedded server's, or ProcessOptions.NATSMonitors.
	NATSMonitors []string
	procs        []*proc // worker first: Close stops them in this order
}

// StartExternal starts binDir/gateway and binDir/worker (built by Build) with
// o's config and NATS (o.NATSURL, or an embedded server storing in
// o.DataDir), and slots worker slots.
func StartExternal(ctx context.Context, binDir string, o ProcessOptions, slots int) (*External, error) {
	common := []string{
		"LLMQ_CONFIG=" + o.Config, "LLMQ_LOG_FORMAT=json", "LLMQ_LOG_LEVEL=info",
		"LLMQ_SHUTDOWN_TIMEOUT=5s", "LLMQ_NATS_URL=" + o.NATSURL,
	}
	gw, err := startProc(ctx, "gateway", command(filepath.Join(binDir, "gateway"), append(common,
		"LLMQ_LISTEN=127.0.0.1:0", "LLMQ_DATA_DIR="+o.DataDir,
		"LLMQ_EMBEDDED_NATS_LISTEN=127.0.0.1:0", "LLMQ_EMBEDDED_NATS_MONITOR=127.0.0.1:0", "LLMQ_EMBEDDED_WORKERS=0", "LLMQ_PARK_AFTER="+o.ParkAfter.String())), "gateway listening", o.LogOut)
	if err != nil {
		return nil, err
	}
	e := &External{URL: "http://" + gw.fields["addr"] + "/v1", NATSURL: gw.fields["nats"], NATSMonitors: monitors(gw.fields["nats_monitor"], o), procs: []*proc{gw}}
	wk, err := startProc(ctx, "worker", command(filepath.Join(binDir, "worker"), append(common,
		"LLMQ_NATS_URL="+e.NATSURL, "LLMQ_WORKER_SLOTS="+strconv.Itoa(slots))), "worker slots started", o.LogOut)
	if err != nil {
		return nil, errors.Join(err, e.Close())
	}
	e.procs = []*proc{wk, gw}
	return e, nil
}

// command is path with env added to this process's environment.
func command(path string, env []string) *exec.Cmd {
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// Procs returns the processes, gateway first, for CPU accounting.
func (e *External) Procs() []Proc {
	var out []Proc
	for i := len(e.procs) - 1; i >= 0; i-- {
		out = append(out, Proc{Name: e.procs[i].name, PID: e.procs[i].pid()})
	}
	return out
}

// Close stops the processes (SIGTERM, then SIGKILL after a bound) and waits
// for them.
func (e *External) Close() error {
	var errs []error
	for _, p := range e.procs {
		errs = append(errs, p.stop())
	}
	return errors.Join(errs...)
}
