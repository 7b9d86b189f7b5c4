package config

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

// FieldError is one problem in the config file, with the path of the field it is about.
type FieldError struct {
	// Path locates the field, e.g. "model_list[1].litellm_params.rpm"; empty for the
	// whole document.
	Path string
	// Msg says what is wrong, e.g. "must not be negative".
	Msg string
}

// Error returns "<path>: <msg>", or msg alone when the path is empty.
func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

var subjectToken = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Validate checks c and returns an errors.Join of one *FieldError per problem, or nil.
// Load and Parse call it; call it on a hand-built Config after ApplyDefaults.
func (c *Config) Validate() error {
	var errs []error
	for _, p := range c.validate() {
		errs = append(errs, p)
	}
	return errors.Join(errs...)
}

func (c *Config) validate() []*FieldError {
	var ps []*FieldError
	add := func(path, format string, args ...any) {
		ps = append(ps, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}

	if len(c.ModelList) == 0 {
		add("model_list", "must have at least one entry")
	}
	ids := map[string]string{} // id -> path of its first use
	for i, d := range c.ModelList {
		at := fmt.Sprintf("model_list[%d]", i)
		switch {
		case d.ModelName == "":
			add(at+".model_name", "must not be empty")
		case len(d.ModelName) > maxModelNameBytes:
			add(at+".model_name", "must be at most %d bytes", maxModelNameBytes)
		}
		p, pp := d.Params, at+".litellm_params"
		for _, l := range []struct {
			name string
			top  *int64
			in   int64
		}{{"rpm", d.RPM, p.RPM}, {"tpm", d.TPM, p.TPM}} {
			if l.top != nil && *l.top != l.in {
				add(at+"."+l.name, "is %d but litellm_params.%s is %d: write the limit once", *l.top, l.name, l.in)
			}
		}
		if p.Model == "" && p.MockResponse == nil {
			add(pp+".model", "must not be empty unless mock_response is set")
		}
		for _, f := range []struct {
			name string
			neg  bool
		}{
			{"rpm", p.RPM < 0},
			{"tpm", p.TPM < 0},
			{"max_parallel_requests", p.MaxParallelRequests < 0},
			{"order", p.Order < 0},
			{"weight", p.Weight < 0},
			{"timeout", p.Timeout < 0},
			{"stream_timeout", p.StreamTimeout < 0},
		} {
			if f.neg {
				add(pp+"."+f.name, "must not be negative")
			}
		}
		if p.APIBase != "" {
			u, err := url.Parse(p.APIBase)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				add(pp+".api_base", "must be an absolute http(s) URL, got %q", p.APIBase)
			}
		}
		ip := at + ".model_info.id"
		switch first, dup := ids[d.ModelInfo.ID]; {
		case d.ModelInfo.ID == "":
			add(ip, "must not be empty (call ApplyDefaults first)")
		case dup:
			add(ip, "duplicate id %q (also %s)", d.ModelInfo.ID, first)
		default:
			ids[d.ModelInfo.ID] = ip
		}
	}

	r := c.RouterSettings
	switch r.RoutingStrategy {
	case StrategySimpleShuffle, StrategyLeastBusy, StrategyUsageBasedV2, StrategyUsageBased, StrategyLatencyBased:
	default:
		add("router_settings.routing_strategy", "must be one of %s, %s, %s, %s or %s, got %q",
			StrategySimpleShuffle, StrategyLeastBusy, StrategyUsageBasedV2, StrategyUsageBased, StrategyLatencyBased, r.RoutingStrategy)
	}
	if r.DefaultPriority == nil {
		add("router_settings.default_priority", "must be set (call ApplyDefaults first)")
	}
	if r.Timeout <= 0 {
		add("router_settings.timeout", "must be positive")
	}
	if r.NumRetries == nil {
		add("router_settings.num_retries", "must be set (call ApplyDefaults first)")
	} else if *r.NumRetries < 0 {
		add("router_settings.num_retries", "must not be negative")
	}
	if r.CooldownTime < 0 {
		add("router_settings.cooldown_time", "must not be negative")
	}
	if r.AllowedFails < 0 {
		add("router_settings.allowed_fails", "must not be negative")
	}
	if r.RetryAfter < 0 {
		add("router_settings.retry_after", "must not be negative")
	}

	l := c.LiteLLMSettings
	if l.NumRetries != nil && *l.NumRetries < 0 {
		add("litellm_settings.num_retries", "must not be negative")
	}
	if l.RequestTimeout <= 0 {
		add("litellm_settings.request_timeout", "must be positive")
	}

	groups := map[string]bool{}
	for _, d := range c.ModelList {
		groups[d.ModelName] = true
	}
	for _, fb := range []struct {
		path string
		list []map[string][]string
	}{
		{"router_settings.fallbacks", r.Fallbacks},
		{"litellm_settings.fallbacks", l.Fallbacks},
	} {
		for i, m := range fb.list {
			for _, from := range sortedKeys(m) {
				at := fmt.Sprintf("%s[%d].%s", fb.path, i, from)
				if !groups[from] {
					add(at, "unknown model group %q", from)
				}
				for j, to := range m[from] {
					if !groups[to] {
						add(fmt.Sprintf("%s[%d]", at, j), "unknown model group %q", to)
					}
				}
			}
		}
	}

	q := c.LLMQ
	switch n := len(q.PriorityBands); {
	case n < 1 || n > maxPriorityBands:
		add("llmq_settings.priority_bands", "must have 1 to %d entries, got %d", maxPriorityBands, n)
	default:
		for i := 1; i < n; i++ {
			if q.PriorityBands[i] <= q.PriorityBands[i-1] {
				add(fmt.Sprintf("llmq_settings.priority_bands[%d]", i), "must be greater than the entry before it (%d), got %d",
					q.PriorityBands[i-1], q.PriorityBands[i])
			}
		}
	}
	if !subjectToken.MatchString(q.SubjectPrefix) {
		add("llmq_settings.subject_prefix", "must be one NATS token of letters, digits, '_' and '-', got %q", q.SubjectPrefix)
	}
	if q.MaxQueued < 0 {
		add("llmq_settings.max_queued", "must not be negative")
	}
	if q.AckWait <= 0 {
		add("llmq_settings.ack_wait", "must be positive")
	}
	if q.LimitsPeriod < Seconds(time.Second) {
		add("llmq_settings.limits_period", "must be at least 1 second")
	}
	if q.DefaultCompletionTokens < 1 {
		add("llmq_settings.default_completion_tokens", "must be at least 1")
	}
	if q.MockStreamChunks < 1 {
		add("llmq_settings.mock_stream_chunks", "must be at least 1, got %d", q.MockStreamChunks)
	}
	if q.MockStreamGap < 0 {
		add("llmq_settings.mock_stream_gap", "must not be negative")
	}
	names, secrets := map[string]bool{}, map[string]bool{}
	if c.GeneralSettings.MasterKey != "" {
		secrets[c.GeneralSettings.MasterKey] = true
	}
	for i, k := range q.Keys {
		at := fmt.Sprintf("llmq_settings.keys[%d]", i)
		switch {
		case k.Name == "":
			add(at+".name", "must not be empty")
		case names[k.Name]:
			add(at+".name", "%q is used twice", k.Name)
		case k.Name == "master":
			add(at+".name", `"master" is reserved for general_settings.master_key`)
		}
		names[k.Name] = true
		switch {
		case len(k.Key) < 8:
			add(at+".key", "must be at least 8 characters")
		case secrets[k.Key]:
			add(at+".key", "is the same as another key or the master key")
		}
		secrets[k.Key] = true
		if k.RPMLimit < 0 {
			add(at+".rpm_limit", "must not be negative")
		}
		for j, m := range k.Models {
			if !groups[m] {
				add(fmt.Sprintf("%s.models[%d]", at, j), "unknown model group %q", m)
			}
		}
		if err := messages.ValidTenant(k.Name); k.Name != "" && err != nil {
			add(at+".name", "is also the key's tenant name: %v", err)
		}
		validWeight(add, at+".weight", k.Weight)
	}
	for i, t := range q.Tenants {
		at := fmt.Sprintf("llmq_settings.tenants[%d]", i)
		if err := messages.ValidTenant(t.Name); err != nil {
			add(at+".name", "%v", err)
		}
		for j, k := range q.Keys {
			if k.Name == t.Name {
				add(at+".name", "%q is the tenant of llmq_settings.keys[%d]: set its weight there", t.Name, j)
			}
		}
		for j := range i {
			if q.Tenants[j].Name == t.Name {
				add(at+".name", "%q is listed twice (also llmq_settings.tenants[%d])", t.Name, j)
				break
			}
		}
		validWeight(add, at+".weight", t.Weight)
	}
	if len(q.Keys) > 0 && c.GeneralSettings.MasterKey == "" {
		add("general_settings.master_key", "must be set when llmq_settings.keys are (otherwise every caller is let in)")
	}
	if q.Aging.Step < 0 {
		add("llmq_settings.aging.step", "must not be negative (0 turns aging off)")
	}
	if bands := len(q.PriorityBands) + 1; q.Aging.LimitBand < 0 || q.Aging.LimitBand >= bands {
		add("llmq_settings.aging.limit_band", "must be a band, 0 to %d, got %d", bands-1, q.Aging.LimitBand)
	}
	if h := q.Headroom.Share; h != nil && !(*h >= 0 && *h < 1) { // also catches NaN
		add("llmq_settings.headroom.share", "must be at least 0 and below 1 (0 turns headroom off), got %g", *h)
	}
	if bands, h := len(q.PriorityBands)+1, q.Headroom.FromBand; h != nil && (*h < 1 || *h >= bands) {
		add("llmq_settings.headroom.from_band", "must be a band, 1 to %d (band 0 may always use everything), got %d", bands-1, *h)
	}
	if b := q.Batches; b.MaxFileLines < 1 {
		add("llmq_settings.batches.max_file_lines", "must be at least 1, got %d", b.MaxFileLines)
	}
	if b := q.Batches; b.MaxFileBytes < 1 {
		add("llmq_settings.batches.max_file_bytes", "must be at least 1, got %d", b.MaxFileBytes)
	}
	if b := q.Batches; b.MaxCompletionWindow < Seconds(time.Second) {
		add("llmq_settings.batches.max_completion_window", "must be at least 1 second")
	}
	if q.Replicas < 1 || q.Replicas > maxReplicas {
		add("llmq_settings.replicas", "must be between 1 and %d, got %d", maxReplicas, q.Replicas)
	}
	return ps
}

// validWeight checks a tenant weight (after ApplyDefaults).
func validWeight(add func(path, format string, args ...any), path string, w float64) {
	if !(w > 0 && w <= maxTenantWeight) { // also catches NaN
		add(path, "must be greater than 0 and at most %g, got %g", float64(maxTenantWeight), w)
	}
}

// sortedKeys returns the keys of m in ascending order.
func sortedKeys(m map[string][]string) []string {
	return slices.Sorted(maps.Keys(m))
}

// covered reports whether path is path itself or lies below it.
func covered(path, under string) bool {
	return under == "" || path == under ||
		strings.HasPrefix(path, under+".") || strings.HasPrefix(path, under+"[")
}

// Problems returns the messages of an error that Load or Validate joined
// with errors.Join, one per problem (nil for nil).
func Problems(err error) []string {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}
