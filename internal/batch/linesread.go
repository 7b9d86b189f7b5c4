package batch

import (
	"context"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// readBuffer bounds the line results a reader holds that it has not handled:
// reading a batch's results never holds more than this many (where a KV
// watcher's push subscription buffers whatever the server sends).
const readBuffer = 256

// readLines calls f with each line result of batch id, in stream order:
// every current value, then (live) every new one until ctx ends. The lines
// bucket keeps one revision per key, so its stream holds exactly the
// current values. Without live, it returns once every current value was
// handed to f. It reads through an ordered pull consumer that holds at most
// readBuffer messages.
func (s *Service) readLines(ctx context.Context, id string, live bool, f func(n int, value []byte)) error {
	bucket := s.opts.Subjects.BatchLinesBucket()
	prefix := "$KV." + bucket + "." + id + "."
	cons, err := s.js.OrderedConsumer(ctx, "KV_"+bucket, jetstream.OrderedConsumerConfig{FilterSubjects: []string{prefix + "*"}})
	if err != nil {
		return err
	}
	if !live {
		info, err := cons.Info(ctx)
		if err != nil {
			return err
		}
		if info.NumPending == 0 {
			return nil
		}
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(readBuffer))
	if err != nil {
		return err
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		if op := m.Headers().Get("KV-Operation"); op == "" {
			if n, err := strconv.Atoi(strings.TrimPrefix(m.Subject(), prefix)); err == nil {
				f(n, m.Data())
			}
		}
		if !live {
			if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
				return nil
			}
		}
	}
}
