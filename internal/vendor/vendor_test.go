package vendor

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// documented is, per prefix, the chat completions URL the vendor documents
// for its OpenAI-compatible API (the page is the Docs field of the table),
// written here independently of the table. "" marks a vendor without a
// default (api_base is required).
var documented = map[string]string{
	"anthropic":              "https://api.anthropic.com/v1/chat/completions",
	"azure":                  "",
	"azure_ai":               "",
	"cerebras":               "https://api.cerebras.ai/v1/chat/completions",
	"custom_openai":          "",
	"deepinfra":              "https://api.deepinfra.com/v1/openai/chat/completions",
	"deepseek":               "https://api.deepseek.com/chat/completions",
	"fireworks_ai":           "https://api.fireworks.ai/inference/v1/chat/completions",
	"gemini":                 "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
	"groq":                   "https://api.groq.com/openai/v1/chat/completions",
	"hosted_vllm":            "",
	"lm_studio":              "http://localhost:1234/v1/chat/completions",
	"mistral":                "https://api.mistral.ai/v1/chat/completions",
	"ollama":                 "http://localhost:11434/v1/chat/completions",
	"ollama_chat":            "http://localhost:11434/v1/chat/completions",
	"openai":                 "https://api.openai.com/v1/chat/completions",
	"openai_compatible":      "",
	"openrouter":             "https://openrouter.ai/api/v1/chat/completions",
	"perplexity":             "https://api.perplexity.ai/chat/completions",
	"text-completion-openai": "https://api.openai.com/v1/chat/completions",
	"together_ai":            "https://api.together.xyz/v1/chat/completions",
	"vllm":                   "",
	"xai":                    "https://api.x.ai/v1/chat/completions",
}

func TestDefaultBaseURLsAreTheDocumentedOnes(t *testing.T) {
	if got, want := Prefixes(), slices.Sorted(func(yield func(string) bool) {
		for k := range documented {
			if !yield(k) {
				return
			}
		}
	}); !slices.Equal(got, want) {
		t.Fatalf("prefixes in the table %q, documented here %q", got, want)
	}
	for prefix, want := range documented {
		t.Run(prefix, func(t *testing.T) {
			e, err := Resolve(Params{Model: prefix + "/some-model"})
			if want == "" {
				if err == nil || !strings.Contains(err.Error(), "needs api_base") {
					t.Fatalf("Resolve without api_base = %+v, %v; want a 'needs api_base' error", e, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got := e.URL(); got != want {
				t.Errorf("URL %q, want %q", got, want)
			}
			if e.Model != "some-model" {
				t.Errorf("model %q, want the prefix removed", e.Model)
			}
			if e.Name() != prefix && !slices.Contains(e.Vendor.Prefixes, prefix) {
				t.Errorf("vendor %q for prefix %q", e.Name(), prefix)
			}
		})
	}
	for _, v := range Table() {
		if v.Docs == "" || v.Gaps == "" {
			t.Errorf("%s: Docs and Gaps must be filled for the README", v.Name)
		}
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name    string
		p       Params
		url     string
		model   string
		shape   Shape
		auth    Auth
		wantErr string
	}{
		{name: "no prefix is OpenAI", p: Params{Model: "gpt-4o"},
			url: "https://api.openai.com/v1/chat/completions", model: "gpt-4o"},
		{name: "api_base wins over the default", p: Params{Model: "groq/llama", APIBase: "https://proxy.corp/groq/v1/"},
			url: "https://proxy.corp/groq/v1/chat/completions", model: "llama"},
		{name: "a compat path is added to a root api_base", p: Params{Model: "gemini/gemini-2.5-flash", APIBase: "https://gw.corp"},
			url: "https://gw.corp/v1beta/openai/chat/completions", model: "gemini-2.5-flash"},
		{name: "a compat path is not added twice", p: Params{Model: "ollama/llama3", APIBase: "http://gpu:11434/v1"},
			url: "http://gpu:11434/v1/chat/completions", model: "llama3"},
		{name: "vLLM keeps the organisation in the model", p: Params{Model: "hosted_vllm/meta-llama/Llama-3.1-8B", APIBase: "http://vllm:8000/v1"},
			url: "http://vllm:8000/v1/chat/completions", model: "meta-llama/Llama-3.1-8B"},
		{name: "azure deployment with api-version", p: Params{Model: "azure/gpt4o-prod", APIBase: "https://res.openai.azure.com/", APIVersion: "2024-10-21"},
			url: "https://res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21", model: "gpt4o-prod",
			shape: AzureDeployments, auth: APIKeyHeader},
		{name: "azure without api_version: LiteLLM's default", p: Params{Model: "azure/d", APIBase: "https://res.openai.azure.com"},
			url: "https://res.openai.azure.com/openai/deployments/d/chat/completions?api-version=" + AzureDefaultAPIVersion, model: "d",
			shape: AzureDeployments, auth: APIKeyHeader},
		{name: "azure v1", p: Params{Model: "azure/d", APIBase: "https://res.openai.azure.com", APIVersion: "v1"},
			url: "https://res.openai.azure.com/openai/v1/chat/completions", model: "d", shape: AzureV1, auth: APIKeyHeader},
		{name: "azure latest is v1", p: Params{Model: "azure/d", APIBase: "https://res.openai.azure.com/openai/v1", APIVersion: "latest"},
			url: "https://res.openai.azure.com/openai/v1/chat/completions", model: "d", shape: AzureV1, auth: APIKeyHeader},
		{name: "azure preview is v1", p: Params{Model: "azure/d", APIBase: "https://res.openai.azure.com", APIVersion: "preview"},
			url: "https://res.openai.azure.com/openai/v1/chat/completions", model: "d", shape: AzureV1, auth: APIKeyHeader},
		{name: "azure over plain http elsewhere than loopback", p: Params{Model: "azure/d", APIBase: "http://res.openai.azure.com"},
			wantErr: "needs an https api_base"},
		{name: "azure_ai on services.ai.azure.com", p: Params{Model: "azure_ai/mistral-large", APIBase: "https://r.services.ai.azure.com", APIVersion: "2024-05-01-preview"},
			url: "https://r.services.ai.azure.com/models/chat/completions?api-version=2024-05-01-preview", model: "mistral-large", auth: APIKeyHeader},
		{name: "azure_ai serverless endpoint", p: Params{Model: "azure_ai/llama", APIBase: "https://llama.eastus.models.ai.azure.com"},
			url: "https://llama.eastus.models.ai.azure.com/chat/completions", model: "llama", auth: Bearer},
		{name: "unknown prefix with api_base: kept whole", p: Params{Model: "meta-llama/Llama-3", APIBase: "http://tgi:8080/v1"},
			url: "http://tgi:8080/v1/chat/completions", model: "meta-llama/Llama-3"},
		{name: "unknown prefix without api_base", p: Params{Model: "bedrock/anthropic.claude"},
			wantErr: `unknown provider prefix "bedrock" and no api_base`},
		{name: "custom_openai needs api_base", p: Params{Model: "custom_openai/x"}, wantErr: "needs api_base"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Resolve(tt.p)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if e.URL() != tt.url || e.Model != tt.model || e.Shape != tt.shape || e.Auth != tt.auth {
				t.Errorf("got %s model %q shape %d auth %v; want %s model %q shape %d auth %v",
					e.URL(), e.Model, e.Shape, e.Auth, tt.url, tt.model, tt.shape, tt.auth)
			}
		})
	}
}

func TestUnknownPrefixErrorNamesTheSupportedList(t *testing.T) {
	_, err := Resolve(Params{Model: "bedrock/x"})
	if err == nil {
		t.Fatal("no error")
	}
	for _, p := range Prefixes() {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("the error does not name %q: %v", p, err)
		}
	}
}

// TestProvidersDoc keeps docs/providers.md in step with the table: a row per
// vendor with its prefixes and its default base URL.
func TestProvidersDoc(t *testing.T) {
	doc, err := os.ReadFile("../../docs/providers.md")
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]string{}
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "| `") {
			rows[strings.SplitN(line, " | ", 2)[0]] = line
		}
	}
	for _, v := range Table() {
		key := "| `" + strings.Join(v.Prefixes, "/`, `") + "/`"
		row, ok := rows[key]
		if !ok {
			t.Errorf("docs/providers.md has no row %s", key)
			continue
		}
		want := "api_base required"
		if e, err := Resolve(Params{Model: v.Prefixes[0] + "/m"}); err == nil {
			want = "`" + e.BaseURL + "`"
		}
		if !strings.Contains(row, " | "+want+" | ") {
			t.Errorf("docs/providers.md row %s lacks %s", key, want)
		}
	}
}
