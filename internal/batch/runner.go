package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// Run answers batch lines' pickups and replies, and drives batches, until
// ctx ends. Every process that runs it watches the batches bucket; each
// batch that is not over has one driver, the process holding its lease
// (Driver and LeaseUntil in its record, taken and renewed with
// compare-and-set). A driver that dies loses its lease after Options.Lease,
// or sooner once its process is found gone from NATS (liveness.go), and
// another process takes the batch over from its stored state: what a
// killed process changes is only timing.
func (s *Service) Run(ctx context.Context) error {
	w, err := s.batches.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch the batches: %w", err)
	}
	defer func() { _ = w.Stop() }()
	alive, err := s.answerProbes()
	if err != nil {
		return fmt.Errorf("answer on the driver inbox: %w", err)
	}
	defer func() { _ = alive.Unsubscribe() }()
	respDone := make(chan error, 1)
	go func() { respDone <- s.respond(ctx) }()

	var wg sync.WaitGroup
	defer wg.Wait()
	driving := map[string]bool{}
	var mu sync.Mutex
	pr := newProbes(s.nc, s.opts.Tick, s.opts.DriverGone)
	t := time.NewTicker(s.opts.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return <-respDone
		case e, ok := <-w.Updates():
			if !ok {
				return <-respDone
			}
			if e == nil {
				continue // the initial values are in
			}
			var r record
			switch {
			case e.Operation() != jetstream.KeyValuePut:
				s.known.remove(e.Key())
			case json.Unmarshal(e.Value(), &r) == nil:
				s.known.set(&r)
			}
			s.countActive()
		case <-t.C:
			now := s.now()
			pr.tick()
			for id, b := range s.known.snapshot() {
				mu.Lock()
				busy := driving[id]
				mu.Unlock()
				gone := ""
				switch {
				case busy:
					continue
				case b.driver == "" || b.driver == s.self || !now.Before(b.lease):
					// Free, or held by this process's driver that stopped
					// (a read failed), or its lease ran out.
				case pr.gone(b.inbox, now):
					gone = b.inbox
				default:
					continue
				}
				if !s.claim(ctx, id, gone) {
					continue
				}
				mu.Lock()
				driving[id] = true
				mu.Unlock()
				wg.Add(1)
				go func() {
					defer wg.Done()
					s.drive(ctx, id)
					mu.Lock()
					delete(driving, id)
					mu.Unlock()
				}()
			}
		}
	}
}

// claim takes the lease of batch id if nobody holds it, or if its holder
// answers on gone (non-empty) and was found gone from NATS.
func (s *Service) claim(ctx context.Context, id, gone string) bool {
	var took bool
	var from, why string
	_, err := s.update(ctx, id, func(r *record) bool {
		now := s.now()
		took, from, why = false, r.Driver, ""
		switch {
		case terminal(r.Batch.Status):
		case r.Driver == "" || r.Driver == s.self:
			took = true
		case now.UnixMilli() >= r.LeaseUntil:
			took, why = true, "its lease ran out"
		case gone != "" && r.DriverInbox == gone:
			took, why = true, "its process is gone from NATS"
		}
		if took {
			r.Driver, r.DriverInbox, r.LeaseUntil = s.self, s.inbox, now.Add(s.opts.Lease).UnixMilli()
		}
		return took
	})
	took = err == nil && took
	if took && why != "" {
		s.log.Info("batch driver: taking the batch over", "batch", id, "from", from, "because", why)
	}
	return took
}

// release gives up the lease of batch id when this process stops, so that
// another process takes the batch over at once rather than when the lease
// runs out.
func (s *Service) release(ctx context.Context, id string) {
	if ctx.Err() == nil {
		return // the batch is over, or its lease was lost
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_, _ = s.update(rctx, id, func(r *record) bool {
		if r.Driver != s.self {
			return false
		}
		r.Driver, r.DriverInbox, r.LeaseUntil = "", "", 0
		return true
	})
}

// driver is the state of one batch this process drives.
type driver struct {
	s  *Service
	id string

	mu             sync.Mutex
	states         []uint8 // by line: lineNone, lineStarted, lineOK, lineFailed
	ok, failed, on int     // lines served, failed (or never run), started

	input io.ReadCloser // open while queuing lines
	rd    *lineReader
}

const (
	lineNone uint8 = iota
	lineStarted
	lineOK
	lineFailed
)

// drive runs batch id until it is over or this process loses its lease.
func (s *Service) drive(ctx context.Context, id string) {
	d := &driver{s: s, id: id}
	defer d.closeInput()
	defer s.release(ctx, id)
	log := s.log.With("batch", id)
	var watching bool
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	t := time.NewTicker(s.opts.Tick)
	defer t.Stop()
	for {
		r, rev, err := s.getRecord(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("batch driver: read failed", "error", err)
			}
			return
		}
		if r.Driver != s.self || terminal(r.Batch.Status) {
			return
		}
		if !watching && r.Batch.Status != StatusValidating {
			if err := d.watch(wctx, r.Batch.RequestCounts.Total); err != nil {
				log.Warn("batch driver: watching the lines failed", "error", err)
				return
			}
			watching = true
		}
		over, err := d.step(ctx, r, rev)
		switch {
		case errors.Is(err, errConflict):
			// Changed meanwhile (a cancel): read it again.
		case err != nil:
			if ctx.Err() == nil {
				log.Warn("batch driver: step failed", "status", r.Batch.Status, "error", err)
			}
		case over:
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// step moves batch r on by what is due now, writes r back (compare-and-set
// on rev) when it changed or its lease needs renewing, and reports whether
// the batch is over.
func (d *driver) step(ctx context.Context, r *record, rev uint64) (bool, error) {
	s := d.s
	now := s.now()
	before, _ := json.Marshal(r)
	ts := now.Unix()
	switch r.Batch.Status {
	case StatusValidating:
		errs, err := d.validate(ctx, r)
		if err != nil {
			return false, err
		}
		if len(errs) > 0 {
			r.Batch.Status, r.Batch.FailedAt = StatusFailed, &ts
			r.Batch.Errors = &BatchErrors{Object: "list", Data: errs}
		} else {
			r.Batch.Status, r.Batch.InProgressAt = StatusInProgress, &ts
		}
	case StatusInProgress:
		d.counts(r)
		switch {
		case !now.Before(r.expiresAt()):
			r.Batch.Status, r.Batch.FinalizingAt, r.Ending = StatusFinalizing, &ts, StatusExpired
		case r.Published < r.Batch.RequestCounts.Total:
			n, err := d.publish(ctx, r)
			r.Published += n
			if err != nil {
				s.log.Warn("batch driver: queuing lines failed", "batch", r.Batch.ID, "error", err)
			}
		case d.finished(r.Batch.RequestCounts.Total):
			r.Batch.Status, r.Batch.FinalizingAt, r.Ending = StatusFinalizing, &ts, StatusCompleted
		}
	case StatusCancelling:
		d.closeInput()
		d.counts(r)
		expired := !now.Before(r.expiresAt())
		if d.started() == 0 || expired {
			sealed, err := d.seal(ctx, r, codeCancelled, expired)
			if err != nil {
				return false, err
			}
			if sealed {
				r.Batch.Status, r.Batch.FinalizingAt, r.Ending = StatusFinalizing, &ts, StatusCancelled
			}
		}
	case StatusFinalizing:
		d.closeInput()
		if err := d.finalize(ctx, r); err != nil {
			return false, err
		}
		d.counts(r)
		switch r.Ending {
		case StatusExpired:
			r.Batch.ExpiredAt = &ts
		case StatusCancelled:
			r.Batch.CancelledAt = &ts
		default:
			r.Batch.CompletedAt = &ts
		}
		r.Batch.Status = r.Ending
	}
	after, _ := json.Marshal(r)
	renew := time.UnixMilli(r.LeaseUntil).Sub(now) < s.opts.Lease*2/3
	if string(before) == string(after) && !renew {
		return false, nil
	}
	r.LeaseUntil = now.Add(s.opts.Lease).UnixMilli()
	if _, err := s.putRecord(ctx, r, rev); err != nil {
		return false, err
	}
	s.known.set(r)
	if terminal(r.Batch.Status) {
		s.metrics.BatchEnded(r.Batch.Status)
		d.purge(ctx, r.Batch.ID)
		return true, nil
	}
	return false, nil
}

// validate checks every line's model group against the config and the
// owner's key; it returns the problems, at most maxErrors.
func (d *driver) validate(ctx context.Context, r *record) ([]BatchError, error) {
	const maxErrors = 100
	rc, err := d.s.openFile(ctx, r.Batch.InputFileID)
	if errors.Is(err, ErrNotFound) {
		param := "input_file_id"
		return []BatchError{{Code: "file_not_found", Param: &param, Message: "the input file " + r.Batch.InputFileID + " was deleted"}}, nil
	}
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	rd := newLineReader(rc)
	var errs []BatchError
	for len(errs) < maxErrors {
		l, err := rd.read()
		if errors.Is(err, io.EOF) {
			break
		}
		no := rd.next
		if err != nil {
			var le *LineError
			if !errors.As(err, &le) {
				return nil, err
			}
			errs = append(errs, BatchError{Code: le.Code, Message: le.Message, Line: &le.Line})
			break
		}
		model, _ := modelOf(l.Body)
		group, ok := d.s.groups.Load().match.Match(model)
		param := "body.model"
		switch {
		case !ok:
			errs = append(errs, BatchError{Code: "model_not_found", Param: &param, Line: &no,
				Message: fmt.Sprintf("line %d: the model group %q does not exist", no, model)})
		case r.Allowed != nil && !contains(r.Allowed, group):
			errs = append(errs, BatchError{Code: "model_not_allowed", Param: &param, Line: &no,
				Message: fmt.Sprintf("line %d: this key may not use the model group %q", no, group)})
		}
	}
	return errs, nil
}

func contains(list []string, v string) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

func modelOf(body []byte) (string, bool) {
	var m struct {
		Model string `json:"model"`
	}
	err := json.Unmarshal(body, &m)
	return m.Model, err == nil && m.Model != ""
}

// llmqFields are body fields llmq consumes (as the gateway does): a batch's
// priority is the batch's, so they are removed from each line's body.
var llmqFields = []string{"priority", "timeout"}

// publish queues lines from r.Published on, at most PublishPerTick, and
// returns how many it queued. A full queue for a line's band and group
// stops it until the next tick.
func (d *driver) publish(ctx context.Context, r *record) (int, error) {
	s := d.s
	if d.rd == nil || d.rd.next != r.Published {
		d.closeInput()
		rc, err := s.openFile(ctx, r.Batch.InputFileID)
		if err != nil {
			return 0, err
		}
		d.input, d.rd = rc, newLineReader(rc)
		for d.rd.next < r.Published {
			if _, err := d.rd.read(); err != nil {
				d.closeInput()
				return 0, fmt.Errorf("skip to line %d: %w", r.Published+1, err)
			}
		}
	}
	kind := messages.KindChat
	if r.Batch.Endpoint == EndpointCompletion {
		kind = messages.KindCompletion
	}
	n := 0
	for ; n < s.opts.PublishPerTick && d.rd.next < r.Batch.RequestCounts.Total; n++ {
		i := d.rd.next
		l, err := d.rd.read()
		if err != nil {
			d.closeInput()
			return n, err
		}
		body := []byte(l.Body)
		for _, f := range llmqFields {
			if b, err := sjson.DeleteBytes(body, f); err == nil {
				body = b
			}
		}
		model, _ := modelOf(body)
		group, _ := s.groups.Load().match.Match(model)
		req := &client.Request{
			ID: requestID(r.Batch.ID, i), Kind: kind, Group: group, Priority: r.Priority, Tenant: r.Tenant,
			Deadline: r.expiresAt(), AnswerDeadline: r.expiresAt(), Body: body,
		}
		if err := s.opts.Queue.Enqueue(ctx, req, s.opts.Subjects.BatchReply(r.Batch.ID, i)); err != nil {
			// The line is read but not queued: read it again next time.
			d.closeInput()
			if errors.Is(err, messages.ErrQueueFull) {
				return n, nil // its band and group are full: try again next tick
			}
			return n, err
		}
	}
	return n, nil
}

func (d *driver) closeInput() {
	if d.input != nil {
		_ = d.input.Close()
		d.input, d.rd = nil, nil
	}
}

// watch follows the batch's line results and keeps their states and
// counts, until ctx ends.
func (d *driver) watch(ctx context.Context, total int) error {
	d.mu.Lock()
	d.states = make([]uint8, total)
	d.mu.Unlock()
	go func() {
		for ctx.Err() == nil {
			err := d.s.readLines(ctx, d.id, true, func(n int, v []byte) {
				if n < total {
					d.set(n, stateOf(v))
				}
			})
			if err != nil && ctx.Err() == nil {
				d.s.log.Warn("batch driver: reading the line results failed; reading again", "batch", d.id, "error", err)
				select {
				case <-ctx.Done():
				case <-time.After(d.s.opts.Tick):
				}
			}
		}
	}()
	return nil
}

// stateOf reads a line result's state without decoding its body.
func stateOf(v []byte) uint8 {
	r := gjson.GetManyBytes(v, "state", "status", "error")
	switch {
	case r[0].Str == stateStarted:
		return lineStarted
	case r[0].Str != stateDone:
		return lineNone
	case !r[2].Exists() && r[1].Int() >= 200 && r[1].Int() < 300:
		return lineOK
	}
	return lineFailed
}

func (d *driver) set(n int, st uint8) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if old := d.states[n]; old != st {
		d.states[n] = st
		d.count(old, -1)
		d.count(st, 1)
	}
}

func (d *driver) count(st uint8, delta int) {
	switch st {
	case lineOK:
		d.ok += delta
	case lineFailed:
		d.failed += delta
	case lineStarted:
		d.on += delta
	}
}

func (d *driver) counts(r *record) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r.Batch.RequestCounts.Completed, r.Batch.RequestCounts.Failed = d.ok, d.failed
}

func (d *driver) finished(total int) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ok+d.failed == total
}

func (d *driver) started() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.on
}

// seal ends every line that has not ended as never run (code): lines
// without a key, and, with force, lines that started. It reports whether
// every line has ended (without force a line may start meanwhile).
func (d *driver) seal(ctx context.Context, r *record, code string, force bool) (bool, error) {
	d.mu.Lock()
	var todo []int
	for n, st := range d.states {
		if st == lineNone || (force && st == lineStarted) {
			todo = append(todo, n)
		}
	}
	d.mu.Unlock()
	all := true
	for _, n := range todo {
		key := lineKey(r.Batch.ID, n)
		if _, err := d.s.lines.Create(ctx, key, notRun(code)); err == nil {
			d.s.metrics.BatchLine(code)
			d.set(n, lineFailed)
			continue
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, err
		}
		e, err := d.s.lines.Get(ctx, key)
		if err != nil {
			return false, err
		}
		switch decodeState(e.Value()) {
		case stateDone:
			d.set(n, stateOf(e.Value()))
		case stateStarted:
			if !force {
				d.set(n, lineStarted)
				all = false
				continue
			}
			if _, err := d.s.lines.Update(ctx, key, notRun(code), e.Revision()); err == nil {
				d.s.metrics.BatchLine(code)
			} else if !isWrongSequence(err) {
				return false, err
			}
			all = false // an answer may have won: look again next tick
		}
	}
	return all, nil
}

// finalize ends the lines still open and writes the output and error files.
func (d *driver) finalize(ctx context.Context, r *record) error {
	switch r.Ending {
	case StatusExpired:
		if sealed, err := d.seal(ctx, r, codeExpired, true); err != nil || !sealed {
			return errors.Join(err, errConflict)
		}
	case StatusCancelled:
		if sealed, err := d.seal(ctx, r, codeCancelled, true); err != nil || !sealed {
			return errors.Join(err, errConflict)
		}
	}
	ids, err := d.customIDs(ctx, r)
	if err != nil {
		return err
	}
	out, errs, err := d.s.writeResults(ctx, r, ids)
	if err != nil {
		return err
	}
	r.Batch.OutputFileID, r.Batch.ErrorFileID = out, errs
	return nil
}

// customIDs reads the input file's custom ids, by line.
func (d *driver) customIDs(ctx context.Context, r *record) ([]string, error) {
	rc, err := d.s.openFile(ctx, r.Batch.InputFileID)
	if err != nil {
		return nil, fmt.Errorf("input file: %w", err)
	}
	defer rc.Close()
	rd := newLineReader(rc)
	ids := make([]string, 0, r.Batch.RequestCounts.Total)
	for {
		l, err := rd.read()
		if errors.Is(err, io.EOF) {
			return ids, nil
		}
		if err != nil {
			return nil, err
		}
		ids = append(ids, *l.CustomID)
	}
}

// purge removes the batch's line keys once its files are written.
func (d *driver) purge(ctx context.Context, id string) {
	st, err := d.s.js.Stream(ctx, "KV_"+d.s.opts.Subjects.BatchLinesBucket())
	if err == nil {
		err = st.Purge(ctx, jetstream.WithPurgeSubject("$KV."+d.s.opts.Subjects.BatchLinesBucket()+"."+id+".>"))
	}
	if err != nil {
		d.s.log.Warn("batch driver: purging the line results failed", "batch", id, "error", err)
	}
}
