package system

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

// ProcessOptions are the settings shared by in-process gateways and workers.
type ProcessOptions struct {
	Config  string    // config file path
	DataDir string    // JetStream store of an embedded server
	LogOut  io.Writer // where the process logs (errors only)
	// NATSURL is an external NATS server or cluster (comma-separated
	// URLs); empty = the gateway embeds the NATS server.
	NATSURL string
	// ParkAfter is the gateway's LLMQ_PARK_AFTER.
	ParkAfter time.Duration
	// NATSMonitors are the HTTP monitoring base URLs of the servers at
	// NATSURL, when known (natscount reads them).
	NATSMonitors []string
}

func (o ProcessOptions) env() config.Env {
	return config.Env{
		Config:              o.Config,
		NATSURL:             o.NATSURL,
		Listen:              "127.0.0.1:0",
		DataDir:             o.DataDir,
		EmbeddedNATSListen:  "127.0.0.1:0",
		EmbeddedNATSMonitor: "127.0.0.1:0",
		WorkerSlots:         1,
		LogLevel:            "error",
		LogFormat:           "text",
		MaxBodyBytes:        786432,
		ShutdownTimeout:     5 * time.Second,
		ParkAfter:           o.ParkAfter,
		PublishTimeout:      10 * time.Second, // LLMQ_PUBLISH_TIMEOUT's default
	}
}

func noEnv(string) (string, bool) { return "", false }

// monitors are the monitoring URLs of a gateway's NATS: that of its embedded
// server (embedded, when it has one), or o.NATSMonitors.
func monitors(embedded string, o ProcessOptions) []string {
	if o.NATSURL != "" {
		return o.NATSMonitors
	}
	if embedded == "" {
		return nil
	}
	return []string{embedded}
}

// Gateway is an llmq gateway running in this process.
type Gateway struct {
	// URL is the base URL (ending in /v1).
	URL string
	// NATSURL is the embedded NATS server's client URL.
	NATSURL string
	// NATSMonitors are the monitoring base URLs of its NATS server(s): the
	// embedded server's, or ProcessOptions.NATSMonitors.
	NATSMonitors []string
	g            *app.Gateway
	stop         context.CancelFunc
	worker       *Worker // the worker slots when NATS is external
}

// StartGateway starts app.StartGateway and workers worker slots in this
// process. With o.NATSURL empty the gateway embeds the NATS server (TCP
// listener on a free loopback port) and runs the slots itself
// (EmbeddedWorkers); otherwise it connects to o.NATSURL, and the slots are an
// app.RunWorker beside it with its own connection (the gateway runs workers
// only with an embedded server).
func StartGateway(ctx context.Context, o ProcessOptions, workers int) (*Gateway, error) {
	env := o.env()
	env.EmbeddedWorkers = workers
	ctx, stop := context.WithCancel(ctx)
	g, err := app.StartGateway(ctx, env, noEnv, o.LogOut)
	if err != nil {
		stop()
		return nil, err
	}
	gw := &Gateway{URL: "http://" + g.Addr().String() + "/v1", NATSURL: g.NATSURL(), NATSMonitors: monitors(g.NATSMonitorURL(), o), g: g, stop: stop}
	if o.NATSURL != "" && workers > 0 {
		gw.worker = StartWorker(ctx, o, o.NATSURL, workers)
	}
	return gw, nil
}

// Close stops the worker slots of an external-NATS gateway, shuts the
// gateway down and waits for both.
func (g *Gateway) Close() error {
	var err error
	if g.worker != nil {
		err = g.worker.Close()
	}
	g.stop()
	return errors.Join(err, g.g.Wait())
}

// Worker is an llmq worker (app.RunWorker) running in this process with its
// own NATS connection.
type Worker struct {
	stop context.CancelFunc
	done chan error
}

// StartWorker starts app.RunWorker with slots worker slots against natsURL.
// It returns at once; a failure to start shows in Close.
func StartWorker(ctx context.Context, o ProcessOptions, natsURL string, slots int) *Worker {
	env := o.env()
	env.NATSURL = natsURL
	env.WorkerSlots = slots
	ctx, stop := context.WithCancel(ctx)
	w := &Worker{stop: stop, done: make(chan error, 1)}
	go func() { w.done <- app.RunWorker(ctx, env, noEnv, o.LogOut) }()
	return w
}

// Close stops the worker and waits for it.
func (w *Worker) Close() error {
	w.stop()
	return <-w.done
}
