// Package provider calls the deployments behind a model group: OpenAI-compatible
// HTTP APIs through openai-go, each at the endpoint internal/vendor resolved
// with the auth its vendor wants (Azure OpenAI through openai-go's azure
// package), and mock deployments that answer with a canned text without any
// network call.
//
// The request body is forwarded as the caller sent it (minus llmq-only fields,
// which the gateway removed), with "model" replaced by the deployment's
// provider model (for a wildcard group, the requested model fitted into it)
// and the deployment's default fields added where the caller set none.
// openai-go's own retries are off: the worker owns the retry policy. A call
// either returns a served answer (a JSON object, or a stream that ended with
// [DONE]) or a fault: a *messages.Error of one of the provider outcomes
// (fault.go), or ErrCancelled when ctx ended.
package provider

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/ssestream"
	"github.com/tidwall/gjson"

	"github.com/llmq/llmq/internal/vendor"
	"github.com/llmq/llmq/pkg/messages"
)

// Usage is the token usage a provider reported.
type Usage struct {
	PromptTokens     int64 `json:"prompt_tokens"`
	CompletionTokens int64 `json:"completion_tokens"`
	TotalTokens      int64 `json:"total_tokens"`
}

// Result is a provider's successful answer.
type Result struct {
	Body  []byte // the response body, as the provider sent it
	Usage Usage  // zero when the provider reported none
}

// Emit receives one streamed event: the JSON payload of a server-sent
// "data:" line, without the "data: " prefix and without the final [DONE].
// An error stops the stream.
type Emit func(data []byte) error

// Caller calls one deployment.
type Caller interface {
	// Call makes a non-streaming call.
	Call(ctx context.Context, kind messages.Kind, body []byte) (*Result, error)
	// Stream makes a streaming call (the body has "stream": true) and passes
	// each event to emit as it arrives. It returns the usage the provider
	// reported in the stream, if any.
	Stream(ctx context.Context, kind messages.Kind, body []byte, emit Emit) (Usage, error)
}

// maxResponseBytes bounds a provider answer; replies travel over NATS.
const maxResponseBytes = 8 << 20

// OpenAI calls an OpenAI-compatible API.
type OpenAI struct {
	client   openai.Client
	model    string
	group    string
	defaults map[string]any
	timeout  time.Duration
}

var _ Caller = (*OpenAI)(nil)

// OpenAIOptions configure an OpenAI caller.
type OpenAIOptions struct {
	BaseURL    string        // api_base; default https://api.openai.com/v1
	APIKey     string        // api_key
	Model      string        // provider model name, prefix already removed
	Timeout    time.Duration // per call; 0 = no limit beyond the context
	HTTPClient *http.Client  // shared transport; default http.DefaultClient

	// The endpoint's shape and auth, as internal/vendor resolved them; the
	// zero values are OpenAI's: {BaseURL}/chat/completions with a Bearer key.
	Shape      vendor.Shape
	Auth       vendor.Auth
	APIVersion string // api-version query (Azure deployments, azure_ai)
	ADToken    string // Azure: Entra ID token sent as Bearer instead of APIKey
	// Group is the deployment's model_name; when Model holds '*' wildcards
	// they are filled from the requested model as Group's pattern matched it.
	Group string
	// Defaults are body fields sent with each call unless the caller set
	// them; Headers are sent with each call.
	Defaults map[string]any
	Headers  map[string]string
}

// NewOpenAI returns a caller for one deployment.
func NewOpenAI(o OpenAIOptions) *OpenAI {
	opts := append([]option.RequestOption{option.WithMaxRetries(0), option.WithMiddleware(checkStatus)}, endpointOptions(o)...)
	if o.HTTPClient != nil {
		opts = append(opts, option.WithHTTPClient(o.HTTPClient))
	}
	return &OpenAI{client: openai.NewClient(opts...), model: o.Model, group: o.Group, defaults: o.Defaults, timeout: o.Timeout}
}

// withTimeout returns the context of one call: ctx bounded by the
// deployment's timeout, whose end is a provider_timeout, not a cancel.
func (p *OpenAI) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if p.timeout > 0 {
		return context.WithTimeoutCause(ctx, p.timeout, messages.ErrProviderTimeout)
	}
	return context.WithCancel(ctx)
}

// post sends body with the deployment's model and returns the open 2xx
// response; any other answer is an error (see statusFault). The caller
// closes its body.
func (p *OpenAI) post(ctx context.Context, kind messages.Kind, body []byte) (*http.Response, error) {
	body, err := p.prepare(body)
	if err != nil {
		return nil, err
	}
	var res *http.Response
	if err := p.client.Post(ctx, kind.Path(), body, &res); err != nil {
		return nil, err
	}
	return res, nil
}

// checkStatus is the middleware that turns every answer that is not 2xx
// into its fault, before openai-go reads it: one place decides them all,
// whatever the body looks like.
func checkStatus(req *http.Request, next option.MiddlewareNext) (*http.Response, error) {
	res, err := next(req)
	if err != nil || res.StatusCode/100 == 2 {
		return res, err
	}
	return nil, statusFault(res)
}

// Call forwards body to the provider.
func (p *OpenAI) Call(ctx context.Context, kind messages.Kind, body []byte) (*Result, error) {
	call, cancel := p.withTimeout(ctx)
	defer cancel()
	res, err := p.post(call, kind, body)
	if err != nil {
		return nil, callFault(ctx, call, err, false)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes+1))
	if err != nil {
		return nil, callFault(ctx, call, err, true)
	}
	if err := bodyFault(res, data); err != nil {
		return nil, err
	}
	r := &Result{Body: data}
	r.Usage, _ = usageOf(data)
	return r, nil
}

// Stream forwards a streaming request and relays its events. A stream that
// ends without [DONE] is a fault, never a short answer.
func (p *OpenAI) Stream(ctx context.Context, kind messages.Kind, body []byte, emit Emit) (Usage, error) {
	call, cancel := p.withTimeout(ctx)
	defer cancel()
	res, err := p.post(call, kind, body)
	if err != nil {
		return Usage{}, callFault(ctx, call, err, false)
	}
	defer res.Body.Close()
	if err := streamFault(res); err != nil {
		return Usage{}, err
	}
	var usage Usage
	sent := false
	events := ssestream.NewDecoder(res)
	for events.Next() {
		data := bytes.TrimSpace(events.Event().Data)
		switch {
		case string(data) == "[DONE]" && sent:
			return usage, nil
		case string(data) == "[DONE]":
			return usage, &messages.Error{Outcome: messages.OutcomeProviderBadResponse, Message: "the provider's stream ended before any event"}
		case !isObject(data):
			return usage, &messages.Error{Outcome: messages.OutcomeProviderBadResponse, Message: "the provider sent a stream event that is not a JSON object"}
		case gjson.GetBytes(data, "error").IsObject():
			return usage, errorEvent(data, "the provider sent an error in the stream: %s")
		}
		if u, ok := usageOf(data); ok {
			usage = u
		}
		sent = true
		if err := emit(data); err != nil {
			return usage, err
		}
	}
	if err := events.Err(); err != nil {
		return usage, callFault(ctx, call, err, true)
	}
	if err := call.Err(); err != nil { // the body was closed under the decoder
		return usage, callFault(ctx, call, err, true)
	}
	return usage, &messages.Error{Outcome: messages.OutcomeProviderBadResponse, Message: "the provider's stream ended without [DONE]"}
}

// usageOf returns the "usage" object of a response body or a stream event,
// if it has one. Only that object is decoded, not the whole answer.
func usageOf(data []byte) (Usage, bool) {
	var u Usage
	r := gjson.GetBytes(data, "usage")
	if !r.IsObject() || json.Unmarshal([]byte(r.Raw), &u) != nil {
		return Usage{}, false
	}
	return u, true
}

// Mock answers every call with a fixed text in OpenAI's response shape.
type Mock struct {
	Text   string
	Model  string        // reported as "model"
	Chunks int           // content chunks of a streamed answer; default 4
	Gap    time.Duration // pause between streamed chunks
}

var _ Caller = (*Mock)(nil)

// Call answers without any network call.
func (m *Mock) Call(ctx context.Context, kind messages.Kind, body []byte) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(ctx))
	}
	usage := Usage{PromptTokens: max(int64(len(body))/4, 1), CompletionTokens: max(int64(len(strings.Fields(m.Text))), 1)}
	usage.TotalTokens = usage.PromptTokens + usage.CompletionTokens
	now := time.Now()
	id := strconv.FormatInt(now.UnixNano(), 36)
	var v any
	if kind == messages.KindCompletion {
		v = map[string]any{
			"id": "cmpl-mock-" + id, "object": "text_completion", "created": now.Unix(), "model": m.Model,
			"choices": []any{map[string]any{"index": 0, "text": m.Text, "finish_reason": "stop", "logprobs": nil}},
			"usage":   usage,
		}
	} else {
		v = map[string]any{
			"id": "chatcmpl-mock-" + id, "object": "chat.completion", "created": now.Unix(), "model": m.Model,
			"choices": []any{map[string]any{"index": 0, "message": map[string]any{"role": "assistant", "content": m.Text, "refusal": nil}, "finish_reason": "stop", "logprobs": nil}},
			"usage":   usage,
		}
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return &Result{Body: b, Usage: usage}, nil
}

// Stream answers with the text split into m.Chunks events, m.Gap apart, and a
// usage event when the body asks for one (stream_options.include_usage).
func (m *Mock) Stream(ctx context.Context, kind messages.Kind, body []byte, emit Emit) (Usage, error) {
	res, err := m.Call(ctx, kind, body)
	if err != nil {
		return Usage{}, err
	}
	now := time.Now().Unix()
	id := "chatcmpl-mock-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	object := "chat.completion.chunk"
	if kind == messages.KindCompletion {
		id, object = "cmpl-mock-"+id[len("chatcmpl-mock-"):], "text_completion"
	}
	chunk := func(choice map[string]any, usage *Usage) error {
		v := map[string]any{"id": id, "object": object, "created": now, "model": m.Model, "choices": []any{}}
		if choice != nil {
			v["choices"] = []any{choice}
		}
		if usage != nil {
			v["usage"] = usage
		}
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		return emit(b)
	}
	n := m.Chunks
	if n <= 0 {
		n = 4
	}
	for i, piece := range split(m.Text, n) {
		if i > 0 && m.Gap > 0 {
			if err := sleep(ctx, m.Gap); err != nil {
				return Usage{}, err
			}
		}
		var choice map[string]any
		if kind == messages.KindCompletion {
			choice = map[string]any{"index": 0, "text": piece, "finish_reason": nil, "logprobs": nil}
		} else {
			delta := map[string]any{"content": piece}
			if i == 0 {
				delta["role"] = "assistant"
			}
			choice = map[string]any{"index": 0, "delta": delta, "finish_reason": nil, "logprobs": nil}
		}
		if err := chunk(choice, nil); err != nil {
			return Usage{}, err
		}
	}
	final := map[string]any{"index": 0, "finish_reason": "stop", "logprobs": nil, "delta": map[string]any{}}
	if kind == messages.KindCompletion {
		final = map[string]any{"index": 0, "text": "", "finish_reason": "stop", "logprobs": nil}
	}
	if err := chunk(final, nil); err != nil {
		return Usage{}, err
	}
	if gjson.GetBytes(body, "stream_options.include_usage").Bool() {
		if err := chunk(nil, &res.Usage); err != nil {
			return Usage{}, err
		}
	}
	return res.Usage, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return fmt.Errorf("%w: %w", messages.ErrCancelled, context.Cause(ctx))
	case <-t.C:
		return nil
	}
}

// split cuts s into n pieces of nearly equal rune counts.
func split(s string, n int) []string {
	r := []rune(s)
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, string(r[i*len(r)/n:(i+1)*len(r)/n]))
	}
	return out
}
