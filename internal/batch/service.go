package batch

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// Queue publishes a batch's lines (pkg/client's Client does).
type Queue interface {
	Enqueue(ctx context.Context, req *client.Request, replyTo string) error
}

var _ Queue = (*client.Client)(nil)

// Options configure a Service.
type Options struct {
	// Queue publishes the lines; required.
	Queue    Queue
	Subjects messages.Subjects
	Bands    messages.Bands
	Groups   []string // model groups, in config order
	Replicas int      // of the bucket streams; 0 means 1

	// DefaultPriority is the priority of a batch that names none
	// (llmq_settings.batches.default_priority).
	DefaultPriority int64
	MaxFileLines    int
	MaxFileBytes    int64
	// MaxLineBytes bounds one line of an input file (LLMQ_MAX_BODY_BYTES
	// plus room for the line's envelope); default 1 MiB.
	MaxLineBytes int
	// MaxCompletionWindow bounds a batch's completion_window.
	MaxCompletionWindow time.Duration

	// Tick is how often a driver looks at its batches and a process looks
	// for batches nobody drives; default 250 ms.
	Tick time.Duration
	// Lease is how long a driver's claim on a batch lasts without renewal:
	// a batch whose driver died is taken over this long after its last
	// renewal; default 15 s.
	Lease time.Duration
	// DriverGone is how long a driver's process must be missing from NATS
	// (nobody on its inbox, see liveness.go) before another process takes
	// its batches over without waiting for their leases; default 2 s, at
	// most Lease.
	DriverGone time.Duration
	// PublishPerTick bounds the lines a driver queues per tick; default 500.
	PublishPerTick int

	Logger *slog.Logger
	// Metrics records batches and lines; default: a private registry.
	Metrics *metrics.Metrics
	Now     func() time.Time // default time.Now
}

// Service runs /v1/files and /v1/batches for one process: the HTTP
// handlers (Routes), the answers to batch lines' pickups and replies, and
// the drivers of the batches this process took on (Run). Any number of
// processes may run one over the same NATS account; every piece of state is
// in JetStream.
type Service struct {
	opts    Options
	nc      *nats.Conn
	js      jetstream.JetStream
	groups  atomic.Pointer[groupSet] // the model groups in force (SetGroups)
	files   jetstream.ObjectStore
	batches jetstream.KeyValue
	lines   jetstream.KeyValue
	log     *slog.Logger
	metrics *metrics.Metrics
	now     func() time.Time
	self    string // this process's driver id
	inbox   string // where this process answers whether it lives
	known   knownBatches
}

// Open creates or updates the buckets and returns the service. Run starts
// its work.
func Open(ctx context.Context, nc *nats.Conn, opts Options) (*Service, error) {
	if opts.MaxLineBytes <= 0 {
		opts.MaxLineBytes = 1 << 20
	}
	if opts.Tick <= 0 {
		opts.Tick = 250 * time.Millisecond
	}
	if opts.Lease <= 0 {
		opts.Lease = 15 * time.Second
	}
	if opts.DriverGone <= 0 {
		opts.DriverGone = 2 * time.Second
	}
	opts.DriverGone = min(opts.DriverGone, opts.Lease)
	if opts.PublishPerTick <= 0 {
		opts.PublishPerTick = 500
	}
	if opts.Queue == nil {
		return nil, errors.New("batch: Options.Queue is required")
	}
	if opts.MaxFileLines <= 0 || opts.MaxFileBytes <= 0 || opts.MaxCompletionWindow <= 0 {
		return nil, errors.New("batch: MaxFileLines, MaxFileBytes and MaxCompletionWindow must be positive")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s := &Service{opts: opts, nc: nc, js: js, log: opts.Logger, now: opts.Now, self: nuid.Next(), inbox: nc.NewInbox()}
	s.SetGroups(opts.Groups)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.metrics = opts.Metrics; s.metrics == nil {
		s.metrics = metrics.New(prometheus.NewRegistry())
	}
	replicas := max(opts.Replicas, 1)
	s.files, err = js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: opts.Subjects.FilesBucket(), Description: "llmq /v1/files", Storage: jetstream.FileStorage, Replicas: replicas,
	})
	if err != nil {
		return nil, fmt.Errorf("files bucket: %w", err)
	}
	s.batches, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: opts.Subjects.BatchesBucket(), Description: "llmq /v1/batches", Storage: jetstream.FileStorage, Replicas: replicas, History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("batches bucket: %w", err)
	}
	s.lines, err = js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: opts.Subjects.BatchLinesBucket(), Description: "llmq batch line results", Storage: jetstream.FileStorage, Replicas: replicas, History: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("batch lines bucket: %w", err)
	}
	return s, nil
}

// groupSet is the model groups in force, as names and as a matcher.
type groupSet struct {
	names []string
	match messages.Groups
}

// SetGroups puts the model groups of a reloaded config in force: batches
// validated from now on check their lines against them.
func (s *Service) SetGroups(groups []string) {
	s.groups.Store(&groupSet{names: slices.Clone(groups), match: messages.NewGroups(groups)})
}
