package app

import (
	"context"
	"fmt"
	"io"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/worker"
)

// RunWorker runs a worker process until ctx ends: it connects to
// env.NATSURL, makes sure the stream and consumers exist, and serves
// env.WorkerSlots requests at a time. On cancellation it stops taking work and
// finishes the calls it holds.
func RunWorker(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) error {
	log := NewLogger(env, logOut).With("component", "worker")
	if env.NATSURL == "" {
		return fmt.Errorf("LLMQ_NATS_URL is required for a worker process (the gateway prints its embedded server's URL at start)")
	}
	s, err := load(env, lookup, log)
	if err != nil {
		return err
	}
	nc, err := connect(env.NATSURL, "llmq-worker", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := ensure(ctx, nc, s.spec); err != nil {
		return fmt.Errorf("set up JetStream: %w", err)
	}
	pool, err := worker.New(nc, worker.Options{
		Subjects: s.subjects, Bands: s.bands.Count(), Groups: s.cfg.Groups(), Slots: env.WorkerSlots,
		Router: s.newRouter(providerHTTPClient()), Logger: log, AckWait: s.spec.AckWait,
		DrainTimeout: env.ShutdownTimeout, Policy: s.policy(),
	})
	if err != nil {
		return err
	}
	return pool.Run(ctx)
}
