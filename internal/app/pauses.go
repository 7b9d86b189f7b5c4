package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/pauses"
)

// pausesOpenTimeout bounds one attempt to open the pauses bucket.
const pausesOpenTimeout = 3 * time.Second

// openPauses opens the mirror of the paused groups and bands (llmqctl
// pause), creating its bucket if needed, and waits (logging what for) while
// JetStream does not answer, as setUp does.
func (s *setup) openPauses(ctx context.Context, nc *nats.Conn, log *slog.Logger, prog *progress) (*pauses.Set, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	bucket := s.subjects.PausesBucket()
	prog.set("the pauses bucket " + bucket)
	var ps *pauses.Set
	err = converge(ctx, log, "the pauses bucket "+bucket, func(ctx context.Context) (bool, error) {
		octx, cancel := context.WithTimeout(ctx, pausesOpenTimeout)
		defer cancel()
		ps, err = pauses.Open(octx, js, s.subjects, s.cfg.LLMQ.Replicas)
		return true, err
	})
	if err != nil {
		return nil, fmt.Errorf("open the pauses bucket %s: %w", bucket, err)
	}
	return ps, nil
}
