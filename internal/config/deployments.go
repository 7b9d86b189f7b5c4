package config

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/llmq/llmq/internal/vendor"
)

// bodyParamKeys are the litellm_params that LiteLLM sends with every call of
// a deployment as request fields: its router spreads the deployment's
// litellm_params into litellm.completion before the request's own
// arguments, so the caller's value wins. llmq merges them the same way.
var bodyParamKeys = []string{
	"audio", "frequency_penalty", "logit_bias", "logprobs", "max_completion_tokens",
	"max_tokens", "modalities", "n", "parallel_tool_calls", "prediction",
	"presence_penalty", "reasoning_effort", "response_format", "seed",
	"service_tier", "stop", "temperature", "tool_choice", "tools", "top_logprobs",
	"top_p", "user", "verbosity", "web_search_options",
}

// callParamKeys are the litellm_params keys llmq reads from
// LiteLLMParams.Other: the body fields above, extra_body (more body fields),
// extra_headers and organization (headers).
var callParamKeys = func() map[string]bool {
	m := map[string]bool{"extra_body": true, "extra_headers": true, "organization": true}
	for _, k := range bodyParamKeys {
		m[k] = true
	}
	return m
}()

// CallParams returns the names of the litellm_params llmq merges into each
// call of a deployment, sorted.
func CallParams() []string { return slices.Sorted(maps.Keys(callParamKeys)) }

// resolve completes each deployment from the vendor table (internal/vendor)
// and the environment, as LiteLLM does: the vendor's api_base and key
// variables when the file sets none, then the endpoint, the key's source,
// and the default call parameters. env maps paths read from os.environ/ to
// their variables. It returns the problems and adds warnings to c.Warnings.
func (c *Config) resolve(lookup func(string) (string, bool), env map[string]string) []*FieldError {
	var ps []*FieldError
	add := func(path, format string, args ...any) {
		ps = append(ps, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	first := func(names []string) (name, value string) {
		for _, n := range names {
			if v, ok := lookup(n); ok && v != "" {
				return n, v
			}
		}
		return "", ""
	}
	for i := range c.ModelList {
		d := &c.ModelList[i]
		p, pp := &d.Params, fmt.Sprintf("model_list[%d].litellm_params", i)
		c.callParams(p, pp, add)
		if p.MockResponse != nil || p.Model == "" {
			continue
		}
		prefix, _ := vendor.Split(p.Model)
		if prefix == "" {
			prefix = "openai"
		}
		v, known := vendor.Lookup(prefix)
		if known && p.APIBase == "" {
			if name, val := first(v.BaseEnv); name != "" {
				p.APIBase = val
			}
		}
		if known && v.Azure && p.APIVersion == "" {
			if _, val := first([]string{"AZURE_API_VERSION"}); val != "" {
				p.APIVersion = val
			}
		}
		if p.AzureADToken != "" && !(known && v.Azure) {
			c.Warnings = append(c.Warnings, pp+".azure_ad_token: ignored by llmq (only azure/ deployments use it)")
			p.AzureADToken = ""
		}
		switch {
		case p.AzureADToken != "":
			p.KeySource = "azure_ad_token" + source(env, pp+".azure_ad_token")
		case p.APIKey != "":
			p.KeySource = "api_key" + source(env, pp+".api_key")
		case known:
			if name, val := first(v.KeyEnv); name != "" {
				p.APIKey, p.KeySource = val, name+" (LiteLLM's default variable)"
			}
		}
		e, err := vendor.Resolve(vendor.Params{Model: p.Model, APIBase: p.APIBase, APIVersion: p.APIVersion})
		if err != nil {
			at := pp + ".model"
			if _, ok := errors.AsType[*vendor.APIBaseError](err); ok {
				at = pp + ".api_base"
			}
			add(at, "model group %q: %v", d.ModelName, err)
			continue
		}
		p.Endpoint = &e
		if p.KeySource == "" {
			p.KeySource = "none"
			needsKey := known && (strings.HasPrefix(e.BaseURL, "https://") || v.Azure)
			switch {
			case known && v.Azure:
				add(pp+".api_key", "Azure OpenAI needs api_key or azure_ad_token (or one of %s set)", strings.Join(v.KeyEnv, ", "))
			case needsKey:
				c.Warnings = append(c.Warnings, fmt.Sprintf("%s.api_key: not set and none of %s is set: %s is called without a key",
					pp, strings.Join(v.KeyEnv, ", "), v.Name))
			}
		} else {
			auth := e.Auth
			if p.AzureADToken != "" {
				auth = vendor.Bearer
			}
			p.KeySource += ", sent as " + auth.String()
		}
		if strings.Contains(p.Model, "*") && !d.IsWildcard() {
			add(pp+".model", "has a '*' but model_name %q is not a wildcard pattern", d.ModelName)
		}
	}
	return ps
}

// source says where a value at path came from.
func source(env map[string]string, path string) string {
	if name, ok := env[path]; ok {
		return " from os.environ/" + name
	}
	return " written in the file"
}

// callParams sets p.Defaults and p.Headers from the call parameters in
// p.Other, reporting those of the wrong shape.
func (c *Config) callParams(p *LiteLLMParams, pp string, add func(path, format string, args ...any)) {
	p.Defaults, p.Headers = nil, nil
	set := func(k string, v any) {
		if p.Defaults == nil {
			p.Defaults = map[string]any{}
		}
		p.Defaults[k] = v
	}
	for _, k := range bodyParamKeys {
		if v, ok := p.Other[k]; ok && v != nil {
			set(k, v)
		}
	}
	if v, ok := p.Other["extra_body"]; ok && v != nil {
		m, isMap := v.(map[string]any)
		if !isMap {
			add(pp+".extra_body", "must be a mapping of request fields")
		}
		for _, k := range slices.Sorted(maps.Keys(m)) {
			if _, named := p.Defaults[k]; !named {
				set(k, m[k])
			}
		}
	}
	header := func(k string, v any) {
		if p.Headers == nil {
			p.Headers = map[string]string{}
		}
		p.Headers[k] = fmt.Sprint(v)
	}
	if v, ok := p.Other["extra_headers"]; ok && v != nil {
		m, isMap := v.(map[string]any)
		if !isMap {
			add(pp+".extra_headers", "must be a mapping of header names to values")
		}
		for k, hv := range m {
			switch hv.(type) {
			case string, int, int64, float64, bool:
				header(k, hv)
			default:
				add(pp+".extra_headers."+k, "must be a single value")
			}
		}
	}
	if v, ok := p.Other["organization"]; ok && v != nil {
		s, isStr := v.(string)
		if !isStr || s == "" {
			add(pp+".organization", "must be a non-empty string")
		}
		header("OpenAI-Organization", s)
	}
}
