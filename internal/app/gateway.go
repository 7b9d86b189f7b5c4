package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/llmq/llmq/internal/batch"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/internal/pauses"
	"github.com/llmq/llmq/internal/queuestatus"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/topology"
	"github.com/llmq/llmq/internal/waitstats"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// Gateway is a started gateway process.
type Gateway struct {
	addr       net.Addr
	natsURL    string
	monitorURL string
	done       chan struct{}
	err        error
}

// Addr is the HTTP listen address.
func (g *Gateway) Addr() net.Addr { return g.addr }

// NATSURL is the NATS URL workers and internal services use: the external
// server's, or the embedded server's client URL ("" when it has no listener).
func (g *Gateway) NATSURL() string { return g.natsURL }

// NATSMonitorURL is the embedded NATS server's monitoring base URL
// (LLMQ_EMBEDDED_NATS_MONITOR), or "" when it serves none or NATS is external.
func (g *Gateway) NATSMonitorURL() string { return g.monitorURL }

// Wait blocks until the gateway has shut down and returns why it stopped
// (nil after a clean shutdown).
func (g *Gateway) Wait() error {
	<-g.done
	return g.err
}

// RunGateway runs the gateway until ctx ends, then shuts it down.
func RunGateway(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer, opts ...Option) error {
	g, err := StartGateway(ctx, env, lookup, logOut, opts...)
	if err != nil {
		return err
	}
	return g.Wait()
}

// StartGateway starts the gateway and returns once it is ready: connected
// to NATS, with the streams, consumers and (when a deployment has limits)
// the limits bucket in place. Its HTTP listener serves from the start:
// while it waits for NATS or JetStream (a cluster that is still forming,
// other processes creating the same streams), /health/liveliness answers
// 200, /health/readiness 503 with what it waits for, and requests 503
// broker_unavailable with Retry-After; it waits, logging what for, until
// ctx ends rather than exiting. A start-up that ctx ended returns a
// Gateway that has already stopped (Wait returns nil).
//
// Cancelling ctx shuts it down against the direction of traffic: stop
// accepting and wait for in-flight answers (up to env.ShutdownTimeout), stop
// the in-process workers, close NATS, stop the embedded server.
//
// It reloads its config file when llmqctl reload asks, and on the signal
// of ReloadOn: keys, model groups, deployments, limits, fallbacks and
// retries change for the requests that arrive from then on (see live).
func StartGateway(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer, opts ...Option) (*Gateway, error) {
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

	var embedded *natsembed.Server
	if env.NATSURL == "" {
		embedded, err = natsembed.Start(natsembed.Options{Listen: env.EmbeddedNATSListen, Monitor: env.EmbeddedNATSMonitor, StoreDir: env.DataDir})
		if err != nil {
			return nil, err
		}
		cleanup = append(cleanup, embedded.Shutdown)
		embedded.Log(log)
		g.natsURL, g.monitorURL = embedded.ClientURL(), embedded.MonitorURL()
	}
	ln, err := net.Listen("tcp", env.Listen)
	if err != nil {
		undo()
		return nil, fmt.Errorf("listen on %s: %w", env.Listen, err)
	}
	g.addr = ln.Addr()

	// The HTTP server runs from here on; the front answers for the gateway
	// until it exists (see starting).
	var prog progress
	prog.set("a connection to NATS")
	var front frontHandler
	front.set(starting(&prog))
	var srv atomic.Pointer[gateway.Server] // set once it exists
	httpSrv := &http.Server{Handler: &front, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := context.WithCancel(ctx)
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
		err := httpSrv.Shutdown(sctx)
		gw := srv.Load()
		if gw != nil {
			err = errors.Join(err, gw.Shutdown(sctx))
		}
		if err != nil {
			// Drain timed out: cut the remaining connections rather than
			// leave their callers waiting on a closed NATS connection.
			log.Warn("drain timeout: closing the remaining connections", "timeout", env.ShutdownTimeout)
			if gw != nil {
				gw.Close()
			}
			return httpSrv.Close()
		}
		return nil
	})
	// In-process workers get their own connection and their own context:
	// they keep serving while the HTTP server drains.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	// fail ends a start-up that failed for good.
	fail := func(err error) (*Gateway, error) {
		stopWork()
		stop()
		_ = grp.Wait()
		undo()
		return nil, err
	}
	log.Info("HTTP listening; starting", "addr", g.addr.String(), "nats", g.natsURL)

	var nc *nats.Conn
	if embedded != nil {
		nc, err = embedded.Connect("llmq-gateway")
	} else {
		nc, err = connect(gctx, env, "llmq-gateway", log, &prog)
	}
	if err != nil && gctx.Err() == nil {
		return fail(err)
	}
	var cl *client.Client
	if nc != nil {
		cleanup = append(cleanup, nc.Close)
		if cl, err = client.New(nc, client.Options{Prefix: s.subjects.Prefix(), BandBounds: s.cfg.LLMQ.PriorityBands, PublishTimeout: env.PublishTimeout}); err != nil {
			return fail(err)
		}
		cleanup = append(cleanup, func() { _ = cl.Close() })
	}

	lv := &live{env: env, lookup: lookup, log: log, kind: "gateway", s: s, nc: nc}
	var ws *workers
	var batches *batch.Service
	if cl != nil && gctx.Err() == nil {
		if s.cfg.GeneralSettings.MasterKey == "" {
			log.Warn("general_settings.master_key is not set: every caller is accepted without a key")
		}
		// The status page's deployments, with their limiters once the
		// shared limits are open.
		var limits atomic.Pointer[router.Router]
		limits.Store(s.newRouter(nil, nil))
		var paused atomic.Pointer[pauses.Set] // for the status page, once open
		var files batch.Front
		gw, met := s.newGatewayServer(env, log, nc, cl, &prog, lv, &limits, &paused, &files)
		srv.Store(gw)
		front.set(gw.Handler())

		// One mirror of the shared limits serves the status page and the
		// in-process workers.
		set, err := s.setUp(gctx, nc, log, &prog)
		if err != nil && gctx.Err() == nil {
			return fail(fmt.Errorf("set up JetStream: %w", err))
		}
		lv.set = set
		cleanup = append(cleanup, lv.close) // the mirror in force, after reloads too
		if set != nil {
			limits.Store(s.newRouter(nil, set))
		}
		var ps *pauses.Set
		if gctx.Err() == nil {
			if ps, err = s.openPauses(gctx, nc, log, &prog); err != nil && gctx.Err() == nil {
				return fail(err)
			}
		}
		if ps != nil {
			cleanup = append(cleanup, ps.Close)
			paused.Store(ps)
		}
		lv.ps = ps
		lv.apply = func(next *setup, set *limiter.Set) {
			gw.SetPolicy(next.gatewayPolicy())
			limits.Store(next.newRouter(nil, set))
			if batches != nil {
				batches.SetGroups(next.cfg.Groups())
			}
		}
		if gctx.Err() == nil {
			if batches, err = s.openBatches(gctx, nc, cl, env, base, &prog, met); err != nil && gctx.Err() == nil {
				return fail(err)
			}
			files.Set(batches)
		}
		if embedded != nil && env.EmbeddedWorkers > 0 && ps != nil && gctx.Err() == nil {
			wnc, err := embedded.Connect("llmq-embedded-worker")
			if err != nil {
				return fail(err)
			}
			cleanup = append(cleanup, wnc.Close)
			ws = newWorkers(workCtx, wnc, env.EmbeddedWorkers, base.With("component", "worker"), met, env.ShutdownTimeout)
			if err := ws.start(s, set, ps); err != nil {
				return fail(err)
			}
			lv.workers = ws
		}
		if gctx.Err() == nil {
			// Ends with the HTTP server's group, before the workers stop.
			grp.Go(func() error { return lv.serve(gctx, optionsOf(opts).reload) })
		}
	}

	batchesDone := make(chan error, 1)
	if batches != nil {
		go func() { batchesDone <- batches.Run(workCtx) }()
	} else {
		batchesDone <- nil
	}
	if gctx.Err() == nil {
		prog.done()
		attrs := []any{"addr", g.addr.String(), "nats", g.natsURL, "groups", s.cfg.Groups(), "embedded_workers", env.EmbeddedWorkers * boolInt(ws != nil)}
		if g.monitorURL != "" {
			attrs = append(attrs, "nats_monitor", g.monitorURL)
		}
		log.Info("gateway listening", attrs...)
	} else {
		log.Info("stopped during start-up")
	}
	go func() {
		err := grp.Wait()
		stopWork()
		if ws != nil {
			err = errors.Join(err, ws.wait())
		}
		err = errors.Join(err, <-batchesDone)
		undo()
		stop()
		log.Info("gateway stopped")
		g.err = err
		close(g.done)
	}()
	return g, nil
}

// newGatewayServer builds the HTTP API over cl. Its readiness is prog's
// until start-up is complete, then NATS's and the topology's; its status
// page shows the deployments of limits and the pauses of paused.
func (s *setup) newGatewayServer(env config.Env, log *slog.Logger, nc *nats.Conn, cl *client.Client, prog *progress, lv *live, limits *atomic.Pointer[router.Router], paused *atomic.Pointer[pauses.Set], files *batch.Front) (*gateway.Server, *metrics.Metrics) {
	js, _ := jetstream.New(nc)
	met, metricsHandler := newRegistry()
	waits := waitstats.New()
	return gateway.New(gateway.Options{
		Waits:          waits,
		Metrics:        met,
		MetricsHandler: metricsHandler,
		Client:         cl,
		Policy:         s.gatewayPolicy(),
		MaxBodyBytes:   env.MaxBodyBytes,
		ParkAfter:      env.ParkAfter,
		Logger:         log,
		Routes:         files.Routes(),
		QueueStatus: func(ctx context.Context) (any, error) {
			st, err := queuestatus.Read(ctx, js, s.subjects, time.Now())
			if err != nil {
				return nil, err
			}
			st.Deployments = queuestatus.Deployments(limits.Load(), time.Now())
			if ps := paused.Load(); ps != nil {
				st.Paused = ps.List()
			}
			st.QueueWait = waits.Read(time.Now())
			st.Batches = files.Active()
			return st, nil
		},
		Ready: func(ctx context.Context) error {
			if err := prog.err(); err != nil {
				return err
			}
			if !nc.IsConnected() {
				return errors.New("NATS is not connected")
			}
			return topology.Check(ctx, js, lv.current().spec)
		},
	}), met
}

// gatewayPolicy is what the gateway takes from the configuration that a
// reload may change.
func (s *setup) gatewayPolicy() gateway.Policy {
	return gateway.Policy{
		Groups:          s.cfg.Groups(),
		MasterKey:       s.cfg.GeneralSettings.MasterKey,
		Keys:            s.keys(),
		DefaultPriority: *s.cfg.RouterSettings.DefaultPriority,
		QueueTimeout:    s.cfg.RouterSettings.Timeout.D(),
		AnswerTimeout:   s.answerTimeout(),
		Tenants:         s.cfg.ListedTenants(),
	}
}

// frontHandler serves with the handler stored last.
type frontHandler struct{ h atomic.Pointer[handlerBox] }

type handlerBox struct{ http.Handler }

func (f *frontHandler) set(h http.Handler) { f.h.Store(&handlerBox{h}) }

func (f *frontHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) { f.h.Load().ServeHTTP(w, r) }

// starting answers for a gateway that is not connected to NATS yet: alive,
// not ready (with what it waits for), and every other request 503
// broker_unavailable with Retry-After.
func starting(prog *progress) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health/liveliness", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	notReady := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "1")
		msg := "the gateway is starting"
		if err := prog.err(); err != nil {
			msg = err.Error()
		}
		if r.URL.Path == "/health/readiness" {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": msg})
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write(messages.ErrorBody(&messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: msg}))
	}
	mux.HandleFunc("/", notReady)
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// openBatches opens the files and batches buckets (see converge) and
// returns the service that runs them in this process.
func (s *setup) openBatches(ctx context.Context, nc *nats.Conn, cl *client.Client, env config.Env, base *slog.Logger, prog *progress, met *metrics.Metrics) (*batch.Service, error) {
	b := s.cfg.LLMQ.Batches
	opts := batch.Options{
		Queue: cl, Subjects: s.subjects, Bands: s.bands, Groups: s.cfg.Groups(), Replicas: s.cfg.LLMQ.Replicas,
		DefaultPriority: *b.DefaultPriority, MaxFileLines: b.MaxFileLines, MaxFileBytes: b.MaxFileBytes,
		MaxLineBytes: int(env.MaxBodyBytes) + 64<<10, MaxCompletionWindow: b.MaxCompletionWindow.D(),
		Logger: base.With("component", "batches"), Metrics: met,
	}
	return openBucket(ctx, base, prog, "the files and batches buckets", func(ctx context.Context) (*batch.Service, bool, error) {
		svc, err := batch.Open(ctx, nc, opts)
		return svc, true, err
	})
}
