package config

import (
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestDeploymentLevelLimits(t *testing.T) {
	cfg, err := Parse([]byte(`
model_list:
  - model_name: a
    litellm_params: {model: openai/gpt-4o, api_key: k}
    rpm: 600
    tpm: 100000
  - model_name: b
    litellm_params: {model: openai/gpt-4o, api_key: k, rpm: 5}
    rpm: 5
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.ModelList[0].Params; p.RPM != 600 || p.TPM != 100000 {
		t.Errorf("deployment-level limits: litellm_params rpm %d tpm %d, want 600 and 100000", p.RPM, p.TPM)
	}
	if p := cfg.ModelList[1].Params; p.RPM != 5 {
		t.Errorf("the same limit written twice: rpm %d, want 5", p.RPM)
	}

	_, err = Parse([]byte(`
model_list:
  - model_name: a
    litellm_params: {model: openai/gpt-4o, api_key: k, rpm: 5, tpm: 10}
    rpm: 50
    tpm: 10
`), env(nil))
	got := problems(err)
	if len(got) != 1 || !strings.HasPrefix(got[0], "model_list[0].rpm: is 50 but litellm_params.rpm is 5") {
		t.Errorf("problems %q, want one about rpm written twice with different values", got)
	}
}

func TestCallParams(t *testing.T) {
	cfg, err := Parse([]byte(`
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      api_key: k
      max_tokens: 100
      temperature: 0.1
      stop: ["\n\n"]
      extra_body: {top_k: 3, max_tokens: 1}
      extra_headers: {X-Team: os.environ/TEAM, X-Num: 7}
      organization: org-1
      input_cost_per_token: 0.001
`), env(map[string]string{"TEAM": "search"}))
	if err != nil {
		t.Fatal(err)
	}
	p := cfg.ModelList[0].Params
	if got, want := slices.Sorted(maps.Keys(p.Defaults)), []string{"max_tokens", "stop", "temperature", "top_k"}; !slices.Equal(got, want) {
		t.Errorf("defaults %q, want %q", got, want)
	}
	if p.Defaults["max_tokens"] != 100 {
		t.Errorf("max_tokens %v: a named param wins over extra_body's", p.Defaults["max_tokens"])
	}
	if p.Headers["X-Team"] != "search" || p.Headers["X-Num"] != "7" || p.Headers["OpenAI-Organization"] != "org-1" {
		t.Errorf("headers %v", p.Headers)
	}
	if want := "model_list[0].litellm_params.input_cost_per_token: ignored by llmq"; !slices.Contains(cfg.Warnings, want) {
		t.Errorf("warnings %q lack %q", cfg.Warnings, want)
	}

	_, err = Parse([]byte(`
model_list:
  - model_name: a
    litellm_params:
      model: openai/gpt-4o
      api_key: k
      extra_body: [1, 2]
      extra_headers: {X-A: {nested: 1}}
      organization: 5
`), env(nil))
	got := problems(err)
	for i, want := range []string{
		"model_list[0].litellm_params.extra_body: must be a mapping",
		"model_list[0].litellm_params.extra_headers.X-A: must be a single value",
		"model_list[0].litellm_params.organization: must be a non-empty string",
	} {
		if i >= len(got) || !strings.HasPrefix(got[i], want) {
			t.Errorf("problems %q, want %q at %d", got, want, i)
		}
	}
}

func TestKeySourcesAndLiteLLMVariables(t *testing.T) {
	cfg, err := Parse([]byte(`
model_list:
  - model_name: az
    litellm_params: {model: azure/gpt4o, api_key: os.environ/MY_AZURE_KEY}
  - model_name: groq
    litellm_params: {model: groq/llama}
  - model_name: claude
    litellm_params: {model: anthropic/claude}
  - model_name: local
    litellm_params: {model: ollama/llama3}
  - model_name: entra
    litellm_params: {model: azure/gpt4o, azure_ad_token: os.environ/TOKEN}
  - model_name: g
    litellm_params: {model: groq/llama, api_key: gsk-file, azure_ad_token: x}
`), env(map[string]string{
		"MY_AZURE_KEY": "secret-1", "AZURE_API_BASE": "https://res.openai.azure.com", "AZURE_API_VERSION": "2024-10-21",
		"GROQ_API_KEY": "secret-2", "TOKEN": "secret-3",
	}))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"api_key from os.environ/MY_AZURE_KEY, sent as api-key header",
		"GROQ_API_KEY (LiteLLM's default variable), sent as Authorization: Bearer",
		"none",
		"none",
		"azure_ad_token from os.environ/TOKEN, sent as Authorization: Bearer",
		"api_key written in the file, sent as Authorization: Bearer",
	}
	for i, d := range cfg.ModelList {
		if d.Params.KeySource != want[i] {
			t.Errorf("%s: key source %q, want %q", d.ModelName, d.Params.KeySource, want[i])
		}
		if strings.Contains(d.Params.KeySource, "secret") {
			t.Errorf("%s: the key source shows the key", d.ModelName)
		}
	}
	az := cfg.ModelList[0].Params.Endpoint
	if az == nil || az.URL() != "https://res.openai.azure.com/openai/deployments/gpt4o/chat/completions?api-version=2024-10-21" {
		t.Errorf("azure endpoint from AZURE_API_BASE and AZURE_API_VERSION: %+v", az)
	}
	if cfg.ModelList[1].Params.APIKey != "secret-2" {
		t.Error("GROQ_API_KEY was not used for a groq deployment without api_key")
	}
	for _, w := range []string{
		"model_list[2].litellm_params.api_key: not set and none of ANTHROPIC_API_KEY is set",
		"model_list[5].litellm_params.azure_ad_token: ignored by llmq",
	} {
		if !slices.ContainsFunc(cfg.Warnings, func(s string) bool { return strings.HasPrefix(s, w) }) {
			t.Errorf("warnings %q lack %q", cfg.Warnings, w)
		}
	}
	if slices.ContainsFunc(cfg.Warnings, func(s string) bool { return strings.Contains(s, "model_list[3]") }) {
		t.Errorf("a local Ollama without a key was warned about: %q", cfg.Warnings)
	}
}

func TestDeploymentProblems(t *testing.T) {
	_, err := Parse([]byte(`
model_list:
  - model_name: az
    litellm_params: {model: azure/gpt4o, api_base: "https://res.openai.azure.com"}
  - model_name: odd
    litellm_params: {model: "openai/*", api_key: k}
  - model_name: br
    litellm_params: {model: bedrock/claude, api_key: k}
  - model_name: mock
    litellm_params: {model: bedrock/claude, mock_response: hi}
`), env(nil))
	got := problems(err)
	want := []string{
		"model_list[0].litellm_params.api_key: Azure OpenAI needs api_key or azure_ad_token",
		`model_list[1].litellm_params.model: has a '*' but model_name "odd" is not a wildcard pattern`,
		`model_list[2].litellm_params.model: model group "br": unknown provider prefix "bedrock" and no api_base`,
	}
	if len(got) != len(want) {
		t.Fatalf("problems %q, want %d", got, len(want))
	}
	for i := range want {
		if !strings.HasPrefix(got[i], want[i]) {
			t.Errorf("problem %d %q, want %q", i, got[i], want[i])
		}
	}
}

func TestCheckReturnsTheConfigWithItsErrors(t *testing.T) {
	path := t.TempDir() + "/c.yaml"
	if err := os.WriteFile(path, []byte("model_list:\n  - model_name: a\n    litellm_params: {model: nope/x}\nlitellm_settings: {callbacks: [x]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Check(path, env(nil))
	if err == nil || cfg == nil {
		t.Fatalf("Check = %v, %v; want the config and an error", cfg, err)
	}
	if len(cfg.Warnings) != 1 || cfg.ModelList[0].Params.Endpoint != nil {
		t.Errorf("warnings %q, endpoint %v", cfg.Warnings, cfg.ModelList[0].Params.Endpoint)
	}
	if _, err := Parse([]byte("model_list:\n  - model_name: a\n    litellm_params: {model: nope/x}\n"), env(nil)); err == nil {
		t.Error("Parse accepted an unknown prefix")
	}
}
