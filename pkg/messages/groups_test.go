package messages

import (
	"slices"
	"testing"
)

func TestGroupsMatch(t *testing.T) {
	g := NewGroups([]string{"gpt-4o", "*", "openai/*", "openai/gpt-4*", "claude-*-sonnet"})
	tests := []struct {
		model, want string
		ok          bool
	}{
		{"gpt-4o", "gpt-4o", true},                     // an explicit group wins
		{"openai/gpt-4.1", "openai/gpt-4*", true},      // the longest pattern first
		{"openai/o3", "openai/*", true},                //
		{"claude-3-7-sonnet", "claude-*-sonnet", true}, // a '*' inside
		{"claude-3-7-sonnet-x", "*", true},             // the pattern must match the whole name
		{"mistral-large", "*", true},                   // the catch-all
		{"", "*", true},                                // '*' matches the empty name too
	}
	for _, tt := range tests {
		got, ok := g.Match(tt.model)
		if got != tt.want || ok != tt.ok {
			t.Errorf("Match(%q) = %q, %v; want %q, %v", tt.model, got, ok, tt.want, tt.ok)
		}
	}
	if _, ok := NewGroups([]string{"gpt-4o", "openai/*"}).Match("anthropic/claude"); ok {
		t.Error("a model no pattern matches was matched")
	}
	if _, ok := (Groups{}).Match("x"); ok {
		t.Error("the zero Groups matched")
	}
}

func TestWildcardMatch(t *testing.T) {
	tests := []struct {
		pattern, model string
		want           []string
		ok             bool
	}{
		{"openai/*", "openai/gpt-4o", []string{"gpt-4o"}, true},
		{"*", "a/b/c", []string{"a/b/c"}, true},
		{"fo::*::static::*", "fo::bar::static::baz", []string{"bar", "baz"}, true},
		{"*-*", "a-b-c", []string{"a-b", "c"}, true}, // the first '*' is greedy
		{"x*y", "xy", []string{""}, true},
		{"x*y", "xyz", nil, false},
		{"exact", "exact", nil, true},
		{"exact", "other", nil, false},
	}
	for _, tt := range tests {
		got, ok := WildcardMatch(tt.pattern, tt.model)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("WildcardMatch(%q, %q) = %q, %v; want %q, %v", tt.pattern, tt.model, got, ok, tt.want, tt.ok)
		}
	}
}

func TestFillWildcard(t *testing.T) {
	tests := []struct{ pattern, deployment, requested, want string }{
		{"openai/*", "*", "openai/gpt-4o", "gpt-4o"}, // model_name openai/*, model openai/*
		{"*", "*", "gpt-4o", "gpt-4o"},               // model_name *, model openai/*
		{"llmengine/*", "*", "llmengine/foo", "foo"}, // LiteLLM's case 1
		// More wildcards in the pattern than in the deployment: LiteLLM's code
		// (not its docstring's case 3) falls back to the requested model.
		{"*meta.llama3*", "meta.llama3*", "hello-meta.llama3-70b", "hello-meta.llama3-70b"},
		{"*", "gpt-4o-mini", "anything", "gpt-4o-mini"}, // no '*' in the deployment: as is
	}
	for _, tt := range tests {
		if got := FillWildcard(tt.pattern, tt.deployment, tt.requested); got != tt.want {
			t.Errorf("FillWildcard(%q, %q, %q) = %q, want %q", tt.pattern, tt.deployment, tt.requested, got, tt.want)
		}
	}
}
