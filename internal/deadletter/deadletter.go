// Package deadletter writes, reads and edits the dead-letter stream (<PREFIX>_DEAD),
// where workers keep a copy of every request that ended for good without an
// answer: undecodable, failed after its retries and fallbacks, or published
// to a subject no worker serves. Each copy keeps the request's headers (less
// JetStream's Nats-* ones) and body, on the subject <prefix>.dead.<band>.<group>,
// with the reason in the Llmq-Dead-Reason header.
//
// A dead letter is named by its sequence number in the stream: it is unique
// and present even when the request had no valid id. The stream keeps
// letters for a week (topology.DeadLetterMaxAge).
//
// A Stream is safe for concurrent use; it does not own the connection.
package deadletter

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/pkg/messages"
)

// Msg is the dead letter of a request stored on subject with headers h and
// body data: its copy, less JetStream's own Nats-* headers, on the
// dead-letter subject of its band and group, with reason in
// Llmq-Dead-Reason. Workers publish it to JetStream.
func Msg(subjects messages.Subjects, subject string, h nats.Header, data []byte, reason string) *nats.Msg {
	dead := nats.NewMsg(subjects.DeadLetter(subject))
	for k, v := range h {
		if !strings.HasPrefix(k, "Nats-") {
			dead.Header[k] = v
		}
	}
	dead.Header.Set(messages.HeaderDeadReason, reason)
	dead.Data = data
	return dead
}

// ErrNotFound reports a sequence number that names no dead letter.
var ErrNotFound = errors.New("no such dead letter")

// Letter is one dead letter.
type Letter struct {
	Seq       uint64      // sequence number in the dead-letter stream: the letter's id
	Subject   string      // <prefix>.dead.<band>.<group>, or <prefix>.dead.unknown
	Time      time.Time   // when it was dead-lettered
	Band      int         // -1 when the subject does not name one
	Group     string      // "" when the subject does not name one
	RequestID string      // Llmq-Request-Id; may be empty for an undecodable request
	Reason    string      // Llmq-Dead-Reason
	Header    nats.Header // every header kept
	Data      []byte      // the request body
}

func letterOf(subjects messages.Subjects, m *jetstream.RawStreamMsg) Letter {
	l := Letter{Seq: m.Sequence, Subject: m.Subject, Time: m.Time, Band: -1, Header: m.Header, Data: m.Data}
	if band, group, err := subjects.ParseRequest(m.Subject); err == nil {
		l.Band, l.Group = band, group
	}
	l.RequestID = m.Header.Get(messages.HeaderRequestID)
	l.Reason = m.Header.Get(messages.HeaderDeadReason)
	return l
}

// Request decodes the letter back into the request it was. It fails for a
// letter that was undecodable in the first place.
func (l Letter) Request(subjects messages.Subjects) (*messages.Request, error) {
	return subjects.DecodeRequest(l.Subject, l.Header, l.Data)
}

// Stream is the dead-letter stream of one installation.
type Stream struct {
	subjects messages.Subjects
	stream   jetstream.Stream
}

// Open binds to the dead-letter stream of subjects. It does not create it:
// the gateway and the workers do (internal/topology).
func Open(ctx context.Context, js jetstream.JetStream, subjects messages.Subjects) (*Stream, error) {
	s, err := js.Stream(ctx, subjects.DeadLetterStream())
	if err != nil {
		return nil, fmt.Errorf("dead-letter stream %s: %w", subjects.DeadLetterStream(), err)
	}
	return &Stream{subjects: subjects, stream: s}, nil
}

// State is the stream's size and range of sequence numbers.
type State struct {
	Count          uint64
	FirstSeq, Last uint64
}

// State reads the stream's current state.
func (s *Stream) State(ctx context.Context) (State, error) {
	info, err := s.stream.Info(ctx)
	if err != nil {
		return State{}, fmt.Errorf("dead-letter stream %s: %w", s.subjects.DeadLetterStream(), err)
	}
	return State{Count: info.State.Msgs, FirstSeq: info.State.FirstSeq, Last: info.State.LastSeq}, nil
}

// Get returns the letter with sequence number seq.
func (s *Stream) Get(ctx context.Context, seq uint64) (Letter, error) {
	m, err := s.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Letter{}, fmt.Errorf("%w: %d", ErrNotFound, seq)
	}
	if err != nil {
		return Letter{}, fmt.Errorf("dead letter %d: %w", seq, err)
	}
	return letterOf(s.subjects, m), nil
}

// List returns up to limit letters with a sequence number of at least from,
// oldest first, and whether more follow. It costs one request per letter.
func (s *Stream) List(ctx context.Context, from uint64, limit int) ([]Letter, bool, error) {
	var out []Letter
	for seq := max(from, 1); ; {
		m, err := s.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(s.subjects.DeadLetterWildcard()))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, false, nil
		}
		if err != nil {
			return out, false, fmt.Errorf("dead letters from %d: %w", seq, err)
		}
		if len(out) == limit {
			return out, true, nil
		}
		out = append(out, letterOf(s.subjects, m))
		seq = m.Sequence + 1
	}
}

// Latest returns up to n of the newest letters, newest first. It looks at
// no more than 4n sequence numbers back from the last, so after many
// deletions it may return fewer.
func (s *Stream) Latest(ctx context.Context, n int) ([]Letter, error) {
	st, err := s.State(ctx)
	if err != nil || st.Count == 0 {
		return nil, err
	}
	var out []Letter
	for seq, probes := st.Last, 0; seq >= st.FirstSeq && seq > 0 && len(out) < n && probes < 4*n; seq, probes = seq-1, probes+1 {
		l, err := s.Get(ctx, seq)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, l)
	}
	return out, nil
}

// Delete removes the letter with sequence number seq.
func (s *Stream) Delete(ctx context.Context, seq uint64) error {
	if _, err := s.Get(ctx, seq); err != nil {
		return err
	}
	if err := s.stream.DeleteMsg(ctx, seq); err != nil {
		return fmt.Errorf("delete dead letter %d: %w", seq, err)
	}
	return nil
}

// Purge removes every letter and returns how many there were.
func (s *Stream) Purge(ctx context.Context) (uint64, error) {
	st, err := s.State(ctx)
	if err != nil {
		return 0, err
	}
	if err := s.stream.Purge(ctx); err != nil {
		return 0, fmt.Errorf("purge %s: %w", s.subjects.DeadLetterStream(), err)
	}
	return st.Count, nil
}

// ParseID reads a letter's id (its sequence number) as a user typed it.
func ParseID(s string) (uint64, error) {
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil || seq == 0 {
		return 0, fmt.Errorf("dead letter id %q: want the sequence number that \"dead list\" shows (a positive integer)", s)
	}
	return seq, nil
}
