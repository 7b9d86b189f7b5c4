package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/worker"
)

// RunWorker runs a worker process until ctx ends: it connects to
// env.NATSURL, makes sure the stream and consumers exist, and serves
// env.WorkerSlots requests at a time. On cancellation it stops taking work and
// finishes the calls it holds.
func RunWorker(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) error {
	log := NewLogger(env, logOut).With("component", "worker")
	s, err := load(env, lookup, log)
	if err != nil {
		return err
	}
	if env.NATSURL == "" {
		return fmt.Errorf("LLMQ_NATS_URL is required for a worker process (the gateway logs its embedded server's URL at start)")
	}
	nc, err := connect(env, "llmq-worker", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := ensure(ctx, nc, s.spec); err != nil {
		return fmt.Errorf("set up JetStream: %w", err)
	}
	set, err := s.openLimits(ctx, nc)
	if err != nil {
		return err
	}
	if set != nil {
		defer set.Close()
	}
	ps, err := s.openPauses(ctx, nc)
	if err != nil {
		return err
	}
	defer ps.Close()
	met, metricsHandler := newRegistry()
	pool, err := worker.New(nc, worker.Options{
		Paused: ps.Paused, PausesChanged: ps.Changed(),
		Metrics:  met,
		Subjects: s.subjects, Bands: s.bands.Count(), Groups: s.cfg.Groups(), Slots: env.WorkerSlots,
		Router: s.newRouter(providerHTTPClient(), set), LimitsChanged: changed(set), Logger: log, AckWait: s.spec.AckWait,
		DrainTimeout: env.ShutdownTimeout, Policy: s.policy(),
		DefaultCompletionTokens: s.cfg.LLMQ.DefaultCompletionTokens,
	})
	if err != nil {
		return err
	}
	grp, gctx := errgroup.WithContext(ctx)
	if env.MetricsListen != "" {
		ln, err := net.Listen("tcp", env.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics listener on %s: %w", env.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", metricsHandler)
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		grp.Go(func() error {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		grp.Go(func() error {
			<-gctx.Done()
			return srv.Close()
		})
		log.Info("metrics listening", "addr", ln.Addr().String())
	}
	grp.Go(func() error { return pool.Run(gctx) })
	return grp.Wait()
}
