package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"reflect"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/pauses"
	"github.com/llmq/llmq/internal/reload"
	"github.com/llmq/llmq/internal/topology"
	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/limiter"
)

// Option changes how a process runs (StartGateway, RunGateway, RunWorker).
type Option func(*options)

type options struct{ reload <-chan os.Signal }

func optionsOf(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// ReloadOn makes the process reload its config file each time sig
// receives; cmd/gateway and cmd/worker pass SIGHUP. Every process also
// reloads when llmqctl reload asks, on the subject messages.Subjects.Reload.
func ReloadOn(sig <-chan os.Signal) Option { return func(o *options) { o.reload = sig } }

// reloadTimeout bounds one reload: reading the file, creating the
// consumers of new model groups and opening the limits bucket if the new
// configuration is the first with limits.
const reloadTimeout = 20 * time.Second

// restartOnly names each setting the new configuration changes that a
// running process cannot: they shape the streams, consumers and limits
// bucket that every process shares, so all would have to change at once.
func restartOnly(old, next *config.Config) error {
	var errs []error
	check := func(name string, running, file any) {
		if !reflect.DeepEqual(running, file) {
			errs = append(errs, fmt.Errorf("%s: cannot change without a restart of every process (running: %v, file: %v)", name, running, file))
		}
	}
	o, n := old.LLMQ, next.LLMQ
	check("llmq_settings.subject_prefix", o.SubjectPrefix, n.SubjectPrefix)
	check("llmq_settings.priority_bands", o.PriorityBands, n.PriorityBands)
	check("llmq_settings.replicas", o.Replicas, n.Replicas)
	check("llmq_settings.max_queued", o.MaxQueued, n.MaxQueued)
	check("llmq_settings.ack_wait", o.AckWait, n.AckWait)
	check("llmq_settings.limits_period", o.LimitsPeriod, n.LimitsPeriod)
	// The batch service reads these once (internal/batch); a reload does
	// put new model groups in force for batches.
	ob, nb := o.Batches, n.Batches
	check("llmq_settings.batches.default_priority", *ob.DefaultPriority, *nb.DefaultPriority)
	check("llmq_settings.batches.max_file_lines", ob.MaxFileLines, nb.MaxFileLines)
	check("llmq_settings.batches.max_file_bytes", ob.MaxFileBytes, nb.MaxFileBytes)
	check("llmq_settings.batches.max_completion_window", ob.MaxCompletionWindow, nb.MaxCompletionWindow)
	return errors.Join(errs...)
}

// live is a process's configuration in force and the shared objects built
// from it. After start-up only its reload loop (serve) changes it; the
// mutex lets other goroutines read the setup in force.
type live struct {
	env    config.Env
	lookup func(string) (string, bool)
	log    *slog.Logger
	kind   string // "gateway" or "worker", for answers
	nc     *nats.Conn

	mu  sync.Mutex
	s   *setup
	set *limiter.Set // the shared limits' mirror; nil while no deployment has limits
	ps  *pauses.Set

	workers *workers // nil: no worker slots in this process
	// apply puts the rest of a new setup in force (the gateway's policy
	// and status page); nil for a worker process.
	apply func(next *setup, set *limiter.Set)
}

// current returns the setup in force.
func (l *live) current() *setup {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.s
}

// limits returns the shared limits' mirror in force, or nil.
func (l *live) limits() *limiter.Set {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.set
}

// close closes what live opened (the limits' mirror).
func (l *live) close() {
	if set := l.limits(); set != nil {
		_ = set.Close()
	}
}

// serve reloads on sig and on requests on the reload subject until ctx ends.
func (l *live) serve(ctx context.Context, sig <-chan os.Signal) error {
	return reload.Serve(ctx, l.nc, l.current().subjects.Reload(), sig, reloadTimeout, l.reload)
}

// reload reads the config file again and puts it in force, or refuses it
// and keeps the running one, logging either way.
func (l *live) reload(ctx context.Context) reload.Result {
	host, _ := os.Hostname()
	res := reload.Result{Process: fmt.Sprintf("%s %s pid %d", l.kind, host, os.Getpid())}
	next, err := l.prepare(ctx)
	if err != nil {
		l.log.Error("config reload refused; the running configuration is kept", "config", l.env.Config, "error", err)
		res.Error = err.Error()
		return res
	}
	res.OK, res.Groups, res.Deployments = true, next.cfg.Groups(), len(next.cfg.ModelList)
	l.log.Info("config reloaded", "config", l.env.Config, "groups", res.Groups, "deployments", res.Deployments)
	return res
}

// prepare loads, checks and puts the new setup in force.
func (l *live) prepare(ctx context.Context) (*setup, error) {
	next, err := load(l.env, l.lookup, l.log)
	if err != nil {
		return nil, err
	}
	old := l.current()
	if err := restartOnly(old.cfg, next.cfg); err != nil {
		return nil, err
	}
	js, err := jetstream.New(l.nc)
	if err != nil {
		return nil, err
	}
	// The consumers of new model groups, before anything serves them.
	if err := converge(ctx, l.log, "the consumers of the reloaded configuration", func(ctx context.Context) (bool, error) {
		return true, topology.Ensure(ctx, js, next.spec)
	}); err != nil {
		return nil, err
	}
	set := l.limits()
	if set == nil && next.hasLimits() {
		if set, err = next.openLimits(ctx, l.nc, l.log, nil); err != nil {
			return nil, err
		}
	}
	if l.workers != nil {
		if err := l.workers.start(next, set, l.ps); err != nil {
			if set != l.limits() {
				_ = set.Close()
			}
			return nil, err
		}
	}
	if l.apply != nil {
		l.apply(next, set)
	}
	l.mu.Lock()
	l.s, l.set = next, set
	l.mu.Unlock()
	return next, nil
}

// workers runs a process's worker slots: one pool at a time takes work. A
// reload starts a pool for the new configuration, then retires the old one,
// which fetches nothing more and lets the calls it holds run to their end
// (worker.Pool.Retire); the shared limits count both meanwhile. When ctx
// ends, every pool stops within the drain timeout.
type workers struct {
	ctx   context.Context // ends every pool
	grp   *errgroup.Group
	nc    *nats.Conn
	slots int
	log   *slog.Logger
	met   *metrics.Metrics
	hc    *http.Client
	drain time.Duration

	current *worker.Pool // the pool in force
}

func newWorkers(ctx context.Context, nc *nats.Conn, slots int, log *slog.Logger, met *metrics.Metrics, drain time.Duration) *workers {
	grp, gctx := errgroup.WithContext(ctx)
	return &workers{ctx: gctx, grp: grp, nc: nc, slots: slots, log: log, met: met, hc: providerHTTPClient(), drain: drain}
}

// start runs a pool for s and stops the one it replaces.
func (w *workers) start(s *setup, set *limiter.Set, ps *pauses.Set) error {
	pool, err := worker.New(w.nc, worker.Options{
		Paused: ps.Paused, PausesChanged: ps.Changed(),
		Metrics:  w.met,
		Subjects: s.subjects, Bands: s.bands.Count(), Groups: s.cfg.Groups(), Slots: w.slots,
		Router: s.newRouter(w.hc, set), LimitsChanged: changed(set), Logger: w.log, AckWait: s.spec.AckWait,
		DrainTimeout: w.drain, Policy: s.policy(),
		DefaultCompletionTokens: s.cfg.LLMQ.DefaultCompletionTokens,
		Tenants:                 s.cfg.ListedTenants(),
		TenantWeights:           s.cfg.TenantWeights(),
		Replicas:                s.spec.Replicas,
		Aging:                   worker.Aging{Step: s.cfg.LLMQ.Aging.Step.D(), LimitBand: s.cfg.LLMQ.Aging.LimitBand},
		Headroom:                worker.Headroom{Share: *s.cfg.LLMQ.Headroom.Share, FromBand: *s.cfg.LLMQ.Headroom.FromBand},
	})
	if err != nil {
		return err
	}
	w.grp.Go(func() error { return pool.Run(w.ctx) })
	if w.current != nil {
		w.current.Retire()
	}
	w.current = pool
	return nil
}

// wait returns once every pool has stopped (its context ended), with the
// first error one returned.
func (w *workers) wait() error { return w.grp.Wait() }
