package batch

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/pkg/messages"
)

// A line's result, the value of key "<batch id>.<line>" in the lines
// bucket. A line has no key until a worker's pickup is accepted (state
// started) or the batch is sealed; its final value (state done) is
// written once, with compare-and-set from whatever was there, so a line
// ends exactly once however often it is delivered, answered or sealed.
type lineResult struct {
	State     string          `json:"state"` // stateStarted or stateDone
	Status    int             `json:"status,omitempty"`
	RequestID string          `json:"request_id,omitempty"`
	Body      json.RawMessage `json:"body,omitempty"`
	// Error is set for a line that never ran (the batch expired or was
	// cancelled first).
	Error *lineError `json:"error,omitempty"`
}

type lineError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

const (
	stateStarted = "started"
	stateDone    = "done"
)

// Codes of lines that never ran.
const (
	codeExpired   = "batch_expired"
	codeCancelled = "batch_cancelled"
)

func lineKey(id string, n int) string { return id + "." + strconv.Itoa(n) }

func requestID(id string, n int) string { return id + "-" + strconv.Itoa(n) }

// responderWorkers is how many batch line messages a process handles at
// once (each costs one or two KV round trips).
const responderWorkers = 16

// respond answers the pickups and replies of batch lines, queue-grouped
// over every process that runs a Service, until ctx ends.
func (s *Service) respond(ctx context.Context) error {
	ch := make(chan *nats.Msg, 1024)
	sub, err := s.nc.ChanQueueSubscribe(s.opts.Subjects.BatchReplyWildcard(), "llmq-batch", ch)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	for range responderWorkers {
		go func() {
			for {
				select {
				case m := <-ch:
					s.onLine(ctx, m)
				case <-done:
					return
				}
			}
		}()
	}
	<-ctx.Done()
	// Messages not handled are not answered: their workers try again,
	// reaching another process.
	_ = sub.Unsubscribe()
	close(done)
	return nil
}

func (s *Service) onLine(ctx context.Context, m *nats.Msg) {
	id, n, err := s.opts.Subjects.ParseBatchReply(m.Subject)
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	switch m.Header.Get(messages.HeaderEvent) {
	case messages.EventPickup:
		accept, err := s.pickup(ctx, id, n)
		if err != nil {
			// Unanswered, the worker asks again (another process, or this
			// one once JetStream answers): a refusal would drop the line.
			s.log.Debug("batch line: pickup undecided", "batch", id, "line", n, "error", err)
			return
		}
		ans := messages.PickupReject
		if accept {
			ans = messages.PickupAccept
		}
		_ = m.Respond([]byte(ans))
	case messages.EventReply:
		if err := s.store(ctx, id, n, m); err != nil {
			// Unconfirmed, the worker sends the answer again or
			// serves the line again.
			s.log.Warn("batch line: could not store the answer", "batch", id, "line", n, "error", err)
			return
		}
		_ = m.Respond(nil)
	}
}

// status returns what this process knows of the batch: from the watch of
// the batches bucket, else read. A batch that does not exist is
// ErrNotFound.
func (s *Service) status(ctx context.Context, id string) (knownBatch, error) {
	if b, ok := s.known.get(id); ok {
		return b, nil
	}
	r, _, err := s.getRecord(ctx, id)
	if err != nil {
		return knownBatch{}, err
	}
	return knownBatch{status: r.Batch.Status, expires: r.expiresAt()}, nil
}

// pickup decides whether a worker may start line n of batch id, and
// records that it started. An error means it could not decide (JetStream
// did not answer, the process is stopping): the pickup must go unanswered,
// since a refusal drops the line for good.
func (s *Service) pickup(ctx context.Context, id string, n int) (bool, error) {
	b, err := s.status(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	key := lineKey(id, n)
	if b.status != StatusInProgress || !s.now().Before(b.expires) {
		if b.status == StatusCancelling {
			// A started line whose worker died ends here: its
			// redelivery does not start again.
			if e, err := s.lines.Get(ctx, key); err == nil && decodeState(e.Value()) == stateStarted {
				if _, err := s.lines.Update(ctx, key, notRun(codeCancelled), e.Revision()); err == nil {
					s.metrics.BatchLine(codeCancelled)
				}
			}
		}
		return false, nil
	}
	started, _ := json.Marshal(lineResult{State: stateStarted})
	_, err = s.lines.Create(ctx, key, started)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, err
	}
	e, err := s.lines.Get(ctx, key)
	if err != nil {
		return false, err
	}
	// Started before: its worker died and JetStream redelivered it.
	return decodeState(e.Value()) == stateStarted, nil
}

// store records a worker's answer to line n of batch id.
func (s *Service) store(ctx context.Context, id string, n int, m *nats.Msg) error {
	rep, err := messages.DecodeReply(m.Header, m.Data)
	if err != nil {
		return nil // confirmed and dropped: it can never be read
	}
	res := lineResult{State: stateDone, Status: rep.Status, RequestID: requestID(id, n), Body: rep.Body}
	if !json.Valid(rep.Body) {
		res.Body, _ = json.Marshal(string(rep.Body))
	}
	data, err := json.Marshal(res)
	if err != nil {
		return err
	}
	key := lineKey(id, n)
	for range 3 {
		e, err := s.lines.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			b, serr := s.status(ctx, id)
			if serr != nil && !errors.Is(serr, ErrNotFound) {
				return serr
			}
			if serr != nil || terminal(b.status) || b.status == StatusFinalizing {
				return nil // the batch is over (its keys purged): too late
			}
			_, err = s.lines.Create(ctx, key, data)
		case err != nil:
			return err
		case decodeState(e.Value()) != stateStarted:
			return nil // ended already (an earlier answer, or sealed)
		default:
			_, err = s.lines.Update(ctx, key, data, e.Revision())
		}
		if err == nil {
			s.metrics.BatchLine(rep.Outcome.String())
			return nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) && !isWrongSequence(err) {
			return err
		}
	}
	return errConflict
}

func decodeState(v []byte) string {
	var r struct {
		State string `json:"state"`
	}
	_ = json.Unmarshal(v, &r)
	return r.State
}

// notRun is the final value of a line that never ran.
func notRun(code string) []byte {
	msg := "the batch expired before this request ran"
	if code == codeCancelled {
		msg = "the batch was cancelled before this request ran"
	}
	data, _ := json.Marshal(lineResult{State: stateDone, Error: &lineError{Code: code, Message: msg}})
	return data
}
