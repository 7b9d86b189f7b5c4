package integration

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// startGatewayEnv starts an embedded gateway on the YAML config text, with
// lookup as its environment for os.environ/ and LiteLLM's default variables,
// and returns an openai-go client for it.
func startGatewayEnv(t *testing.T, yamlText string, lookup func(string) (string, bool)) openai.Client {
	t.Helper()
	env := baseEnv(writeText(t, yamlText))
	env.DataDir = t.TempDir()
	env.EmbeddedWorkers = 2
	ctx, cancel := context.WithCancel(t.Context())
	g, err := app.StartGateway(ctx, env, lookup, newTestLog(t))
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
	return openai.NewClient(option.WithBaseURL("http://"+g.Addr().String()+"/v1/"), option.WithAPIKey("caller-key"), option.WithMaxRetries(0))
}

// writeText writes a config file as written and returns its path.
func writeText(t *testing.T, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func envOf(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// root is the fake's address without its /v1, the way a vendor's api_base
// names its host.
func root(f *fakeupstream.Server) string { return strings.TrimSuffix(f.URL, "/v1") }

// only returns the one request the fake received.
func only(t *testing.T, f *fakeupstream.Server) fakeupstream.Request {
	t.Helper()
	rs := f.Requests()
	if len(rs) != 1 {
		t.Fatalf("the fake received %d requests, want 1", len(rs))
	}
	return rs[0]
}

func chat(t *testing.T, oc openai.Client, model string, opts ...option.RequestOption) *openai.ChatCompletion {
	t.Helper()
	c, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
		Model:    model,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
	}, opts...)
	if err != nil {
		t.Fatalf("chat completion for %q: %v", model, err)
	}
	if len(c.Choices) == 0 || c.Choices[0].Message.Content != fakeReply {
		t.Fatalf("choices %+v, want the fake's reply", c.Choices)
	}
	return c
}

// TestAzureOpenAI calls Azure-shaped fakes through the gateway: the
// deployment URL with api-version and the api-key header, the v1 API, and an
// Entra token; streaming usage comes through as with OpenAI.
func TestAzureOpenAI(t *testing.T) {
	dated, v1, entra := newFake(t), newFake(t), newFake(t)
	oc := startGatewayEnv(t, `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt4o-prod
      api_base: `+root(dated)+`
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-10-21"
  - model_name: gpt-4o-v1
    litellm_params:
      model: azure/gpt4o-v1
      api_base: `+root(v1)+`
      api_version: latest
  - model_name: gpt-4o-entra
    litellm_params:
      model: azure/gpt4o-entra
      api_base: `+root(entra)+`
      azure_ad_token: os.environ/AZURE_AD_TOKEN
`, envOf(map[string]string{"AZURE_API_KEY": "azure-key-1", "AZURE_OPENAI_API_KEY": "azure-default-key", "AZURE_AD_TOKEN": "entra-token"}))

	t.Run("deployment URL, api-version and api-key", func(t *testing.T) {
		chat(t, oc, "gpt-4o")
		r := only(t, dated)
		if r.Path != "/openai/deployments/gpt4o-prod/chat/completions" || r.Query != "api-version=2024-10-21" {
			t.Errorf("called %s?%s, want /openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21", r.Path, r.Query)
		}
		if got := r.Header.Get("Api-Key"); got != "azure-key-1" {
			t.Errorf("api-key %q, want the deployment's key", got)
		}
		if got := r.Header.Get("Authorization"); got != "" {
			t.Errorf("Authorization %q sent to Azure with an api key", got)
		}
	})

	t.Run("streaming with usage", func(t *testing.T) {
		stream := oc.Chat.Completions.NewStreaming(waitCtx(t), openai.ChatCompletionNewParams{
			Model:         "gpt-4o",
			Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("stream please")},
			StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
		})
		var acc openai.ChatCompletionAccumulator
		for stream.Next() {
			acc.AddChunk(stream.Current())
		}
		if err := stream.Err(); err != nil {
			t.Fatalf("stream: %v", err)
		}
		if got := acc.Choices[0].Message.Content; got != fakeReply {
			t.Errorf("streamed %q, want %q", got, fakeReply)
		}
		if acc.Usage.TotalTokens == 0 {
			t.Error("no usage in the stream")
		}
		rs := dated.Requests()
		if last := rs[len(rs)-1]; last.Path != "/openai/deployments/gpt4o-prod/chat/completions" || !last.Stream {
			t.Errorf("streamed call went to %s (stream %v)", last.Path, last.Stream)
		}
	})

	t.Run("v1 API", func(t *testing.T) {
		chat(t, oc, "gpt-4o-v1")
		r := only(t, v1)
		if r.Path != "/openai/v1/chat/completions" || r.Query != "" {
			t.Errorf("called %s?%s, want /openai/v1/chat/completions without api-version", r.Path, r.Query)
		}
		if r.Model != "gpt4o-v1" {
			t.Errorf("model %q, want the deployment name", r.Model)
		}
		// No api_key in the file: LiteLLM's AZURE_OPENAI_API_KEY.
		if got := r.Header.Get("Api-Key"); got != "azure-default-key" {
			t.Errorf("api-key %q, want the key of AZURE_OPENAI_API_KEY", got)
		}
	})

	t.Run("Entra token", func(t *testing.T) {
		chat(t, oc, "gpt-4o-entra")
		r := only(t, entra)
		if got := r.Header.Get("Authorization"); got != "Bearer entra-token" {
			t.Errorf("Authorization %q, want the Entra token", got)
		}
		if got := r.Header.Get("Api-Key"); got != "" {
			t.Errorf("api-key %q sent with an Entra token", got)
		}
		if r.Path != "/openai/deployments/gpt4o-entra/chat/completions" {
			t.Errorf("called %s", r.Path)
		}
	})
}

// TestVendorRequestShapes calls fakes standing in for each kind of vendor:
// the vendor's base path below the api_base LiteLLM users write, and the
// vendor's own key in the vendor's auth header, never another's.
func TestVendorRequestShapes(t *testing.T) {
	// openai-go reads OPENAI_API_KEY from the process environment; it must
	// never reach another vendor, nor a server that needs no key.
	t.Setenv("OPENAI_API_KEY", "sk-openai-must-not-leak")
	t.Setenv("OPENAI_ORG_ID", "org-must-not-leak")
	type vendorCase struct {
		group, model, apiBase, key string
		fake                       *fakeupstream.Server
		path, auth, apiKey, sent   string
	}
	var cases []*vendorCase
	add := func(c vendorCase) { c.fake = newFake(t); cases = append(cases, &c) }
	add(vendorCase{group: "claude", model: "anthropic/claude-sonnet-4-5", path: "/v1/chat/completions", auth: "Bearer anthropic-key", sent: "claude-sonnet-4-5"})
	add(vendorCase{group: "gemini", model: "gemini/gemini-2.5-flash", path: "/v1beta/openai/chat/completions", auth: "Bearer gemini-key", sent: "gemini-2.5-flash"})
	add(vendorCase{group: "groq", model: "groq/llama-3.3-70b", apiBase: "/openai/v1", key: "gsk-in-file", path: "/openai/v1/chat/completions", auth: "Bearer gsk-in-file", sent: "llama-3.3-70b"})
	add(vendorCase{group: "fireworks", model: "fireworks_ai/accounts/fireworks/models/llama", apiBase: "/inference/v1", path: "/inference/v1/chat/completions", auth: "Bearer fw-key", sent: "accounts/fireworks/models/llama"})
	add(vendorCase{group: "ollama", model: "ollama/llama3", path: "/v1/chat/completions", auth: "", sent: "llama3"})
	add(vendorCase{group: "vllm", model: "hosted_vllm/meta-llama/Llama-3.1-8B", apiBase: "/v1", path: "/v1/chat/completions", auth: "", sent: "meta-llama/Llama-3.1-8B"})
	add(vendorCase{group: "foundry", model: "azure_ai/mistral-large", apiBase: "/models", key: "foundry-key", path: "/models/chat/completions", auth: "Bearer foundry-key", sent: "mistral-large"})
	add(vendorCase{group: "tgi", model: "tgi-org/model-x", apiBase: "/v1", key: "tgi-key", path: "/v1/chat/completions", auth: "Bearer tgi-key", sent: "tgi-org/model-x"})

	var cfg strings.Builder
	cfg.WriteString("model_list:\n")
	for _, c := range cases {
		cfg.WriteString("  - model_name: " + c.group + "\n    litellm_params:\n      model: " + c.model +
			"\n      api_base: " + root(c.fake) + c.apiBase + "\n")
		if c.key != "" {
			cfg.WriteString("      api_key: " + c.key + "\n")
		}
	}
	oc := startGatewayEnv(t, cfg.String(), envOf(map[string]string{
		"ANTHROPIC_API_KEY": "anthropic-key", "GEMINI_API_KEY": "gemini-key", "FIREWORKS_API_KEY": "fw-key",
		"GROQ_API_KEY": "gsk-from-env-loses-to-the-file",
	}))
	for _, c := range cases {
		t.Run(c.group, func(t *testing.T) {
			chat(t, oc, c.group)
			r := only(t, c.fake)
			if r.Path != c.path {
				t.Errorf("path %q, want %q", r.Path, c.path)
			}
			if got := r.Header.Get("Authorization"); got != c.auth {
				t.Errorf("Authorization %q, want %q", got, c.auth)
			}
			if got := r.Header.Get("OpenAI-Organization"); got != "" {
				t.Errorf("OpenAI-Organization %q leaked from the environment", got)
			}
			if r.Model != c.sent {
				t.Errorf("model %q, want %q", r.Model, c.sent)
			}
		})
	}
}

// TestWildcardGroups serves models no group names through wildcard groups,
// calling the deployment with the requested model.
func TestWildcardGroups(t *testing.T) {
	explicit, openaiWild, catchAll := newFake(t), newFake(t), newFake(t)
	oc := startGatewayEnv(t, `
model_list:
  - model_name: openai/gpt-4o
    litellm_params: {model: openai/gpt-4o-2024-08-06, api_base: `+explicit.URL+`, api_key: k}
  - model_name: "openai/*"
    litellm_params: {model: "openai/*", api_base: `+openaiWild.URL+`, api_key: k}
  - model_name: "*"
    litellm_params: {model: "hosted_vllm/*", api_base: `+catchAll.URL+`}
`, noEnv)
	var resp *http.Response
	chat(t, oc, "openai/gpt-4.1-mini", option.WithResponseInto(&resp))
	if r := only(t, openaiWild); r.Model != "gpt-4.1-mini" {
		t.Errorf("openai/* called with model %q, want gpt-4.1-mini", r.Model)
	}
	if got := resp.Header.Get("x-llmq-deployment"); got != "openai/*-0" {
		t.Errorf("served by %q, want the wildcard deployment openai/*-0", got)
	}
	chat(t, oc, "openai/gpt-4o")
	if r := only(t, explicit); r.Model != "gpt-4o-2024-08-06" {
		t.Errorf("the explicit group called with %q", r.Model)
	}
	chat(t, oc, "Qwen/Qwen3-8B")
	if r := only(t, catchAll); r.Model != "Qwen/Qwen3-8B" {
		t.Errorf("* called with model %q, want Qwen/Qwen3-8B", r.Model)
	}
	if n := openaiWild.Count() + explicit.Count(); n != 2 {
		t.Errorf("the openai fakes saw %d calls, want 2", n)
	}
}

// TestUnknownModelWithoutWildcard is the 404 a config without a catch-all gives.
func TestUnknownModelWithoutWildcard(t *testing.T) {
	f := newFake(t)
	oc := startGatewayEnv(t, "model_list:\n  - model_name: \"openai/*\"\n    litellm_params: {model: \"openai/*\", api_base: "+f.URL+", api_key: k}\n", noEnv)
	chat(t, oc, "openai/gpt-4o") // the pattern serves what it matches
	_, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
		Model: "anthropic/claude", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("x")}})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Fatalf("err %v, want 404", err)
	}
	if f.Count() != 1 {
		t.Error("a model no pattern matches reached the upstream")
	}
}

// TestDefaultCallParams merges the litellm_params LiteLLM sends with every
// call; the caller's own values win.
func TestDefaultCallParams(t *testing.T) {
	f := newFake(t)
	oc := startGatewayEnv(t, `
model_list:
  - model_name: tuned
    litellm_params:
      model: openai/gpt-4o
      api_base: `+f.URL+`
      api_key: k
      max_tokens: 77
      temperature: 0.2
      reasoning_effort: low
      organization: org-config
      extra_body: {top_k: 5}
      extra_headers: {X-Tenant: os.environ/TENANT}
`, envOf(map[string]string{"TENANT": "acme"}))
	chat(t, oc, "tuned", option.WithJSONSet("temperature", 0.9))
	r := only(t, f)
	var body map[string]any
	if err := json.Unmarshal(r.Body, &body); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"max_tokens": 77.0, "temperature": 0.9, "reasoning_effort": "low", "top_k": 5.0} {
		if body[k] != want {
			t.Errorf("%s = %v, want %v", k, body[k], want)
		}
	}
	if got := r.Header.Get("X-Tenant"); got != "acme" {
		t.Errorf("X-Tenant %q, want acme", got)
	}
	if got := r.Header.Get("OpenAI-Organization"); got != "org-config" {
		t.Errorf("OpenAI-Organization %q, want org-config", got)
	}
}

// TestUnknownPrefixFailsAtStart: a deployment whose vendor llmq cannot tell
// is refused before anything starts, naming the entry, the prefix and the
// supported prefixes.
func TestUnknownPrefixFailsAtStart(t *testing.T) {
	path := writeText(t, `
model_list:
  - model_name: ok
    litellm_params: {model: openai/gpt-4o, api_key: k}
  - model_name: claude-bedrock
    litellm_params: {model: bedrock/anthropic.claude-3, api_key: aws-key}
`)
	env := baseEnv(path)
	env.DataDir = t.TempDir()
	g, err := app.StartGateway(t.Context(), env, noEnv, newTestLog(t))
	if err == nil {
		_ = g.Wait()
		t.Fatal("the gateway started")
	}
	for _, want := range []string{"model_list[1].litellm_params.model", `"claude-bedrock"`, `"bedrock"`, "anthropic, azure, azure_ai", "no api_base"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q: %v", want, err)
		}
	}
}
