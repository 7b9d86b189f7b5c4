// Package integration holds llmq's end-to-end tests: a real embedded NATS
// JetStream server (its store in t.TempDir()), the real gateway and workers
// started through internal/app, real HTTP and real clients (net/http,
// openai-go, pkg/client). Only the LLM provider is fake
// (internal/fakeupstream), and it records what it receives, so the tests
// assert what a user of the provider's logs would see.
//
// No test sleeps for a fixed time: every wait is on a condition, bounded by a
// context of at most waitLimit.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/pkg/messages"
)

// waitLimit bounds every wait on a condition.
const waitLimit = 10 * time.Second

// fakeReply is what every fake upstream answers.
const fakeReply = "hello from the fake upstream"

// requestStream is the JetStream stream of the default subject prefix.
const requestStream = "LLMQ_REQUESTS"

// ---------------------------------------------------------------------------
// Config file (LiteLLM config.yaml shape plus llmq_settings)

type deployment struct {
	ModelName string       `yaml:"model_name"`
	Params    deployParams `yaml:"litellm_params"`
	ModelInfo *modelInfo   `yaml:"model_info,omitempty"`
}

type deployParams struct {
	Model               string  `yaml:"model,omitempty"`
	APIBase             string  `yaml:"api_base,omitempty"`
	APIKey              string  `yaml:"api_key,omitempty"`
	MaxParallelRequests int     `yaml:"max_parallel_requests,omitempty"`
	MockResponse        *string `yaml:"mock_response,omitempty"`
	Timeout             float64 `yaml:"timeout,omitempty"`
}

type modelInfo struct {
	ID string `yaml:"id"`
}

type routerSettings struct {
	Timeout         float64 `yaml:"timeout,omitempty"`
	DefaultPriority *int64  `yaml:"default_priority,omitempty"`
	CooldownTime    float64 `yaml:"cooldown_time,omitempty"`
}

type generalSettings struct {
	MasterKey string `yaml:"master_key,omitempty"`
}

type llmqSettings struct {
	PriorityBands []int64 `yaml:"priority_bands,omitempty"`
}

type configFile struct {
	ModelList       []deployment     `yaml:"model_list"`
	RouterSettings  *routerSettings  `yaml:"router_settings,omitempty"`
	GeneralSettings *generalSettings `yaml:"general_settings,omitempty"`
	LLMQ            *llmqSettings    `yaml:"llmq_settings,omitempty"`
}

// fakeDeployment is a deployment of group served by fake, with the provider
// model "openai/<group>-upstream" (the upstream sees "<group>-upstream").
func fakeDeployment(group, id string, fake *fakeupstream.Server, maxParallel int) deployment {
	return deployment{
		ModelName: group,
		Params: deployParams{
			Model:               "openai/" + upstreamModel(group),
			APIBase:             fake.URL,
			APIKey:              "test",
			MaxParallelRequests: maxParallel,
			Timeout:             30,
		},
		ModelInfo: &modelInfo{ID: id},
	}
}

// upstreamModel is the model name the upstream sees for a group made by fakeDeployment.
func upstreamModel(group string) string { return group + "-upstream" }

// writeConfig writes cfg as YAML into a fresh temporary directory and returns its path.
func writeConfig(t *testing.T, cfg configFile) string {
	t.Helper()
	return writeYAMLConfig(t, cfg)
}

// writeYAMLConfig writes any config shape (each test file has its own) as
// YAML into a fresh temporary directory and returns its path.
func writeYAMLConfig(tb testing.TB, cfg any) string {
	tb.Helper()
	data, err := yaml.Marshal(cfg)
	if err != nil {
		tb.Fatalf("marshal config: %v", err)
	}
	path := filepath.Join(tb.TempDir(), "config.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		tb.Fatalf("write config: %v", err)
	}
	return path
}

// noEnv is the lookup for os.environ/ references: the test configs have none.
func noEnv(string) (string, bool) { return "", false }

func ptr[T any](v T) *T { return &v }

// ---------------------------------------------------------------------------
// Processes

// testLog is a log writer that forwards to t.Log until the test's cleanups
// have finished, and drops anything written later.
type testLog struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

func newTestLog(t testing.TB) io.Writer {
	l := &testLog{t: t}
	t.Cleanup(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
	})
	return l
}

func (l *testLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.done {
		l.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// baseEnv is the process environment of a test gateway or worker.
func baseEnv(cfgPath string) config.Env {
	return config.Env{
		Config:          cfgPath,
		Listen:          "127.0.0.1:0",
		WorkerSlots:     4,
		LogLevel:        "warn",
		LogFormat:       "text",
		MaxBodyBytes:    786432,
		ShutdownTimeout: 5 * time.Second,
		ParkAfter:       time.Second,      // LLMQ_PARK_AFTER's default
		PublishTimeout:  10 * time.Second, // LLMQ_PUBLISH_TIMEOUT's default
	}
}

// gateway is a started gateway and its base URL (http://127.0.0.1:port).
type gateway struct {
	*app.Gateway
	URL string
}

// logLines records the lines a process logs, so a test can wait for an
// event that has no other observable trace.
type logLines struct {
	mu      sync.Mutex
	lines   []string
	changed chan struct{}
}

func newLogLines() *logLines { return &logLines{changed: make(chan struct{})} }

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.Split(strings.TrimRight(string(p), "\n"), "\n")...)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

// waitFor waits until a logged line contains every one of parts.
func (l *logLines) waitFor(t *testing.T, parts ...string) {
	t.Helper()
	ctx := waitCtx(t)
	for {
		l.mu.Lock()
		for _, line := range l.lines {
			if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
				l.mu.Unlock()
				return
			}
		}
		ch := l.changed
		l.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("no log line with %q", parts)
		}
	}
}

// startGateway starts a gateway with env; it is stopped (context cancelled,
// then Wait) when the test ends. Its log goes to t.Log and to extraLog, if any.
func startGateway(t *testing.T, env config.Env, extraLog ...io.Writer) *gateway {
	t.Helper()
	logOut := io.MultiWriter(append([]io.Writer{newTestLog(t)}, extraLog...)...)
	ctx, cancel := context.WithCancel(t.Context())
	g, err := app.StartGateway(ctx, env, noEnv, logOut)
	if err != nil {
		cancel()
		t.Fatalf("start gateway: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			t.Errorf("gateway stopped with: %v", err)
		}
	})
	return &gateway{Gateway: g, URL: "http://" + g.Addr().String()}
}

// startEmbeddedGateway starts a gateway that embeds its NATS server (store in
// t.TempDir(), TCP listener on a free loopback port) and runs workers
// in-process worker slots.
func startEmbeddedGateway(t *testing.T, cfgPath string, workers int) *gateway {
	t.Helper()
	env := baseEnv(cfgPath)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = workers
	g := startGateway(t, env)
	if g.NATSURL() == "" {
		t.Fatal("the embedded gateway reports no NATS URL although it listens on TCP")
	}
	return g
}

// startRemoteGateway starts a gateway on an external NATS server, without workers.
func startRemoteGateway(t *testing.T, cfgPath, natsURL string) *gateway {
	t.Helper()
	env := baseEnv(cfgPath)
	env.NATSURL = natsURL
	return startGateway(t, env)
}

// startNATS starts a standalone JetStream server (store in t.TempDir()) on a
// free loopback port and returns its client URL.
func startNATS(t *testing.T) string {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Name: "llmq-test"})
	if err != nil {
		t.Fatalf("start NATS: %v", err)
	}
	t.Cleanup(srv.Shutdown)
	url := srv.ClientURL()
	if url == "" {
		t.Fatal("the NATS server reports no client URL")
	}
	return url
}

// startWorker runs a worker process (app.RunWorker with its own NATS
// connection) until the test ends.
func startWorker(t *testing.T, cfgPath, natsURL string, slots int) {
	t.Helper()
	env := baseEnv(cfgPath)
	env.NATSURL = natsURL
	env.WorkerSlots = slots
	logOut := newTestLog(t)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- app.RunWorker(ctx, env, noEnv, logOut) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker stopped with: %v", err)
		}
	})
}

// newFake starts a fake upstream. It is released when the test's context
// ends (before the cleanups stop the gateways, so no worker waits on a held
// call during shutdown) and closed at the very end.
func newFake(t *testing.T) *fakeupstream.Server {
	t.Helper()
	f := fakeupstream.New(fakeupstream.Options{Reply: fakeReply})
	t.Cleanup(f.Close)
	context.AfterFunc(t.Context(), f.Release)
	return f
}

// waitCtx is a context for one bounded wait.
func waitCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	t.Cleanup(cancel)
	return ctx
}

// waitUpstream waits until f has received at least n requests.
func waitUpstream(t *testing.T, f *fakeupstream.Server, n int) {
	t.Helper()
	if err := f.WaitForRequests(waitCtx(t), n); err != nil {
		t.Fatalf("the upstream received %d requests, want %d: %v (contents %q)", f.Count(), n, err, contents(f))
	}
}

// waitIdle waits until f handles no request.
func waitIdle(t *testing.T, f *fakeupstream.Server) {
	t.Helper()
	if err := f.WaitIdle(waitCtx(t)); err != nil {
		t.Fatalf("the upstream still handles %d requests: %v", f.InFlight(), err)
	}
}

// contents lists the content of every request f received, in arrival order.
func contents(f *fakeupstream.Server) []string {
	var out []string
	for _, r := range f.Requests() {
		out = append(out, r.Content)
	}
	return out
}

// ---------------------------------------------------------------------------
// JetStream observation (read-only: the tests never touch the queue itself)

// queue observes the request stream through its own NATS connection.
type queue struct {
	nc     *nats.Conn
	stream jetstream.Stream
}

// observeQueue connects to natsURL and binds to the request stream.
func observeQueue(t *testing.T, natsURL string) *queue {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("llmq-integration-test"))
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", natsURL, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(waitCtx(t), requestStream)
	if err != nil {
		t.Fatalf("stream %s: %v", requestStream, err)
	}
	return &queue{nc: nc, stream: s}
}

// state returns the stream's current state.
func (q *queue) state(t *testing.T) jetstream.StreamState {
	t.Helper()
	info, err := q.stream.Info(waitCtx(t))
	if err != nil {
		t.Fatalf("stream info: %v", err)
	}
	return info.State
}

// waitStored waits until the stream has stored its seq-th message (its last
// sequence is at least seq): a request the gateway published is then queued,
// whether or not a worker has taken it since.
func (q *queue) waitStored(t *testing.T, seq uint64) {
	t.Helper()
	ctx := waitCtx(t)
	var last uint64
	for {
		info, err := q.stream.Info(ctx)
		if err == nil {
			if last = info.State.LastSeq; last >= seq {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the request stream stored %d messages, want %d (last error %v)", last, seq, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitMsgs waits until the stream holds exactly n messages.
func (q *queue) waitMsgs(t *testing.T, n uint64) {
	t.Helper()
	ctx := waitCtx(t)
	var last uint64
	for {
		info, err := q.stream.Info(ctx)
		if err == nil {
			if last = info.State.Msgs; last == n {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the request stream holds %d messages, want %d (last error %v)", last, n, err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitDrained waits until the stream is empty and no consumer has a message
// delivered but unacknowledged, so nothing can be delivered again.
func (q *queue) waitDrained(t *testing.T) {
	t.Helper()
	q.waitMsgs(t, 0)
	ctx := waitCtx(t)
	for c := range q.stream.ListConsumers(ctx).Info() {
		if c.NumAckPending != 0 || c.NumRedelivered != 0 {
			t.Errorf("consumer %s: %d unacknowledged, %d redelivered", c.Name, c.NumAckPending, c.NumRedelivered)
		}
	}
}

// ---------------------------------------------------------------------------
// HTTP

// result is an HTTP answer, read in full.
type result struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r *result) String() string {
	return fmt.Sprintf("%d %s", r.Status, bytes.TrimSpace(r.Body))
}

// post sends body to url as JSON, with a bearer key when key is not empty.
// It returns an error instead of failing, so it is safe in goroutines.
func post(ctx context.Context, url, key, body string) (*result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return do(req)
}

// get sends a GET with a bearer key when key is not empty.
func get(ctx context.Context, url, key string) (*result, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	return do(req)
}

func do(req *http.Request) (*result, error) {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &result{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// mustPost posts and fails the test on a transport error; bounded by waitLimit.
func mustPost(t *testing.T, url, key, body string) *result {
	t.Helper()
	r, err := post(waitCtx(t), url, key, body)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	return r
}

// mustGet gets and fails the test on a transport error; bounded by waitLimit.
func mustGet(t *testing.T, url, key string) *result {
	t.Helper()
	r, err := get(waitCtx(t), url, key)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return r
}

// chatBody is a chat completion body for model whose only user message is
// content; extra are raw JSON members appended to the object (e.g. `"priority":2`).
func chatBody(model, content string, extra ...string) string {
	return object(append([]string{
		`"model":` + jsonString(model),
		`"messages":[{"role":"user","content":` + jsonString(content) + `}]`,
	}, extra...))
}

// completionBody is a text completion body for model with prompt.
func completionBody(model, prompt string, extra ...string) string {
	return object(append([]string{`"model":` + jsonString(model), `"prompt":` + jsonString(prompt)}, extra...))
}

func object(members []string) string { return "{" + strings.Join(members, ",") + "}" }

func jsonString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// openAIError is OpenAI's error body.
type openAIError struct {
	Error *struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Param   *string `json:"param"`
		Code    any     `json:"code"`
	} `json:"error"`
}

// checkError checks that r is an OpenAI error answer with status, and with
// param when param is not empty; it returns the error's type.
func checkError(t *testing.T, r *result, status int, param string) string {
	t.Helper()
	if r.Status != status {
		t.Errorf("status %d, want %d: %s", r.Status, status, r)
		return ""
	}
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("error Content-Type %q, want application/json", ct)
	}
	var e openAIError
	if err := json.Unmarshal(r.Body, &e); err != nil || e.Error == nil {
		t.Errorf("error body is not {\"error\":{...}}: %s", r.Body)
		return ""
	}
	if e.Error.Message == "" || e.Error.Type == "" {
		t.Errorf("error body lacks message or type: %s", r.Body)
	}
	var raw map[string]map[string]json.RawMessage
	if json.Unmarshal(r.Body, &raw) == nil {
		for _, k := range []string{"message", "type", "param", "code"} {
			if _, ok := raw["error"][k]; !ok {
				t.Errorf("error body has no %q member: %s", k, r.Body)
			}
		}
	}
	if param != "" && (e.Error.Param == nil || *e.Error.Param != param) {
		t.Errorf("error param %v, want %q: %s", e.Error.Param, param, r.Body)
	}
	return e.Error.Type
}

// chatCompletion is the part of a chat completion answer the tests read.
type chatCompletion struct {
	ID      string `json:"id"`
	Model   string `json:"model"`
	Choices []struct {
		Message struct {
			Content string `json:"content"`
		} `json:"message"`
		Text string `json:"text"`
	} `json:"choices"`
}

// checkServed checks that r is a 200 answer carrying the fake's reply and
// returns it decoded.
func checkServed(t *testing.T, r *result) chatCompletion {
	t.Helper()
	var c chatCompletion
	if r.Status != http.StatusOK {
		t.Errorf("status %d, want 200: %s", r.Status, r)
		return c
	}
	if err := json.Unmarshal(r.Body, &c); err != nil || len(c.Choices) == 0 {
		t.Errorf("answer is not a completion: %s", r.Body)
		return c
	}
	if got := c.Choices[0].Message.Content + c.Choices[0].Text; got != fakeReply {
		t.Errorf("answer text %q, want %q", got, fakeReply)
	}
	return c
}

// bandOf is the band of priority p under the default band table.
func bandOf(p int64) int { return messages.DefaultBands().Band(p) }
