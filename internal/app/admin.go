package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/batch"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/pauses"
	"github.com/llmq/llmq/internal/queuestatus"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/limiter"
	"github.com/llmq/llmq/pkg/messages"
)

// AdminConnectTimeout bounds the dial of an admin connection to each NATS
// server: an address that does not answer fails within it.
const AdminConnectTimeout = 5 * time.Second

// Admin is an operator's handle on a running installation (llmqctl): a NATS
// connection made with the same LLMQ_NATS_* settings as the workers, and
// what the config file says about subjects, bands, groups, deadlines and
// deployments. It creates no stream or consumer; like the gateway's status
// page it opens the limiter's and the pauses' buckets with the config's
// settings (pkg/limiter and internal/pauses create them if no process has
// yet). Close it when done.
type Admin struct {
	NC       *nats.Conn
	JS       jetstream.JetStream
	Subjects messages.Subjects
	Bands    messages.Bands
	Groups   []string
	// QueueTimeout is router_settings.timeout, the queue deadline of a new
	// request; AnswerTimeout bounds the wait for its answer beyond it.
	QueueTimeout, AnswerTimeout time.Duration

	s              *setup
	publishTimeout time.Duration // LLMQ_PUBLISH_TIMEOUT, for replays
	limits         *limiter.Set
	router         *router.Router
	// LimitsErr says why the deployments' shared limiter state could not
	// be read (nil when it was, or when no deployment has limits).
	LimitsErr error
	// Pauses is the mirror of the paused groups and bands; nil when it
	// could not be opened, and then PausesErr says why.
	Pauses    *pauses.Set
	PausesErr error

	mu    sync.Mutex
	async error // the last error NATS reported asynchronously (e.g. a permissions violation)
	// ops are the operations running under Bound: a permissions violation
	// ends them at once, instead of after their timeout (NATS drops a
	// request it refuses; no reply ever comes).
	ops map[*context.CancelCauseFunc]struct{}
}

// OpenAdmin loads env.Config and connects to env.NATSURL. The shared limiter
// state is read when it can be (it needs the permissions of pkg/limiter.Open);
// otherwise Admin.LimitsErr says why not.
func OpenAdmin(ctx context.Context, env config.Env, lookup func(string) (string, bool), logOut io.Writer) (*Admin, error) {
	if env.NATSURL == "" {
		return nil, errors.New("LLMQ_NATS_URL is required: the NATS server of the installation (a gateway that embeds NATS logs its URL at start, 127.0.0.1:4222 by default)")
	}
	log := NewLogger(env, logOut).With("component", "llmqctl")
	s, err := load(env, lookup, log)
	if err != nil {
		return nil, err
	}
	a := &Admin{Subjects: s.subjects, Bands: s.bands, Groups: s.cfg.Groups(), s: s, publishTimeout: env.PublishTimeout,
		QueueTimeout: s.cfg.RouterSettings.Timeout.D(), AnswerTimeout: s.answerTimeout()}
	if err := a.dial(env); err != nil {
		return nil, err
	}
	if s.hasLimits() {
		lctx, cancel := a.Bound(ctx, 5*time.Second)
		a.limits, err = limiter.Open(lctx, a.JS, s.limiterOptions())
		cancel()
		if err != nil {
			a.LimitsErr = a.Explain(err)
		}
	}
	a.router = s.newRouter(nil, a.limits)
	pctx, cancel := a.Bound(ctx, 5*time.Second)
	a.Pauses, err = pauses.Open(pctx, a.JS, s.subjects, s.cfg.LLMQ.Replicas)
	cancel()
	if err != nil {
		a.PausesErr = a.Explain(err)
	}
	return a, nil
}

// dial connects a to env.NATSURL.
func (a *Admin) dial(env config.Env) error {
	a.ops = map[*context.CancelCauseFunc]struct{}{}
	nc, err := client.Connect(env.NATSURL, env.NATSSecurity(),
		nats.Name("llmqctl"),
		nats.Timeout(AdminConnectTimeout),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { a.setAsync(err) }),
	)
	if err != nil {
		return err
	}
	a.NC = nc
	if a.JS, err = jetstream.New(nc); err != nil {
		nc.Close()
		return err
	}
	return nil
}

// OpenAdminConn connects to env.NATSURL for commands that need only the
// subjects, under prefix: it neither reads the config file nor opens a
// bucket, so it works while the file has errors (llmqctl reload, which
// asks the processes to judge their own files).
func OpenAdminConn(env config.Env, prefix string) (*Admin, error) {
	if env.NATSURL == "" {
		return nil, errors.New("LLMQ_NATS_URL is required: the NATS server of the installation (a gateway that embeds NATS logs its URL at start, 127.0.0.1:4222 by default)")
	}
	subjects, err := messages.NewSubjects(prefix)
	if err != nil {
		return nil, err
	}
	a := &Admin{Subjects: subjects}
	if err := a.dial(env); err != nil {
		return nil, err
	}
	return a, nil
}

// SubjectPrefix is the subject prefix of the config file at env.Config, or
// the default when the file cannot be read or has errors.
func SubjectPrefix(env config.Env, lookup func(string) (string, bool)) string {
	if cfg, err := config.Load(env.Config, lookup); err == nil {
		return cfg.LLMQ.SubjectPrefix
	}
	return config.DefaultSubjectPrefix
}

func (a *Admin) setAsync(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.async = err
	if errors.Is(err, nats.ErrPermissionViolation) {
		for cancel := range a.ops {
			(*cancel)(err)
		}
	}
}

// Bound returns a context for one operation: it ends after timeout, with
// ctx, or as soon as NATS refuses a permission.
func (a *Admin) Bound(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	ctx, cancelCause := context.WithCancelCause(ctx)
	a.mu.Lock()
	a.ops[&cancelCause] = struct{}{}
	a.mu.Unlock()
	return ctx, func() {
		a.mu.Lock()
		delete(a.ops, &cancelCause)
		a.mu.Unlock()
		cancelCause(nil)
		cancel()
	}
}

// Explain adds to err what NATS reported asynchronously meanwhile, such as
// a permissions violation (which otherwise shows only as a timeout).
func (a *Admin) Explain(err error) error {
	a.mu.Lock()
	async := a.async
	a.async = nil
	a.mu.Unlock()
	if err == nil || async == nil {
		return err
	}
	if errors.Is(async, nats.ErrPermissionViolation) {
		return fmt.Errorf("%w (NATS refused it: %w; give the NATS user (LLMQ_NATS_USER, LLMQ_NATS_CREDS...) that permission)", err, async)
	}
	return fmt.Errorf("%w (NATS reported: %w)", err, async)
}

// Status reads the queue as GET /v1/queue shows it.
func (a *Admin) Status(ctx context.Context, now time.Time) (*queuestatus.Status, error) {
	ctx, cancel := a.Bound(ctx, 10*time.Second)
	defer cancel()
	st, err := queuestatus.Read(ctx, a.JS, a.Subjects, now)
	if err != nil {
		return nil, a.Explain(err)
	}
	st.Deployments = queuestatus.Deployments(a.router, now)
	if a.Pauses != nil {
		st.Paused = a.Pauses.List()
	}
	return st, nil
}

// Batches reads the batches that are not over, as GET /v1/queue shows
// them (internal/batch.ReadActive).
func (a *Admin) Batches(ctx context.Context) ([]queuestatus.Batch, error) {
	ctx, cancel := a.Bound(ctx, 10*time.Second)
	defer cancel()
	b, err := batch.ReadActive(ctx, a.JS, a.Subjects, a.Bands)
	return b, a.Explain(err)
}

// Client returns a pkg/client over the admin connection, with the
// installation's prefix and bands. Close it before the Admin.
func (a *Admin) Client() (*client.Client, error) {
	return client.New(a.NC, client.Options{Prefix: a.Subjects.Prefix(), BandBounds: a.s.cfg.LLMQ.PriorityBands, PublishTimeout: a.publishTimeout})
}

// Close closes the limiter mirror and the connection.
func (a *Admin) Close() {
	if a.limits != nil {
		_ = a.limits.Close()
	}
	if a.Pauses != nil {
		a.Pauses.Close()
	}
	a.NC.Close()
}
