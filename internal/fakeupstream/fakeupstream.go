// Package fakeupstream provides a fake OpenAI-compatible upstream HTTP server
// for tests and benchmarks. It answers chat completion and legacy completion
// calls (streaming and non-streaming) with a fixed reply, records every request
// it receives, and lets a test inject latency, hold requests, make requests
// fail with an HTTP status, and misbehave as real providers and the networks
// in front of them do (SetFault).
package fakeupstream

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// DefaultReply is the assistant text used when Options.Reply is empty.
const DefaultReply = "hello from the fake upstream"

// DefaultStreamChunks is the number of content chunks used when
// Options.StreamChunks is not positive.
const DefaultStreamChunks = 4

// maxBodyBytes bounds how much of a request body is read.
const maxBodyBytes = 32 << 20

// Options configure a Server. The zero value is usable.
type Options struct {
	// Latency is the delay before answering (non-stream) or before the first
	// chunk (stream). It can be changed later with Server.SetLatency.
	Latency time.Duration
	// Reply is the assistant text; default DefaultReply.
	Reply string
	// StreamChunks is the number of content chunks sent when the body has
	// "stream": true; default DefaultStreamChunks. Reply is split into that
	// many pieces by characters, as evenly as possible; pieces may be empty
	// when Reply is short.
	StreamChunks int
	// ChunkGap is the pause between consecutive content chunks of a stream.
	ChunkGap time.Duration
	// TLS, when set, makes the server speak HTTPS with this config (its
	// certificates), for tests of TLS and proxies.
	TLS *tls.Config
}

// Request is one received call.
type Request struct {
	// Seq is the 1-based arrival order (restarts at 1 after Reset).
	Seq int
	// Path is the request path, e.g. /v1/chat/completions.
	Path string
	// Query is the raw query, e.g. "api-version=2024-10-21".
	Query string
	// Host is the Host the client asked for (through a proxy: the
	// vendor's host name, not the fake's address).
	Host string
	// Header is a copy of the request headers.
	Header http.Header
	// Body is the raw body as received.
	Body []byte
	// Model is the body's "model".
	Model string
	// Stream is the body's "stream".
	Stream bool
	// Content is, for chat, the content of the last message (string content,
	// or its text parts concatenated); for completions, the prompt (a string,
	// or the first element if it is an array of strings).
	Content string
	// Received is when the request arrived.
	Received time.Time
	// Finished is when the handler returned; zero while running.
	Finished time.Time
	// Cancelled reports that the client went away (request context done), or
	// the Server was closed, before the server finished answering.
	Cancelled bool
	// Status is the HTTP status it answered with; 0 if it never answered.
	// A garbage or cut answer (Fault) has status 200 too.
	Status int
	// Fault is how the server misbehaved on this request (SetFault);
	// FaultNone when it answered normally or failed it with FailNext.
	Fault Fault
}

// Server is a running fake upstream. Its methods are safe for concurrent use.
type Server struct {
	// URL is the base URL ending in /v1, e.g. http://127.0.0.1:port/v1.
	URL string

	ts        *httptest.Server
	opts      Options
	closing   chan struct{}
	closeOnce sync.Once

	mu          sync.Mutex
	latency     time.Duration
	records     []*Request
	seq         int
	inFlight    int
	maxInFlight int
	changed     chan struct{} // closed and replaced whenever state changes
	hold        chan struct{} // non-nil while holding; closed by Release
	failLeft    int
	failStatus  int
	failRetry   string
	fault       Fault
}

// Fault is a way the fake provider misbehaves; see SetFault.
type Fault int

// The faults.
const (
	FaultNone Fault = iota
	// FaultReset closes the connection with a TCP reset before answering.
	FaultReset
	// FaultGarbage answers 200 with an HTML page, as a proxy in front of a
	// provider may.
	FaultGarbage
	// FaultCut cuts the answer short: a JSON body ends before the length
	// its Content-Length promised, a stream ends after its first event
	// without [DONE]; then the connection is closed.
	FaultCut
	// FaultHang accepts the request and never answers, until the client
	// goes away or the server closes.
	FaultHang
)

// String names f: "none", "reset", "garbage", "cut" or "hang".
func (f Fault) String() string {
	switch f {
	case FaultNone:
		return "none"
	case FaultReset:
		return "reset"
	case FaultGarbage:
		return "garbage"
	case FaultCut:
		return "cut"
	case FaultHang:
		return "hang"
	}
	return "Fault(" + strconv.Itoa(int(f)) + ")"
}

// SetFault makes every well-formed request that arrives from now on
// misbehave as f (FaultNone: answer normally). Requests are recorded
// first. FailNext takes precedence while it has failures left.
func (s *Server) SetFault(f Fault) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fault = f
}

// New starts a Server on a loopback address using httptest.NewServer.
func New(opts Options) *Server {
	if opts.Reply == "" {
		opts.Reply = DefaultReply
	}
	if opts.StreamChunks <= 0 {
		opts.StreamChunks = DefaultStreamChunks
	}
	s := &Server{
		opts:    opts,
		latency: opts.Latency,
		closing: make(chan struct{}),
		changed: make(chan struct{}),
	}
	if opts.TLS != nil {
		s.ts = httptest.NewUnstartedServer(http.HandlerFunc(s.handle))
		s.ts.TLS = opts.TLS
		s.ts.StartTLS()
	} else {
		s.ts = httptest.NewServer(http.HandlerFunc(s.handle))
	}
	s.URL = s.ts.URL + "/v1"
	return s
}

// Close releases held requests, abandons waiting ones, and shuts the server
// down, blocking until all handlers have returned. It is safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.ts.CloseClientConnections()
		s.ts.Close()
	})
}

// CloseIdleConnections closes every connection a client holds open to the
// server, like a provider's load balancer dropping idle keep-alives. Leak
// checks use it so that the size of a client's idle pool does not count.
func (s *Server) CloseIdleConnections() {
	s.ts.CloseClientConnections()
}

// Requests returns a snapshot copy of the recorded requests in arrival order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Request, len(s.records))
	for i, r := range s.records {
		c := *r
		c.Header = r.Header.Clone()
		c.Body = append([]byte(nil), r.Body...)
		out[i] = c
	}
	return out
}

// Count returns the number of recorded requests.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.records)
}

// InFlight returns the number of requests currently being handled.
func (s *Server) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inFlight
}

// MaxInFlight returns the highest InFlight observed since New or Reset.
func (s *Server) MaxInFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.maxInFlight
}

// WaitForRequests blocks until Count() >= n or ctx is done, in which case it
// returns ctx.Err().
func (s *Server) WaitForRequests(ctx context.Context, n int) error {
	return s.waitUntil(ctx, func() bool { return len(s.records) >= n })
}

// WaitIdle blocks until no request is being handled (InFlight() == 0) or ctx
// is done, in which case it returns ctx.Err().
func (s *Server) WaitIdle(ctx context.Context) error {
	return s.waitUntil(ctx, func() bool { return s.inFlight == 0 })
}

// waitUntil blocks until cond, evaluated with s.mu held, is true or ctx is done.
func (s *Server) waitUntil(ctx context.Context, cond func() bool) error {
	for {
		s.mu.Lock()
		ok := cond()
		ch := s.changed
		s.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// broadcast wakes all waiters; s.mu must be held.
func (s *Server) broadcast() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Hold makes requests that arrive from now on wait, after being recorded,
// until Release is called or their client cancels.
func (s *Server) Hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold == nil {
		s.hold = make(chan struct{})
	}
}

// Release lets every held and future request proceed (until Hold is called
// again).
func (s *Server) Release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hold != nil {
		close(s.hold)
		s.hold = nil
	}
}

// FailNext makes the next n requests answer with status and an OpenAI error body
// {"error":{"message":...,"type":...,"param":null,"code":...}}; retryAfter, when not "", is sent as the Retry-After header.
// Only well-formed requests to a known route count; failing requests answer
// at once, without Hold or latency. It replaces any failures still pending.
func (s *Server) FailNext(n int, status int, retryAfter string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failLeft = max(n, 0)
	s.failStatus = status
	s.failRetry = retryAfter
}

// SetLatency changes the latency applied to requests that arrive from now on.
func (s *Server) SetLatency(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.latency = d
}

// Reset forgets recorded requests and counters (Seq restarts at 1, MaxInFlight
// becomes the current InFlight) and cancels pending FailNext failures. It does
// not change Options, the latency, the Hold state or the fault (SetFault).
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.records = nil
	s.seq = 0
	s.maxInFlight = s.inFlight
	s.failLeft = 0
	s.broadcast()
}

type routeKind int

const (
	routeNone routeKind = iota
	routeChat
	routeCompletions
)

func routeOf(r *http.Request) routeKind {
	if r.Method != http.MethodPost {
		return routeNone
	}
	// Any base path: vendors put their OpenAI-compatible API below their
	// own (/openai/deployments/{d}/…, /v1beta/openai/…, /inference/v1/…).
	switch {
	case strings.HasSuffix(r.URL.Path, "/chat/completions"):
		return routeChat
	case strings.HasSuffix(r.URL.Path, "/completions"):
		return routeCompletions
	}
	return routeNone
}

// requestBody is the part of a request body the server looks at.
type requestBody struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	Messages []struct {
		Content json.RawMessage `json:"content"`
	} `json:"messages"`
	Prompt json.RawMessage `json:"prompt"`
}

// messageText returns a message content's text: the string itself, or the
// text parts of an array concatenated.
func messageText(raw json.RawMessage) string {
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if json.Unmarshal(raw, &parts) != nil {
		return ""
	}
	var b strings.Builder
	for _, p := range parts {
		if p.Type == "text" {
			b.WriteString(p.Text)
		}
	}
	return b.String()
}

// promptText returns a completion prompt: the string itself, or the first
// element of an array of strings.
func promptText(raw json.RawMessage) string {
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str
	}
	var arr []string
	if json.Unmarshal(raw, &arr) == nil && len(arr) > 0 {
		return arr[0]
	}
	return ""
}

func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	now := time.Now()
	body, readErr := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	rec := &Request{
		Path:     r.URL.Path,
		Query:    r.URL.RawQuery,
		Host:     r.Host,
		Header:   r.Header.Clone(),
		Body:     body,
		Received: now,
	}
	kind := routeOf(r)
	var req requestBody
	var parseErr error
	if kind != routeNone {
		parseErr = readErr
		if parseErr == nil {
			parseErr = json.Unmarshal(body, &req)
		}
	}
	promptChars := 0
	if kind != routeNone && parseErr == nil {
		rec.Model = req.Model
		rec.Stream = req.Stream
		if kind == routeChat {
			for i, m := range req.Messages {
				t := messageText(m.Content)
				promptChars += utf8.RuneCountInString(t)
				if i == len(req.Messages)-1 {
					rec.Content = t
				}
			}
		} else {
			rec.Content = promptText(req.Prompt)
			promptChars = utf8.RuneCountInString(rec.Content)
		}
	}

	s.mu.Lock()
	s.seq++
	rec.Seq = s.seq
	s.records = append(s.records, rec)
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	fail, failStatus, failRetry := false, 0, ""
	if kind != routeNone && parseErr == nil && s.failLeft > 0 {
		s.failLeft--
		fail, failStatus, failRetry = true, s.failStatus, s.failRetry
	}
	fault := FaultNone
	if kind != routeNone && parseErr == nil && !fail {
		fault = s.fault
	}
	rec.Fault = fault
	hold := s.hold
	latency := s.latency
	s.broadcast()
	s.mu.Unlock()

	defer func() {
		s.mu.Lock()
		rec.Finished = time.Now()
		s.inFlight--
		s.broadcast()
		s.mu.Unlock()
	}()

	switch {
	case kind == routeNone:
		s.writeError(w, rec, http.StatusNotFound, fmt.Sprintf("Unknown request URL: %s %s", r.Method, r.URL.Path), "invalid_request_error", "unknown_url", "")
		return
	case parseErr != nil:
		s.writeError(w, rec, http.StatusBadRequest, "Invalid JSON body: "+parseErr.Error(), "invalid_request_error", "invalid_json", "")
		return
	case fail:
		typ, code := errorKind(failStatus)
		s.writeError(w, rec, failStatus, fmt.Sprintf("Injected failure with status %d", failStatus), typ, code, failRetry)
		return
	case fault == FaultReset:
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			if tc, ok := conn.(*net.TCPConn); ok {
				_ = tc.SetLinger(0) // a reset, not an orderly close
			}
			_ = conn.Close()
		}
		return
	case fault == FaultGarbage:
		s.setStatus(rec, http.StatusOK)
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "<html><body><h1>Welcome to the proxy</h1></body></html>")
		return
	case fault == FaultHang:
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		s.markCancelled(rec)
		return
	}

	ctx := r.Context()
	if !s.waitHold(ctx, hold) || !s.sleep(ctx, latency) || ctx.Err() != nil {
		s.markCancelled(rec)
		return
	}

	u := usage{
		PromptTokens:     max((promptChars+3)/4, 1),
		CompletionTokens: max(len(strings.Fields(s.opts.Reply)), 1),
	}
	u.TotalTokens = u.PromptTokens + u.CompletionTokens
	if req.Stream {
		includeUsage := req.StreamOptions != nil && req.StreamOptions.IncludeUsage
		s.stream(ctx, w, rec, kind, req.Model, includeUsage, u, fault == FaultCut)
		return
	}

	var resp any
	created := rec.Received.Unix()
	if kind == routeChat {
		resp = chatCompletion{
			ID:      fmt.Sprintf("chatcmpl-fake-%d", rec.Seq),
			Object:  "chat.completion",
			Created: created,
			Model:   req.Model,
			Choices: []chatChoice{{
				Message:      chatMessage{Role: "assistant", Content: s.opts.Reply},
				FinishReason: "stop",
			}},
			Usage: u,
		}
	} else {
		resp = textCompletion{
			ID:      fmt.Sprintf("cmpl-fake-%d", rec.Seq),
			Object:  "text_completion",
			Created: created,
			Model:   req.Model,
			Choices: []textChoice{{Text: s.opts.Reply, FinishReason: ptr("stop")}},
			Usage:   &u,
		}
	}
	b, _ := json.Marshal(resp)
	s.setStatus(rec, http.StatusOK)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(http.StatusOK)
	if fault == FaultCut {
		_, _ = w.Write(b[:len(b)/2])
		_ = http.NewResponseController(w).Flush()
		panic(http.ErrAbortHandler) // net/http closes the connection
	}
	if _, err := w.Write(b); err != nil && ctx.Err() != nil {
		s.markCancelled(rec)
	}
}

// stream writes a server-sent-events answer.
// With cut, it ends after the first event, without [DONE], and closes the
// connection.
func (s *Server) stream(ctx context.Context, w http.ResponseWriter, rec *Request, kind routeKind, model string, includeUsage bool, u usage, cut bool) {
	rc := http.NewResponseController(w)
	s.setStatus(rec, http.StatusOK)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)

	send := func(v any) bool {
		var b []byte
		if str, ok := v.(string); ok {
			b = []byte(str)
		} else {
			b, _ = json.Marshal(v)
		}
		if _, err := fmt.Fprintf(w, "data: %s\n\n", b); err != nil {
			return false
		}
		return rc.Flush() == nil
	}

	created := rec.Received.Unix()
	id := fmt.Sprintf("chatcmpl-fake-%d", rec.Seq)
	object := "chat.completion.chunk"
	if kind == routeCompletions {
		id = fmt.Sprintf("cmpl-fake-%d", rec.Seq)
		object = "text_completion"
	}
	chunk := func(choices any, u *usage) any {
		if kind == routeChat {
			return chatChunk{ID: id, Object: object, Created: created, Model: model, Choices: choices.([]chunkChoice), Usage: u}
		}
		return textCompletion{ID: id, Object: object, Created: created, Model: model, Choices: choices.([]textChoice), Usage: u}
	}

	pieces := splitEven(s.opts.Reply, s.opts.StreamChunks)
	for i, p := range pieces {
		if i > 0 && !s.sleep(ctx, s.opts.ChunkGap) {
			s.markCancelled(rec)
			return
		}
		var c any
		if kind == routeChat {
			d := delta{Content: ptr(p)}
			if i == 0 {
				d.Role = "assistant"
			}
			c = chunk([]chunkChoice{{Delta: d}}, nil)
		} else {
			c = chunk([]textChoice{{Text: p}}, nil)
		}
		if !send(c) {
			s.markCancelled(rec)
			return
		}
		if cut {
			panic(http.ErrAbortHandler) // net/http closes the connection
		}
	}
	var final any
	if kind == routeChat {
		final = chunk([]chunkChoice{{FinishReason: ptr("stop")}}, nil)
	} else {
		final = chunk([]textChoice{{FinishReason: ptr("stop")}}, nil)
	}
	if !send(final) {
		s.markCancelled(rec)
		return
	}
	if includeUsage {
		var uc any
		if kind == routeChat {
			uc = chunk([]chunkChoice{}, &u)
		} else {
			uc = chunk([]textChoice{}, &u)
		}
		if !send(uc) {
			s.markCancelled(rec)
			return
		}
	}
	if !send("[DONE]") {
		s.markCancelled(rec)
	}
}

// splitEven splits s into n pieces by characters, as evenly as possible, with
// the longer pieces first.
func splitEven(s string, n int) []string {
	runes := []rune(s)
	out := make([]string, n)
	size, extra := len(runes)/n, len(runes)%n
	pos := 0
	for i := range out {
		l := size
		if i < extra {
			l++
		}
		out[i] = string(runes[pos : pos+l])
		pos += l
	}
	return out
}

// waitHold waits until hold is closed (nil means not held). It reports false
// if ctx is done or the server is closing first.
func (s *Server) waitHold(ctx context.Context, hold <-chan struct{}) bool {
	if hold == nil {
		return true
	}
	select {
	case <-hold:
		return true
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
}

// sleep waits for d. It reports false if ctx is done or the server is closing
// first.
func (s *Server) sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-s.closing:
		return false
	}
}

func (s *Server) markCancelled(rec *Request) {
	s.mu.Lock()
	rec.Cancelled = true
	s.mu.Unlock()
}

func (s *Server) setStatus(rec *Request, status int) {
	s.mu.Lock()
	rec.Status = status
	s.mu.Unlock()
}

// errorKind returns the OpenAI error type and code usual for status.
func errorKind(status int) (typ, code string) {
	switch {
	case status == http.StatusUnauthorized:
		return "invalid_request_error", "invalid_api_key"
	case status == http.StatusForbidden:
		return "permission_error", "permission_denied"
	case status == http.StatusNotFound:
		return "invalid_request_error", "not_found"
	case status == http.StatusTooManyRequests:
		return "rate_limit_error", "rate_limit_exceeded"
	case status >= 500:
		return "server_error", "server_error"
	default:
		return "invalid_request_error", "invalid_request"
	}
}

// writeError answers with an OpenAI error body.
func (s *Server) writeError(w http.ResponseWriter, rec *Request, status int, message, typ, code, retryAfter string) {
	var body struct {
		Error struct {
			Message string  `json:"message"`
			Type    string  `json:"type"`
			Param   *string `json:"param"`
			Code    string  `json:"code"`
		} `json:"error"`
	}
	body.Error.Message = message
	body.Error.Type = typ
	body.Error.Code = code
	b, _ := json.Marshal(body)
	s.setStatus(rec, status)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func ptr[T any](v T) *T { return &v }

type usage struct {
	PromptTokens     int `json:"prompt_tokens"`
	CompletionTokens int `json:"completion_tokens"`
	TotalTokens      int `json:"total_tokens"`
}

type chatMessage struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type chatChoice struct {
	Index        int         `json:"index"`
	Message      chatMessage `json:"message"`
	FinishReason string      `json:"finish_reason"`
	Logprobs     *struct{}   `json:"logprobs"`
}

type chatCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []chatChoice `json:"choices"`
	Usage   usage        `json:"usage"`
}

type delta struct {
	Role    string  `json:"role,omitempty"`
	Content *string `json:"content,omitempty"`
}

type chunkChoice struct {
	Index        int       `json:"index"`
	Delta        delta     `json:"delta"`
	FinishReason *string   `json:"finish_reason"`
	Logprobs     *struct{} `json:"logprobs"`
}

type chatChunk struct {
	ID      string        `json:"id"`
	Object  string        `json:"object"`
	Created int64         `json:"created"`
	Model   string        `json:"model"`
	Choices []chunkChoice `json:"choices"`
	Usage   *usage        `json:"usage,omitempty"`
}

type textChoice struct {
	Index        int       `json:"index"`
	Text         string    `json:"text"`
	FinishReason *string   `json:"finish_reason"`
	Logprobs     *struct{} `json:"logprobs"`
}

type textCompletion struct {
	ID      string       `json:"id"`
	Object  string       `json:"object"`
	Created int64        `json:"created"`
	Model   string       `json:"model"`
	Choices []textChoice `json:"choices"`
	Usage   *usage       `json:"usage,omitempty"`
}
