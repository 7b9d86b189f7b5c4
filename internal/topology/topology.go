// Package topology creates the JetStream objects llmq needs: the work-queue
// stream that holds requests and one durable pull consumer per band and model
// group (the lane of the anonymous tenant; workers create the consumers of
// the tenant lanes as they are needed, see LaneConsumerConfig). The gateway and every worker call [Ensure] at start, again and
// again until it succeeds (internal/app); it is idempotent, so whichever
// starts first creates them and the rest find them.
//
// Why one consumer per (band, group): a single consumer per band would hand a
// worker the oldest request of the band even when its model group has no
// capacity, which would block every other group behind it.
package topology

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/pkg/messages"
)

// Spec describes the objects to create.
type Spec struct {
	Subjects  messages.Subjects
	Bands     int           // number of priority bands
	Groups    []string      // model group names
	Replicas  int           // stream replicas; 0 means 1
	MaxQueued int64         // backlog cap per band, group and tenant lane; 0 = unlimited
	AckWait   time.Duration // consumer ack wait; 0 means 30 s
}

// DedupeWindow is how long JetStream remembers request ids to drop duplicate publishes.
const DedupeWindow = 2 * time.Minute

// MaxAckPending is each consumer's limit of delivered, unacknowledged
// messages. It is kept far above any realistic number of worker slots: at the
// limit a no-wait fetch stalls.
const MaxAckPending = 100_000

// StreamConfig returns the request stream's configuration.
func (s Spec) StreamConfig() jetstream.StreamConfig {
	cfg := jetstream.StreamConfig{
		Name:        s.Subjects.RequestStream(),
		Description: "llmq requests by priority band and model group",
		Subjects:    []string{s.Subjects.RequestWildcard()},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.Replicas, 1),
		Duplicates:  DedupeWindow,
		AllowMsgTTL: true,
		RePublish: &jetstream.RePublish{
			Source:      s.Subjects.RequestWildcard(),
			Destination: s.Subjects.WakeWildcard(),
			HeadersOnly: true,
		},
	}
	if s.MaxQueued > 0 {
		cfg.MaxMsgsPerSubject = s.MaxQueued
		cfg.Discard = jetstream.DiscardNew
		cfg.DiscardNewPerSubject = true
	}
	return cfg
}

// ConsumerConfig returns the durable consumer of one band and group.
func (s Spec) ConsumerConfig(band int, group string) jetstream.ConsumerConfig {
	ackWait := s.AckWait
	if ackWait <= 0 {
		ackWait = 30 * time.Second
	}
	return jetstream.ConsumerConfig{
		Durable:       s.Subjects.Consumer(band, group),
		Description:   fmt.Sprintf("llmq band %d group %q", band, group),
		FilterSubject: s.Subjects.Request(band, group),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: MaxAckPending,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		Replicas:      max(s.Replicas, 1),
	}
}

// LaneIdle is how long a tenant lane's consumer may go without a fetch
// before the server removes it; a worker creates it again when the lane next
// has a message. Idle lanes so cost nothing, and the consumers of a band and
// group never exceed 1 + messages.TenantLanes whatever the number of tenants.
const LaneIdle = 10 * time.Minute

// LaneConsumerConfig returns the durable consumer of one tenant lane of a
// band and group (messages.Lane); for messages.NoLane it is ConsumerConfig.
// Ensure does not create lane consumers: workers create them when a lane
// first has a message, and the server removes them after LaneIdle.
func (s Spec) LaneConsumerConfig(band int, group string, lane int) jetstream.ConsumerConfig {
	cfg := s.ConsumerConfig(band, group)
	if lane < 0 {
		return cfg
	}
	cfg.Durable = s.Subjects.ConsumerLane(band, group, lane)
	cfg.Description = fmt.Sprintf("llmq band %d group %q tenant lane %d", band, group, lane)
	cfg.FilterSubject = s.Subjects.RequestLane(band, group, lane)
	cfg.InactiveThreshold = LaneIdle
	return cfg
}

// DeadLetterMaxAge is how long the dead-letter stream keeps a request.
const DeadLetterMaxAge = 7 * 24 * time.Hour

// DeadLetterConfig returns the configuration of the stream that keeps
// requests that were terminated for good (undecodable, or failed every
// attempt), with the reason in the Llmq-Dead-Reason header.
func (s Spec) DeadLetterConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        s.Subjects.DeadLetterStream(),
		Description: "llmq requests that failed for good",
		Subjects:    []string{s.Subjects.DeadLetterWildcard()},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    max(s.Replicas, 1),
		MaxAge:      DeadLetterMaxAge,
		MaxMsgs:     1_000_000,
		Discard:     jetstream.DiscardOld,
	}
}

// CallTimeout bounds each JetStream API call of Ensure. A cluster that is
// still forming, or placing the replicas of several new streams at once,
// leaves some calls unanswered for seconds; a short bound and a new call
// (the caller repeats Ensure) get through sooner than one long wait.
const CallTimeout = time.Second

// Ensure creates or updates the streams and every consumer, each call
// bounded by CallTimeout, and returns at the first failure. It is
// idempotent: call it again until it succeeds.
func Ensure(ctx context.Context, js jetstream.JetStream, s Spec) error {
	call := func(f func(context.Context) error) error {
		cctx, cancel := context.WithTimeout(ctx, CallTimeout)
		defer cancel()
		return f(cctx)
	}
	var stream jetstream.Stream
	if err := call(func(ctx context.Context) (err error) {
		stream, err = js.CreateOrUpdateStream(ctx, s.StreamConfig())
		return err
	}); err != nil {
		return fmt.Errorf("create stream %s: %w", s.Subjects.RequestStream(), err)
	}
	if err := call(func(ctx context.Context) error {
		_, err := js.CreateOrUpdateStream(ctx, s.DeadLetterConfig())
		return err
	}); err != nil {
		return fmt.Errorf("create stream %s: %w", s.Subjects.DeadLetterStream(), err)
	}
	for band := range s.Bands {
		for _, g := range s.Groups {
			if err := call(func(ctx context.Context) error {
				_, err := stream.CreateOrUpdateConsumer(ctx, s.ConsumerConfig(band, g))
				return err
			}); err != nil {
				return fmt.Errorf("create consumer %s: %w", s.Subjects.Consumer(band, g), err)
			}
		}
	}
	return nil
}

// Check reports whether the stream and all consumers exist (for readiness).
func Check(ctx context.Context, js jetstream.JetStream, s Spec) error {
	stream, err := js.Stream(ctx, s.Subjects.RequestStream())
	if err != nil {
		return fmt.Errorf("stream %s: %w", s.Subjects.RequestStream(), err)
	}
	info := stream.CachedInfo()
	if want := s.Bands * len(s.Groups); info.State.Consumers < want {
		return fmt.Errorf("stream %s has %d consumers, want %d", s.Subjects.RequestStream(), info.State.Consumers, want)
	}
	return nil
}
