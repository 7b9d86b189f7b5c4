package batch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"sync/atomic"

	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/internal/queuestatus"
	"github.com/llmq/llmq/pkg/messages"
)

// caller is who asks, as far as files and batches care.
type caller struct {
	name     string
	master   bool     // sees everyone's files and batches
	allowed  []string // model groups the key may use; nil = all
	clampKey gateway.Caller
}

func (c caller) clamp(p int64) int64 { return c.clampKey.Clamp(p) }

func (s *Service) callerOf(r *http.Request) caller {
	g := gateway.CallerOf(r.Context())
	c := caller{name: g.Name(), master: g.Master(), clampKey: g}
	for _, group := range s.groups.Load().names {
		if !g.Allows(group) {
			c.allowed = s.allowedGroups(g)
			break
		}
	}
	return c
}

func (s *Service) allowedGroups(g gateway.Caller) []string {
	out := []string{}
	for _, group := range s.groups.Load().names {
		if g.Allows(group) {
			out = append(out, group)
		}
	}
	return out
}

// Front serves the HTTP API of a Service that may not be open yet (the
// gateway serves before its JetStream objects exist): until Set, every
// route answers 503 broker_unavailable with Retry-After.
type Front struct{ s atomic.Pointer[Service] }

// Set makes f serve s.
func (f *Front) Set(s *Service) { f.s.Store(s) }

// Active is the service's Active, or nothing before Set.
func (f *Front) Active() []queuestatus.Batch {
	if s := f.s.Load(); s != nil {
		return s.Active()
	}
	return []queuestatus.Batch{}
}

// Routes are the HTTP handlers of /v1/files and /v1/batches by ServeMux
// pattern, to be served behind the gateway's authentication
// (gateway.Options.Routes).
func (f *Front) Routes() map[string]http.Handler {
	routes := map[string]func(*Service, http.ResponseWriter, *http.Request){
		"POST /v1/files":               (*Service).handleUpload,
		"GET /v1/files":                (*Service).handleListFiles,
		"GET /v1/files/{id}":           (*Service).handleGetFile,
		"GET /v1/files/{id}/content":   (*Service).handleFileContent,
		"DELETE /v1/files/{id}":        (*Service).handleDeleteFile,
		"POST /v1/batches":             (*Service).handleCreate,
		"GET /v1/batches":              (*Service).handleListBatches,
		"GET /v1/batches/{id}":         (*Service).handleGetBatch,
		"POST /v1/batches/{id}/cancel": (*Service).handleCancel,
	}
	out := make(map[string]http.Handler, len(routes))
	for pattern, h := range routes {
		out[pattern] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s := f.s.Load()
			if s == nil {
				gateway.WriteError(w, &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, RetryAfter: "1",
					Message: "files and batches are not available yet: the gateway is starting"})
				return
			}
			h(s, w, r)
		})
	}
	return out
}

func invalid(param, format string, args ...any) *messages.Error {
	return messages.Errorf(messages.OutcomeInvalidRequest, param, format, args...)
}

func notFound(what, id string) *messages.Error {
	return &messages.Error{Outcome: messages.OutcomeInvalidRequest, Status: http.StatusNotFound, Code: "not_found",
		Message: fmt.Sprintf("No such %s object: %s", what, id)}
}

// fail answers err: a *messages.Error as it is, anything else as the
// broker being unavailable (every other error comes from JetStream).
func (s *Service) fail(w http.ResponseWriter, err error) {
	var e *messages.Error
	if !errors.As(err, &e) {
		s.log.Warn("files and batches: JetStream call failed", "error", err)
		e = &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: err.Error(), RetryAfter: "1"}
	}
	gateway.WriteError(w, e)
}

func (s *Service) handleUpload(w http.ResponseWriter, r *http.Request) {
	c := s.callerOf(r)
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/form-data" {
		s.fail(w, invalid("", "POST /v1/files takes multipart/form-data with the fields purpose and file"))
		return
	}
	// Room for the form fields and the multipart framing around the file.
	r.Body = http.MaxBytesReader(w, r.Body, s.opts.MaxFileBytes+1<<20)
	mr, err := r.MultipartReader()
	if err != nil {
		s.fail(w, invalid("", "reading the form: %v", err))
		return
	}
	var purpose string
	var f *storedFile
	defer func() {
		if f != nil { // a file whose form turned out bad
			_ = s.deleteFile(context.WithoutCancel(r.Context()), f.ID)
		}
	}()
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.fail(w, s.uploadError(err))
			return
		}
		switch part.FormName() {
		case "purpose":
			v, err := io.ReadAll(io.LimitReader(part, 64))
			if err != nil {
				s.fail(w, s.uploadError(err))
				return
			}
			if purpose = string(v); purpose != PurposeBatch {
				s.fail(w, invalid("purpose", "purpose must be %q (the only purpose llmq stores), got %q", PurposeBatch, purpose))
				return
			}
		case "file":
			if f != nil {
				s.fail(w, invalid("file", "the form has more than one file"))
				return
			}
			if f, err = s.uploadBatchFile(r.Context(), c.name, part.FileName(), part); err != nil {
				s.fail(w, s.uploadError(err))
				return
			}
		}
		_ = part.Close()
	}
	switch {
	case f == nil:
		s.fail(w, invalid("file", "the form has no file"))
	case purpose == "":
		s.fail(w, invalid("purpose", "purpose is required"))
	default:
		out := f.File
		f = nil
		writeJSON(w, http.StatusOK, out)
	}
}

// uploadError turns an upload's failure into its answer.
func (s *Service) uploadError(err error) error {
	var le *LineError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &le):
		e := invalid("file", "%s", le.Error())
		e.Code = le.Code
		return e
	case errors.Is(err, errTooLarge), errors.As(err, &mbe):
		return messages.Errorf(messages.OutcomeBodyTooLarge, "file", "the file is over the limit of %d bytes", s.opts.MaxFileBytes)
	}
	var e *messages.Error
	if errors.As(err, &e) {
		return e
	}
	if errors.Is(err, context.Canceled) {
		return &messages.Error{Outcome: messages.OutcomeCancelled, Message: err.Error()}
	}
	return err
}

// page applies OpenAI's after and limit to ids in order and tells whether
// more follow.
func page[T any](r *http.Request, items []T, id func(T) string, defaultLimit int) ([]T, bool, *messages.Error) {
	limit := defaultLimit
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10_000 {
			return nil, false, invalid("limit", "limit must be an integer from 1 to 10000, got %q", v)
		}
		limit = n
	}
	if after := r.URL.Query().Get("after"); after != "" {
		i := 0
		for i < len(items) && id(items[i]) != after {
			i++
		}
		if i == len(items) {
			items = nil
		} else {
			items = items[i+1:]
		}
	}
	if len(items) > limit {
		return items[:limit], true, nil
	}
	return items, false, nil
}

type list[T any] struct {
	Object  string  `json:"object"`
	Data    []T     `json:"data"`
	FirstID *string `json:"first_id"`
	LastID  *string `json:"last_id"`
	HasMore bool    `json:"has_more"`
}

func newList[T any](data []T, more bool, id func(T) string) list[T] {
	l := list[T]{Object: "list", Data: data, HasMore: more}
	if l.Data == nil {
		l.Data = []T{}
	}
	if len(data) > 0 {
		first, last := id(data[0]), id(data[len(data)-1])
		l.FirstID, l.LastID = &first, &last
	}
	return l
}

func (s *Service) handleListFiles(w http.ResponseWriter, r *http.Request) {
	c := s.callerOf(r)
	files, err := s.listFiles(r.Context(), c.name, c.master, r.URL.Query().Get("purpose"))
	if err != nil {
		s.fail(w, err)
		return
	}
	data := make([]File, len(files))
	for i, f := range files {
		data[i] = f.File
	}
	writePage(s, w, r, data, func(f File) string { return f.ID }, 10_000)
}

// writePage answers a list request with the page of data it asks for (see
// page), or its error.
func writePage[T any](s *Service, w http.ResponseWriter, r *http.Request, data []T, id func(T) string, maxLimit int) {
	data, more, err := page(r, data, id, maxLimit)
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, newList(data, more, id))
}

func (s *Service) handleGetFile(w http.ResponseWriter, r *http.Request) {
	c := s.callerOf(r)
	id := r.PathValue("id")
	f, err := s.file(r.Context(), id, c.name, c.master)
	if errors.Is(err, ErrNotFound) {
		err = notFound("File", id)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, f.File)
}

func (s *Service) handleFileContent(w http.ResponseWriter, r *http.Request) {
	c := s.callerOf(r)
	id := r.PathValue("id")
	f, err := s.file(r.Context(), id, c.name, c.master)
	var rc io.ReadCloser
	if err == nil {
		rc, err = s.openFile(r.Context(), id)
	}
	if errors.Is(err, ErrNotFound) {
		err = notFound("File", id)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(f.Bytes, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := io.Copy(w, rc); err != nil {
		s.log.Debug("file content: copy ended early", "file", id, "error", err)
	}
}

func (s *Service) handleDeleteFile(w http.ResponseWriter, r *http.Request) {
	c := s.callerOf(r)
	id := r.PathValue("id")
	_, err := s.file(r.Context(), id, c.name, c.master)
	if b := s.known.usedBy(id); err == nil && b != "" {
		err = &messages.Error{Outcome: messages.OutcomeInvalidRequest, Status: http.StatusConflict, Code: "file_in_use",
			Message: fmt.Sprintf("file %s is the input of batch %s, which is not over; cancel it first or wait for it", id, b)}
	}
	if err == nil {
		err = s.deleteFile(r.Context(), id)
	}
	if errors.Is(err, ErrNotFound) {
		err = notFound("File", id)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"id": id, "object": "file", "deleted": true})
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) {
	var p CreateParams
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	if err := dec.Decode(&p); err != nil {
		s.fail(w, invalid("", "the request body is not a batch create object: %v", err))
		return
	}
	c := s.callerOf(r)
	tenant, terr := c.clampKey.Tenant(r.Header)
	if terr != nil {
		s.fail(w, terr)
		return
	}
	b, err := s.create(r.Context(), c, tenant, &p)
	var pe *paramError
	if errors.As(err, &pe) {
		err = invalid(pe.param, "%s", pe.msg)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, b)
}

func (s *Service) handleGetBatch(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rec, err := s.batch(r.Context(), id, s.callerOf(r))
	if errors.Is(err, ErrNotFound) {
		err = notFound("Batch", id)
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rec.Batch)
}

func (s *Service) handleListBatches(w http.ResponseWriter, r *http.Request) {
	recs, err := s.listBatches(r.Context(), s.callerOf(r))
	if err != nil {
		s.fail(w, err)
		return
	}
	data := make([]Batch, len(recs))
	for i, rec := range recs {
		data[i] = rec.Batch
	}
	writePage(s, w, r, data, func(b Batch) string { return b.ID }, 20)
}

func (s *Service) handleCancel(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	rec, err := s.cancel(r.Context(), id, s.callerOf(r))
	var pe *paramError
	switch {
	case errors.Is(err, ErrNotFound):
		err = notFound("Batch", id)
	case errors.As(err, &pe):
		e := invalid(pe.param, "%s", pe.msg)
		e.Status, e.Code = http.StatusConflict, "batch_not_cancellable"
		err = e
	}
	if err != nil {
		s.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, rec.Batch)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
