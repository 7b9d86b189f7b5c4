package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/internal/queuestatus"
	"github.com/llmq/llmq/internal/topology"
	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/client"
)

// Gateway is a started gateway process.
type Gateway struct {
	addr    net.Addr
	natsURL string
	done    chan struct{}
	err     error
}

// Addr is the HTTP listen address.
func (g *Gateway) Addr() net.Addr { return g.addr }

// NATSURL is the NATS URL workers and internal services use: the external
// server's, or the embedded server's client URL ("" when it has no listener).
func (g *Gateway) NATSURL() string { return g.natsURL }

// Wait blocks until the gateway has shut down and returns why it stopped
// (nil after a clean shutdown).
func (g *Gateway) Wait() error {
	<-g.done
	return g.err
}

// RunGateway runs the gateway until ctx ends, then shuts it down.
func RunGateway(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) error {
	g, err := StartGateway(ctx, env, lookup, logOut)
	if err != nil {
		return err
	}
	return g.Wait()
}

// StartGateway starts the gateway and returns once it accepts HTTP requests.
// Cancelling ctx shuts it down against the direction of traffic: stop
// accepting and wait for in-flight answers (up to env.ShutdownTimeout), stop
// the in-process workers, close NATS, stop the embedded server.
func StartGateway(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) (*Gateway, error) {
	base := NewLogger(env, logOut)
	log := base.With("component", "gateway")
	s, err := load(env, lookup, log)
	if err != nil {
		return nil, err
	}
	var cleanup []func()
	undo := func() {
		for i := len(cleanup) - 1; i >= 0; i-- {
			cleanup[i]()
		}
	}
	g := &Gateway{done: make(chan struct{}), natsURL: env.NATSURL}

	var nc *nats.Conn
	var embedded *natsembed.Server
	if env.NATSURL == "" {
		embedded, err = natsembed.Start(natsembed.Options{Listen: env.EmbeddedNATSListen, StoreDir: env.DataDir})
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, embedded.Shutdown)
		embedded.Log(log)
		g.natsURL = embedded.ClientURL()
		nc, err = embedded.Connect("llmq-gateway")
	} else {
		nc, err = connect(env, "llmq-gateway", log)
	}
	if err != nil {
		undo()
		return nil, err
	}
	cleanup = append(cleanup, nc.Close)
	if err := ensure(ctx, nc, s.spec); err != nil {
		undo()
		return nil, fmt.Errorf("set up JetStream: %w", err)
	}
	cl, err := client.New(nc, client.Options{Prefix: s.subjects.Prefix(), BandBounds: s.cfg.LLMQ.PriorityBands})
	if err != nil {
		undo()
		return nil, err
	}
	js, _ := jetstream.New(nc)

	if s.cfg.GeneralSettings.MasterKey == "" {
		log.Warn("general_settings.master_key is not set: every caller is accepted without a key")
	}
	// One mirror of the shared limits serves the status page and the
	// in-process workers.
	set, err := s.openLimits(ctx, nc)
	if err != nil {
		undo()
		return nil, err
	}
	if set != nil {
		cleanup = append(cleanup, func() { _ = set.Close() })
	}
	ps, err := s.openPauses(ctx, nc)
	if err != nil {
		undo()
		return nil, err
	}
	cleanup = append(cleanup, ps.Close)
	limits := s.newRouter(nil, set) // for the status page: deployments and their limiters
	met, metricsHandler := newRegistry()
	srv := gateway.New(gateway.Options{
		Metrics:         met,
		MetricsHandler:  metricsHandler,
		Client:          cl,
		Groups:          s.cfg.Groups(),
		MasterKey:       s.cfg.GeneralSettings.MasterKey,
		Keys:            s.keys(),
		DefaultPriority: *s.cfg.RouterSettings.DefaultPriority,
		QueueTimeout:    s.cfg.RouterSettings.Timeout.D(),
		AnswerTimeout:   s.answerTimeout(),
		MaxBodyBytes:    env.MaxBodyBytes,
		ParkAfter:       env.ParkAfter,
		Logger:          log,
		QueueStatus: func(ctx context.Context) (any, error) {
			st, err := queuestatus.Read(ctx, js, s.subjects, time.Now())
			if err != nil {
				return nil, err
			}
			st.Deployments = queuestatus.Deployments(limits, time.Now())
			st.Paused = ps.List()
			return st, nil
		},
		Ready: func(ctx context.Context) error {
			if !nc.IsConnected() {
				return errors.New("NATS is not connected")
			}
			return topology.Check(ctx, js, s.spec)
		},
	})
	ln, err := net.Listen("tcp", env.Listen)
	if err != nil {
		undo()
		return nil, fmt.Errorf("listen on %s: %w", env.Listen, err)
	}
	g.addr = ln.Addr()
	httpSrv := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second}

	// In-process workers get their own connection and their own context:
	// they keep serving while the HTTP server drains.
	var pool *worker.Pool
	if embedded != nil && env.EmbeddedWorkers > 0 {
		wnc, err := embedded.Connect("llmq-embedded-worker")
		if err != nil {
			undo()
			return nil, err
		}
		cleanup = append(cleanup, wnc.Close)
		pool, err = worker.New(wnc, worker.Options{
			Paused: ps.Paused, PausesChanged: ps.Changed(),
			Subjects: s.subjects, Bands: s.bands.Count(), Groups: s.cfg.Groups(), Slots: env.EmbeddedWorkers,
			Router: s.newRouter(providerHTTPClient(), set), LimitsChanged: changed(set), Logger: base.With("component", "worker"), AckWait: s.spec.AckWait, Metrics: met,
			DrainTimeout: env.ShutdownTimeout, Policy: s.policy(),
			DefaultCompletionTokens: s.cfg.LLMQ.DefaultCompletionTokens,
		})
		if err != nil {
			undo()
			return nil, err
		}
	}

	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	var workers errgroup.Group
	if pool != nil {
		workers.Go(func() error { return pool.Run(workCtx) })
	}
	grp, gctx := errgroup.WithContext(ctx)
	grp.Go(func() error {
		if err := httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	grp.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), env.ShutdownTimeout)
		defer cancel()
		log.Info("shutting down: draining HTTP requests", "timeout", env.ShutdownTimeout)
		// Handlers may park their requests while the server drains, so the
		// parked ones are waited for after it.
		if err := errors.Join(httpSrv.Shutdown(sctx), srv.Shutdown(sctx)); err != nil {
			// Drain timed out: cut the remaining connections rather than
			// leave their callers waiting on a closed NATS connection.
			log.Warn("drain timeout: closing the remaining connections", "timeout", env.ShutdownTimeout)
			srv.Close()
			return httpSrv.Close()
		}
		return nil
	})
	log.Info("gateway listening", "addr", g.addr.String(), "nats", g.natsURL, "groups", s.cfg.Groups(), "embedded_workers", env.EmbeddedWorkers*boolInt(pool != nil))
	go func() {
		err := grp.Wait()
		stopWork()
		err = errors.Join(err, workers.Wait())
		_ = cl.Close()
		undo()
		log.Info("gateway stopped")
		g.err = err
		close(g.done)
	}()
	return g, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
