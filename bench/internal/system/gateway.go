package system

import (
	"context"
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
}

func (o ProcessOptions) env() config.Env {
	return config.Env{
		Config:             o.Config,
		Listen:             "127.0.0.1:0",
		DataDir:            o.DataDir,
		EmbeddedNATSListen: "127.0.0.1:0",
		WorkerSlots:        1,
		LogLevel:           "error",
		LogFormat:          "text",
		MaxBodyBytes:       786432,
		ShutdownTimeout:    5 * time.Second,
	}
}

func noEnv(string) (string, bool) { return "", false }

// Gateway is an llmq gateway running in this process.
type Gateway struct {
	// URL is the base URL (ending in /v1).
	URL string
	// NATSURL is the embedded NATS server's client URL.
	NATSURL string
	g       *app.Gateway
	stop    context.CancelFunc
}

// StartGateway starts app.StartGateway with an embedded NATS server (TCP
// listener on a free loopback port) and workers in-process worker slots.
func StartGateway(ctx context.Context, o ProcessOptions, workers int) (*Gateway, error) {
	env := o.env()
	env.EmbeddedWorkers = workers
	ctx, stop := context.WithCancel(ctx)
	g, err := app.StartGateway(ctx, env, noEnv, o.LogOut)
	if err != nil {
		stop()
		return nil, err
	}
	return &Gateway{URL: "http://" + g.Addr().String() + "/v1", NATSURL: g.NATSURL(), g: g, stop: stop}, nil
}

// Close shuts the gateway down and waits for it.
func (g *Gateway) Close() error {
	g.stop()
	return g.g.Wait()
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
