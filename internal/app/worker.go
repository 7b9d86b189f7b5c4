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
	"github.com/llmq/llmq/internal/metrics"
)

// RunWorker runs a worker process until ctx ends: it connects to
// env.NATSURL, makes sure the stream, consumers and limits bucket exist, and
// serves env.WorkerSlots requests at a time. Until NATS and JetStream answer
// (a cluster that is still forming, other processes creating the same
// streams) it waits, logging what for, and serves its metrics meanwhile;
// ctx ending then stops it cleanly. On cancellation it stops taking work
// and finishes the calls it holds.
//
// It reloads its config file when llmqctl reload asks, and on the signal
// of ReloadOn: a new pool of slots takes over and the old one finishes the
// calls it holds (see live).
func RunWorker(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer, opts ...Option) error {
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
	lv := &live{env: env, lookup: lookup, log: log, kind: "worker", s: s}
	grp.Go(func() error { return serveWorker(gctx, lv, met, optionsOf(opts)) })
	return grp.Wait()
}

// serveWorker connects, sets up JetStream and runs the worker slots until
// ctx ends, reloading on request. A start-up that ctx ended returns nil.
func serveWorker(ctx context.Context, lv *live, met *metrics.Metrics, o options) error {
	log, s := lv.log, lv.s
	stopped := func(err error) error {
		if ctx.Err() != nil {
			log.Info("stopped during start-up", "reason", err)
			return nil
		}
		return err
	}
	nc, err := connect(ctx, lv.env, "llmq-worker", log, nil)
	if err != nil {
		return stopped(err)
	}
	defer nc.Close()
	lv.nc = nc
	lv.set, err = s.setUp(ctx, nc, log, nil) // no readiness endpoint: the log says what it waits for
	if err != nil {
		return stopped(fmt.Errorf("set up JetStream: %w", err))
	}
	defer lv.close()
	if lv.ps, err = s.openPauses(ctx, nc, log, nil); err != nil {
		return stopped(err)
	}
	defer lv.ps.Close()
	lv.workers = newWorkers(ctx, nc, lv.env.WorkerSlots, log, met, lv.env.ShutdownTimeout)
	if err := lv.workers.start(s, lv.set, lv.ps); err != nil {
		return err
	}
	// The reload loop ends with the pools' context (ctx, or a pool that
	// failed), before the pools are waited for: no reload starts a pool
	// after that.
	err = lv.serve(lv.workers.ctx, o.reload)
	return errors.Join(err, lv.workers.wait())
}
