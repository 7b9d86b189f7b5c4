package config

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// env returns a lookup function over vars.
func env(vars map[string]string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v, ok := vars[name]
		return v, ok
	}
}

// fullExample is a LiteLLM proxy config as a LiteLLM user would write it.
const fullExample = `
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
      rpm: 500
      tpm: 30000
      timeout: 30
    model_info:
      id: gpt-4o-openai
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://eu.openai.azure.com
      api_key: os.environ/AZURE_API_KEY
      api_version: "2024-06-01"
      max_parallel_requests: 8
      stream_timeout: 0.5
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://vllm:8000/v1
      rpm: os.environ/LLAMA_RPM
      weight: 2
      order: 1
  - model_name: llama
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: http://vllm-2:8000/v1
  - model_name: fake
    litellm_params:
      mock_response: "hello"
router_settings:
  routing_strategy: usage-based-routing-v2
  num_retries: 4
  fallbacks:
    - gpt-4o: [llama]
litellm_settings:
  drop_params: true
  fallbacks:
    - llama: [fake]
    - gpt-4o: [fake, llama]
general_settings:
  master_key: os.environ/LLMQ_MASTER_KEY
llmq_settings:
  priority_bands: [0, 5, 9]
  max_queued: 1000
`

var fullEnv = map[string]string{
	"OPENAI_API_KEY":  "sk-openai",
	"AZURE_API_KEY":   "azure-key",
	"LLAMA_RPM":       "120",
	"LLMQ_MASTER_KEY": "sk-master",
}

func TestParseFullExample(t *testing.T) {
	cfg, err := Parse([]byte(fullExample), env(fullEnv))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("Warnings = %q, want none", cfg.Warnings)
	}

	if got, want := cfg.Groups(), []string{"gpt-4o", "llama", "fake"}; !slices.Equal(got, want) {
		t.Errorf("Groups() = %q, want %q", got, want)
	}
	var ids []string
	for _, d := range cfg.Deployments("llama") {
		ids = append(ids, d.ModelInfo.ID)
	}
	if want := []string{"llama-0", "llama-1"}; !slices.Equal(ids, want) {
		t.Errorf("llama IDs = %q, want %q", ids, want)
	}

	d := cfg.ModelList
	checks := []struct {
		name      string
		got, want any
	}{
		{"api_key from env", d[0].Params.APIKey, "sk-openai"},
		{"rpm", d[0].Params.RPM, int64(500)},
		{"timeout", d[0].Params.Timeout.D(), 30 * time.Second},
		{"explicit id", d[0].ModelInfo.ID, "gpt-4o-openai"},
		{"default id counts within the group", d[1].ModelInfo.ID, "gpt-4o-1"},
		{"quoted api_version stays a string", d[1].Params.APIVersion, "2024-06-01"},
		{"stream_timeout", d[1].Params.StreamTimeout.D(), 500 * time.Millisecond},
		{"rpm from env is a number", d[2].Params.RPM, int64(120)},
		{"weight", d[2].Params.Weight, 2.0},
		{"mock_response", *d[4].Params.MockResponse, "hello"},
		{"routing_strategy", cfg.RouterSettings.RoutingStrategy, StrategyUsageBasedV2},
		{"default_priority", *cfg.RouterSettings.DefaultPriority, int64(5)},
		{"router timeout", cfg.RouterSettings.Timeout.D(), 600 * time.Second},
		{"num_retries", *cfg.RouterSettings.NumRetries, 4},
		{"cooldown_time", cfg.RouterSettings.CooldownTime.D(), 5 * time.Second},
		{"allowed_fails", cfg.RouterSettings.AllowedFails, 3},
		{"request_timeout", cfg.LiteLLMSettings.RequestTimeout.D(), 600 * time.Second},
		{"drop_params", cfg.LiteLLMSettings.DropParams, true},
		{"master_key", cfg.GeneralSettings.MasterKey, "sk-master"},
		{"priority_bands", cfg.LLMQ.PriorityBands, []int64{0, 5, 9}},
		{"subject_prefix", cfg.LLMQ.SubjectPrefix, "llmq"},
		{"max_queued", cfg.LLMQ.MaxQueued, int64(1000)},
		{"ack_wait", cfg.LLMQ.AckWait.D(), 30 * time.Second},
		{"replicas", cfg.LLMQ.Replicas, 1},
		{"fallbacks", cfg.AllFallbacks(), map[string][]string{"gpt-4o": {"llama", "fake"}, "llama": {"fake"}}},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
}

func TestDefaults(t *testing.T) {
	tests := []struct {
		name  string
		yaml  string
		check func(t *testing.T, c *Config)
	}{
		{
			name: "everything defaulted",
			yaml: "model_list: [{model_name: m, litellm_params: {model: openai/m}}]",
			check: func(t *testing.T, c *Config) {
				if got := c.LLMQ.PriorityBands; !slices.Equal(got, []int64{0, 1, 2, 3, 4, 5, 6, 7, 8}) {
					t.Errorf("priority_bands = %v", got)
				}
				if got := *c.RouterSettings.NumRetries; got != 2 {
					t.Errorf("num_retries = %d, want 2", got)
				}
				if got := c.RouterSettings.RoutingStrategy; got != StrategySimpleShuffle {
					t.Errorf("routing_strategy = %q", got)
				}
				if got := c.ModelList[0].ModelInfo.ID; got != "m-0" {
					t.Errorf("id = %q, want m-0", got)
				}
			},
		},
		{
			name: "router num_retries falls back to litellm_settings",
			yaml: "model_list: [{model_name: m, litellm_params: {model: m}}]\nlitellm_settings: {num_retries: 0}",
			check: func(t *testing.T, c *Config) {
				if got := *c.RouterSettings.NumRetries; got != 0 {
					t.Errorf("num_retries = %d, want 0", got)
				}
			},
		},
		{
			name: "explicit default_priority 0 is kept",
			yaml: "model_list: [{model_name: m, litellm_params: {model: m}}]\nrouter_settings: {default_priority: 0}",
			check: func(t *testing.T, c *Config) {
				if got := *c.RouterSettings.DefaultPriority; got != 0 {
					t.Errorf("default_priority = %d, want 0", got)
				}
			},
		},
		{
			name: "YAML merge keys are understood",
			yaml: `
model_list:
  - model_name: a
    litellm_params: &base
      model: openai/a
      rpm: 7
  - model_name: b
    litellm_params:
      <<: *base
      model: openai/b
`,
			check: func(t *testing.T, c *Config) {
				if got := c.ModelList[1].Params; got.Model != "openai/b" || got.RPM != 7 {
					t.Errorf("merged params = %+v", got)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Parse([]byte(tt.yaml), env(nil))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, c)
		})
	}
}

// problems returns the messages joined in err, one per problem.
func problems(err error) []string { return Problems(err) }

func TestParseErrors(t *testing.T) {
	const okModel = "model_list: [{model_name: m, litellm_params: {model: m}}]\n"
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		// want are the prefixes of the problems, in order; each is a path plus the
		// start of the message.
		want []string
	}{
		{
			name: "missing environment variable",
			yaml: "model_list:\n- model_name: m\n  litellm_params: {model: m, api_key: os.environ/NOPE}\n",
			want: []string{"model_list[0].litellm_params.api_key: environment variable NOPE is not set"},
		},
		{
			name: "missing variable for a required field is reported once",
			yaml: "model_list:\n- model_name: m\n  litellm_params: {model: os.environ/MODEL}\n",
			want: []string{"model_list[0].litellm_params.model: environment variable MODEL is not set"},
		},
		{
			name: "missing variable inside fallbacks",
			yaml: okModel + "router_settings: {fallbacks: [{m: [os.environ/FB]}]}\n",
			want: []string{"router_settings.fallbacks[0].m[0]: environment variable FB is not set"},
		},
		{
			name: "empty file",
			yaml: "",
			want: []string{"model_list: must have at least one entry"},
		},
		{
			name: "several problems at once",
			yaml: `
model_list:
  - model_name: ""
    litellm_params: {model: m}
  - model_name: m
    litellm_params:
      rpm: -1
      tpm: -2
      max_parallel_requests: -3
      order: -1
      weight: -0.5
      timeout: -1
      api_base: vllm:8000
  - model_name: m
    litellm_params: {model: m, rpm: abc}
    model_info: {id: m-0}
router_settings:
  routing_strategy: round-robin
  timeout: -5
  fallbacks: [{m: [nowhere]}, {ghost: [m]}]
llmq_settings:
  priority_bands: [1, 1, 0]
  subject_prefix: "llmq.v1"
  replicas: 7
  max_queued: -1
  ack_wait: soon
`,
			want: []string{
				"model_list[2].litellm_params.rpm: cannot unmarshal !!str `abc` into int64 (line 15)",
				"llmq_settings.ack_wait: cannot unmarshal !!str `soon` into config.Seconds",
				"model_list[0].model_name: must not be empty",
				"model_list[1].litellm_params.model: must not be empty unless mock_response is set",
				"model_list[1].litellm_params.rpm: must not be negative",
				"model_list[1].litellm_params.tpm: must not be negative",
				"model_list[1].litellm_params.max_parallel_requests: must not be negative",
				"model_list[1].litellm_params.order: must not be negative",
				"model_list[1].litellm_params.weight: must not be negative",
				"model_list[1].litellm_params.timeout: must not be negative",
				"model_list[1].litellm_params.api_base: must be an absolute http(s) URL",
				`model_list[2].model_info.id: duplicate id "m-0" (also model_list[1].model_info.id)`,
				"router_settings.routing_strategy: must be one of",
				"router_settings.timeout: must be positive",
				`router_settings.fallbacks[0].m[0]: unknown model group "nowhere"`,
				`router_settings.fallbacks[1].ghost: unknown model group "ghost"`,
				"llmq_settings.priority_bands[1]: must be greater than the entry before it",
				"llmq_settings.priority_bands[2]: must be greater than the entry before it",
				"llmq_settings.subject_prefix: must be one NATS token",
				"llmq_settings.max_queued: must not be negative",
				"llmq_settings.replicas: must be between 1 and 5",
			},
		},
		{
			name: "unknown keys in llmq_settings and at the top level are errors",
			yaml: okModel + "llmq_settings: {bandz: [1]}\nllmq: {}\n",
			want: []string{
				"llmq_settings.bandz: unknown key",
				"llmq: unknown key",
			},
		},
		{
			name: "duplicate key",
			yaml: okModel + "llmq_settings:\n  replicas: 1\n  replicas: 9\n",
			want: []string{"llmq_settings.replicas: key appears twice (lines 3 and 4)"},
		},
		{
			name: "block of the wrong kind",
			yaml: okModel + "router_settings: [1]\n",
			want: []string{"router_settings: cannot unmarshal !!seq into config.RouterSettings"},
		},
		{
			name: "priority_bands empty",
			yaml: okModel + "llmq_settings: {priority_bands: []}\n",
			want: []string{"llmq_settings.priority_bands: must have 1 to 63 entries, got 0"},
		},
		{
			name: "model_name too long",
			yaml: "model_list: [{model_name: " + strings.Repeat("x", 201) + ", litellm_params: {model: m}}]\n",
			want: []string{"model_list[0].model_name: must be at most 200 bytes"},
		},
		{
			name: "litellm_settings fallbacks are checked too",
			yaml: okModel + "litellm_settings: {fallbacks: [{m: [x]}]}\n",
			want: []string{`litellm_settings.fallbacks[0].m[0]: unknown model group "x"`},
		},
		{
			name: "tenant weights and names",
			yaml: okModel + `general_settings: {master_key: master-secret}
llmq_settings:
  keys:
    - {name: team-a, key: secret-aaaa, weight: -1}
    - {name: "bad\tname", key: secret-bbbb}
    - {name: svc, key: secret-cccc, trusted: true, weight: 2000000}
  tenants:
    - {name: team-a, weight: 2}
    - {name: acme, weight: 3}
    - {name: acme}
    - {name: "", weight: 1}
    - {name: slow, weight: -2}
`,
			want: []string{
				"llmq_settings.keys[0].weight: must be greater than 0 and at most 1e+06, got -1",
				"llmq_settings.keys[1].name: is also the key's tenant name: bad tenant name",
				"llmq_settings.keys[2].weight: must be greater than 0 and at most 1e+06, got 2e+06",
				`llmq_settings.tenants[0].name: "team-a" is the tenant of llmq_settings.keys[0]: set its weight there`,
				`llmq_settings.tenants[2].name: "acme" is listed twice (also llmq_settings.tenants[1])`,
				"llmq_settings.tenants[3].name: bad tenant name: empty",
				"llmq_settings.tenants[4].weight: must be greater than 0",
			},
		},
		{
			name: "aging",
			yaml: okModel + "llmq_settings: {priority_bands: [0, 1], aging: {step: -1, limit_band: 3}}\n",
			want: []string{
				"llmq_settings.aging.step: must not be negative",
				"llmq_settings.aging.limit_band: must be a band, 0 to 2, got 3",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml), env(tt.env))
			if err == nil {
				t.Fatalf("Parse succeeded, want errors %q", tt.want)
			}
			if cfg != nil {
				t.Errorf("Parse returned a config with an error")
			}
			got := problems(err)
			if len(got) != len(tt.want) {
				t.Errorf("got %d problems, want %d:\n%s", len(got), len(tt.want), strings.Join(got, "\n"))
			}
			for i := range min(len(got), len(tt.want)) {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
			}
			for _, e := range errorsOf(err) {
				var fe *FieldError
				if !errors.As(e, &fe) {
					t.Errorf("problem %q is not a *FieldError", e)
				}
			}
		})
	}
}

func errorsOf(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func TestUnknownKeys(t *testing.T) {
	const okModel = "model_list: [{model_name: m, litellm_params: {model: m, api_key: k}}]\n"
	tests := []struct {
		name         string
		yaml         string
		wantWarnings []string
		wantErr      string
	}{
		{
			name:    "unknown key in llmq_settings is an error",
			yaml:    okModel + "llmq_settings: {bandz: 3}\n",
			wantErr: "llmq_settings.bandz: unknown key",
		},
		{
			name:         "unknown key in litellm_settings is a warning",
			yaml:         okModel + "litellm_settings: {callbacks: [langfuse]}\n",
			wantWarnings: []string{"litellm_settings.callbacks: ignored by llmq"},
		},
		{
			name: "LiteLLM keys elsewhere are warnings",
			yaml: `
model_list:
  - model_name: m
    litellm_params: {model: m, api_key: k, custom_llm_provider: openai}
    model_info: {mode: chat}
router_settings: {redis_host: os.environ/UNSET_IS_FINE}
general_settings: {database_url: x}
environment_variables: {FOO: bar}
guardrails: []
`,
			wantWarnings: []string{
				"model_list[0].litellm_params.custom_llm_provider: ignored by llmq",
				"model_list[0].model_info.mode: ignored by llmq",
				"router_settings.redis_host: ignored by llmq",
				"general_settings.database_url: ignored by llmq",
				"environment_variables: ignored by llmq",
				"guardrails: ignored by llmq",
			},
		},
		{
			name:    "unknown top-level key is an error",
			yaml:    okModel + "model_lists: []\n",
			wantErr: "model_lists: unknown key",
		},
		{
			name:    "Warnings is not a key",
			yaml:    okModel + "warnings: []\n",
			wantErr: "warnings: unknown key",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml), env(nil))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !slices.Equal(cfg.Warnings, tt.wantWarnings) {
				t.Errorf("Warnings = %q, want %q", cfg.Warnings, tt.wantWarnings)
			}
		})
	}
}

func TestEnvironResolution(t *testing.T) {
	tests := []struct {
		name  string
		value string // the YAML value of litellm_params.api_key / rpm
		env   map[string]string
		check func(t *testing.T, p LiteLLMParams)
	}{
		{
			name: "quoted reference is still resolved",
			env:  map[string]string{"K": "secret", "R": "10"},
			value: `api_key: "os.environ/K"
      rpm: 'os.environ/R'`,
			check: func(t *testing.T, p LiteLLMParams) {
				if p.APIKey != "secret" || p.RPM != 10 {
					t.Errorf("got api_key %q rpm %d", p.APIKey, p.RPM)
				}
			},
		},
		{
			name:  "value that reads as null stays a string",
			env:   map[string]string{"K": "null"},
			value: "api_key: os.environ/K",
			check: func(t *testing.T, p LiteLLMParams) {
				if p.APIKey != "null" {
					t.Errorf("api_key = %q, want null", p.APIKey)
				}
			},
		},
		{
			name:  "value that reads as a number into a string field",
			env:   map[string]string{"V": "2024-06-01", "K": "12345"},
			value: "api_version: os.environ/V\n      api_key: os.environ/K",
			check: func(t *testing.T, p LiteLLMParams) {
				if p.APIVersion != "2024-06-01" || p.APIKey != "12345" {
					t.Errorf("got api_version %q api_key %q", p.APIVersion, p.APIKey)
				}
			},
		},
		{
			name:  "duration from env",
			env:   map[string]string{"T": "1.5"},
			value: "timeout: os.environ/T",
			check: func(t *testing.T, p LiteLLMParams) {
				if p.Timeout.D() != 1500*time.Millisecond {
					t.Errorf("timeout = %v", p.Timeout)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := "model_list:\n  - model_name: m\n    litellm_params:\n      model: m\n      " + tt.value + "\n"
			cfg, err := Parse([]byte(y), env(tt.env))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			tt.check(t, cfg.ModelList[0].Params)
		})
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(fullExample), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path, env(fullEnv)); err != nil {
		t.Errorf("Load: %v", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), env(nil)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want os.ErrNotExist", err)
	}
}

func TestProviderModel(t *testing.T) {
	tests := []struct{ name, model, want string }{
		{"openai", "openai/gpt-4o", "gpt-4o"},
		{"azure", "azure/my-deployment", "my-deployment"},
		{"azure_ai", "azure_ai/mistral-large", "mistral-large"},
		{"hosted_vllm keeps the org", "hosted_vllm/meta-llama/Llama-3", "meta-llama/Llama-3"},
		{"vllm", "vllm/qwen", "qwen"},
		{"custom_openai", "custom_openai/x", "x"},
		{"text-completion-openai", "text-completion-openai/gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct"},
		{"openai_compatible", "openai_compatible/y", "y"},
		{"unknown prefix kept", "meta-llama/Llama-3", "meta-llama/Llama-3"},
		{"vendor in the table", "anthropic/claude", "claude"},
		{"unknown vendor kept", "bedrock/claude", "bedrock/claude"},
		{"no prefix", "gpt-4o", "gpt-4o"},
		{"only one prefix removed", "openai/openai/x", "openai/x"},
		{"empty", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := (LiteLLMParams{Model: tt.model}).ProviderModel(); got != tt.want {
				t.Errorf("ProviderModel(%q) = %q, want %q", tt.model, got, tt.want)
			}
		})
	}
}

func TestSeconds(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		want    time.Duration
		wantErr bool
	}{
		{"int", "600", 600 * time.Second, false},
		{"float", "0.5", 500 * time.Millisecond, false},
		{"duration string", `"30s"`, 30 * time.Second, false},
		{"unquoted duration string", "1m30s", 90 * time.Second, false},
		{"quoted number", `"2"`, 2 * time.Second, false},
		{"zero", "0", 0, false},
		{"negative parses", "-1", -time.Second, false},
		{"garbage", "soon", 0, true},
		{"bool", "true", 0, true},
		{"sequence", "[1]", 0, true},
		{"too large", "1e300", 0, true},
		{"infinite", ".inf", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Seconds
			err := yaml.Unmarshal([]byte(tt.yaml), &s)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", s.D())
				}
				return
			}
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if s.D() != tt.want {
				t.Errorf("got %v, want %v", s.D(), tt.want)
			}
		})
	}
}

func TestDeploymentIDs(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantIDs []string
		wantErr string
	}{
		{
			name:    "defaults count within each group",
			yaml:    "model_list: [{model_name: a, litellm_params: {model: x}}, {model_name: b, litellm_params: {model: x}}, {model_name: a, litellm_params: {model: x}}]",
			wantIDs: []string{"a-0", "b-0", "a-1"},
		},
		{
			name:    "explicit ids keep their place in the count",
			yaml:    "model_list: [{model_name: a, litellm_params: {model: x}, model_info: {id: first}}, {model_name: a, litellm_params: {model: x}}]",
			wantIDs: []string{"first", "a-1"},
		},
		{
			name:    "duplicate explicit ids",
			yaml:    "model_list: [{model_name: a, litellm_params: {model: x}, model_info: {id: d}}, {model_name: b, litellm_params: {model: x}, model_info: {id: d}}]",
			wantErr: `model_list[1].model_info.id: duplicate id "d" (also model_list[0].model_info.id)`,
		},
		{
			name:    "explicit id clashing with a default id",
			yaml:    "model_list: [{model_name: a, litellm_params: {model: x}}, {model_name: b, litellm_params: {model: x}, model_info: {id: a-0}}]",
			wantErr: `model_list[1].model_info.id: duplicate id "a-0" (also model_list[0].model_info.id)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := Parse([]byte(tt.yaml), env(nil))
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			var ids []string
			for _, d := range cfg.ModelList {
				ids = append(ids, d.ModelInfo.ID)
			}
			if !slices.Equal(ids, tt.wantIDs) {
				t.Errorf("ids = %q, want %q", ids, tt.wantIDs)
			}
		})
	}
}

func TestValidateHandBuilt(t *testing.T) {
	c := &Config{ModelList: []Deployment{{ModelName: "m", Params: LiteLLMParams{Model: "openai/m"}}}}
	if err := c.Validate(); err == nil {
		t.Error("Validate before ApplyDefaults succeeded, want errors for unset fields")
	}
	c.ApplyDefaults()
	c.ApplyDefaults() // idempotent
	if err := c.Validate(); err != nil {
		t.Errorf("Validate: %v", err)
	}
	if got := c.ModelList[0].ModelInfo.ID; got != "m-0" {
		t.Errorf("id = %q, want m-0", got)
	}
}

// defaultEnv builds an Env from the default tags, as envconfig would with no
// variables set.
func defaultEnv(t *testing.T) Env {
	t.Helper()
	var e Env
	v := reflect.ValueOf(&e).Elem()
	for i := range v.NumField() {
		f, def := v.Field(i), v.Type().Field(i).Tag.Get("default")
		if def == "" {
			continue
		}
		switch {
		case f.Type() == reflect.TypeFor[time.Duration]():
			d, err := time.ParseDuration(def)
			if err != nil {
				t.Fatal(err)
			}
			f.SetInt(int64(d))
		case f.Kind() == reflect.String:
			f.SetString(def)
		case f.CanInt():
			n, err := strconv.ParseInt(def, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			f.SetInt(n)
		default:
			t.Fatalf("field %s: unhandled kind %s", v.Type().Field(i).Name, f.Kind())
		}
	}
	return e
}

func TestEnvTags(t *testing.T) {
	for _, f := range reflect.VisibleFields(reflect.TypeFor[Env]()) {
		if f.Tag.Get("envconfig") == "" || f.Tag.Get("desc") == "" {
			t.Errorf("field %s needs envconfig and desc tags", f.Name)
		}
	}
}

func TestEnvValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(e *Env)
		want   []string
	}{
		{name: "defaults are valid", modify: func(*Env) {}},
		{name: "external NATS without data dir", modify: func(e *Env) { e.NATSURL, e.DataDir = "nats://n:4222", "" }},
		{name: "no embedded listener", modify: func(e *Env) { e.EmbeddedNATSListen = "" }},
		{name: "free port", modify: func(e *Env) { e.EmbeddedNATSListen = "127.0.0.1:-1" }},
		{name: "monitor on a free port", modify: func(e *Env) { e.EmbeddedNATSMonitor = "127.0.0.1:0" }},
		{
			name:   "monitor without a port",
			modify: func(e *Env) { e.EmbeddedNATSMonitor = "127.0.0.1" },
			want:   []string{`LLMQ_EMBEDDED_NATS_MONITOR: must be host:port with a port from -1 to 65535, got "127.0.0.1"`},
		},
		{name: "body limits inclusive", modify: func(e *Env) { e.MaxBodyBytes = 64 << 20 }},
		{
			name:   "worker slots",
			modify: func(e *Env) { e.WorkerSlots = 0 },
			want:   []string{"LLMQ_WORKER_SLOTS: must be at least 1"},
		},
		{
			name: "every problem at once",
			modify: func(e *Env) {
				e.Config = ""
				e.Listen = ""
				e.DataDir = ""
				e.EmbeddedNATSListen = "localhost"
				e.EmbeddedWorkers = -1
				e.WorkerSlots = -2
				e.LogLevel = "verbose"
				e.LogFormat = "xml"
				e.MaxBodyBytes = 100
				e.ShutdownTimeout = 0
			},
			want: []string{
				"LLMQ_CONFIG: must not be empty",
				"LLMQ_LISTEN: must not be empty",
				"LLMQ_DATA_DIR: must not be empty",
				"LLMQ_EMBEDDED_NATS_LISTEN: must be host:port",
				"LLMQ_EMBEDDED_WORKERS: must not be negative",
				"LLMQ_WORKER_SLOTS: must be at least 1",
				`LLMQ_LOG_LEVEL: must be debug, info, warn or error, got "verbose"`,
				`LLMQ_LOG_FORMAT: must be text or json, got "xml"`,
				"LLMQ_MAX_BODY_BYTES: must be between 1024 (1 KiB) and 67108864 (64 MiB), got 100",
				"LLMQ_SHUTDOWN_TIMEOUT: must be positive",
			},
		},
		{
			name:   "body too large",
			modify: func(e *Env) { e.MaxBodyBytes = 64<<20 + 1 },
			want:   []string{"LLMQ_MAX_BODY_BYTES: must be between"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaultEnv(t)
			tt.modify(&e)
			got := problems(e.Validate())
			if len(got) != len(tt.want) {
				t.Fatalf("got problems:\n%s\nwant %d", strings.Join(got, "\n"), len(tt.want))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("problem %d = %q, want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestTenants(t *testing.T) {
	cfg, err := Parse([]byte(`
model_list: [{model_name: m, litellm_params: {model: m}}]
general_settings: {master_key: master-secret}
llmq_settings:
  keys:
    - {name: team-a, key: secret-aaaa}
    - {name: svc, key: secret-bbbb, trusted: true, weight: 0.5}
  tenants:
    - {name: acme, weight: 3}
    - {name: anonymous, weight: 0.25}
    - {name: beta}
`), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if k := cfg.LLMQ.Keys; k[0].Trusted || !k[1].Trusted {
		t.Errorf("trusted: team-a %v, svc %v; want false, true", k[0].Trusted, k[1].Trusted)
	}
	want := map[string]float64{"team-a": 1, "svc": 0.5, "acme": 3, "anonymous": 0.25, "beta": 1}
	if got := cfg.TenantWeights(); !maps.Equal(got, want) {
		t.Errorf("TenantWeights = %v, want %v", got, want)
	}
	if got, want := cfg.ListedTenants(), []string{"master", "anonymous", "team-a", "svc", "acme", "beta"}; !slices.Equal(got, want) {
		t.Errorf("ListedTenants = %q, want %q", got, want)
	}
}

// TestBatchSettings: llmq_settings.batches defaults to OpenAI's limits and
// the last band, follows priority_bands, and reports bad values and unknown
// keys with their paths.
func TestBatchSettings(t *testing.T) {
	const okModel = "model_list: [{model_name: m, litellm_params: {model: m, api_key: k}}]\n"
	c, err := Parse([]byte(okModel), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	b := c.LLMQ.Batches
	if *b.DefaultPriority != 9 || b.MaxFileLines != 50_000 || b.MaxFileBytes != 200<<20 || b.MaxCompletionWindow.D() != 24*time.Hour {
		t.Errorf("defaults %+v (default_priority %d)", b, *b.DefaultPriority)
	}
	c, err = Parse([]byte(okModel+"llmq_settings: {priority_bands: [0, 10], batches: {max_file_lines: 3, max_completion_window: 60}}\n"), env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.LLMQ.Batches; *b.DefaultPriority != 11 || b.MaxFileLines != 3 || b.MaxCompletionWindow.D() != time.Minute {
		t.Errorf("set %+v (default_priority %d), want the last band's 11, 3 lines, 60 s", b, *b.DefaultPriority)
	}
	for yaml, want := range map[string]string{
		"llmq_settings: {batches: {max_file_lines: -1}}":        "llmq_settings.batches.max_file_lines: must be at least 1",
		"llmq_settings: {batches: {max_file_bytes: -5}}":        "llmq_settings.batches.max_file_bytes: must be at least 1",
		"llmq_settings: {batches: {max_completion_window: -1}}": "llmq_settings.batches.max_completion_window: must be at least 1 second",
		"llmq_settings: {batches: {max_lines: 3}}":              "llmq_settings.batches.max_lines: unknown key",
	} {
		_, err := Parse([]byte(okModel+yaml+"\n"), env(nil))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want %q", yaml, err, want)
		}
	}
}

// TestHeadroom: llmq_settings.headroom defaults to 10 % from the last band,
// follows priority_bands, may be turned off, and reports bad values and
// unknown keys with their paths.
func TestHeadroom(t *testing.T) {
	const okModel = "model_list: [{model_name: m, litellm_params: {model: m, api_key: k}}]\n"
	for _, tt := range []struct {
		yaml      string
		share     float64
		fromBand  int
		wantError []string
	}{
		{yaml: "", share: 0.1, fromBand: 9},
		{yaml: "llmq_settings: {priority_bands: [0, 10]}", share: 0.1, fromBand: 2},
		{yaml: "llmq_settings: {headroom: {share: 0}}", share: 0, fromBand: 9},
		{yaml: "llmq_settings: {headroom: {share: 0.25, from_band: 5}}", share: 0.25, fromBand: 5},
		{yaml: "llmq_settings: {headroom: {share: 1, from_band: 0}}", wantError: []string{
			"llmq_settings.headroom.share: must be at least 0 and below 1 (0 turns headroom off), got 1",
			"llmq_settings.headroom.from_band: must be a band, 1 to 9 (band 0 may always use everything), got 0",
		}},
		{yaml: "llmq_settings: {priority_bands: [0], headroom: {share: -0.1, from_band: 2}}", wantError: []string{
			"llmq_settings.headroom.share: must be at least 0 and below 1 (0 turns headroom off), got -0.1",
			"llmq_settings.headroom.from_band: must be a band, 1 to 1 (band 0 may always use everything), got 2",
		}},
		{yaml: "llmq_settings: {headroom: {share: .nan}}", wantError: []string{"llmq_settings.headroom.share: must be at least 0 and below 1"}},
		{yaml: "llmq_settings: {headroom: {reserve: 0.1}}", wantError: []string{"llmq_settings.headroom.reserve: unknown key"}},
	} {
		c, err := Parse([]byte(okModel+tt.yaml+"\n"), env(nil))
		if tt.wantError != nil {
			got := problems(err)
			if len(got) != len(tt.wantError) {
				t.Errorf("%q: problems %q, want %q", tt.yaml, got, tt.wantError)
				continue
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.wantError[i]) {
					t.Errorf("%q: problem %q, want prefix %q", tt.yaml, got[i], tt.wantError[i])
				}
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tt.yaml, err)
			continue
		}
		if h := c.LLMQ.Headroom; *h.Share != tt.share || *h.FromBand != tt.fromBand {
			t.Errorf("%q: share %v from band %d, want %v from %d", tt.yaml, *h.Share, *h.FromBand, tt.share, tt.fromBand)
		}
	}
}
