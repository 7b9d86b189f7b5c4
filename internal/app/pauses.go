package app

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/pauses"
)

// openPauses opens the mirror of the paused groups and bands (llmqctl
// pause), creating its bucket if needed, and waits (logging what for) while
// JetStream does not answer, as setUp does.
func (s *setup) openPauses(ctx context.Context, nc *nats.Conn, log *slog.Logger, prog *progress) (*pauses.Set, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return openBucket(ctx, log, prog, "the pauses bucket "+s.subjects.PausesBucket(), func(ctx context.Context) (*pauses.Set, bool, error) {
		ps, err := pauses.Open(ctx, js, s.subjects, s.cfg.LLMQ.Replicas)
		return ps, true, err
	})
}
