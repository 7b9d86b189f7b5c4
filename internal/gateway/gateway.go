// Package gateway is llmq's OpenAI-compatible HTTP front. It authenticates
// and validates a request, maps its priority to a band, submits it through
// pkg/client (a JetStream publish on the band's and group's subject), waits
// for the answer on the client's inbox and writes it back.
//
// Every way a request ends is one messages.Outcome with one HTTP status; error
// bodies have OpenAI's shape. Nothing is queued for a request that fails
// authentication or validation.
//
// A request that is not a stream and has waited Options.ParkAfter is parked
// (park.go): its HTTP/1.x connection is hijacked from net/http, the handler
// returns, and the answer is written from pkg/client's callback with
// "Connection: close". A request waiting in a handler costs about 27 KB
// (net/http's connection goroutine and its 8 KB stack, the background
// reader, 4 KB read and write buffers and a 2 KB response buffer); parked, it
// costs about 2 KB. Why not always: a parked connection cannot go back to
// net/http, so its client reconnects for its next request, which a request
// answered within a second should not pay; and net/http offers no way to
// give a waiting handler's buffers back short of hijacking.
package gateway

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/llmq/llmq/internal/metrics"
	"github.com/llmq/llmq/internal/queuepage"
	"github.com/llmq/llmq/internal/waitstats"

	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// Response headers the gateway sets.
const (
	HeaderRequestID  = "x-llmq-request-id"
	HeaderPriority   = "x-llmq-priority"
	HeaderBand       = "x-llmq-band"
	HeaderQueueMs    = "x-llmq-queue-ms"
	HeaderDeployment = "x-llmq-deployment"
	// HeaderTenant, on a request from a trusted key, names the tenant it is
	// for; on an answer, the tenant it was served for.
	HeaderTenant = "x-llmq-tenant"
)

// errorOf turns any error from the client into a *messages.Error. A
// timeout of the whole wait comes from the client as such an error
// (client.Request.AnswerDeadline).
func errorOf(err error) *messages.Error {
	var e *messages.Error
	if errors.As(err, &e) {
		return e
	}
	switch {
	case errors.Is(err, client.ErrSlowReader):
		return &messages.Error{Outcome: messages.OutcomeCancelled, Message: err.Error(), Code: "slow_reader"}
	case errors.Is(err, client.ErrWorkerLost):
		return &messages.Error{Outcome: messages.OutcomeProviderError, Message: err.Error(), Code: "worker_lost"}
	}
	return &messages.Error{Outcome: messages.OutcomeOf(err), Message: err.Error()}
}

// Submitter is what the gateway needs from pkg/client.
type Submitter interface {
	Do(ctx context.Context, req *client.Request) (*client.Response, client.Result, error)
	Bands() messages.Bands
}

var _ Submitter = (*client.Client)(nil)

// Options configure a Server.
type Options struct {
	Client Submitter
	// Policy is the Server's first; SetPolicy replaces it.
	Policy
	// ParkAfter, when positive, parks a request that is not a stream once
	// it waited this long without a pickup: its HTTP/1.x connection is
	// taken over from net/http and answered, with "Connection: close",
	// when the answer comes. Call Shutdown after http.Server.Shutdown.
	ParkAfter    time.Duration
	MaxBodyBytes int64 // 0 = no limit
	Logger       *slog.Logger
	// Ready reports readiness (NATS connected, stream and consumers exist).
	Ready func(ctx context.Context) error
	// Metrics records requests; default: a private registry.
	Metrics *metrics.Metrics
	// MetricsHandler serves GET /metrics when set.
	MetricsHandler http.Handler
	// QueueStatus, when set, serves GET /v1/queue (to the master key and
	// keys with ReadQueue).
	QueueStatus func(ctx context.Context) (any, error)
	// Routes are further handlers by ServeMux pattern ("POST /v1/files"),
	// served behind authentication; CallerOf tells them who calls.
	Routes map[string]http.Handler
	// Waits, when set, records the queue wait of every request picked up.
	Waits *waitstats.Window
}

// Server serves the HTTP API. It is safe for concurrent use.
type Server struct {
	opts   Options
	cur    atomic.Pointer[current] // what SetPolicy may change
	log    *slog.Logger
	parked parkedSet
}

// Policy is what a configuration reload may change in a running Server:
// the model groups it accepts, its keys, the tenants it names in metrics,
// and its priorities and deadlines.
type Policy struct {
	Groups    []string // model groups, in config order
	MasterKey string   // empty and no Keys: no authentication
	Keys      []Key    // further keys with their priority policies
	// Tenants are the tenants whose names may be metric labels (the
	// operator's list: config.ListedTenants); any other is "other".
	Tenants         []string
	DefaultPriority int64
	QueueTimeout    time.Duration // router_settings.timeout
	// AnswerTimeout bounds the whole wait for an answer (queue plus call).
	AnswerTimeout time.Duration
}

// current is the Policy in force with what is derived from it. A request
// reads it once per step; one that started under the previous Policy ends
// under it.
type current struct {
	Policy
	groups  messages.Groups
	keys    *keyring // nil: no authentication
	tenants metrics.TenantLabels
}

// Metric label values for requests whose band or group is not known.
const (
	noBand       = metrics.NoBand
	unknownGroup = metrics.UnknownGroup
)

// New returns a Server.
func New(opts Options) *Server {
	s := &Server{opts: opts, log: opts.Logger}
	s.SetPolicy(opts.Policy)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.opts.Metrics == nil {
		s.opts.Metrics = metrics.New(prometheus.NewRegistry())
	}
	return s
}

// SetPolicy puts p in force for the requests that arrive from now on.
// Requests in flight keep what they were admitted with. A key whose name
// and rpm_limit stay the same keeps its count of the last minute.
func (s *Server) SetPolicy(p Policy) {
	c := &current{Policy: p, groups: messages.NewGroups(p.Groups), keys: newKeyring(p.MasterKey, p.Keys), tenants: metrics.NewTenantLabels(p.Tenants)}
	if old := s.cur.Load(); old != nil {
		c.keys.carry(old.keys)
	}
	s.cur.Store(c)
}

// Handler returns the HTTP routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	for path, kind := range map[string]messages.Kind{
		"/v1/chat/completions":    messages.KindChat,
		"/chat/completions":       messages.KindChat,
		"/queue/chat/completions": messages.KindChat,
		"/v1/completions":         messages.KindCompletion,
		"/completions":            messages.KindCompletion,
	} {
		mux.Handle("POST "+path, s.auth(s.completion(kind)))
		mux.HandleFunc(path, methodNotAllowed("POST"))
	}
	for _, path := range []string{"/v1/models", "/models"} {
		mux.Handle("GET "+path, s.auth(http.HandlerFunc(s.models)))
		mux.HandleFunc(path, methodNotAllowed("GET"))
	}
	mux.HandleFunc("GET /health/liveliness", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
	})
	mux.HandleFunc("GET /health/readiness", s.readiness)
	if s.opts.QueueStatus != nil {
		mux.Handle("GET /v1/queue", s.auth(s.queueReaders(http.HandlerFunc(s.queue))))
		// The live page: static, without data; its script reads /v1/queue.
		mux.Handle("GET "+queuepage.Path, queuepage.Handler())
		mux.Handle("GET "+queuepage.Path+"/", queuepage.Handler())
	}
	for pattern, h := range s.opts.Routes {
		mux.Handle(pattern, s.auth(h))
	}
	if s.opts.MetricsHandler != nil {
		mux.Handle("GET /metrics", s.opts.MetricsHandler)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &messages.Error{Outcome: messages.OutcomeUnknownModel, Status: http.StatusNotFound, Message: "no route " + r.Method + " " + r.URL.Path, Code: "not_found"})
	})
	return mux
}

func methodNotAllowed(allow string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Allow", allow)
		writeError(w, &messages.Error{Outcome: messages.OutcomeInvalidRequest, Status: http.StatusMethodNotAllowed, Message: "method " + r.Method + " is not allowed; use " + allow, Code: "method_not_allowed"})
	}
}

func (s *Server) completion(kind messages.Kind) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l := labels{band: noBand, group: unknownGroup, start: time.Now()}
		outcome, status := s.serve(w, r, kind, &l)
		if !l.parked {
			s.record(r.Context(), &l, r.URL.Path, w.Header().Get(HeaderRequestID), outcome, status)
		}
	})
}

// record counts a request that ended and logs it at debug level.
func (s *Server) record(ctx context.Context, l *labels, path, id string, outcome messages.Outcome, status int) {
	s.opts.Metrics.Request(l.band, l.group, outcome.String())
	if l.tenant != "" {
		s.opts.Metrics.TenantRequest(s.cur.Load().tenants.Label(l.tenant), outcome.String())
	}
	if s.log.Enabled(ctx, slog.LevelDebug) { // spares the arguments' allocations
		s.log.Debug("request", "path", path, "outcome", outcome, "status", status,
			"band", l.band, "group", l.group, "tenant", l.tenant, "request_id", id, "duration", time.Since(l.start))
	}
}

// labels are a request's metric labels, filled in as they become known,
// and what its end is recorded with.
type labels struct {
	band, group string
	tenant      string // "" until it is known
	picked      bool   // the pickup was recorded
	parked      bool   // parked: its end is recorded by parked.Done
	start       time.Time
}

// serve handles one completion request and returns how it ended.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, kind messages.Kind, l *labels) (messages.Outcome, int) {
	fail := func(e *messages.Error) (messages.Outcome, int) {
		writeError(w, e)
		return e.Outcome, e.HTTPStatus()
	}
	pol := policyOf(r.Context())
	tenant, terr := pol.tenant(r.Header)
	l.tenant = tenant
	if terr != nil {
		return fail(terr)
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return fail(&messages.Error{Outcome: messages.OutcomeInvalidRequest, Status: http.StatusUnsupportedMediaType, Message: "Content-Type must be application/json, got " + ct})
		}
	}
	body, berr := readBody(w, r, s.opts.MaxBodyBytes)
	if berr != nil {
		return fail(berr)
	}
	p, perr := parseBody(kind, body)
	if perr != nil {
		return fail(perr)
	}
	// A model no group names goes to the wildcard group that matches it,
	// if any; the body keeps the requested model (see messages.Groups).
	c := s.cur.Load()
	group, ok := c.groups.Match(p.Model)
	if !ok {
		return fail(&messages.Error{Outcome: messages.OutcomeUnknownModel, Param: "model", Code: "model_not_found",
			Message: "the model group " + strconv.Quote(p.Model) + " does not exist; GET /v1/models lists them"})
	}
	l.group = group
	if !pol.allows(group) {
		return fail(&messages.Error{Outcome: messages.OutcomeForbidden, Param: "model", Code: "model_not_allowed",
			Message: "this key may not use the model group " + strconv.Quote(group)})
	}
	if e := pol.admit(time.Now()); e != nil {
		return fail(e)
	}
	priority := pol.priority(p.Priority, c.DefaultPriority)
	queueTimeout := c.QueueTimeout
	if p.Timeout > 0 && p.Timeout < queueTimeout {
		queueTimeout = p.Timeout
	}
	now := time.Now()
	req := &client.Request{ID: nuid.Next(), Kind: kind, Group: group, Priority: priority, Tenant: tenant, Body: p.Body, Deadline: now.Add(queueTimeout)}
	if c.AnswerTimeout > 0 {
		req.AnswerDeadline = now.Add(queueTimeout + c.AnswerTimeout)
	}
	ids := idHeaders{id: req.ID, priority: priority, band: s.opts.Client.Bands().Band(priority), tenant: tenant}
	l.band = metrics.Band(ids.band)
	h := w.Header()

	var sse *sseWriter
	switch {
	case p.Stream:
		sse = newSSE(w)
		req.OnStart = func(info client.Result) { ids.set(h); s.picked(h, l, info) }
		req.OnChunk = sse.event
	case s.opts.ParkAfter > 0:
		req.ParkAfter = s.opts.ParkAfter
		req.Parker = &parked{s: s, w: w, ids: ids, l: *l, path: r.URL.Path, major: r.ProtoMajor, minor: r.ProtoMinor}
	}
	resp, info, err := s.opts.Client.Do(r.Context(), req)
	switch {
	case errors.Is(err, client.ErrParked):
		l.parked = true
		return 0, 0 // not an ending: parked.Done records the real one
	case sse != nil && sse.started:
		// Headers and some events are out: the end is told in the stream.
		return sse.finish(err)
	}
	// A stream "served" without any event was not served: answer says so.
	return s.answer(w, r.Context().Err() != nil, ids, l, resp, info, err)
}

// answer writes the answer to a submitted request (not a stream's). It is
// the one place that writes a 200 for a submitted request, and writes one
// only for a served response: an answer with an error, or without a JSON
// object for a body, is an error status. A cancelled request gets nothing
// written only when its caller is gone (callerGone); one cancelled while its
// caller still waits is a bug, and is answered as one.
func (s *Server) answer(w http.ResponseWriter, callerGone bool, ids idHeaders, l *labels, resp *client.Response, info client.Result, err error) (messages.Outcome, int) {
	h := w.Header()
	ids.set(h)
	s.picked(h, l, info)
	if err == nil && (resp == nil || !jsonObject(resp.Body)) {
		err = &messages.Error{Outcome: messages.OutcomeInternal, Message: "the request ended without an answer"}
	}
	if err != nil {
		e := errorOf(err)
		if e.Outcome == messages.OutcomeCancelled {
			if callerGone {
				return e.Outcome, e.HTTPStatus()
			}
			e = &messages.Error{Outcome: messages.OutcomeInternal, Message: "the request was cancelled while its caller waited: " + e.Message}
		}
		writeError(w, e)
		return e.Outcome, e.HTTPStatus()
	}
	h.Set(HeaderDeployment, resp.Deployment) // after fallbacks, not the one picked first
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(resp.Body)
	return messages.OutcomeServed, http.StatusOK
}

// jsonObject is a cheap check that body is an answer: it begins as a JSON
// object does (the worker checked it whole).
func jsonObject(body []byte) bool {
	body = bytes.TrimLeft(body, " \t\r\n")
	return len(body) > 0 && body[0] == '{'
}

// idHeaders are the headers every answer to a submitted request carries. They
// go into the header map only when the answer is written, so a waiting
// request holds no header entries.
type idHeaders struct {
	id       string
	priority int64
	band     int
	tenant   string
}

func (v idHeaders) set(h http.Header) {
	h.Set(HeaderRequestID, v.id)
	h.Set(HeaderTenant, v.tenant)
	h.Set(HeaderPriority, strconv.FormatInt(v.priority, 10))
	h.Set(HeaderBand, strconv.Itoa(v.band))
}

// picked records what is known once a worker picked the request up.
func (s *Server) picked(h http.Header, l *labels, info client.Result) {
	if info.Picked && !l.picked {
		l.picked = true
		s.opts.Metrics.QueueWait(l.band, l.group, info.QueueWait)
		if s.opts.Waits != nil {
			s.opts.Waits.Add(info.Band, time.Now(), info.QueueWait)
		}
		h.Set(HeaderQueueMs, strconv.FormatInt(info.QueueWait.Milliseconds(), 10))
		h.Set(HeaderDeployment, info.Deployment)
	}
}

func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, *messages.Error) {
	if limit > 0 && r.ContentLength > limit {
		return nil, messages.Errorf(messages.OutcomeBodyTooLarge, "", "the request body is %d bytes; the limit is %d", r.ContentLength, limit)
	}
	rd := r.Body
	if limit > 0 {
		rd = http.MaxBytesReader(w, r.Body, limit)
	}
	body, err := io.ReadAll(rd)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return nil, messages.Errorf(messages.OutcomeBodyTooLarge, "", "the request body is over the limit of %d bytes", limit)
	case err != nil:
		return nil, messages.Errorf(messages.OutcomeInvalidRequest, "", "reading the request body: %v", err)
	}
	return body, nil
}

func (s *Server) models(w http.ResponseWriter, r *http.Request) {
	type model struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		OwnedBy string `json:"owned_by"`
	}
	groups := s.cur.Load().Groups
	data := make([]model, 0, len(groups))
	pol := policyOf(r.Context())
	for _, g := range groups {
		if pol.allows(g) {
			data = append(data, model{ID: g, Object: "model", OwnedBy: "llmq"})
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"object": "list", "data": data})
}

func (s *Server) queue(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	st, err := s.opts.QueueStatus(ctx)
	if err != nil {
		writeError(w, &messages.Error{Outcome: messages.OutcomeBrokerUnavailable, Message: "queue status: " + err.Error(), RetryAfter: "1"})
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) readiness(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if s.opts.Ready != nil {
		if err := s.opts.Ready(ctx); err != nil {
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *messages.Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if e.RetryAfter != "" {
		h.Set("Retry-After", e.RetryAfter)
	}
	w.WriteHeader(e.HTTPStatus())
	_, _ = w.Write(messages.ErrorBody(e))
}

// WriteError writes e as an OpenAI error body with its status, for the
// handlers mounted with Options.Routes.
func WriteError(w http.ResponseWriter, e *messages.Error) { writeError(w, e) }
