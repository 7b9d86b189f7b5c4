package gateway_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// recordingSubmitter is a gateway.Submitter that records what it is given
// and answers with do, or by default serves every request from "dep-1".
type recordingSubmitter struct {
	do func(ctx context.Context, req *client.Request) (*client.Response, client.Result, error)

	mu   sync.Mutex
	reqs []client.Request
}

var _ gateway.Submitter = (*recordingSubmitter)(nil)

const servedBody = `{"id":"chatcmpl-1","object":"chat.completion","choices":[]}`

func (s *recordingSubmitter) Do(ctx context.Context, req *client.Request) (*client.Response, client.Result, error) {
	s.mu.Lock()
	s.reqs = append(s.reqs, *req)
	s.mu.Unlock()
	if s.do != nil {
		return s.do(ctx, req)
	}
	info := client.Result{ID: req.ID, Band: messages.DefaultBands().Band(req.Priority), Picked: true, QueueWait: 12 * time.Millisecond, Deployment: "dep-1"}
	return &client.Response{ID: req.ID, Band: info.Band, Deployment: "dep-1", QueueWait: info.QueueWait, Body: []byte(servedBody)}, info, nil
}

func (s *recordingSubmitter) Bands() messages.Bands { return messages.DefaultBands() }

// requests returns the requests submitted so far.
func (s *recordingSubmitter) requests() []client.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]client.Request(nil), s.reqs...)
}

var testGroups = []string{"gpt-4o", "openai/gpt-4.1", "fake"}

// startGateway serves a gateway over sub; opts.Client is set to sub.
func startGateway(t *testing.T, opts gateway.Options, sub *recordingSubmitter) *httptest.Server {
	t.Helper()
	opts.Client = sub
	if opts.Groups == nil {
		opts.Groups = testGroups
	}
	if opts.QueueTimeout == 0 {
		opts.QueueTimeout = time.Minute
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	srv := httptest.NewServer(gateway.New(opts).Handler())
	t.Cleanup(srv.Close)
	return srv
}

// call sends one request; body "" sends none. Headers are name, value pairs.
func call(t *testing.T, srv *httptest.Server, method, path, body string, headers ...string) (*http.Response, []byte) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, srv.URL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	return send(t, srv, req)
}

func send(t *testing.T, srv *httptest.Server, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

type errorDetail struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    any     `json:"code"`
}

// checkError checks an OpenAI-shaped JSON error answer.
func checkError(t *testing.T, resp *http.Response, body []byte, status int, typ, code string) errorDetail {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d (body %s)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var eb struct {
		Error *errorDetail `json:"error"`
	}
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == nil {
		t.Fatalf("body %s is not an OpenAI error: %v", body, err)
	}
	if eb.Error.Message == "" {
		t.Errorf("error without message: %s", body)
	}
	if typ != "" && eb.Error.Type != typ {
		t.Errorf("error type %q, want %q", eb.Error.Type, typ)
	}
	if code != "" && eb.Error.Code != code {
		t.Errorf("error code %v, want %q", eb.Error.Code, code)
	}
	return *eb.Error
}

const chatReq = `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`

func TestAuth(t *testing.T) {
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{Policy: gateway.Policy{MasterKey: "sk-master"}}, sub)
	tests := []struct {
		name, authorization string
		ok                  bool
	}{
		{"missing", "", false},
		{"wrong key", "Bearer sk-wrong", false},
		{"prefix of the key", "Bearer sk-mast", false},
		{"key plus more", "Bearer sk-master2", false},
		{"empty bearer", "Bearer ", false},
		{"no scheme", "sk-master", false},
		{"basic scheme", "Basic sk-master", false},
		{"right key", "Bearer sk-master", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(sub.requests())
			for _, path := range []string{"/v1/chat/completions", "/v1/models"} {
				method, body := http.MethodPost, chatReq
				if path == "/v1/models" {
					method, body = http.MethodGet, ""
				}
				resp, b := call(t, srv, method, path, body, "Authorization", tt.authorization)
				if tt.ok {
					if resp.StatusCode != http.StatusOK {
						t.Errorf("%s %s: status %d, want 200 (%s)", method, path, resp.StatusCode, b)
					}
					continue
				}
				checkError(t, resp, b, http.StatusUnauthorized, "authentication_error", "unauthenticated")
			}
			want := before
			if tt.ok {
				want++
			}
			if got := len(sub.requests()); got != want {
				t.Errorf("%d requests submitted, want %d", got-before, want-before)
			}
		})
	}
	// Health checks need no key.
	for _, path := range []string{"/health/liveliness", "/health/readiness"} {
		if resp, b := call(t, srv, http.MethodGet, path, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a key: status %d (%s)", path, resp.StatusCode, b)
		}
	}
}

func TestNoAuthWithoutKeys(t *testing.T) {
	srv := startGateway(t, gateway.Options{}, &recordingSubmitter{})
	if resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", chatReq); resp.StatusCode != http.StatusOK {
		t.Errorf("without a master key: status %d (%s)", resp.StatusCode, b)
	}
}

func TestUnknownModel(t *testing.T) {
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{}, sub)
	resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", `{"model":"gpt-5","messages":[{"role":"user","content":"hi"}]}`)
	e := checkError(t, resp, b, http.StatusNotFound, "invalid_request_error", "model_not_found")
	if e.Param == nil || *e.Param != "model" {
		t.Errorf("param %v, want model", e.Param)
	}
	if n := len(sub.requests()); n != 0 {
		t.Errorf("%d requests submitted for an unknown model", n)
	}
}

func TestInvalidBody(t *testing.T) {
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{}, sub)
	tests := []struct {
		name, path, body, param string
	}{
		{"not JSON", "/v1/chat/completions", `hello`, ""},
		{"priority fraction", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"priority":1.5}`, "priority"},
		{"priority string", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"priority":"1"}`, "priority"},
		{"completion without prompt", "/v1/completions", `{"model":"gpt-4o"}`, "prompt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, b := call(t, srv, http.MethodPost, tt.path, tt.body)
			e := checkError(t, resp, b, http.StatusBadRequest, "invalid_request_error", "")
			got := ""
			if e.Param != nil {
				got = *e.Param
			}
			if got != tt.param {
				t.Errorf("param %q, want %q", got, tt.param)
			}
		})
	}
	if n := len(sub.requests()); n != 0 {
		t.Errorf("%d invalid requests submitted", n)
	}
}

func TestMethodNotAllowed(t *testing.T) {
	srv := startGateway(t, gateway.Options{}, &recordingSubmitter{})
	tests := []struct{ method, path, allow string }{
		{http.MethodGet, "/v1/chat/completions", "POST"},
		{http.MethodGet, "/chat/completions", "POST"},
		{http.MethodGet, "/queue/chat/completions", "POST"},
		{http.MethodGet, "/v1/completions", "POST"},
		{http.MethodGet, "/completions", "POST"},
		{http.MethodPut, "/v1/chat/completions", "POST"},
		{http.MethodDelete, "/v1/completions", "POST"},
		{http.MethodPost, "/v1/models", "GET"},
		{http.MethodPost, "/models", "GET"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			resp, b := call(t, srv, tt.method, tt.path, "")
			checkError(t, resp, b, http.StatusMethodNotAllowed, "invalid_request_error", "method_not_allowed")
			if got := resp.Header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

func TestUnknownPath(t *testing.T) {
	srv := startGateway(t, gateway.Options{Policy: gateway.Policy{MasterKey: "sk-master"}}, &recordingSubmitter{})
	for _, tt := range []struct{ method, path string }{
		{http.MethodGet, "/"},
		{http.MethodGet, "/v2/models"},
		{http.MethodPost, "/v1/embeddings"},
		{http.MethodGet, "/health"},
	} {
		resp, b := call(t, srv, tt.method, tt.path, "")
		checkError(t, resp, b, http.StatusNotFound, "", "not_found")
	}
}

func TestContentType(t *testing.T) {
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{}, sub)
	tests := []struct {
		contentType string // "" = none
		status      int
	}{
		{"", http.StatusOK},
		{"application/json", http.StatusOK},
		{"application/json; charset=utf-8", http.StatusOK},
		{"Application/JSON", http.StatusOK},
		{"text/plain", http.StatusUnsupportedMediaType},
		{"application/x-www-form-urlencoded", http.StatusUnsupportedMediaType},
		{"multipart/form-data; boundary=x", http.StatusUnsupportedMediaType},
		{"application/json; =", http.StatusUnsupportedMediaType},
	}
	for _, tt := range tests {
		t.Run(tt.contentType, func(t *testing.T) {
			resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", chatReq, "Content-Type", tt.contentType)
			if tt.status == http.StatusOK {
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status %d, want 200 (%s)", resp.StatusCode, b)
				}
				return
			}
			checkError(t, resp, b, tt.status, "invalid_request_error", "")
		})
	}
	if got, want := len(sub.requests()), 4; got != want {
		t.Errorf("%d requests submitted, want %d", got, want)
	}
}

func TestBodyTooLarge(t *testing.T) {
	const limit = 1024
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{MaxBodyBytes: limit}, sub)
	// padded returns chatReq padded with spaces to n bytes.
	padded := func(n int) string { return chatReq[:len(chatReq)-1] + strings.Repeat(" ", n-len(chatReq)) + "}" }

	resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", padded(2048))
	checkError(t, resp, b, http.StatusRequestEntityTooLarge, "invalid_request_error", "body_too_large")

	// Without a Content-Length the limit applies while reading.
	req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", io.MultiReader(strings.NewReader(padded(limit+1))))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	resp, b = send(t, srv, req)
	checkError(t, resp, b, http.StatusRequestEntityTooLarge, "invalid_request_error", "body_too_large")

	if n := len(sub.requests()); n != 0 {
		t.Errorf("%d requests over the limit submitted", n)
	}
	if resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", padded(limit)); resp.StatusCode != http.StatusOK {
		t.Errorf("a body of exactly the limit: status %d (%s)", resp.StatusCode, b)
	}
}

func TestModels(t *testing.T) {
	srv := startGateway(t, gateway.Options{}, &recordingSubmitter{})
	for _, path := range []string{"/v1/models", "/models"} {
		resp, b := call(t, srv, http.MethodGet, path, "")
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("GET %s: status %d, Content-Type %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		data := make([]any, 0, len(testGroups))
		for _, g := range testGroups {
			data = append(data, map[string]any{"id": g, "object": "model", "created": float64(0), "owned_by": "llmq"})
		}
		want := map[string]any{"object": "list", "data": data}
		if !jsonEqual(got, want) {
			t.Errorf("GET %s = %s", path, b)
		}
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func TestHealth(t *testing.T) {
	var readyErr error
	var mu sync.Mutex
	var sawDeadline bool
	srv := startGateway(t, gateway.Options{Ready: func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		_, sawDeadline = ctx.Deadline()
		return readyErr
	}}, &recordingSubmitter{})

	resp, b := call(t, srv, http.MethodGet, "/health/liveliness", "")
	if resp.StatusCode != http.StatusOK || !jsonBodyIs(b, map[string]any{"status": "alive"}) {
		t.Errorf("liveliness: %d %s", resp.StatusCode, b)
	}

	resp, b = call(t, srv, http.MethodGet, "/health/readiness", "")
	if resp.StatusCode != http.StatusOK || !jsonBodyIs(b, map[string]any{"status": "ready"}) {
		t.Errorf("readiness when ready: %d %s", resp.StatusCode, b)
	}

	mu.Lock()
	readyErr = errors.New("nats: no servers available")
	mu.Unlock()
	resp, b = call(t, srv, http.MethodGet, "/health/readiness", "")
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("readiness when not ready: status %d (%s)", resp.StatusCode, b)
	}
	if got := resp.Header.Get("Retry-After"); got != "1" {
		t.Errorf("readiness when not ready: Retry-After %q, want 1", got)
	}
	if !jsonBodyIs(b, map[string]any{"status": "not ready", "error": "nats: no servers available"}) {
		t.Errorf("readiness when not ready: body %s", b)
	}
	mu.Lock()
	defer mu.Unlock()
	if !sawDeadline {
		t.Errorf("Ready was called without a deadline")
	}

	plain := startGateway(t, gateway.Options{}, &recordingSubmitter{})
	if resp, b := call(t, plain, http.MethodGet, "/health/readiness", ""); resp.StatusCode != http.StatusOK {
		t.Errorf("readiness without a Ready func: %d %s", resp.StatusCode, b)
	}
}

func jsonBodyIs(b []byte, want map[string]any) bool {
	var got map[string]any
	return json.Unmarshal(b, &got) == nil && jsonEqual(got, want)
}

func TestServed(t *testing.T) {
	const queueTimeout = time.Minute
	tests := []struct {
		name     string
		path     string
		body     string
		kind     messages.Kind
		priority int64
		band     int
		timeout  time.Duration // expected queue timeout
	}{
		{"explicit priority", "/v1/chat/completions", `{"model":"gpt-4o","priority":3,"messages":[{"role":"user","content":"hi"}]}`, messages.KindChat, 3, 3, queueTimeout},
		{"default priority", "/v1/chat/completions", chatReq, messages.KindChat, 5, 5, queueTimeout},
		{"null priority", "/chat/completions", `{"model":"gpt-4o","priority":null,"messages":[{}]}`, messages.KindChat, 5, 5, queueTimeout},
		{"negative priority", "/queue/chat/completions", `{"model":"gpt-4o","priority":-7,"messages":[{}]}`, messages.KindChat, -7, 0, queueTimeout},
		{"huge priority", "/v1/chat/completions", `{"model":"gpt-4o","priority":1099511627776,"messages":[{}]}`, messages.KindChat, 1 << 40, 9, queueTimeout},
		{"shorter timeout", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"timeout":2}`, messages.KindChat, 5, 5, 2 * time.Second},
		{"longer timeout is capped", "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"timeout":3600}`, messages.KindChat, 5, 5, queueTimeout},
		{"completion", "/v1/completions", `{"model":"openai/gpt-4.1","prompt":"hi","priority":1,"timeout":1}`, messages.KindCompletion, 1, 1, time.Second},
		{"completion short path", "/completions", `{"model":"fake","prompt":["a"]}`, messages.KindCompletion, 5, 5, queueTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := &recordingSubmitter{}
			srv := startGateway(t, gateway.Options{Policy: gateway.Policy{DefaultPriority: 5, QueueTimeout: queueTimeout}}, sub)
			before := time.Now()
			resp, b := call(t, srv, http.MethodPost, tt.path, tt.body)
			after := time.Now()
			if resp.StatusCode != http.StatusOK || string(b) != servedBody {
				t.Fatalf("status %d body %s; want 200 %s", resp.StatusCode, b, servedBody)
			}
			reqs := sub.requests()
			if len(reqs) != 1 {
				t.Fatalf("%d requests submitted, want 1", len(reqs))
			}
			r := reqs[0]
			for h, want := range map[string]string{
				gateway.HeaderPriority:   fmt.Sprint(tt.priority),
				gateway.HeaderBand:       fmt.Sprint(tt.band),
				gateway.HeaderRequestID:  r.ID,
				gateway.HeaderDeployment: "dep-1",
				gateway.HeaderQueueMs:    "12",
				"Content-Type":           "application/json",
			} {
				if got := resp.Header.Get(h); got != want {
					t.Errorf("header %s = %q, want %q", h, got, want)
				}
			}
			if r.ID == "" {
				t.Errorf("request without id")
			}
			var top map[string]json.RawMessage
			if err := json.Unmarshal(r.Body, &top); err != nil {
				t.Fatalf("submitted body %s: %v", r.Body, err)
			}
			for _, f := range []string{"priority", "timeout"} {
				if _, ok := top[f]; ok {
					t.Errorf("submitted body has %q: %s", f, r.Body)
				}
			}
			var model string
			_ = json.Unmarshal(top["model"], &model)
			if r.Kind != tt.kind || r.Group != model || r.Priority != tt.priority {
				t.Errorf("submitted kind %q group %q priority %d; want %q %q %d", r.Kind, r.Group, r.Priority, tt.kind, model, tt.priority)
			}
			if r.Deadline.Before(before.Add(tt.timeout)) || r.Deadline.After(after.Add(tt.timeout)) {
				t.Errorf("deadline %v is not %v after the request (%v..%v)", r.Deadline, tt.timeout, before, after)
			}
			if r.OnChunk != nil || r.OnStart != nil {
				t.Errorf("a request without stream has chunk or start callbacks")
			}
		})
	}
}

func TestRequestIDsAreUnique(t *testing.T) {
	sub := &recordingSubmitter{}
	srv := startGateway(t, gateway.Options{}, sub)
	seen := make(map[string]bool)
	for range 20 {
		resp, _ := call(t, srv, http.MethodPost, "/v1/chat/completions", chatReq)
		id := resp.Header.Get(gateway.HeaderRequestID)
		if id == "" || seen[id] {
			t.Fatalf("request id %q is empty or repeated", id)
		}
		seen[id] = true
	}
}

func TestSubmitterErrors(t *testing.T) {
	providerBody := `{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}`
	tests := []struct {
		name       string
		err        error
		status     int
		typ, code  string
		retryAfter string
		body       string // exact body, when set
	}{
		{"queue full", &messages.Error{Outcome: messages.OutcomeQueueFull, Message: "band 5 of gpt-4o is full", RetryAfter: "3"}, 429, "rate_limit_error", "queue_full", "3", ""},
		{"queue timeout", messages.Errorf(messages.OutcomeQueueTimeout, "", "no worker took it in time"), 408, "timeout_error", "queue_timeout", "", ""},
		{"broker down", fmt.Errorf("%w: nats: connection closed", messages.ErrBrokerUnavailable), 503, "api_error", "broker_unavailable", "", ""},
		{"unclassified", errors.New("boom"), 500, "api_error", "internal_error", "", ""},
		{"provider 400", &messages.Error{Outcome: messages.OutcomeProviderError, Status: 400, Body: []byte(providerBody)}, 400, "", "", "", providerBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := &recordingSubmitter{do: func(ctx context.Context, req *client.Request) (*client.Response, client.Result, error) {
				return nil, client.Result{ID: req.ID}, tt.err
			}}
			srv := startGateway(t, gateway.Options{}, sub)
			resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", chatReq)
			checkError(t, resp, b, tt.status, tt.typ, tt.code)
			if got := resp.Header.Get("Retry-After"); got != tt.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tt.retryAfter)
			}
			if tt.body != "" && string(b) != tt.body {
				t.Errorf("body %s, want the provider's %s", b, tt.body)
			}
			if resp.Header.Get(gateway.HeaderRequestID) == "" || resp.Header.Get(gateway.HeaderBand) == "" {
				t.Errorf("failed request without request id or band headers: %v", resp.Header)
			}
		})
	}
}

func TestStream(t *testing.T) {
	chunks := []string{`{"choices":[{"delta":{"content":"Hel"}}]}`, `{"choices":[{"delta":{"content":"lo"}}]}`}
	sub := &recordingSubmitter{do: func(ctx context.Context, req *client.Request) (*client.Response, client.Result, error) {
		if req.OnChunk == nil || req.OnStart == nil {
			return nil, client.Result{}, errors.New("a stream request without OnChunk or OnStart")
		}
		info := client.Result{ID: req.ID, Band: 5, Picked: true, QueueWait: 7 * time.Millisecond, Deployment: "dep-2"}
		req.OnStart(info)
		for _, c := range chunks {
			if err := req.OnChunk([]byte(c)); err != nil {
				return nil, info, err
			}
		}
		return &client.Response{ID: req.ID, Band: 5, Deployment: "dep-2"}, info, nil
	}}
	srv := startGateway(t, gateway.Options{Policy: gateway.Policy{DefaultPriority: 5}}, sub)
	resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"stream":true}`)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, Content-Type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	want := "data: " + chunks[0] + "\n\ndata: " + chunks[1] + "\n\ndata: [DONE]\n\n"
	if string(b) != want {
		t.Errorf("stream\n got %q\nwant %q", b, want)
	}
	for h, v := range map[string]string{gateway.HeaderDeployment: "dep-2", gateway.HeaderQueueMs: "7", gateway.HeaderBand: "5", gateway.HeaderPriority: "5"} {
		if got := resp.Header.Get(h); got != v {
			t.Errorf("header %s = %q, want %q", h, got, v)
		}
	}
}

func TestStreamErrorAfterStart(t *testing.T) {
	sub := &recordingSubmitter{do: func(ctx context.Context, req *client.Request) (*client.Response, client.Result, error) {
		info := client.Result{ID: req.ID, Picked: true, Deployment: "dep-2"}
		req.OnStart(info)
		if err := req.OnChunk([]byte(`{"choices":[]}`)); err != nil {
			return nil, info, err
		}
		return nil, info, client.ErrWorkerLost
	}}
	srv := startGateway(t, gateway.Options{}, sub)
	resp, b := call(t, srv, http.MethodPost, "/v1/chat/completions", `{"model":"gpt-4o","messages":[{}],"stream":true}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	events := strings.Split(strings.TrimSuffix(string(b), "\n\n"), "\n\n")
	if len(events) != 2 || events[0] != `data: {"choices":[]}` {
		t.Fatalf("events %q", events)
	}
	var eb struct {
		Error *errorDetail `json:"error"`
	}
	if err := json.Unmarshal([]byte(strings.TrimPrefix(events[1], "data: ")), &eb); err != nil || eb.Error == nil || eb.Error.Code != "worker_lost" {
		t.Errorf("last event %q, want an error event with code worker_lost", events[1])
	}
}

// TestNoOKWithoutAnAnswer drives every way a submitted request can end
// through the gateway, streaming and not: only a served answer is a 200. An
// error of any outcome has that outcome's status (a cancel while the caller
// still waits is a bug: 500), and a "served" answer without a body is a 500.
func TestNoOKWithoutAnAnswer(t *testing.T) {
	type ending struct {
		name   string
		resp   *client.Response
		err    error
		status int
	}
	var endings []ending
	for _, o := range messages.Outcomes()[1:] {
		status := o.Status()
		if o == messages.OutcomeCancelled {
			status = http.StatusInternalServerError
		}
		endings = append(endings, ending{name: o.String(), err: &messages.Error{Outcome: o, Message: "ended as " + o.String()}, status: status})
	}
	endings = append(endings,
		ending{name: "served without a response", status: http.StatusInternalServerError},
		ending{name: "served with an empty body", resp: &client.Response{Deployment: "dep-1"}, status: http.StatusInternalServerError},
		ending{name: "served with a body that is not an object", resp: &client.Response{Deployment: "dep-1", Body: []byte("<html>")}, status: http.StatusInternalServerError},
		ending{name: "served", resp: &client.Response{Deployment: "dep-1", Body: []byte(servedBody)}, status: http.StatusOK},
	)
	for _, e := range endings {
		for _, stream := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s stream=%v", e.name, stream), func(t *testing.T) {
				sub := &recordingSubmitter{do: func(ctx context.Context, req *client.Request) (*client.Response, client.Result, error) {
					return e.resp, client.Result{ID: req.ID, Picked: true, Deployment: "dep-1"}, e.err
				}}
				srv := startGateway(t, gateway.Options{}, sub)
				resp, body := call(t, srv, "POST", "/v1/chat/completions", fmt.Sprintf(`{"model":"fake","stream":%v,"messages":[{"role":"user","content":"hi"}]}`, stream))
				if resp.StatusCode != e.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, e.status, body)
				}
				if e.status != http.StatusOK && !json.Valid(body) {
					t.Errorf("error body is not JSON: %q", body)
				}
			})
		}
	}
}
