package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/provider"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/topology"
	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// ---------------------------------------------------------------------------
// Helpers for streams (the shared ones live in harness_test.go)

// newStreamFake starts a fake upstream with opts (Reply defaults to
// fakeReply). Like newFake, it is released when the test's context ends and
// closed at the very end.
func newStreamFake(tb testing.TB, opts fakeupstream.Options) *fakeupstream.Server {
	tb.Helper()
	if opts.Reply == "" {
		opts.Reply = fakeReply
	}
	f := fakeupstream.New(opts)
	tb.Cleanup(f.Close)
	context.AfterFunc(tb.Context(), f.Release)
	return f
}

// writeStreamConfig is writeConfig for tests and benchmarks alike.
func writeStreamConfig(tb testing.TB, cfg configFile) string {
	tb.Helper()
	return writeYAMLConfig(tb, cfg)
}

// sseStream reads server-sent events from an HTTP answer, one "data:"
// payload at a time, as they arrive.
type sseStream struct {
	Resp *http.Response
	br   *bufio.Reader
}

// openSSE posts a streaming request with client and returns the open stream.
// A status other than 200 is an error.
func openSSE(ctx context.Context, client *http.Client, url, body string) (*sseStream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return nil, fmt.Errorf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(b)))
	}
	return newSSEStream(resp), nil
}

func newSSEStream(resp *http.Response) *sseStream {
	return &sseStream{Resp: resp, br: bufio.NewReaderSize(resp.Body, 64<<10)}
}

// Next returns the next event's payload (the text after "data: "). At the
// end of the body it returns io.EOF; a connection cut off mid-body gives
// another error (io.ErrUnexpectedEOF for a broken chunked encoding).
func (s *sseStream) Next() (string, error) {
	for {
		line, err := s.br.ReadString('\n')
		if strings.HasSuffix(line, "\n") {
			if d, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), "data:"); ok {
				return strings.TrimSpace(d), nil
			}
			continue // blank separator, comment or other field
		}
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return "", err
	}
}

// Rest reads every remaining event; err is nil when the body ended cleanly.
func (s *sseStream) Rest() (events []string, err error) {
	for {
		d, err := s.Next()
		if errors.Is(err, io.EOF) {
			return events, nil
		}
		if err != nil {
			return events, err
		}
		events = append(events, d)
	}
}

func (s *sseStream) Close() { s.Resp.Body.Close() }

// streamChunk is the part of a chat or text completion chunk (or of an error
// event) the tests read.
type streamChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
		Text string `json:"text"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens int64 `json:"prompt_tokens"`
	} `json:"usage"`
	Error *struct {
		Message string `json:"message"`
		Type    string `json:"type"`
		Code    any    `json:"code"`
	} `json:"error"`
}

// sseSummary is what a client made of a stream's events.
type sseSummary struct {
	Text     string // content of every chunk, in order
	Chunks   int    // events with a non-empty content
	Done     bool   // the stream ended with [DONE]
	ErrEvent string // the payload of an error event, if any
}

// summarizeSSE checks the shape of events (JSON chunks, at most one error event
// and nothing after it, [DONE] only last) and sums them up.
func summarizeSSE(events []string) (sseSummary, error) {
	var s sseSummary
	for i, e := range events {
		last := i == len(events)-1
		if e == "[DONE]" {
			if !last {
				return s, fmt.Errorf("event %d is [DONE] but %d more follow", i, len(events)-1-i)
			}
			s.Done = true
			continue
		}
		var c streamChunk
		if err := json.Unmarshal([]byte(e), &c); err != nil {
			return s, fmt.Errorf("event %d is not JSON: %.200q", i, e)
		}
		if c.Error != nil {
			if !last {
				return s, fmt.Errorf("error event %d is followed by %d more: %s", i, len(events)-1-i, e)
			}
			s.ErrEvent = e
			continue
		}
		for _, ch := range c.Choices {
			if t := ch.Delta.Content + ch.Text; t != "" {
				s.Text += t
				s.Chunks++
			}
		}
	}
	return s, nil
}

// waitUpstreamFinished waits at most limit until every request f received has
// finished and returns them.
func waitUpstreamFinished(t *testing.T, f *fakeupstream.Server, limit time.Duration) []fakeupstream.Request {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), limit)
	defer cancel()
	if err := f.WaitIdle(ctx); err != nil {
		t.Fatalf("the upstream still handles %d requests after %s", f.InFlight(), limit)
	}
	return f.Requests()
}

// startStoppableGateway starts a gateway and returns, besides it, a function
// that shuts it down and waits until it is down (the cleanup does the same
// if the test did not).
func startStoppableGateway(t *testing.T, env config.Env) (*gateway, func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	g, err := app.StartGateway(ctx, env, noEnv, newTestLog(t))
	if err != nil {
		cancel()
		t.Fatalf("start gateway: %v", err)
	}
	stop := func() error {
		cancel()
		return g.Wait()
	}
	t.Cleanup(func() { _ = stop() })
	return &gateway{Gateway: g, URL: "http://" + g.Addr().String()}, stop
}

// ---------------------------------------------------------------------------
// 1. openai-go reads streams

// TestStreamOpenAIClient: openai-go's streaming client reads a streamed chat
// and a streamed text completion through the gateway; the text is the
// upstream's, and with stream_options.include_usage the last chunk carries
// the usage. A mock_response deployment streams too, in several chunks.
func TestStreamOpenAIClient(t *testing.T) {
	const canned = "a canned answer that arrives in several pieces"
	fake := newStreamFake(t, fakeupstream.Options{StreamChunks: 4})
	cfg := writeConfig(t, configFile{ModelList: []deployment{
		fakeDeployment("assistant", "assistant-0", fake, 0),
		fakeDeployment("writer", "writer-0", fake, 0),
		{ModelName: "canned", Params: deployParams{MockResponse: ptr(canned)}, ModelInfo: &modelInfo{ID: "canned-0"}},
	}})
	g := startEmbeddedGateway(t, cfg, 4)
	oc := openai.NewClient(option.WithBaseURL(g.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	withUsage := openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}

	chat := func(t *testing.T, model string, usage bool) (text string, chunks int, last openai.ChatCompletionChunk) {
		t.Helper()
		params := openai.ChatCompletionNewParams{
			Model:    model,
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream to me")},
		}
		if usage {
			params.StreamOptions = withUsage
		}
		stream := oc.Chat.Completions.NewStreaming(waitCtx(t), params)
		defer stream.Close()
		for stream.Next() {
			last = stream.Current()
			if len(last.Choices) > 0 && last.Choices[0].Delta.Content != "" {
				text += last.Choices[0].Delta.Content
				chunks++
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		return text, chunks, last
	}

	t.Run("chat", func(t *testing.T) {
		text, chunks, last := chat(t, "assistant", true)
		if text != fakeReply {
			t.Errorf("streamed text %q, want %q", text, fakeReply)
		}
		if chunks != 4 {
			t.Errorf("%d content chunks, want the upstream's 4", chunks)
		}
		if last.Usage.PromptTokens <= 0 || len(last.Choices) != 0 {
			t.Errorf("last chunk has usage %+v and %d choices, want prompt_tokens > 0 and no choice", last.Usage, len(last.Choices))
		}
	})

	t.Run("chat without usage", func(t *testing.T) {
		text, _, last := chat(t, "assistant", false)
		if text != fakeReply {
			t.Errorf("streamed text %q, want %q", text, fakeReply)
		}
		if last.JSON.Usage.Valid() && last.Usage.PromptTokens > 0 {
			t.Errorf("usage %+v sent although not asked for", last.Usage)
		}
	})

	t.Run("text completion", func(t *testing.T) {
		stream := oc.Completions.NewStreaming(waitCtx(t), openai.CompletionNewParams{
			Model:         "writer",
			Prompt:        openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon a time")},
			StreamOptions: withUsage,
		})
		defer stream.Close()
		var text string
		var chunks int
		var last openai.Completion
		for stream.Next() {
			last = stream.Current()
			if len(last.Choices) > 0 && last.Choices[0].Text != "" {
				text += last.Choices[0].Text
				chunks++
			}
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if text != fakeReply {
			t.Errorf("streamed text %q, want %q", text, fakeReply)
		}
		if chunks != 4 {
			t.Errorf("%d content chunks, want the upstream's 4", chunks)
		}
		if last.Usage.PromptTokens <= 0 {
			t.Errorf("last chunk has usage %+v, want prompt_tokens > 0", last.Usage)
		}
	})

	t.Run("mock deployment", func(t *testing.T) {
		text, chunks, last := chat(t, "canned", true)
		if text != canned {
			t.Errorf("streamed text %q, want %q", text, canned)
		}
		if chunks < 2 {
			t.Errorf("the mock deployment streamed %d content chunks, want several", chunks)
		}
		if last.Usage.PromptTokens <= 0 {
			t.Errorf("last chunk has usage %+v, want prompt_tokens > 0", last.Usage)
		}
	})

	var streamed int
	for _, r := range fake.Requests() {
		if r.Stream {
			streamed++
		}
	}
	if streamed != 3 || fake.Count() != 3 {
		t.Errorf("the upstream received %d requests (%d streaming), want 3 streaming (the mock calls none)", fake.Count(), streamed)
	}
}

// ---------------------------------------------------------------------------
// 2. Chunks are relayed as they come

// TestStreamIncremental: the first chunk reaches the client while the
// upstream is still sending, and the rest follow one by one, not in a batch
// at the end. The answer is an SSE stream exactly as OpenAI sends it.
func TestStreamIncremental(t *testing.T) {
	const chunks, gap = 5, 300 * time.Millisecond
	fake := newStreamFake(t, fakeupstream.Options{StreamChunks: chunks, ChunkGap: gap})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("drip", "drip-0", fake, 0)}})
	g := startEmbeddedGateway(t, cfg, 2)

	start := time.Now()
	s, err := openSSE(waitCtx(t), http.DefaultClient, g.URL+"/v1/chat/completions", chatBody("drip", "slowly please", `"stream":true`))
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	defer s.Close()
	first, err := s.Next()
	if err != nil {
		t.Fatalf("first event: %v", err)
	}
	firstAt := time.Since(start)
	reqs := fake.Requests()
	if len(reqs) != 1 {
		t.Fatalf("the upstream has %d requests, want 1", len(reqs))
	}
	if !reqs[0].Finished.IsZero() {
		t.Errorf("the first chunk arrived %s after the request, when the upstream had already finished (buffered, not relayed)", firstAt)
	}
	h := s.Resp.Header
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no", "x-llmq-deployment": "drip-0"} {
		if got := h.Get(k); !strings.HasPrefix(got, want) {
			t.Errorf("header %s %q, want %q", k, got, want)
		}
	}

	events, err := s.Rest()
	total := time.Since(start)
	if err != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	// (chunks-1) gaps separate the content chunks: the first arrived before
	// most of them passed.
	if minRest := time.Duration(chunks-2) * gap; total-firstAt < minRest {
		t.Errorf("first chunk after %s, end after %s: the rest came in %s, want at least %s (the upstream's gaps)", firstAt, total, total-firstAt, minRest)
	}
	sum, err := summarizeSSE(append([]string{first}, events...))
	if err != nil {
		t.Fatal(err)
	}
	if !sum.Done || sum.ErrEvent != "" || sum.Text != fakeReply {
		t.Errorf("stream: done=%v error=%q text %q, want [DONE], no error and %q", sum.Done, sum.ErrEvent, sum.Text, fakeReply)
	}
	if got := fake.Requests()[0]; got.Cancelled || got.Status != http.StatusOK {
		t.Errorf("upstream request: cancelled=%v status %d, want served", got.Cancelled, got.Status)
	}
}

// ---------------------------------------------------------------------------
// 3. Client disconnect

// TestDisconnectMidStream: a client that goes away after the first chunk
// gets its provider call cancelled (the upstream records it as cancelled,
// not finished: its stream would last 8 s), and the deployment's only slot
// is free again for the next request.
func TestDisconnectMidStream(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{StreamChunks: 40, ChunkGap: 200 * time.Millisecond})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("long", "long-0", fake, 1)}})
	g := startEmbeddedGateway(t, cfg, 4)

	ctx, hangUp := context.WithCancel(waitCtx(t))
	defer hangUp()
	s, err := openSSE(ctx, http.DefaultClient, g.URL+"/v1/chat/completions", chatBody("long", "leaving early", `"stream":true`))
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	if _, err := s.Next(); err != nil {
		t.Fatalf("first event: %v", err)
	}
	hangUp()
	left := time.Now()
	reqs := waitUpstreamFinished(t, fake, waitLimit) // the held call can end only by being cancelled
	if len(reqs) != 1 || !reqs[0].Cancelled {
		t.Fatalf("upstream requests %+v, want one, cancelled", reqs)
	}
	t.Logf("the upstream saw the call cancelled %s after the client left", reqs[0].Finished.Sub(left))

	// max_parallel_requests is 1: this is served only if the slot was released.
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("long", "next")))
}

// TestDisconnectWhileQueued: a streaming request whose client goes away
// while it waits behind the only slot never reaches the upstream.
func TestDisconnectWhileQueued(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("single", "single-0", fake, 1)}})
	env := baseEnv(cfg)
	env.DataDir, env.EmbeddedNATSListen, env.EmbeddedWorkers = t.TempDir(), "127.0.0.1:-1", 4
	env.LogLevel = "debug" // the gateway logs each request's outcome
	logs := newLogLines()
	g := startGateway(t, env, logs)
	q := observeQueue(t, g.NATSURL())
	url := g.URL + "/v1/chat/completions"

	fake.Hold()
	held := make(chan error, 1)
	go func() {
		s, err := openSSE(t.Context(), http.DefaultClient, url, chatBody("single", "held", `"stream":true`))
		if err == nil {
			defer s.Close()
			var events []string
			if events, err = s.Rest(); err == nil {
				var sum sseSummary
				if sum, err = summarizeSSE(events); err == nil && (!sum.Done || sum.Text != fakeReply) {
					err = fmt.Errorf("held stream: %+v", sum)
				}
			}
		}
		held <- err
	}()
	waitUpstream(t, fake, 1)

	ctx, hangUp := context.WithCancel(t.Context())
	gone := make(chan error, 1)
	go func() {
		s, err := openSSE(ctx, http.DefaultClient, url, chatBody("single", "abandoned", `"stream":true`))
		if err == nil {
			s.Close()
			err = errors.New("the abandoned stream was answered")
		}
		gone <- err
	}()
	q.waitStored(t, 2)
	hangUp()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned stream: %v, want context.Canceled", err)
	}
	logs.waitFor(t, "msg=request", "outcome=cancelled") // the gateway noticed the hang-up

	fake.Release()
	select {
	case err := <-held:
		if err != nil {
			t.Error(err)
		}
	case <-waitCtx(t).Done():
		t.Fatal("the held stream did not end")
	}
	checkServed(t, mustPost(t, url, "", chatBody("single", "control", `"priority":0`)))
	waitIdle(t, fake)
	q.waitMsgs(t, 0)
	if got, want := contents(fake), []string{"held", "control"}; !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q (never the abandoned stream)", got, want)
	}
}

// TestDisconnectNonStreaming: a plain (non-streaming) request whose client
// goes away during the provider call gets that call cancelled (the upstream
// holds it: it can end no other way).
func TestDisconnectNonStreaming(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("plain", "plain-0", fake, 1)}})
	g := startEmbeddedGateway(t, cfg, 2)

	fake.Hold() // the upstream call lasts until the client goes away
	ctx, hangUp := context.WithCancel(waitCtx(t))
	defer hangUp()
	gone := make(chan error, 1)
	go func() {
		_, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("plain", "never mind"))
		gone <- err
	}()
	waitUpstream(t, fake, 1)
	hangUp()
	left := time.Now()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("request: %v, want context.Canceled", err)
	}
	reqs := waitUpstreamFinished(t, fake, waitLimit) // the held call can end only by being cancelled
	if len(reqs) != 1 || !reqs[0].Cancelled {
		t.Fatalf("upstream requests %+v, want one, cancelled", reqs)
	}
	t.Logf("the upstream saw the call cancelled %s after the client left", reqs[0].Finished.Sub(left))
	fake.Release()
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("plain", "next")))
}

// ---------------------------------------------------------------------------
// 4. A gateway dies with requests queued

// TestGatewayDiesWithQueuedRequests: requests queued through a gateway that
// then shuts down (no worker existed meanwhile) are dropped by the first
// worker that finds them: their caller is gone, so no provider is called,
// and they leave the stream.
func TestGatewayDiesWithQueuedRequests(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("orphan", "orphan-0", fake, 0)}})
	natsURL := startNATS(t)
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	env.ShutdownTimeout = 500 * time.Millisecond // the queued requests cannot be answered: do not wait long
	a, stopA := startStoppableGateway(t, env)
	q := observeQueue(t, natsURL)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	answers := make(chan error, 3)
	for i, req := range []struct{ path, body string }{
		{"/v1/chat/completions", chatBody("orphan", "orphan-stream", `"stream":true`)},
		{"/v1/chat/completions", chatBody("orphan", "orphan-plain")},
		{"/v1/completions", completionBody("orphan", "orphan-completion", `"stream":true`, `"priority":0`)},
	} {
		go func() {
			r, err := post(ctx, a.URL+req.path, "", req.body)
			if err == nil {
				err = fmt.Errorf("answered: %s", r)
			}
			answers <- err
		}()
		q.waitStored(t, uint64(i+1))
	}
	q.waitMsgs(t, 3)

	stopped := time.Now()
	err := stopA()
	t.Logf("gateway A stopped after %s: %v", time.Since(stopped).Round(time.Millisecond), err)
	if n := q.state(t).Msgs; n != 3 {
		t.Fatalf("after the gateway stopped the stream holds %d requests, want the 3 queued", n)
	}

	startWorker(t, cfg, natsURL, 4)
	q.waitMsgs(t, 0) // the worker found every caller gone
	b := startRemoteGateway(t, cfg, natsURL)
	checkServed(t, mustPost(t, b.URL+"/v1/chat/completions", "", chatBody("orphan", "control")))
	waitIdle(t, fake)
	q.waitDrained(t)
	if got, want := contents(fake), []string{"control"}; !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q (never the orphaned requests)", got, want)
	}
}

// TestGatewayDiesCallersNotLeftHanging: a gateway that shuts down while
// requests it accepted cannot be answered (queued, no worker) does not leave
// their callers hanging: once it is down (Wait returned), each caller has an
// error answer or a closed connection, instead of waiting for a queue
// deadline of minutes on a gateway whose NATS connection is already closed.
func TestGatewayDiesCallersNotLeftHanging(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("orphan", "orphan-0", fake, 0)}})
	natsURL := startNATS(t)
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	env.ShutdownTimeout = 500 * time.Millisecond
	a, stopA := startStoppableGateway(t, env)
	q := observeQueue(t, natsURL)

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	type answer struct {
		name string
		r    *result
		err  error
	}
	answers := make(chan answer, 2)
	for i, name := range []string{"stream", "plain"} {
		body := chatBody("orphan", name)
		if name == "stream" {
			body = chatBody("orphan", name, `"stream":true`)
		}
		go func() {
			r, err := post(ctx, a.URL+"/v1/chat/completions", "", body)
			answers <- answer{name, r, err}
		}()
		q.waitStored(t, uint64(i+1))
	}
	err := stopA()
	t.Logf("the gateway stopped: %v", err)
	// The callers' requests have no deadline of their own (their queue
	// deadline is minutes away): one that is left open never ends.
	grace := time.After(waitLimit)
	for range 2 {
		select {
		case a := <-answers:
			if a.err == nil && a.r.Status == http.StatusOK {
				t.Errorf("%s: answered 200 by a gateway that could not serve it: %s", a.name, a.r)
			}
			t.Logf("%s: %v %v", a.name, a.r, a.err)
		case <-grace:
			t.Fatalf("%s after the gateway's Wait returned, its callers still wait: their handlers outlived the gateway, with its NATS connection closed", waitLimit)
		}
	}
}

// ---------------------------------------------------------------------------
// 5. A slow reader is cut off; others are not slowed down

// loopbackBuffering measures how many bytes a loopback TCP connection whose
// reader never reads accepts before a write blocks (the sender's send buffer
// plus the receiver's receive buffer, as the kernel tunes them).
func loopbackBuffering(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	block := make([]byte, 64<<10)
	total := 0
	for total < 1<<30 {
		_ = server.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := server.Write(block)
		total += n
		if err != nil {
			break
		}
	}
	return total
}

// TestSlowReaderCutOff: a client that sends a streaming request and stops
// reading while the upstream streams a large answer is cut off: its stream
// ends with an error event with the documented code slow_reader, never
// [DONE], and carries no more than the TCP buffers and 256 events; the
// upstream call behind it is cancelled; and a parallel fast stream through
// the same gateway completes normally meanwhile.
//
// How the bound is reached: the slow client reads nothing until the end, so
// the gateway's writes fill the loopback TCP buffers (measured first, a few
// MB) and then block in sse.go, whose write deadline (sseWriteTimeout) is
// 10 s. The chunks that keep coming over NATS pile up in the gateway's
// per-stream buffer of client.Options.StreamBuffer = 256 chunks; the next one
// overflows it. From then on the stream is over (pkg/client drops every
// further chunk and ends the stream with ErrSlowReader), so the upstream call
// must be cancelled then: every token it still produces is paid for and
// thrown away. The upstream sends five times that bound (TCP buffers plus 256
// chunks) as fast as it can, in chunks of about 6 KB: the overflow comes a
// fifth of the way through the relayed stream (the upstream itself may be
// ahead of the worker by the TCP buffers between them), and relaying the
// rest takes thousands of NATS messages, against the three or four messages
// a cancellation takes. The write deadline alone could end the stream only
// 10 s after the writes block, which is after the client's first event; so a
// call that ends less than 10 s after that event was stopped by the bound.
// The wait for it is bounded by waitLimit from that event.
func TestSlowReaderCutOff(t *testing.T) {
	const buffer = 256         // client.Options.StreamBuffer's default, which the gateway uses
	const pieceBytes = 6 << 10 // content per chunk; each event is ~200 bytes more
	tcp := loopbackBuffering(t)
	bound := tcp + buffer*(pieceBytes+200)
	bulkChunks := 5 * bound / pieceBytes
	if bulkChunks*pieceBytes > 96<<20 {
		t.Fatalf("loopback TCP buffers hold %d bytes: too much for this test's upstream to exceed", tcp)
	}
	t.Logf("loopback TCP buffering %d bytes; bound about %d bytes; the upstream sends %d chunks of %d bytes", tcp, bound, bulkChunks, pieceBytes)
	word := "lorem-ipsum-dolor-sit-amet-" // no spaces: the fake counts words with strings.Fields, slow on many MB
	bulkReply := strings.Repeat(word, bulkChunks*pieceBytes/len(word))
	bulk := newStreamFake(t, fakeupstream.Options{Reply: bulkReply, StreamChunks: bulkChunks})
	quick := newStreamFake(t, fakeupstream.Options{StreamChunks: 8})
	cfg := writeConfig(t, configFile{ModelList: []deployment{
		fakeDeployment("bulk", "bulk-0", bulk, 0),
		fakeDeployment("quick", "quick-0", quick, 0),
	}})
	g := startEmbeddedGateway(t, cfg, 4)
	addr := g.Addr().String()

	// The slow client: a raw connection that sends the request, reads the
	// answer's head and first event, and then nothing more.
	conn, err := (&net.Dialer{}).DialContext(waitCtx(t), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	body := chatBody("bulk", "slow reader", `"stream":true`)
	if _, err := fmt.Fprintf(conn, "POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", addr, len(body), body); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("slow client: reading the answer: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("slow client: status %d, want 200", resp.StatusCode)
	}
	slow := newSSEStream(resp)
	first, err := slow.Next()
	if err != nil {
		t.Fatalf("slow client: first event: %v", err)
	}
	streaming := time.Now() // the upstream sends; from now on nobody reads

	// A fast stream through the same gateway, while the slow one is stuck.
	start := time.Now()
	s, err := openSSE(waitCtx(t), http.DefaultClient, g.URL+"/v1/chat/completions", chatBody("quick", "fast reader", `"stream":true`))
	if err != nil {
		t.Fatalf("fast stream: %v", err)
	}
	events, err := s.Rest()
	s.Close()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("fast stream: %v", err)
	}
	if sum, err := summarizeSSE(events); err != nil || !sum.Done || sum.Text != fakeReply {
		t.Errorf("fast stream: %+v (%v), want [DONE] and %q", sum, err, fakeReply)
	}
	t.Logf("the fast stream took %s; the slow stream's upstream call was still running then: %v", took.Round(time.Millisecond), bulk.Requests()[0].Finished.IsZero())

	// The slow stream's upstream call must end, cancelled, before it would
	// have finished by itself, and before the write deadline could have
	// ended the stream (which is only 10 s after the writes blocked, later
	// than streaming+10s).
	ctx, cancel := context.WithDeadline(t.Context(), streaming.Add(waitLimit))
	defer cancel()
	if err := bulk.WaitIdle(ctx); err != nil {
		t.Errorf("the upstream call of the stuck stream still runs %s after the stream started: it was not cancelled when the client fell more than %d chunks behind", time.Since(streaming).Round(time.Millisecond), buffer)
	} else if r := bulk.Requests()[0]; !r.Cancelled {
		t.Errorf("the upstream call of the stuck stream ran to its end (%s after the stream started): it was not cancelled when the client fell more than %d chunks behind", r.Finished.Sub(streaming).Round(time.Millisecond), buffer)
	} else {
		// Cancelled by the cut-off, not by the write deadline: the error
		// event's code below says which.
		t.Logf("the slow stream's upstream call was cancelled %s after the stream started", r.Finished.Sub(streaming).Round(time.Millisecond))
	}

	// Now the slow client reads what reached it: never [DONE].
	_ = conn.SetReadDeadline(time.Now().Add(waitLimit))
	slowEvents, readErr := slow.Rest()
	sum, err := summarizeSSE(append([]string{first}, slowEvents...))
	if err != nil {
		t.Fatalf("slow client: %v", err)
	}
	t.Logf("slow client: %d events (%d bytes of text), error event %.200s, read error %v", len(slowEvents)+1, len(sum.Text), sum.ErrEvent, readErr)
	switch {
	case sum.Done:
		t.Error("the slow client's stream ended with [DONE]")
	case errors.Is(readErr, os.ErrDeadlineExceeded):
		t.Errorf("the slow client's stream did not end: %v", readErr)
	case sum.ErrEvent == "":
		t.Errorf("the slow client's stream ended without an error event (read error %v)", readErr)
	case relErrorCode([]byte(sum.ErrEvent)) != "slow_reader":
		t.Errorf("the slow client's stream ended with error event %.300s, want code slow_reader", sum.ErrEvent)
	}
	if !strings.HasPrefix(bulkReply, sum.Text) {
		t.Error("the slow client's text is not a prefix of the upstream's: chunks were lost or reordered before the end")
	}
	// What reached it: the loopback TCP buffers' worth and at most the
	// client's buffer of events, never the whole stream.
	if len(sum.Text) > bound {
		t.Errorf("the slow client received %d bytes of text, over the bound of %d (TCP buffers plus %d events)", len(sum.Text), bound, buffer)
	}
}

// TestSlowReaderBound: through pkg/client with a buffer of 8 events, a
// stream whose reader is stuck on its first event is ended with
// client.ErrSlowReader ("more than 8 events were waiting") while the reader
// is still stuck: the provider call is cancelled before the reader returns,
// and the reader is given no event after the one it was stuck on (those
// buffered are dropped with the stream). The upstream would stream for 20 s
// (1,000 chunks, 20 ms apart); only the cut-off ends it sooner.
func TestSlowReaderBound(t *testing.T) {
	const buffer, chunks = 8, 1000
	fake := newStreamFake(t, fakeupstream.Options{Reply: strings.Repeat("w ", chunks), StreamChunks: chunks, ChunkGap: 20 * time.Millisecond})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("bulk", "bulk-0", fake, 0)}})
	g := startEmbeddedGateway(t, cfg, 2)
	nc, err := nats.Connect(g.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cl, err := client.New(nc, client.Options{StreamBuffer: buffer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })

	stuck, release := make(chan struct{}), make(chan struct{})
	events := 0 // Do's goroutine only, read after done
	done := make(chan error, 1)
	go func() {
		_, _, err := cl.Do(waitCtx(t), &client.Request{Kind: messages.KindChat, Group: "bulk",
			Body: []byte(chatBody("bulk", "slow reader", `"stream":true`)),
			OnChunk: func([]byte) error {
				events++
				if events == 1 {
					close(stuck)
					<-release // the reader stops reading
				}
				return nil
			}})
		done <- err
	}()
	select {
	case <-stuck:
	case err := <-done:
		t.Fatalf("the stream ended before its first event: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	if err := fake.WaitIdle(ctx); err != nil {
		t.Fatalf("the provider call still runs while the reader is stuck: the client did not cut the stream off at %d waiting events", buffer)
	}
	if r := fake.Requests()[0]; !r.Cancelled {
		t.Fatalf("the provider call ran to its end (status %d) while the reader was stuck, want it cancelled", r.Status)
	}
	close(release)
	err = <-done
	if !errors.Is(err, client.ErrSlowReader) {
		t.Fatalf("Do returned %v, want client.ErrSlowReader", err)
	}
	if want := fmt.Sprintf("more than %d events were waiting", buffer); !strings.Contains(err.Error(), want) {
		t.Errorf("Do returned %q, want it to say %q", err, want)
	}
	if events != 1 {
		t.Errorf("the reader was given %d events, want only the one it was stuck on", events)
	}
}

// ---------------------------------------------------------------------------
// 6. A worker dies mid-stream

// startKillableWorker runs a worker pool like app.RunWorker does, on a NATS
// connection of its own, and returns that connection: closing it kills the
// worker as far as everyone else can tell (no more chunks, no heartbeats, no
// reply), while the test process lives on.
func startKillableWorker(t *testing.T, cfgPath, natsURL string, slots int) *nats.Conn {
	t.Helper()
	cfg, err := config.Load(cfgPath, noEnv)
	if err != nil {
		t.Fatalf("load config: %v", err)
	}
	subjects, err := messages.NewSubjects(cfg.LLMQ.SubjectPrefix)
	if err != nil {
		t.Fatal(err)
	}
	bands, err := messages.NewBands(cfg.LLMQ.PriorityBands)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(natsURL, nats.Name("llmq-killable-worker"), nats.NoReconnect())
	if err != nil {
		t.Fatalf("connect to NATS: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	spec := topology.Spec{Subjects: subjects, Bands: bands.Count(), Groups: cfg.Groups(),
		Replicas: cfg.LLMQ.Replicas, MaxQueued: cfg.LLMQ.MaxQueued, AckWait: cfg.LLMQ.AckWait.D()}
	if err := topology.Ensure(waitCtx(t), js, spec); err != nil {
		t.Fatalf("topology: %v", err)
	}
	var ds []router.Deployment
	for _, d := range cfg.ModelList {
		ds = append(ds, router.Deployment{
			ID: d.ModelInfo.ID, Group: d.ModelName, MaxParallel: d.Params.MaxParallelRequests,
			Value: provider.NewOpenAI(provider.OpenAIOptions{BaseURL: d.Params.APIBase, APIKey: d.Params.APIKey,
				Model: d.Params.ProviderModel(), Timeout: d.Params.Timeout.D()}),
		})
	}
	log := slog.New(slog.NewTextHandler(newTestLog(t), &slog.HandlerOptions{Level: slog.LevelWarn})).With("component", "killable-worker")
	pool, err := worker.New(nc, worker.Options{
		Subjects: subjects, Bands: bands.Count(), Groups: cfg.Groups(), Slots: slots,
		Router: router.New(router.ParseStrategy(cfg.RouterSettings.RoutingStrategy), ds, nil),
		Logger: log, AckWait: spec.AckWait, DrainTimeout: time.Second,
	})
	if err != nil {
		t.Fatalf("worker: %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- pool.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("killed worker's Run: %v", err)
			}
		case <-time.After(waitLimit):
			t.Error("the killed worker's Run did not return")
		}
	})
	return nc
}

// TestWorkerKilledMidStream: when the worker serving a stream dies (its NATS
// connection drops: no more chunks, no heartbeats), the client's stream ends
// with an error event within StreamSilence plus two seconds, not after a
// timeout of minutes, and never with [DONE].
func TestWorkerKilledMidStream(t *testing.T) {
	fake := newStreamFake(t, fakeupstream.Options{StreamChunks: 50, ChunkGap: 300 * time.Millisecond})
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("fragile", "fragile-0", fake, 0)}})
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	wnc := startKillableWorker(t, cfg, natsURL, 2)

	s, err := openSSE(waitCtx(t), http.DefaultClient, g.URL+"/v1/chat/completions", chatBody("fragile", "keep going", `"stream":true`))
	if err != nil {
		t.Fatalf("open stream: %v", err)
	}
	defer s.Close()
	first, err := s.Next()
	if err != nil {
		t.Fatalf("first event: %v", err)
	}
	wnc.Close() // the worker is gone
	killed := time.Now()

	type end struct {
		events []string
		err    error
	}
	ended := make(chan end, 1)
	go func() {
		events, err := s.Rest()
		ended <- end{events, err}
	}()
	bound := messages.StreamSilence + 2*time.Second
	select {
	case e := <-ended:
		took := time.Since(killed)
		if e.err != nil {
			t.Fatalf("the stream broke off after %s without an error event: %v", took, e.err)
		}
		sum, err := summarizeSSE(append([]string{first}, e.events...))
		if err != nil {
			t.Fatal(err)
		}
		if sum.Done || sum.ErrEvent == "" {
			t.Fatalf("stream after the worker died: done=%v, error event %q; want an error event and no [DONE]", sum.Done, sum.ErrEvent)
		}
		t.Logf("the stream ended %s after the worker died with %s", took.Round(time.Millisecond), sum.ErrEvent)
	case <-time.After(bound):
		t.Fatalf("the stream did not end within %s after its worker died", bound)
	}
}
