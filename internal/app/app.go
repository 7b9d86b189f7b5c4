// Package app wires llmq's parts into the two programs: the gateway (HTTP
// front, optionally with an embedded NATS server and in-process workers) and
// the worker. cmd/gateway and cmd/worker are thin mains around [RunGateway]
// and [RunWorker]; tests start the whole program through [StartGateway] and
// [RunWorker].
//
// Start-up converges: processes may start in any order and all at once,
// before their NATS servers. Each one connects, creates or checks the
// streams, consumers and limits bucket with short per-call timeouts, and
// tries again until they exist or its context ends, logging what it waits
// for (see converge); refused credentials, a failed TLS handshake and a bad
// config still end it at once. The gateway's HTTP listener serves from the
// start and reports not ready until then.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/internal/jsretry"
	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/provider"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/topology"
	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// NewLogger builds the process logger from the environment settings.
func NewLogger(env config.Env, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(env.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if env.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// setup is what both programs derive from the config file.
type setup struct {
	cfg      *config.Config
	subjects messages.Subjects
	bands    messages.Bands
	spec     topology.Spec
}

func load(env config.Env, lookup func(string) (string, bool), log *slog.Logger) (*setup, error) {
	if err := env.Validate(); err != nil {
		return nil, fmt.Errorf("environment:\n%w", err)
	}
	cfg, err := config.Load(env.Config, lookup)
	if err != nil {
		return nil, fmt.Errorf("config %s:\n%w", env.Config, err)
	}
	for _, w := range cfg.Warnings {
		log.Warn("config warning", "warning", w)
	}
	subjects, err := messages.NewSubjects(cfg.LLMQ.SubjectPrefix)
	if err != nil {
		return nil, err
	}
	bands, err := messages.NewBands(cfg.LLMQ.PriorityBands)
	if err != nil {
		return nil, err
	}
	return &setup{
		cfg: cfg, subjects: subjects, bands: bands,
		spec: topology.Spec{
			Subjects: subjects, Bands: bands.Count(), Groups: cfg.Groups(),
			Replicas: cfg.LLMQ.Replicas, MaxQueued: cfg.LLMQ.MaxQueued, AckWait: cfg.LLMQ.AckWait.D(),
		},
	}, nil
}

// callTimeout is the provider timeout of one deployment.
func (s *setup) callTimeout(d config.Deployment) time.Duration {
	if t := d.Params.Timeout.D(); t > 0 {
		return t
	}
	return s.cfg.LiteLLMSettings.RequestTimeout.D()
}

// maxCallTimeout is the longest provider timeout of any deployment.
func (s *setup) maxCallTimeout() time.Duration {
	var m time.Duration
	for _, d := range s.cfg.ModelList {
		m = max(m, s.callTimeout(d))
	}
	return m
}

// answerTimeout bounds the wait for an answer beyond the queue deadline
// (which binds every wait before a call, after pickup too): every call the
// retry policy may make, 1 + num_retries in the group and in each of its
// fallbacks, at the longest provider timeout; an ack wait, for a request
// redelivered after its worker died; and a margin for the answer's delivery.
func (s *setup) answerTimeout() time.Duration {
	chain := 1
	for _, f := range s.cfg.AllFallbacks() {
		chain = max(chain, 1+len(f))
	}
	calls := time.Duration(chain * (1 + *s.cfg.RouterSettings.NumRetries))
	return calls*s.maxCallTimeout() + s.spec.AckWait + 30*time.Second
}

// newRouter builds the router over every deployment, each with its caller.
// hasLimits reports whether any deployment has rpm, tpm or max_parallel_requests.
func (s *setup) hasLimits() bool {
	for _, d := range s.cfg.ModelList {
		if d.Params.RPM > 0 || d.Params.TPM > 0 || d.Params.MaxParallelRequests > 0 {
			return true
		}
	}
	return false
}

// changed is set's change signal, or nil without a set.
func changed(set *limiter.Set) <-chan struct{} {
	if set == nil {
		return nil
	}
	return set.Changed()
}

// newRouter builds the router over every deployment, each with its caller
// and, when set is not nil, its share of the global limits.
func (s *setup) newRouter(hc *http.Client, set *limiter.Set) *router.Router {
	var ds []router.Deployment
	for _, d := range s.cfg.ModelList {
		var caller provider.Caller
		if d.Params.MockResponse != nil {
			caller = &provider.Mock{Text: *d.Params.MockResponse, Model: d.ModelName,
				Chunks: s.cfg.LLMQ.MockStreamChunks, Gap: s.cfg.LLMQ.MockStreamGap.D()}
		} else {
			caller = provider.NewOpenAI(callerOptions(d, s.callTimeout(d), hc))
		}
		rd := router.Deployment{
			ID: d.ModelInfo.ID, Group: d.ModelName, MaxParallel: d.Params.MaxParallelRequests,
			Order: d.Params.Order, Weight: d.Params.Weight, RPM: d.Params.RPM, TPM: d.Params.TPM, Value: caller,
		}
		if set != nil {
			rd.Limiter = set.Deployment(d.ModelInfo.ID, limiter.Limits{RPM: d.Params.RPM, TPM: d.Params.TPM, MaxParallel: d.Params.MaxParallelRequests})
		}
		ds = append(ds, rd)
	}
	return router.New(router.ParseStrategy(s.cfg.RouterSettings.RoutingStrategy), ds, nil)
}

// callerOptions are the provider options of a deployment resolved by config.
func callerOptions(d config.Deployment, timeout time.Duration, hc *http.Client) provider.OpenAIOptions {
	e := d.Params.Endpoint
	return provider.OpenAIOptions{
		BaseURL: e.BaseURL, APIKey: d.Params.APIKey, Model: e.Model, Timeout: timeout, HTTPClient: hc,
		Shape: e.Shape, Auth: e.Auth, APIVersion: e.APIVersion, ADToken: d.Params.AzureADToken,
		Group: d.ModelName, Defaults: d.Params.Defaults, Headers: d.Params.Headers,
	}
}

// newRegistry returns a Prometheus registry with llmq's metrics and the Go
// runtime and process collectors, and the handler that serves it.
func newRegistry() (*metrics.Metrics, http.Handler) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return metrics.New(reg), promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg})
}

// keys are the gateway's API keys from llmq_settings.keys.
func (s *setup) keys() []gateway.Key {
	var out []gateway.Key
	for _, k := range s.cfg.LLMQ.Keys {
		out = append(out, gateway.Key{Name: k.Name, Secret: k.Key, MaxPriority: k.MaxPriority,
			DefaultPriority: k.DefaultPriority, RPMLimit: k.RPMLimit, Models: k.Models, ReadQueue: k.ReadQueue})
	}
	return out
}

// policy is the workers' retry policy from router_settings.
func (s *setup) policy() worker.Policy {
	rs := s.cfg.RouterSettings
	return worker.Policy{
		NumRetries:   *rs.NumRetries,
		AllowedFails: rs.AllowedFails,
		CooldownTime: rs.CooldownTime.D(),
		Fallbacks:    s.cfg.AllFallbacks(),
		Backoff:      rs.RetryAfter.D(), // 0: the worker's default
	}
}

// providerHTTPClient is the transport shared by every provider caller of a process.
func providerHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	return &http.Client{Transport: t}
}

// connect dials an external NATS server with the environment's security
// settings. While no server of env.NATSURL accepts the connection (they may
// be starting too) it tries again until ctx ends, logging that it waits;
// refused credentials or a failed TLS handshake end it at once.
func connect(ctx context.Context, env config.Env, name string, log *slog.Logger, prog *progress) (*nats.Conn, error) {
	prog.set("a connection to NATS")
	var nc *nats.Conn
	err := converge(ctx, log, "a connection to NATS", func(context.Context) (retry bool, err error) {
		nc, err = client.Connect(env.NATSURL, env.NATSSecurity(),
			nats.Name(name),
			nats.ReconnectWait(250*time.Millisecond),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil { // nil: our own Close
					log.Warn("NATS disconnected", "error", err)
				}
			}),
			nats.ReconnectHandler(func(c *nats.Conn) { log.Info("NATS reconnected", "url", c.ConnectedUrlRedacted()) }),
		)
		return errors.Is(err, nats.ErrNoServers), err
	})
	return nc, err
}

// converge calls step until it succeeds, fails for good (retry false) or
// ctx ends, pausing between calls (250 ms, doubling, at most 2 s) and
// logging each failure with what it waits for. A process started at the
// same time as its NATS cluster, or as other processes creating the same
// streams, comes up this way rather than exiting.
func converge(ctx context.Context, log *slog.Logger, what string, step func(context.Context) (retry bool, err error)) error {
	for n := 0; ; n++ {
		retry, err := step(ctx)
		switch {
		case err == nil:
			if n > 0 {
				log.Info("done waiting", "for", what, "attempts", n+1)
			}
			return nil
		case ctx.Err() != nil:
			return fmt.Errorf("stopped while waiting for %s: %w", what, context.Cause(ctx))
		case !retry:
			return err
		}
		pause := min(250*time.Millisecond<<min(n, 3), 2*time.Second)
		log.Warn("waiting", "for", what, "attempt", n+1, "retry_in", pause, "error", err)
		if !jsretry.Sleep(ctx, pause) {
			return fmt.Errorf("stopped while waiting for %s: %w", what, context.Cause(ctx))
		}
	}
}

// setUp makes the JetStream objects exist and opens the shared limits
// (nil when no deployment has limits), each step repeated until it
// succeeds or ctx ends (see converge): JetStream answers nothing, or
// answers "not available", while a fresh cluster elects its leaders.
func (s *setup) setUp(ctx context.Context, nc *nats.Conn, log *slog.Logger, prog *progress) (*limiter.Set, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	prog.set("the JetStream streams and consumers")
	if err := converge(ctx, log, "the JetStream streams and consumers", func(ctx context.Context) (bool, error) {
		return true, topology.Ensure(ctx, js, s.spec)
	}); err != nil {
		return nil, err
	}
	if !s.hasLimits() {
		return nil, nil
	}
	return s.openLimits(ctx, nc, log, prog)
}

// openLimits opens the mirror of the shared limits bucket (see openBucket).
func (s *setup) openLimits(ctx context.Context, nc *nats.Conn, log *slog.Logger, prog *progress) (*limiter.Set, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return openBucket(ctx, log, prog, "the shared limits bucket "+s.subjects.LimitsBucket(), func(ctx context.Context) (*limiter.Set, bool, error) {
		set, err := limiter.Open(ctx, js, s.limiterOptions())
		return set, errors.Is(err, limiter.ErrUnavailable), err
	})
}

// openBucket opens the mirror of a KV bucket (what names it, for the logs
// and readiness) with open, each attempt bounded by bucketOpenTimeout and
// repeated while open says retry and ctx lasts (see converge).
func openBucket[T any](ctx context.Context, log *slog.Logger, prog *progress, what string, open func(context.Context) (T, bool, error)) (T, error) {
	prog.set(what)
	var v T
	err := converge(ctx, log, what, func(ctx context.Context) (bool, error) {
		octx, cancel := context.WithTimeout(ctx, bucketOpenTimeout)
		defer cancel()
		var retry bool
		var err error
		v, retry, err = open(octx)
		return retry, err
	})
	if err != nil {
		return v, fmt.Errorf("open %s: %w", what, err)
	}
	return v, nil
}

// limiterOptions are the options of the shared limits bucket.
func (s *setup) limiterOptions() limiter.Options {
	return limiter.Options{Bucket: s.subjects.LimitsBucket(), Replicas: s.cfg.LLMQ.Replicas, Period: s.cfg.LLMQ.LimitsPeriod.D()}
}

// bucketOpenTimeout bounds one attempt to open a KV bucket (create or
// update it, then read it whole).
const bucketOpenTimeout = 3 * time.Second

// progress is what a starting process still waits for, for its readiness
// answer. It is safe for concurrent use.
type progress struct{ waiting atomic.Pointer[string] }

// set records that the process waits for what; a nil progress records
// nothing (a process without a readiness endpoint).
func (p *progress) set(what string) {
	if p != nil {
		p.waiting.Store(&what)
	}
}

// done records that start-up is complete.
func (p *progress) done() { p.waiting.Store(nil) }

// err is nil once start-up is complete, else says what it waits for.
func (p *progress) err() error {
	if w := p.waiting.Load(); w != nil {
		return errors.New("starting: waiting for " + *w)
	}
	return nil
}
