package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/llmq/llmq/internal/queuestatus"
	"github.com/llmq/llmq/pkg/messages"
)

// Batch statuses (OpenAI's).
const (
	StatusValidating = "validating"
	StatusFailed     = "failed"
	StatusInProgress = "in_progress"
	StatusFinalizing = "finalizing"
	StatusCompleted  = "completed"
	StatusExpired    = "expired"
	StatusCancelling = "cancelling"
	StatusCancelled  = "cancelled"
)

// terminal reports whether a batch in status st is over.
func terminal(st string) bool {
	return st == StatusCompleted || st == StatusFailed || st == StatusExpired || st == StatusCancelled
}

// Batch is a batch as OpenAI's API shows it.
type Batch struct {
	ID               string            `json:"id"`
	Object           string            `json:"object"` // "batch"
	Endpoint         string            `json:"endpoint"`
	Errors           *BatchErrors      `json:"errors"`
	InputFileID      string            `json:"input_file_id"`
	CompletionWindow string            `json:"completion_window"`
	Status           string            `json:"status"`
	OutputFileID     *string           `json:"output_file_id"`
	ErrorFileID      *string           `json:"error_file_id"`
	CreatedAt        int64             `json:"created_at"`
	InProgressAt     *int64            `json:"in_progress_at"`
	ExpiresAt        *int64            `json:"expires_at"`
	FinalizingAt     *int64            `json:"finalizing_at"`
	CompletedAt      *int64            `json:"completed_at"`
	FailedAt         *int64            `json:"failed_at"`
	ExpiredAt        *int64            `json:"expired_at"`
	CancellingAt     *int64            `json:"cancelling_at"`
	CancelledAt      *int64            `json:"cancelled_at"`
	RequestCounts    RequestCounts     `json:"request_counts"`
	Metadata         map[string]string `json:"metadata"`
}

// BatchErrors are the problems that failed a batch at validation.
type BatchErrors struct {
	Object string       `json:"object"` // "list"
	Data   []BatchError `json:"data"`
}

// BatchError is one problem of a batch's input.
type BatchError struct {
	Code    string  `json:"code"`
	Message string  `json:"message"`
	Param   *string `json:"param"`
	Line    *int    `json:"line"`
}

// RequestCounts are a batch's lines by state.
type RequestCounts struct {
	Total     int `json:"total"`
	Completed int `json:"completed"`
	Failed    int `json:"failed"`
}

// record is a batch as stored in the batches bucket: the API's object and
// what its driver needs.
type record struct {
	Batch Batch `json:"batch"`
	// Owner is the name of the key that created the batch.
	Owner string `json:"owner"`
	// Tenant is who its lines are for: they share their band and group
	// with the tenant's other requests (the key's tenant, or the one a
	// trusted key named in x-llmq-tenant at creation).
	Tenant string `json:"tenant,omitempty"`
	// Allowed are the model groups the owner's key may use; nil = all.
	Allowed  []string `json:"allowed,omitempty"`
	Priority int64    `json:"priority"`
	// ExpiresAtMs is the completion deadline in Unix milliseconds
	// (Batch.ExpiresAt has seconds).
	ExpiresAtMs int64 `json:"expires_at_ms"`
	// Published is how many lines (from the first) are queued.
	Published int `json:"published"`
	// Ending is the status a finalizing batch ends in.
	Ending string `json:"ending,omitempty"`
	// Driver is the process that drives the batch until LeaseUntil (Unix ms).
	Driver     string `json:"driver,omitempty"`
	LeaseUntil int64  `json:"lease_until,omitempty"`
	// DriverInbox is the subject the driver's process answers on while it
	// is connected (see liveness.go).
	DriverInbox string `json:"driver_inbox,omitempty"`
}

func (r *record) expiresAt() time.Time { return time.UnixMilli(r.ExpiresAtMs) }

func (s *Service) getRecord(ctx context.Context, id string) (*record, uint64, error) {
	e, err := s.batches.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	var r record
	if err := json.Unmarshal(e.Value(), &r); err != nil {
		return nil, 0, fmt.Errorf("batch %s: %w", id, err)
	}
	return &r, e.Revision(), nil
}

// errConflict is a record changed by someone else since it was read.
var errConflict = errors.New("the batch changed meanwhile")

func (s *Service) putRecord(ctx context.Context, r *record, rev uint64) (uint64, error) {
	data, err := json.Marshal(r)
	if err != nil {
		return 0, err
	}
	if rev == 0 {
		return s.batches.Create(ctx, r.Batch.ID, data)
	}
	n, err := s.batches.Update(ctx, r.Batch.ID, data, rev)
	if isWrongSequence(err) {
		return 0, errConflict
	}
	return n, err
}

func isWrongSequence(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}

// update applies change to the batch id's record with compare-and-set,
// reading it again after a conflict, until change returns false (nothing
// to write) or the write succeeds.
func (s *Service) update(ctx context.Context, id string, change func(r *record) bool) (*record, error) {
	for range 20 {
		r, rev, err := s.getRecord(ctx, id)
		if err != nil {
			return nil, err
		}
		if !change(r) {
			return r, nil
		}
		if _, err := s.putRecord(ctx, r, rev); !errors.Is(err, errConflict) {
			return r, err
		}
	}
	return nil, fmt.Errorf("batch %s: %w, 20 times in a row", id, errConflict)
}

// CreateParams is a POST /v1/batches body.
type CreateParams struct {
	InputFileID      string            `json:"input_file_id"`
	Endpoint         string            `json:"endpoint"`
	CompletionWindow string            `json:"completion_window"`
	Metadata         map[string]string `json:"metadata"`
	// Priority is llmq's own: the priority of the batch's lines.
	Priority *int64 `json:"priority"`
}

// paramError is a create request's problem with one field.
type paramError struct{ param, msg string }

func (e *paramError) Error() string { return e.msg }

// create validates p and stores a new batch in status validating; a driver
// takes it from there.
func (s *Service) create(ctx context.Context, c caller, tenant string, p *CreateParams) (*Batch, error) {
	if p.Endpoint != EndpointChat && p.Endpoint != EndpointCompletion {
		return nil, &paramError{"endpoint", fmt.Sprintf("endpoint must be %q or %q, got %q", EndpointChat, EndpointCompletion, p.Endpoint)}
	}
	window, err := time.ParseDuration(p.CompletionWindow)
	if err != nil || window < time.Second || window > s.opts.MaxCompletionWindow {
		return nil, &paramError{"completion_window", fmt.Sprintf("completion_window must be a duration from 1s to %s, such as \"24h\", got %q", s.opts.MaxCompletionWindow, p.CompletionWindow)}
	}
	if len(p.Metadata) > 16 {
		return nil, &paramError{"metadata", "metadata may have at most 16 pairs"}
	}
	if p.InputFileID == "" {
		return nil, &paramError{"input_file_id", "input_file_id is required"}
	}
	f, err := s.file(ctx, p.InputFileID, c.name, c.master)
	if errors.Is(err, ErrNotFound) {
		return nil, &paramError{"input_file_id", fmt.Sprintf("no file %q", p.InputFileID)}
	}
	if err != nil {
		return nil, err
	}
	switch {
	case f.Purpose != PurposeBatch:
		return nil, &paramError{"input_file_id", fmt.Sprintf("file %q has purpose %q, not %q", f.ID, f.Purpose, PurposeBatch)}
	case f.url != p.Endpoint:
		return nil, &paramError{"endpoint", fmt.Sprintf("the lines of file %q are for %q, not %q", f.ID, f.url, p.Endpoint)}
	}
	priority := s.opts.DefaultPriority
	if p.Priority != nil {
		priority = *p.Priority
	}
	now := s.now()
	created, expires := now.Unix(), now.Add(window)
	expSec := expires.Unix()
	r := &record{
		Batch: Batch{
			ID: "batch_" + nuid.Next(), Object: "batch", Endpoint: p.Endpoint, InputFileID: f.ID,
			CompletionWindow: p.CompletionWindow, Status: StatusValidating, CreatedAt: created, ExpiresAt: &expSec,
			RequestCounts: RequestCounts{Total: f.lines}, Metadata: p.Metadata,
		},
		Owner: c.name, Tenant: tenant, Allowed: c.allowed, Priority: c.clamp(priority), ExpiresAtMs: expires.UnixMilli(),
	}
	if _, err := s.putRecord(ctx, r, 0); err != nil {
		return nil, err
	}
	s.known.set(r)
	return &r.Batch, nil
}

// batch returns the batch id as the caller may see it.
func (s *Service) batch(ctx context.Context, id string, c caller) (*record, error) {
	r, _, err := s.getRecord(ctx, id)
	if err != nil {
		return nil, err
	}
	if !visible(c.name, c.master, r.Owner) {
		return nil, ErrNotFound
	}
	return r, nil
}

// listBatches returns the caller's batches, newest first.
func (s *Service) listBatches(ctx context.Context, c caller) ([]*record, error) {
	keys, err := s.batches.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []*record
	for id := range keys.Keys() {
		r, _, err := s.getRecord(ctx, id)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if visible(c.name, c.master, r.Owner) {
			out = append(out, r)
		}
	}
	slices.SortStableFunc(out, func(a, b *record) int {
		if a.Batch.CreatedAt != b.Batch.CreatedAt {
			return int(b.Batch.CreatedAt - a.Batch.CreatedAt)
		}
		return compareIDs(b.Batch.ID, a.Batch.ID)
	})
	return out, nil
}

// cancel moves a batch that is not over to cancelling; its driver stops
// queuing lines, lets the started ones finish and ends it as cancelled.
func (s *Service) cancel(ctx context.Context, id string, c caller) (*record, error) {
	if _, err := s.batch(ctx, id, c); err != nil {
		return nil, err
	}
	var over bool
	r, err := s.update(ctx, id, func(r *record) bool {
		over = terminal(r.Batch.Status) || r.Batch.Status == StatusFinalizing
		if over || r.Batch.Status == StatusCancelling {
			return false
		}
		t := s.now().Unix()
		r.Batch.Status, r.Batch.CancellingAt = StatusCancelling, &t
		return true
	})
	if err != nil {
		return nil, err
	}
	if over && r.Batch.Status != StatusCancelled {
		return r, &paramError{"", fmt.Sprintf("batch %s is %s and cannot be cancelled", id, r.Batch.Status)}
	}
	s.known.set(r)
	return r, nil
}

// knownBatches is what this process last saw of each batch that is not
// over (the service watches the batches bucket): enough to answer a
// line's pickup without a read.
type knownBatches struct {
	mu sync.Mutex
	by map[string]knownBatch
}

type knownBatch struct {
	status  string
	expires time.Time
	driver  string
	inbox   string // the driver's DriverInbox
	lease   time.Time
	input   string // input file id
	view    queuestatus.Batch
}

func (k *knownBatches) set(r *record) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.by == nil {
		k.by = make(map[string]knownBatch)
	}
	if terminal(r.Batch.Status) {
		delete(k.by, r.Batch.ID)
		return
	}
	b := &r.Batch
	k.by[b.ID] = knownBatch{status: b.Status, expires: r.expiresAt(), driver: r.Driver, inbox: r.DriverInbox, lease: time.UnixMilli(r.LeaseUntil), input: b.InputFileID,
		view: r.view()}
}

// view is the batch as the queue status shows it, without its band.
func (r *record) view() queuestatus.Batch {
	b := &r.Batch
	return queuestatus.Batch{ID: b.ID, Status: b.Status, Priority: r.Priority, Tenant: r.Tenant, Total: b.RequestCounts.Total,
		Completed: b.RequestCounts.Completed, Failed: b.RequestCounts.Failed, CreatedAt: b.CreatedAt, ExpiresAt: r.ExpiresAtMs / 1000}
}

func (k *knownBatches) remove(id string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.by, id)
}

func (k *knownBatches) get(id string) (knownBatch, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, ok := k.by[id]
	return b, ok
}

// snapshot returns the known batches' ids and states.
func (k *knownBatches) snapshot() map[string]knownBatch {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]knownBatch, len(k.by))
	for id, b := range k.by {
		out[id] = b
	}
	return out
}

// Active returns the batches that are not over, oldest first, for the
// queue status (GET /v1/queue).
func (s *Service) Active() []queuestatus.Batch {
	known := s.known.snapshot()
	out := make([]queuestatus.Batch, 0, len(known))
	for _, b := range known {
		out = append(out, b.view)
	}
	return inBands(out, s.opts.Bands)
}

// ReadActive reads the batches that are not over from the batches bucket,
// oldest first, for a process that runs no Service (llmqctl status). It
// creates nothing: without the bucket there are none. It reads every
// batch's record once (an ordered consumer, deleted when done).
func ReadActive(ctx context.Context, js jetstream.JetStream, subjects messages.Subjects, bands messages.Bands) ([]queuestatus.Batch, error) {
	kv, err := js.KeyValue(ctx, subjects.BatchesBucket())
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	var out []queuestatus.Batch
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("the watch of the batches bucket stopped")
			}
			if e == nil {
				return inBands(out, bands), nil // every record is in
			}
			var r record
			if json.Unmarshal(e.Value(), &r) == nil && !terminal(r.Batch.Status) {
				out = append(out, r.view())
			}
		}
	}
}

// inBands sets the batches' bands and sorts them oldest first.
func inBands(out []queuestatus.Batch, bands messages.Bands) []queuestatus.Batch {
	for i := range out {
		out[i].Band = bands.Band(out[i].Priority)
	}
	slices.SortFunc(out, func(a, b queuestatus.Batch) int {
		if a.CreatedAt != b.CreatedAt {
			return int(a.CreatedAt - b.CreatedAt)
		}
		return compareIDs(a.ID, b.ID)
	})
	return out
}

// countActive sets the batches gauge from what this process knows.
func (s *Service) countActive() {
	n := map[string]int{StatusValidating: 0, StatusInProgress: 0, StatusCancelling: 0, StatusFinalizing: 0}
	for _, b := range s.known.snapshot() {
		n[b.status]++
	}
	for st, c := range n {
		s.metrics.Batches(st, c)
	}
}

// usedBy returns a batch not over that reads the file id, or "".
func (k *knownBatches) usedBy(fileID string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	for id, b := range k.by {
		if b.input == fileID {
			return id
		}
	}
	return ""
}
