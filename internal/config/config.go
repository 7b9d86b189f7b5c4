package config

import (
	"errors"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/llmq/llmq/internal/vendor"
	"github.com/llmq/llmq/pkg/messages"
)

// Config is the YAML file: LiteLLM's proxy config.yaml plus llmq_settings.
type Config struct {
	ModelList       []Deployment    `yaml:"model_list"`
	RouterSettings  RouterSettings  `yaml:"router_settings"`
	LiteLLMSettings LiteLLMSettings `yaml:"litellm_settings"`
	GeneralSettings GeneralSettings `yaml:"general_settings"`
	LLMQ            LLMQSettings    `yaml:"llmq_settings"`
	// Warnings lists keys that LiteLLM knows but llmq ignores, each with its path
	// (e.g. "litellm_settings.callbacks: ignored by llmq"). Set by Load and Parse.
	Warnings []string `yaml:"-"`
}

// Deployment is one model_list entry: one provider endpoint serving a model group.
type Deployment struct {
	// ModelName is the model group callers name; non-empty, at most 200 bytes.
	ModelName string        `yaml:"model_name"`
	Params    LiteLLMParams `yaml:"litellm_params"`
	ModelInfo ModelInfo     `yaml:"model_info"`
	// RPM and TPM written beside litellm_params (the shape of LiteLLM's
	// load-balancing docs) are the same limits as litellm_params.rpm and
	// .tpm: ApplyDefaults copies them there; both set and different is an
	// error.
	RPM *int64 `yaml:"rpm"`
	TPM *int64 `yaml:"tpm"`
}

// IsWildcard reports whether the deployment's model_name is a wildcard
// pattern ("*", "openai/*"): its group serves every requested model the
// pattern matches that no explicit group names (see messages.MatchGroup).
func (d Deployment) IsWildcard() bool { return strings.Contains(d.ModelName, "*") }

// LiteLLMParams says how to reach a deployment and how much it may be sent.
type LiteLLMParams struct {
	// Model is the provider model, e.g. "openai/gpt-4o"; see ProviderModel.
	Model      string `yaml:"model"`
	APIBase    string `yaml:"api_base"`
	APIKey     string `yaml:"api_key"`
	APIVersion string `yaml:"api_version"`
	// AzureADToken is a Microsoft Entra ID bearer token for an azure/
	// deployment, sent instead of api_key.
	AzureADToken string `yaml:"azure_ad_token"`
	// RPM and TPM cap requests and tokens per minute; 0 = no cap.
	RPM int64 `yaml:"rpm"`
	TPM int64 `yaml:"tpm"`
	// MaxParallelRequests caps concurrent calls; 0 = no cap.
	MaxParallelRequests int `yaml:"max_parallel_requests"`
	// Timeout is the provider call timeout; 0 = litellm_settings.request_timeout.
	Timeout       Seconds `yaml:"timeout"`
	StreamTimeout Seconds `yaml:"stream_timeout"`
	// MockResponse, when set, is returned instead of calling the provider.
	MockResponse *string `yaml:"mock_response"`
	Order        int     `yaml:"order"`
	Weight       float64 `yaml:"weight"`

	// Other holds every other litellm_params key. Those LiteLLM sends with
	// each call (CallParams) are merged into requests; see Defaults.
	Other map[string]any `yaml:",inline"`

	// Set by Parse from the fields above and the vendor table:

	// Endpoint is where and how the deployment is called (nil for a mock).
	Endpoint *vendor.Endpoint `yaml:"-"`
	// KeySource says where the key came from, for people: e.g.
	// "api_key from os.environ/AZURE_API_KEY", "GROQ_API_KEY (LiteLLM's
	// default)", "none". Never the key.
	KeySource string `yaml:"-"`
	// Defaults are the request body fields merged into each call (the
	// caller's own value wins): the CallParams set here, then the keys of
	// extra_body.
	Defaults map[string]any `yaml:"-"`
	// Headers are sent with each call: extra_headers, and organization as
	// OpenAI-Organization.
	Headers map[string]string `yaml:"-"`
}

// ModelInfo holds a deployment's identity.
type ModelInfo struct {
	// ID names the deployment; unique across the file. ApplyDefaults sets an empty ID
	// to "<model_name>-<i>", i being the 0-based index within the model group.
	ID string `yaml:"id"`
}

// Routing strategies accepted in router_settings.routing_strategy.
const (
	StrategySimpleShuffle = "simple-shuffle"
	StrategyLeastBusy     = "least-busy"
	StrategyUsageBasedV2  = "usage-based-routing-v2"
	// StrategyUsageBased is accepted and treated like StrategyUsageBasedV2.
	StrategyUsageBased = "usage-based-routing"
	// StrategyLatencyBased is accepted and treated like StrategyUsageBasedV2.
	StrategyLatencyBased = "latency-based-routing"
)

// Defaults and limits.
// DefaultSubjectPrefix is llmq_settings.subject_prefix when the file sets none.
const DefaultSubjectPrefix = "llmq"

const (
	defaultRoutingStrategy = StrategySimpleShuffle
	defaultPriority        = int64(5)
	defaultQueueTimeout    = 600 * time.Second
	defaultNumRetries      = 2
	defaultCooldownTime    = 5 * time.Second
	defaultAllowedFails    = 3
	defaultRequestTimeout  = 600 * time.Second
	defaultAckWait         = 30 * time.Second
	defaultReplicas        = 1
	maxModelNameBytes      = 200
	maxPriorityBands       = 63
	maxReplicas            = 5
	// DefaultTenantWeight is the weight of a tenant no key or tenants entry
	// gives one.
	DefaultTenantWeight = 1.0
	maxTenantWeight     = 1e6
)

// RouterSettings configures routing, the queue deadline, retries and fallbacks.
type RouterSettings struct {
	// RoutingStrategy picks a deployment within a group: simple-shuffle (default),
	// least-busy or usage-based-routing-v2; usage-based-routing and
	// latency-based-routing are accepted and treated like usage-based-routing-v2.
	RoutingStrategy string `yaml:"routing_strategy"`
	// DefaultPriority is the priority of a request that names none; default 5. Never
	// nil after ApplyDefaults.
	DefaultPriority *int64 `yaml:"default_priority"`
	// Timeout is the queue deadline: how long a request may wait for a worker to
	// pick it up (a request field "timeout" can only shorten it); default 600 s.
	// A request that misses it gets 408 and never reaches a provider.
	Timeout Seconds `yaml:"timeout"`
	// NumRetries is how often a failed call is retried; default
	// litellm_settings.num_retries if set, else 2. Never nil after ApplyDefaults.
	NumRetries *int `yaml:"num_retries"`
	// CooldownTime is how long a deployment rests after AllowedFails failures; default 5 s.
	CooldownTime Seconds `yaml:"cooldown_time"`
	// AllowedFails is the number of failures before a cooldown; default 3.
	AllowedFails int `yaml:"allowed_fails"`
	// Fallbacks maps a group to the groups tried, in order, when it fails.
	Fallbacks []map[string][]string `yaml:"fallbacks"`
	// RetryAfter is the least wait before a retry.
	RetryAfter Seconds `yaml:"retry_after"`
}

// LiteLLMSettings holds the litellm_settings keys llmq reads.
type LiteLLMSettings struct {
	// NumRetries is the default of router_settings.num_retries.
	NumRetries *int `yaml:"num_retries"`
	// RequestTimeout is the provider call timeout of a deployment that sets none;
	// default 600 s.
	RequestTimeout Seconds `yaml:"request_timeout"`
	// DropParams drops request parameters a provider does not support.
	DropParams bool `yaml:"drop_params"`
	// Fallbacks are merged after router_settings.fallbacks; see AllFallbacks.
	Fallbacks []map[string][]string `yaml:"fallbacks"`
}

// GeneralSettings holds the general_settings keys llmq reads.
type GeneralSettings struct {
	// MasterKey is the bearer token callers must present; empty = no authentication.
	MasterKey string `yaml:"master_key"`
}

// LLMQSettings is llmq's own block, llmq_settings.
type LLMQSettings struct {
	// PriorityBands are the ascending upper bounds of the priority bands; a priority
	// above the last bound falls into one more band. Default [0,1,2,3,4,5,6,7,8] (ten
	// bands); strictly ascending, 1 to 63 entries.
	PriorityBands []int64 `yaml:"priority_bands"`
	// SubjectPrefix is the first token of every NATS subject and stream name; default
	// "llmq"; one NATS token of [A-Za-z0-9_-].
	SubjectPrefix string `yaml:"subject_prefix"`
	// MaxQueued caps the backlog per band and group; 0 = unlimited (the default).
	MaxQueued int64 `yaml:"max_queued"`
	// AckWait is how long JetStream waits for a worker's ack; default 30 s.
	AckWait Seconds `yaml:"ack_wait"`
	// Replicas is the number of JetStream stream replicas; default 1; 1 to 5.
	Replicas int `yaml:"replicas"`
	// Keys are API keys besides general_settings.master_key, each with its
	// own priority policy.
	Keys []APIKey `yaml:"keys"`
	// Tenants sets the weights of tenants that are not a key's own (see
	// Tenant).
	Tenants []Tenant `yaml:"tenants"`
	// Aging lifts waiting requests to more important bands as they wait;
	// off unless Step is set.
	Aging Aging `yaml:"aging"`
	// Headroom keeps a share of the capacity free for the more important
	// bands; on by default for the last band.
	Headroom Headroom `yaml:"headroom"`
	// LimitsPeriod is the window rpm and tpm are counted over; default 60 s.
	// Only tests and benchmarks change it (rpm then means "per period").
	LimitsPeriod Seconds `yaml:"limits_period"`
	// DefaultCompletionTokens is the completion budget reserved against tpm
	// for a request without max_tokens; default 256.
	DefaultCompletionTokens int64 `yaml:"default_completion_tokens"`
	// MockStreamChunks is how many content chunks a mock_response deployment
	// streams; default 4.
	MockStreamChunks int `yaml:"mock_stream_chunks"`
	// MockStreamGap is the pause between a mock deployment's streamed chunks;
	// default 0.05 s, so the embedded default visibly streams.
	MockStreamGap Seconds `yaml:"mock_stream_gap"`
	// Batches configures /v1/files and /v1/batches.
	Batches BatchSettings `yaml:"batches"`
}

// BatchSettings is llmq_settings.batches.
type BatchSettings struct {
	// DefaultPriority is the priority of a batch whose create request names
	// none; default: one past the last priority_bands bound (the last band).
	// Never nil after ApplyDefaults. A key's max_priority still applies.
	DefaultPriority *int64 `yaml:"default_priority"`
	// MaxFileLines caps the lines of an uploaded batch file; default 50000.
	MaxFileLines int `yaml:"max_file_lines"`
	// MaxFileBytes caps the size of an uploaded file; default 200 MB.
	MaxFileBytes int64 `yaml:"max_file_bytes"`
	// MaxCompletionWindow is the longest completion_window a batch may ask
	// for; default 24 h. A window is "24h" or any Go duration up to it.
	MaxCompletionWindow Seconds `yaml:"max_completion_window"`
}

// Batch defaults (OpenAI's limits).
const (
	DefaultBatchFileLines = 50_000
	DefaultBatchFileBytes = 200 << 20
)

// APIKey is one caller's key and its priority policy. The master key has no
// restrictions.
type APIKey struct {
	// Name identifies the key in logs and errors (never the key itself).
	Name string `yaml:"name"`
	// Key is the secret, usually an os.environ/NAME reference.
	Key string `yaml:"key"`
	// MaxPriority is the most important priority the key may use: a request
	// asking for a lower number is served at MaxPriority. Nil: no ceiling.
	MaxPriority *int64 `yaml:"max_priority"`
	// DefaultPriority applies when a request names none; nil: the router's
	// default_priority (both are clamped to MaxPriority).
	DefaultPriority *int64 `yaml:"default_priority"`
	// RPMLimit caps the key's requests per minute at each gateway; 0 = none.
	// Over it the gateway answers 429.
	RPMLimit int64 `yaml:"rpm_limit"`
	// Models lists the model groups the key may use; empty = all.
	Models []string `yaml:"models"`
	// ReadQueue lets the key read the queue status (GET /v1/queue and the
	// /ui page), as the master key may; nothing else of the master key's.
	ReadQueue bool `yaml:"read_queue"`
	// Trusted lets the key name the tenant it sends for with the
	// x-llmq-tenant header (an internal service acting for others); from
	// any other key that header is refused with 403.
	Trusted bool `yaml:"trusted"`
	// Weight is the key's tenant's share of a band's capacity relative to
	// other tenants waiting in the same band and model group; default 1.
	Weight float64 `yaml:"weight"`
}

// Aging is llmq_settings.aging: a request that waits is treated as one band
// more important for every Step it waits, up to LimitBand, so a steady
// flood of important work cannot hold the lower bands back forever.
type Aging struct {
	// Step is the wait that lifts a request by one band; 0 (the default)
	// turns aging off.
	Step Seconds `yaml:"step"`
	// LimitBand is the most important band aging lifts a request to;
	// default 0.
	LimitBand int `yaml:"limit_band"`
}

// Headroom is llmq_settings.headroom: requests of FromBand and every worse
// band start only while, after them, Share of each capacity stays free
// (a worker process's slots; a deployment's max_parallel_requests, rpm and
// tpm), so that a request of a more important band finds room at once
// instead of waiting for a call of a batch to end. The more important
// bands may use everything. See internal/worker, Headroom.
type Headroom struct {
	// Share of each capacity the held-back bands leave free, rounded down
	// to whole units; at least 0, below 1; default 0.1; 0 turns headroom
	// off. Never nil after ApplyDefaults.
	Share *float64 `yaml:"share"`
	// FromBand is the most important band held back, 1 to the last band;
	// default the last band (where batches go by default). Never nil after
	// ApplyDefaults with valid priority_bands.
	FromBand *int `yaml:"from_band"`
}

// DefaultHeadroomShare is llmq_settings.headroom.share's default.
const DefaultHeadroomShare = 0.1

// Tenant sets the weight of a tenant that is not a key's own: one a trusted
// key names, master, or anonymous. Listing a tenant also makes its name a
// metric label (other tenants named by trusted keys are counted as "other").
type Tenant struct {
	// Name is the tenant, as a trusted key sends it in x-llmq-tenant.
	Name string `yaml:"name"`
	// Weight is the tenant's share, as for a key; default 1.
	Weight float64 `yaml:"weight"`
}

// Load reads the file at path, resolves every scalar value of the form "os.environ/NAME"
// with lookup(NAME) (a missing variable is an error naming the path and the variable),
// applies defaults, and validates. It reports every problem at once: the returned error
// is an errors.Join of one error per problem, each message starting with its path, e.g.
// "model_list[1].litellm_params.rpm: must not be negative". lookup is usually
// os.LookupEnv; nothing in this package reads the environment itself.
func Load(path string, lookup func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, lookup)
}

// Parse is Load on bytes (for tests and embedding).
func Parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	cfg, err := parse(data, lookup)
	if err != nil {
		return nil, err
	}
	return cfg, nil
}

// Check is Load for config check: with problems it returns the error and
// also the config as far as it was understood (with its Warnings and every
// deployment that resolved), or nil when the file could not be read as YAML.
// Nothing may be started from a config that came with an error.
func Check(path string, lookup func(string) (string, bool)) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parse(data, lookup)
}

func parse(data []byte, lookup func(string) (string, bool)) (*Config, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, err
	}
	var root *yaml.Node
	if doc.Kind == yaml.DocumentNode && len(doc.Content) > 0 {
		root = doc.Content[0]
	}

	cfg := &Config{}
	w := newWalker(lookup)
	var errs []error
	if root != nil {
		w.walk(root, reflect.TypeFor[Config](), "", false)
		for _, p := range w.problems {
			errs = append(errs, p)
		}
		if err := root.Decode(cfg); err != nil {
			var te *yaml.TypeError
			if !errors.As(err, &te) {
				errs = append(errs, err)
			} else {
				for _, msg := range te.Errors {
					if !w.reported[msg] {
						errs = append(errs, errors.New(msg))
					}
				}
			}
		}
	}
	cfg.Warnings = w.warnings
	cfg.ApplyDefaults()
	for _, p := range append(cfg.validate(), cfg.resolve(w.lookup, w.env)...) {
		if !w.covers(p.Path) {
			errs = append(errs, p)
		}
	}
	if len(errs) > 0 {
		return cfg, errors.Join(errs...)
	}
	return cfg, nil
}

// ApplyDefaults fills every unset field with its default, including empty deployment
// IDs. It is idempotent.
func (c *Config) ApplyDefaults() {
	r := &c.RouterSettings
	if r.RoutingStrategy == "" {
		r.RoutingStrategy = defaultRoutingStrategy
	}
	if r.DefaultPriority == nil {
		p := defaultPriority
		r.DefaultPriority = &p
	}
	if r.Timeout == 0 {
		r.Timeout = Seconds(defaultQueueTimeout)
	}
	if r.NumRetries == nil {
		n := defaultNumRetries
		if c.LiteLLMSettings.NumRetries != nil {
			n = *c.LiteLLMSettings.NumRetries
		}
		r.NumRetries = &n
	}
	if r.CooldownTime == 0 {
		r.CooldownTime = Seconds(defaultCooldownTime)
	}
	if r.AllowedFails == 0 {
		r.AllowedFails = defaultAllowedFails
	}
	if c.LiteLLMSettings.RequestTimeout == 0 {
		c.LiteLLMSettings.RequestTimeout = Seconds(defaultRequestTimeout)
	}
	l := &c.LLMQ
	if l.PriorityBands == nil {
		l.PriorityBands = []int64{0, 1, 2, 3, 4, 5, 6, 7, 8}
	}
	if l.SubjectPrefix == "" {
		l.SubjectPrefix = DefaultSubjectPrefix
	}
	if l.AckWait == 0 {
		l.AckWait = Seconds(defaultAckWait)
	}
	if l.LimitsPeriod == 0 {
		l.LimitsPeriod = Seconds(time.Minute)
	}
	if l.DefaultCompletionTokens == 0 {
		l.DefaultCompletionTokens = 256
	}
	if l.MockStreamChunks == 0 {
		l.MockStreamChunks = 4
	}
	if l.MockStreamGap == 0 {
		l.MockStreamGap = Seconds(50 * time.Millisecond)
	}
	if l.Replicas == 0 {
		l.Replicas = defaultReplicas
	}
	for i := range l.Keys {
		if l.Keys[i].Weight == 0 {
			l.Keys[i].Weight = DefaultTenantWeight
		}
	}
	for i := range l.Tenants {
		if l.Tenants[i].Weight == 0 {
			l.Tenants[i].Weight = DefaultTenantWeight
		}
	}
	if l.Headroom.Share == nil {
		share := DefaultHeadroomShare
		l.Headroom.Share = &share
	}
	if l.Headroom.FromBand == nil && len(l.PriorityBands) > 0 {
		last := len(l.PriorityBands)
		l.Headroom.FromBand = &last
	}
	b := &l.Batches
	if b.DefaultPriority == nil && len(l.PriorityBands) > 0 {
		p := l.PriorityBands[len(l.PriorityBands)-1] + 1
		b.DefaultPriority = &p
	}
	if b.MaxFileLines == 0 {
		b.MaxFileLines = DefaultBatchFileLines
	}
	if b.MaxFileBytes == 0 {
		b.MaxFileBytes = DefaultBatchFileBytes
	}
	if b.MaxCompletionWindow == 0 {
		b.MaxCompletionWindow = Seconds(24 * time.Hour)
	}
	index := map[string]int{}
	for i := range c.ModelList {
		d := &c.ModelList[i]
		n := index[d.ModelName]
		index[d.ModelName] = n + 1
		if d.ModelInfo.ID == "" {
			d.ModelInfo.ID = d.ModelName + "-" + strconv.Itoa(n)
		}
		if d.RPM != nil && d.Params.RPM == 0 {
			d.Params.RPM = *d.RPM
		}
		if d.TPM != nil && d.Params.TPM == 0 {
			d.Params.TPM = *d.TPM
		}
	}
}

// Groups returns the model group names in first-appearance order of model_list.
func (c *Config) Groups() []string {
	var groups []string
	seen := map[string]bool{}
	for _, d := range c.ModelList {
		if !seen[d.ModelName] {
			seen[d.ModelName] = true
			groups = append(groups, d.ModelName)
		}
	}
	return groups
}

// Deployments returns the deployments of one group, in file order.
func (c *Config) Deployments(group string) []Deployment {
	var ds []Deployment
	for _, d := range c.ModelList {
		if d.ModelName == group {
			ds = append(ds, d)
		}
	}
	return ds
}

// ProviderModel returns the model sent to the provider: litellm_params.model
// without the prefix of a vendor in the table (internal/vendor). Any other
// prefix (e.g. "meta-llama/Llama-3") is kept.
func (p LiteLLMParams) ProviderModel() string {
	if p.Endpoint != nil {
		return p.Endpoint.Model
	}
	prefix, rest := vendor.Split(p.Model)
	if _, ok := vendor.Lookup(prefix); ok {
		return rest
	}
	return p.Model
}

// AllFallbacks returns router_settings.fallbacks then litellm_settings.fallbacks,
// flattened to group -> ordered list; a group named twice for the same source keeps
// its first place.
func (c *Config) AllFallbacks() map[string][]string {
	all := map[string][]string{}
	for _, list := range [][]map[string][]string{c.RouterSettings.Fallbacks, c.LiteLLMSettings.Fallbacks} {
		for _, m := range list {
			for _, from := range sortedKeys(m) {
				for _, to := range m[from] {
					if !slices.Contains(all[from], to) {
						all[from] = append(all[from], to)
					}
				}
			}
		}
	}
	return all
}

// TenantWeights returns the weight of every tenant the file names: each
// key's, master's and anonymous's (when set in tenants) and those in
// tenants. A tenant it does not name has DefaultTenantWeight.
func (c *Config) TenantWeights() map[string]float64 {
	w := make(map[string]float64, len(c.LLMQ.Keys)+len(c.LLMQ.Tenants))
	for _, k := range c.LLMQ.Keys {
		w[k.Name] = k.Weight
	}
	for _, t := range c.LLMQ.Tenants {
		w[t.Name] = t.Weight
	}
	return w
}

// ListedTenants returns the tenants the operator named, the only ones whose
// names become metric labels: master, anonymous, every key's name and every
// tenants entry, in that order.
func (c *Config) ListedTenants() []string {
	out := []string{messages.TenantMaster, messages.TenantAnonymous}
	for _, k := range c.LLMQ.Keys {
		out = append(out, k.Name)
	}
	for _, t := range c.LLMQ.Tenants {
		if !slices.Contains(out, t.Name) {
			out = append(out, t.Name)
		}
	}
	return out
}
