// Package vendor is llmq's provider table: for each LiteLLM model prefix
// ("azure/", "anthropic/", "groq/", …) the vendor's endpoint, how the key is
// sent and the shape of the request. It is the one place that knows vendors;
// internal/config validates deployments against it and internal/provider
// builds its callers from the [Endpoint] it resolves.
//
// Every vendor is called through an OpenAI-compatible chat completions API:
// the vendor's own (Groq, Mistral, …) or its compatibility layer (Anthropic,
// Google Gemini, Ollama). A key is only ever sent to the vendor its
// deployment names: a model whose prefix is not in the table needs an
// explicit api_base, and is then called there as an OpenAI-compatible
// server with the model name kept whole, prefix included.
package vendor

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
)

// Auth is how a deployment's key is sent.
type Auth int

const (
	// Bearer sends "Authorization: Bearer <key>".
	Bearer Auth = iota
	// APIKeyHeader sends "api-key: <key>" (Azure).
	APIKeyHeader
)

func (a Auth) String() string {
	if a == APIKeyHeader {
		return "api-key header"
	}
	return "Authorization: Bearer"
}

// Shape is the shape of the request URL.
type Shape int

const (
	// OpenAIShape posts to {base}/chat/completions with the model in the body.
	OpenAIShape Shape = iota
	// AzureDeployments posts to
	// {base}/openai/deployments/{model}/chat/completions?api-version={version}
	// (openai-go's azure package).
	AzureDeployments
	// AzureV1 posts to {base}/openai/v1/chat/completions with the deployment
	// name as the body's model and no api-version (Azure's v1 API).
	AzureV1
)

// Vendor is one row of the table.
type Vendor struct {
	// Prefixes are the LiteLLM model prefixes that name the vendor; the first
	// is its name.
	Prefixes []string
	// Name is the vendor's name for people.
	Name string
	// Base is the default api_base, as LiteLLM reads the field for this
	// prefix; empty: api_base is required.
	Base string
	// Path is appended to api_base unless it already ends with it: the
	// vendor's OpenAI-compatible layer below the root LiteLLM calls (e.g.
	// "/v1beta/openai" for Gemini, whose LiteLLM api_base is the host).
	Path string
	// BaseEnv are the variables LiteLLM reads, in order, when api_base is
	// not set.
	BaseEnv []string
	// KeyEnv are the variables LiteLLM reads, in order, when api_key is not set.
	KeyEnv []string
	// Auth is how the key is sent.
	Auth Auth
	// Azure marks Azure OpenAI: the shape follows api_version.
	Azure bool
	// Docs is where the base URL is documented.
	Docs string
	// Gaps says what the compatibility layer does not carry, for the README.
	Gaps string
}

// AzureDefaultAPIVersion is the api-version used for an azure/ deployment
// that sets no api_version (and AZURE_API_VERSION is not set): LiteLLM's
// default.
const AzureDefaultAPIVersion = "2025-02-01-preview"

// table is the provider table. Keep it sorted by first prefix; vendors_test
// checks every default base against its documentation.
var table = []Vendor{
	{Prefixes: []string{"anthropic"}, Name: "Anthropic", Base: "https://api.anthropic.com", Path: "/v1",
		KeyEnv: []string{"ANTHROPIC_API_KEY"},
		Docs:   "https://docs.anthropic.com/en/api/openai-sdk",
		Gaps:   "OpenAI-compatibility layer (beta): no /v1/completions; response_format, logprobs, seed, presence/frequency penalties, reasoning_effort and tool `strict` are ignored; n must be 1; no prompt caching; system messages are hoisted"},
	{Prefixes: []string{"azure"}, Name: "Azure OpenAI", Azure: true, Auth: APIKeyHeader,
		KeyEnv: []string{"AZURE_OPENAI_API_KEY", "AZURE_API_KEY"}, BaseEnv: []string{"AZURE_API_BASE"},
		Docs: "https://learn.microsoft.com/azure/ai-foundry/openai/reference",
		Gaps: "api_base (https://<resource>.openai.azure.com) is required; the model after azure/ is the deployment name"},
	{Prefixes: []string{"azure_ai"}, Name: "Azure AI Foundry",
		KeyEnv: []string{"AZURE_AI_API_KEY"}, BaseEnv: []string{"AZURE_AI_API_BASE"},
		Docs: "https://learn.microsoft.com/azure/ai-foundry/model-inference/reference/reference-model-inference-api",
		Gaps: "api_base is required; on *.services.ai.azure.com llmq adds /models; the key goes in api-key on *.services.ai.azure.com and *.openai.azure.com, as Bearer elsewhere"},
	{Prefixes: []string{"cerebras"}, Name: "Cerebras", Base: "https://api.cerebras.ai/v1",
		KeyEnv: []string{"CEREBRAS_API_KEY"}, BaseEnv: []string{"CEREBRAS_API_BASE"},
		Docs: "https://inference-docs.cerebras.ai/resources/openai",
		Gaps: "frequency_penalty, logit_bias and presence_penalty are not supported"},
	{Prefixes: []string{"custom_openai", "openai_compatible"}, Name: "OpenAI-compatible server",
		Docs: "https://docs.litellm.ai/docs/providers/openai_compatible",
		Gaps: "api_base is required"},
	{Prefixes: []string{"deepinfra"}, Name: "DeepInfra", Base: "https://api.deepinfra.com/v1/openai",
		KeyEnv: []string{"DEEPINFRA_API_KEY"},
		Docs:   "https://deepinfra.com/docs/openai_api",
		Gaps:   "model-dependent support of tools and response_format"},
	{Prefixes: []string{"deepseek"}, Name: "DeepSeek", Base: "https://api.deepseek.com",
		KeyEnv: []string{"DEEPSEEK_API_KEY"}, BaseEnv: []string{"DEEPSEEK_API_BASE"},
		Docs: "https://api-docs.deepseek.com/",
		Gaps: "LiteLLM defaults to https://api.deepseek.com/beta; llmq uses the documented base (set api_base for the beta features, e.g. fill-in-the-middle /completions)"},
	{Prefixes: []string{"fireworks_ai"}, Name: "Fireworks AI", Base: "https://api.fireworks.ai/inference/v1",
		KeyEnv: []string{"FIREWORKS_API_KEY", "FIREWORKS_AI_API_KEY", "FIREWORKSAI_API_KEY", "FIREWORKS_AI_TOKEN"},
		Docs:   "https://docs.fireworks.ai/tools-sdks/openai-compatibility",
		Gaps:   "model names are full resource paths (accounts/fireworks/models/…)"},
	{Prefixes: []string{"gemini"}, Name: "Google Gemini", Base: "https://generativelanguage.googleapis.com", Path: "/v1beta/openai",
		KeyEnv: []string{"GEMINI_API_KEY"},
		Docs:   "https://ai.google.dev/gemini-api/docs/openai",
		Gaps:   "OpenAI-compatibility layer (beta): chat only, no /v1/completions; Gemini-only options (thinking, safety settings, cached content) go in extra_body"},
	{Prefixes: []string{"groq"}, Name: "Groq", Base: "https://api.groq.com/openai/v1",
		KeyEnv: []string{"GROQ_API_KEY"}, BaseEnv: []string{"GROQ_API_BASE"},
		Docs: "https://console.groq.com/docs/openai",
		Gaps: "chat only, no /v1/completions; logprobs, logit_bias, top_logprobs and messages[].name are refused; n must be 1"},
	{Prefixes: []string{"hosted_vllm", "vllm"}, Name: "vLLM server", BaseEnv: []string{"HOSTED_VLLM_API_BASE"},
		Docs: "https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html",
		Gaps: "api_base is required (e.g. http://host:8000/v1); no key unless the server was started with --api-key"},
	{Prefixes: []string{"lm_studio"}, Name: "LM Studio", Base: "http://localhost:1234/v1",
		KeyEnv: []string{"LM_STUDIO_API_KEY"}, BaseEnv: []string{"LM_STUDIO_API_BASE"},
		Docs: "https://lmstudio.ai/docs/app/api/endpoints/openai",
		Gaps: "a local server; no key needed"},
	{Prefixes: []string{"mistral"}, Name: "Mistral AI", Base: "https://api.mistral.ai/v1",
		KeyEnv: []string{"MISTRAL_API_KEY"},
		Docs:   "https://docs.mistral.ai/api/",
		Gaps:   "chat only, no /v1/completions (fill-in-the-middle is /v1/fim/completions)"},
	{Prefixes: []string{"ollama", "ollama_chat"}, Name: "Ollama", Base: "http://localhost:11434", Path: "/v1",

		Docs: "https://docs.ollama.com/api/openai-compatibility",
		Gaps: "llmq calls the OpenAI-compatible /v1 API, not the native /api/chat LiteLLM uses; native options such as num_ctx cannot be set through it (use a Modelfile)"},
	{Prefixes: []string{"openai", "text-completion-openai"}, Name: "OpenAI", Base: "https://api.openai.com/v1",
		KeyEnv: []string{"OPENAI_API_KEY"}, BaseEnv: []string{"OPENAI_BASE_URL", "OPENAI_API_BASE"},
		Docs: "https://platform.openai.com/docs/api-reference/chat",
		Gaps: "none: the reference API"},
	{Prefixes: []string{"openrouter"}, Name: "OpenRouter", Base: "https://openrouter.ai/api/v1",
		KeyEnv: []string{"OPENROUTER_API_KEY", "OR_API_KEY"},
		Docs:   "https://openrouter.ai/docs/api-reference/overview",
		Gaps:   "parameters the routed model does not support are ignored"},
	{Prefixes: []string{"perplexity"}, Name: "Perplexity", Base: "https://api.perplexity.ai",
		KeyEnv: []string{"PERPLEXITYAI_API_KEY", "PERPLEXITY_API_KEY"},
		Docs:   "https://docs.perplexity.ai/api-reference/chat-completions-post",
		Gaps:   "chat only, no /v1/completions; search results and citations come as extra response fields"},
	{Prefixes: []string{"together_ai"}, Name: "Together AI", Base: "https://api.together.xyz/v1",
		KeyEnv: []string{"TOGETHER_API_KEY", "TOGETHER_AI_API_KEY", "TOGETHERAI_API_KEY", "TOGETHER_AI_TOKEN"}, BaseEnv: []string{"TOGETHER_AI_API_BASE"},
		Docs: "https://docs.together.ai/docs/openai-api-compatibility",
		Gaps: "model-dependent support of tools and response_format"},
	{Prefixes: []string{"xai"}, Name: "xAI", Base: "https://api.x.ai/v1",
		KeyEnv: []string{"XAI_API_KEY"}, BaseEnv: []string{"XAI_API_BASE"},
		Docs: "https://docs.x.ai/docs/api-reference",
		Gaps: "presence_penalty, frequency_penalty and stop are not supported by reasoning models"},
}

// Table returns the provider table, sorted by first prefix. The caller must
// not modify it.
func Table() []Vendor { return table }

// Prefixes returns every prefix of the table, sorted.
func Prefixes() []string {
	var out []string
	for _, v := range table {
		out = append(out, v.Prefixes...)
	}
	slices.Sort(out)
	return out
}

// Lookup returns the vendor of a LiteLLM prefix.
func Lookup(prefix string) (*Vendor, bool) {
	for i := range table {
		if slices.Contains(table[i].Prefixes, prefix) {
			return &table[i], true
		}
	}
	return nil, false
}

// Split returns the prefix of a LiteLLM model ("groq" of "groq/llama3") and
// the rest. A model without "/" has no prefix.
func Split(model string) (prefix, rest string) {
	prefix, rest, ok := strings.Cut(model, "/")
	if !ok {
		return "", model
	}
	return prefix, rest
}

// Params are the litellm_params that decide a deployment's endpoint, after
// LiteLLM's environment defaults (the vendor's BaseEnv) were applied.
type Params struct {
	Model      string // litellm_params.model
	APIBase    string // litellm_params.api_base
	APIVersion string // litellm_params.api_version (Azure)
}

// Endpoint is where and how a deployment is called.
type Endpoint struct {
	// Vendor is the table row; nil for an unknown prefix with an api_base.
	Vendor *Vendor
	// Prefix is the LiteLLM prefix of the model ("" when it has none).
	Prefix string
	// BaseURL is the URL "/chat/completions" is appended to; for
	// AzureDeployments, the resource endpoint given to openai-go's azure
	// package.
	BaseURL string
	// Model is the provider model: the LiteLLM model without a known prefix.
	// It may hold '*' wildcards, filled from the requested model.
	Model string
	Shape Shape
	Auth  Auth
	// APIVersion is the api-version query of AzureDeployments, or of an
	// azure_ai endpoint that set api_version.
	APIVersion string
}

// Name is the vendor's first prefix, or "openai-compatible" for an unknown
// prefix with an api_base.
func (e Endpoint) Name() string {
	if e.Vendor == nil {
		return "openai-compatible"
	}
	return e.Vendor.Prefixes[0]
}

// URL is the chat completions URL the endpoint is called at, for people
// (config check); "{model}" stands for a wildcard's model.
func (e Endpoint) URL() string {
	model := e.Model
	if strings.Contains(model, "*") {
		model = "{model}"
	}
	switch e.Shape {
	case AzureDeployments:
		return e.BaseURL + "/openai/deployments/" + url.PathEscape(model) + "/chat/completions?api-version=" + url.QueryEscape(e.APIVersion)
	case AzureV1:
		return e.BaseURL + "/openai/v1/chat/completions"
	}
	u := e.BaseURL + "/chat/completions"
	if e.APIVersion != "" {
		u += "?api-version=" + url.QueryEscape(e.APIVersion)
	}
	return u
}

// IsAzureV1 reports whether an Azure api_version asks for Azure's v1 API:
// "v1", "latest" or "preview", as LiteLLM decides
// (BaseAzureLLM._is_azure_v1_api_version).
func IsAzureV1(apiVersion string) bool {
	switch apiVersion {
	case "v1", "latest", "preview":
		return true
	}
	return false
}

// APIBaseError is a Resolve error about api_base: missing where the vendor
// has no default, or not usable.
type APIBaseError struct{ Msg string }

func (e *APIBaseError) Error() string { return e.Msg }

// Resolve finds the endpoint of a deployment. An unknown prefix, or a model
// without a prefix whose vendor needs an api_base, is an error unless
// api_base is set; a model without a prefix is OpenAI's (as LiteLLM reads
// OpenAI's model names).
func Resolve(p Params) (Endpoint, error) {
	prefix, rest := Split(p.Model)
	v, known := Lookup(prefix)
	if prefix == "" {
		v, known = Lookup("openai")
	}
	base := strings.TrimSuffix(p.APIBase, "/")
	if !known {
		if base == "" {
			return Endpoint{}, fmt.Errorf("unknown provider prefix %q and no api_base: llmq sends a key only to the vendor a deployment names; use one of %s, or set api_base to an OpenAI-compatible server",
				prefix, strings.Join(Prefixes(), ", "))
		}
		// An OpenAI-compatible server the user named: the model is sent
		// whole (e.g. "meta-llama/Llama-3.1-8B" to a vLLM server).
		return Endpoint{Prefix: prefix, BaseURL: base, Model: p.Model, Shape: OpenAIShape, Auth: Bearer}, nil
	}
	e := Endpoint{Vendor: v, Prefix: prefix, Model: rest, Shape: OpenAIShape, Auth: v.Auth}
	if base == "" {
		base = v.Base
	}
	if base == "" {
		return Endpoint{}, &APIBaseError{fmt.Sprintf("%s (%s/) needs api_base", v.Name, v.Prefixes[0])}
	}
	switch {
	case v.Azure:
		u, err := url.Parse(base)
		if err != nil {
			return Endpoint{}, &APIBaseError{err.Error()}
		}
		if u.Scheme != "https" && !isLoopback(u.Hostname()) {
			return Endpoint{}, &APIBaseError{fmt.Sprintf("Azure OpenAI needs an https api_base (plain http only on a loopback address), got %q", p.APIBase)}
		}
		e.APIVersion = p.APIVersion
		if e.APIVersion == "" {
			e.APIVersion = AzureDefaultAPIVersion
		}
		// A base that already names the route (…/openai, …/openai/v1) is
		// cut back to the resource endpoint.
		base = strings.TrimSuffix(strings.TrimSuffix(base, "/v1"), "/openai")
		e.Shape = AzureDeployments
		if IsAzureV1(e.APIVersion) {
			e.Shape, e.APIVersion = AzureV1, ""
		}
	case prefix == "azure_ai":
		if h := hostOf(base); strings.HasSuffix(h, ".services.ai.azure.com") || strings.HasSuffix(h, ".openai.azure.com") {
			e.Auth = APIKeyHeader
		}
		if strings.HasSuffix(hostOf(base), ".services.ai.azure.com") && !strings.HasSuffix(base, "/models") {
			base += "/models"
		}
		e.APIVersion = p.APIVersion
	case v.Path != "" && !strings.HasSuffix(base, v.Path):
		base += v.Path
	}
	e.BaseURL = base
	return e, nil
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return strings.ToLower(u.Hostname())
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
