package app

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/pauses"
)

// openPauses opens the mirror of the paused groups and bands (llmqctl
// pause), creating its bucket if needed.
func (s *setup) openPauses(ctx context.Context, nc *nats.Conn) (*pauses.Set, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ps, err := pauses.Open(ctx, js, s.subjects, s.cfg.LLMQ.Replicas)
	if err != nil {
		return nil, fmt.Errorf("open the pauses bucket %s: %w", s.subjects.PausesBucket(), err)
	}
	return ps, nil
}
