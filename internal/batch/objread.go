package batch

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/nats-io/nats.go/jetstream"
)

// chunkWindow is how many chunks of an object (128 KiB each by default) a
// reader fetches ahead of what it has read.
const chunkWindow = 4

// openFile opens a stored file's content for reading; the caller closes it.
//
// It reads the object's chunks through an ordered pull consumer that holds
// at most chunkWindow of them, so a slow reader (a driver queuing lines a
// tick at a time, an HTTP client downloading slowly) holds little memory.
// (nats.go's ObjectStore.Get pushes the chunks into a subscription that
// buffers whatever the server sends ahead of the reader: tens of MB for a
// large file.) The chunks are the object store's own stream and subjects
// (ADR-20: stream OBJ_<bucket>, subject $O.<bucket>.C.<nuid>).
func (s *Service) openFile(ctx context.Context, id string) (io.ReadCloser, error) {
	info, err := s.files.GetInfo(ctx, id)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if info.Size == 0 {
		return io.NopCloser(&io.LimitedReader{}), nil
	}
	bucket := s.opts.Subjects.FilesBucket()
	cons, err := s.js.OrderedConsumer(ctx, "OBJ_"+bucket, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{"$O." + bucket + ".C." + info.NUID},
	})
	if err != nil {
		return nil, err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(chunkWindow))
	if err != nil {
		return nil, err
	}
	return &chunkReader{it: it, left: info.Size}, nil
}

// chunkReader reads an object's chunks in order.
type chunkReader struct {
	it   jetstream.MessagesContext
	buf  []byte // the rest of the current chunk
	left uint64 // bytes of the object not yet read into buf
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.left == 0 {
			return 0, io.EOF
		}
		m, err := r.it.Next()
		if err != nil {
			return 0, fmt.Errorf("read the file: %w", err)
		}
		data := m.Data()
		if uint64(len(data)) > r.left {
			return 0, errors.New("read the file: its chunks are longer than its size")
		}
		r.buf, r.left = data, r.left-uint64(len(data))
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

func (r *chunkReader) Close() error {
	r.it.Stop()
	return nil
}
