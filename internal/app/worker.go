package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"log/slog"

	"golang.org/x/sync/errgroup"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/worker"
)

// RunWorker runs a worker process until ctx ends: it connects to
// env.NATSURL, makes sure the stream, consumers and limits bucket exist, and
// serves env.WorkerSlots requests at a time. Until NATS and JetStream answer
// (a cluster that is still forming, other processes creating the same
// streams) it waits, logging what for, and serves its metrics meanwhile;
// ctx ending then stops it cleanly. On cancellation it stops taking work
// and finishes the calls it holds.
func RunWorker(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) error {
	log := NewLogger(env, logOut).With("component", "worker")
	s, err := load(env, lookup, log)
	if err != nil {
		return err
	}
	if env.NATSURL == "" {
		return fmt.Errorf("LLMQ_NATS_URL is required for a worker process (the gateway logs its embedded server's URL at start)")
	}
	met, metricsHandler := newRegistry()
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
	grp.Go(func() error { return serveWorker(gctx, env, s, met, log) })
	return grp.Wait()
}

// serveWorker connects, sets up JetStream and runs the worker slots until
// ctx ends. A start-up that ctx ended returns nil.
func serveWorker(ctx context.Context, env config.Env, s *setup, met *metrics.Metrics, log *slog.Logger) error {
	stopped := func(err error) error {
		if ctx.Err() != nil {
			log.Info("stopped during start-up", "reason", err)
			return nil
		}
		return err
	}
	nc, err := connect(ctx, env, "llmq-worker", log, nil)
	if err != nil {
		return stopped(err)
	}
	defer nc.Close()
	set, err := s.setUp(ctx, nc, log, nil) // no readiness endpoint: the log says what it waits for
	if err != nil {
		return stopped(fmt.Errorf("set up JetStream: %w", err))
	}
	if set != nil {
		defer set.Close()
	}
	ps, err := s.openPauses(ctx, nc, log, nil)
	if err != nil {
		return stopped(err)
	}
	defer ps.Close()
	pool, err := worker.New(nc, worker.Options{
		Paused: ps.Paused, PausesChanged: ps.Changed(),
		Metrics:  met,
		Subjects: s.subjects, Bands: s.bands.Count(), Groups: s.cfg.Groups(), Slots: env.WorkerSlots,
		Router: s.newRouter(providerHTTPClient(), set), LimitsChanged: changed(set), Logger: log, AckWait: s.spec.AckWait,
		DrainTimeout: env.ShutdownTimeout, Policy: s.policy(),
		DefaultCompletionTokens: s.cfg.LLMQ.DefaultCompletionTokens,
		Tenants:                 s.cfg.ListedTenants(),
		TenantWeights:           s.cfg.TenantWeights(),
		Replicas:                s.spec.Replicas,
		Aging:                   worker.Aging{Step: s.cfg.LLMQ.Aging.Step.D(), LimitBand: s.cfg.LLMQ.Aging.LimitBand},
	})
	if err != nil {
		return err
	}
	return pool.Run(ctx)
}
