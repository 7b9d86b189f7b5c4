package integration

import (
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

// TestOpenAIClient drives the gateway with the official openai-go client, as
// a user would: chat and text completions with a priority, the llmq response
// headers, the model list, and a rejected priority surfacing as an
// *openai.Error.
func TestOpenAIClient(t *testing.T) {
	const key = "sk-llmq-openai-test"
	fake := newFake(t)
	cfg := writeConfig(t, configFile{
		ModelList: []deployment{
			fakeDeployment("assistant", "assistant-0", fake, 2),
			fakeDeployment("writer", "writer-0", fake, 0),
		},
		GeneralSettings: &generalSettings{MasterKey: key},
	})
	g := startEmbeddedGateway(t, cfg, 4)
	oc := openai.NewClient(
		option.WithBaseURL(g.URL+"/v1/"),
		option.WithAPIKey(key),
		option.WithMaxRetries(0),
	)

	checkHeaders := func(t *testing.T, resp *http.Response, priority int64, deployment string) {
		t.Helper()
		if resp == nil {
			t.Fatal("WithResponseInto left the response nil")
		}
		h := resp.Header
		if got := h.Get("x-llmq-priority"); got != strconv.FormatInt(priority, 10) {
			t.Errorf("x-llmq-priority %q, want %d", got, priority)
		}
		if got := h.Get("x-llmq-band"); got != strconv.Itoa(bandOf(priority)) {
			t.Errorf("x-llmq-band %q, want %d", got, bandOf(priority))
		}
		if got := h.Get("x-llmq-deployment"); got != deployment {
			t.Errorf("x-llmq-deployment %q, want %q", got, deployment)
		}
		if h.Get("x-llmq-request-id") == "" {
			t.Error("no x-llmq-request-id")
		}
		if ms, err := strconv.ParseInt(h.Get("x-llmq-queue-ms"), 10, 64); err != nil || ms < 0 {
			t.Errorf("x-llmq-queue-ms %q is not a non-negative number", h.Get("x-llmq-queue-ms"))
		}
	}

	t.Run("chat completion", func(t *testing.T) {
		var resp *http.Response
		c, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
			Model:    "assistant",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi from openai-go")},
		}, option.WithJSONSet("priority", 1), option.WithResponseInto(&resp))
		if err != nil {
			t.Fatalf("chat completion: %v", err)
		}
		if len(c.Choices) == 0 || c.Choices[0].Message.Content != fakeReply {
			t.Fatalf("choices %+v, want the fake's reply", c.Choices)
		}
		checkHeaders(t, resp, 1, "assistant-0")
	})

	t.Run("text completion", func(t *testing.T) {
		var resp *http.Response
		c, err := oc.Completions.New(waitCtx(t), openai.CompletionNewParams{
			Model:  "writer",
			Prompt: openai.CompletionNewParamsPromptUnion{OfString: openai.String("once upon a time")},
		}, option.WithResponseInto(&resp))
		if err != nil {
			t.Fatalf("text completion: %v", err)
		}
		if len(c.Choices) == 0 || c.Choices[0].Text != fakeReply {
			t.Fatalf("choices %+v, want the fake's reply", c.Choices)
		}
		checkHeaders(t, resp, 5, "writer-0") // default_priority is 5
	})

	t.Run("model list", func(t *testing.T) {
		page, err := oc.Models.List(waitCtx(t))
		if err != nil {
			t.Fatalf("list models: %v", err)
		}
		var ids []string
		for _, m := range page.Data {
			ids = append(ids, m.ID)
		}
		if want := []string{"assistant", "writer"}; !slices.Equal(ids, want) {
			t.Errorf("models %q, want %q", ids, want)
		}
	})

	t.Run("invalid priority", func(t *testing.T) {
		before := fake.Count()
		_, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
			Model:    "assistant",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("bad priority")},
		}, option.WithJSONSet("priority", 1.5))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) {
			t.Fatalf("error %v, want an *openai.Error", err)
		}
		if apiErr.StatusCode != http.StatusBadRequest || apiErr.Param != "priority" || apiErr.Type != "invalid_request_error" {
			t.Errorf("status %d, param %q, type %q; want 400, priority, invalid_request_error", apiErr.StatusCode, apiErr.Param, apiErr.Type)
		}
		if n := fake.Count(); n != before {
			t.Errorf("the rejected request reached the upstream")
		}
	})

	t.Run("wrong key", func(t *testing.T) {
		_, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
			Model:    "assistant",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("wrong key")},
		}, option.WithAPIKey("sk-wrong"))
		var apiErr *openai.Error
		if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusUnauthorized {
			t.Fatalf("error %v, want a 401 *openai.Error", err)
		}
	})

	if got := contents(fake); !slices.Equal(got, []string{"hi from openai-go", "once upon a time"}) {
		t.Errorf("the upstream saw %q", got)
	}
}

// TestHealthAndModels covers the endpoints operators and load balancers use.
func TestHealthAndModels(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{
		fakeDeployment("first", "first-0", fake, 0),
		fakeDeployment("second.v2/x", "second-0", fake, 0), // not a plain NATS token
		fakeDeployment("first", "first-1", fake, 0),
	}})
	g := startEmbeddedGateway(t, cfg, 2)

	for _, path := range []string{"/health/liveliness", "/health/readiness"} {
		if r := mustGet(t, g.URL+path, ""); r.Status != http.StatusOK {
			t.Errorf("GET %s: %s", path, r)
		}
	}
	r := mustGet(t, g.URL+"/v1/models", "")
	var list struct {
		Object string `json:"object"`
		Data   []struct {
			ID     string `json:"id"`
			Object string `json:"object"`
		} `json:"data"`
	}
	if r.Status != http.StatusOK {
		t.Fatalf("GET /v1/models: %s", r)
	}
	if err := json.Unmarshal(r.Body, &list); err != nil || list.Object != "list" {
		t.Fatalf("GET /v1/models: %s", r)
	}
	var ids []string
	for _, m := range list.Data {
		ids = append(ids, m.ID)
	}
	if want := []string{"first", "second.v2/x"}; !slices.Equal(ids, want) {
		t.Errorf("models %q, want each group once, in config order: %q", ids, want)
	}
	// A group whose name needs escaping in NATS subjects is served too.
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("second.v2/x", "escaped group")))
}
