package app

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/llmq/llmq/internal/config"
)

// exampleEnv holds every variable the example configs name; each value
// holds "secret" so that a test can see a key leak into the report.
var exampleEnv = map[string]string{
	"AZURE_API_BASE_EASTUS": "https://eastus.openai.azure.com", "AZURE_API_BASE_SWEDEN": "https://sweden.openai.azure.com",
	"AZURE_API_KEY_EASTUS": "secret-az-1", "AZURE_API_KEY_SWEDEN": "secret-az-2", "AZURE_API_KEY": "secret-az-3",
	"AZURE_AD_TOKEN": "secret-entra", "AZURE_AI_API_KEY": "secret-foundry",
	"OPENAI_API_KEY": "secret-openai", "ANTHROPIC_API_KEY": "secret-anthropic", "GEMINI_API_KEY": "secret-gemini",
	"GROQ_API_KEY": "secret-groq", "TOGETHERAI_API_KEY": "secret-together", "MISTRAL_API_KEY": "secret-mistral",
	"DEEPSEEK_API_KEY": "secret-deepseek", "XAI_API_KEY": "secret-xai", "OPENROUTER_API_KEY": "secret-openrouter",
	"FIREWORKS_API_KEY": "secret-fireworks", "PERPLEXITYAI_API_KEY": "secret-perplexity", "CEREBRAS_API_KEY": "secret-cerebras",
	"DEEPINFRA_API_KEY": "secret-deepinfra", "LITELLM_MASTER_KEY": "sk-secret-master",
	"REDIS_HOST": "redis", "REDIS_PORT": "6379", "REDIS_PASSWORD": "secret-redis", "DATABASE_URL": "postgres://secret@db/litellm",
}

func lookupExample(name string) (string, bool) { v, ok := exampleEnv[name]; return v, ok }

// TestExampleConfigs loads every config of examples/litellm, written as
// LiteLLM users write theirs, and checks it with CheckConfig: no errors,
// every deployment resolved to an endpoint, no key in the report.
func TestExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../examples/litellm/*.yaml")
	if err != nil || len(files) < 4 {
		t.Fatalf("example configs: %v, %d files", err, len(files))
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			cfg, err := config.Load(f, lookupExample)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			var out bytes.Buffer
			if err := CheckConfig(&out, f, lookupExample); err != nil {
				t.Fatalf("CheckConfig: %v\n%s", err, out.String())
			}
			report := out.String()
			if strings.Contains(report, "secret") {
				t.Errorf("the report shows a secret:\n%s", report)
			}
			if strings.Contains(report, "\nerrors:") || strings.Contains(report, "not resolved") {
				t.Errorf("the report has errors:\n%s", report)
			}
			for _, d := range cfg.ModelList {
				if d.Params.Endpoint == nil && d.Params.MockResponse == nil {
					t.Errorf("%s: no endpoint", d.ModelInfo.ID)
				}
				if !strings.Contains(report, "  "+d.ModelInfo.ID+" (") {
					t.Errorf("the report does not list %s", d.ModelInfo.ID)
				}
			}
			t.Log("\n" + report)
		})
	}
}

func TestCheckConfigReportsErrors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(`
model_list:
  - model_name: claude
    litellm_params: {model: bedrock/anthropic.claude-3, api_key: os.environ/AWS_KEY}
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_key: os.environ/OPENAI_API_KEY, rpm: 10}
    rpm: 20
router_settings: {redis_host: localhost}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err := CheckConfig(&out, path, lookupExample)
	if !errors.Is(err, ErrConfigInvalid) {
		t.Fatalf("CheckConfig = %v, want ErrConfigInvalid", err)
	}
	report := out.String()
	for _, want := range []string{
		"3 errors, 1 warnings, 2 deployments",
		"model_list[0].litellm_params.api_key: environment variable AWS_KEY is not set",
		`model_list[0].litellm_params.model: model group "claude": unknown provider prefix "bedrock"`,
		"model_list[1].rpm: is 20 but litellm_params.rpm is 10",
		"router_settings.redis_host: ignored by llmq",
		"endpoint: openai, POST https://api.openai.com/v1/chat/completions",
		"key:      api_key from os.environ/OPENAI_API_KEY, sent as Authorization: Bearer",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	if strings.Contains(report, "secret") {
		t.Errorf("the report shows a key:\n%s", report)
	}
}
