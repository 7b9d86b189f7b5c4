package messages

import (
	"slices"
	"strings"
)

// Groups finds the model group that serves a requested model. A group whose
// name holds '*' (model_name "*", "openai/*", "claude-*-sonnet") is a
// wildcard group: it serves every requested model its pattern matches that
// no group names exactly. The zero value has no groups.
//
// A request served by a wildcard group is published on that group's subject
// (the pattern encoded with [EncodeToken], e.g. "openai/*" is
// "openai=2F=2A"), with the requested model left in the body's "model": the
// wildcard group is one queue with one set of deployments and limits, shared
// by every model it serves, and the worker fills the requested model into the
// deployment's model (see [FillWildcard]).
type Groups struct {
	exact map[string]bool
	wild  []string // most specific first
}

// NewGroups returns the matcher of the given model groups.
func NewGroups(names []string) Groups {
	g := Groups{exact: make(map[string]bool, len(names))}
	for _, n := range names {
		if strings.Contains(n, "*") {
			if !slices.Contains(g.wild, n) {
				g.wild = append(g.wild, n)
			}
			continue
		}
		g.exact[n] = true
	}
	// LiteLLM tries the most specific pattern first: the longest, then the
	// one with more wildcards (router_utils/pattern_match_deployments.py
	// sorts by the length of the pattern's regex, then by its special
	// characters). Ties go by name so the order is stable.
	slices.SortStableFunc(g.wild, func(a, b string) int {
		if d := len(b) - len(a); d != 0 {
			return d
		}
		if d := strings.Count(b, "*") - strings.Count(a, "*"); d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	return g
}

// Match returns the group that serves model: the group of that name, else
// the first wildcard group (most specific first) whose pattern matches the
// whole of model.
func (g Groups) Match(model string) (group string, ok bool) {
	if g.exact[model] {
		return model, true
	}
	for _, w := range g.wild {
		if _, ok := WildcardMatch(w, model); ok {
			return w, true
		}
	}
	return "", false
}

// WildcardMatch matches model against pattern, in which each '*' stands for
// any run of bytes (empty included), and returns what each '*' matched. The
// whole of model must match; an earlier '*' takes as much as it can, as
// Python's greedy ".*" does in LiteLLM.
func WildcardMatch(pattern, model string) ([]string, bool) {
	parts := strings.Split(pattern, "*")
	if len(parts) == 1 {
		return nil, pattern == model
	}
	if !strings.HasPrefix(model, parts[0]) {
		return nil, false
	}
	return matchRest(parts[1:], model[len(parts[0]):])
}

// matchRest matches s against "*" + parts[0] + "*" + parts[1] …, the first
// '*' taking the longest run that lets the rest match.
func matchRest(parts []string, s string) ([]string, bool) {
	lit := parts[0]
	if len(parts) == 1 {
		if !strings.HasSuffix(s, lit) {
			return nil, false
		}
		return []string{s[:len(s)-len(lit)]}, true
	}
	for end := len(s) - len(lit); end >= 0; end-- {
		if s[end:end+len(lit)] != lit {
			continue
		}
		if rest, ok := matchRest(parts[1:], s[end+len(lit):]); ok {
			return append([]string{s[:end]}, rest...), true
		}
	}
	return nil, false
}

// FillWildcard returns the model a wildcard deployment is called with:
// deploymentModel with each '*' replaced, in order, by what the '*' of
// pattern (the group) matched in requested, as LiteLLM's
// PatternMatchRouter.set_deployment_model_name does. A deploymentModel
// without '*' is returned as is; when the pattern has more wildcards than
// deploymentModel, or does not match, the requested model is used whole.
func FillWildcard(pattern, deploymentModel, requested string) string {
	if !strings.Contains(deploymentModel, "*") {
		return deploymentModel
	}
	segs, ok := WildcardMatch(pattern, requested)
	if !ok || len(segs) > strings.Count(deploymentModel, "*") {
		return requested
	}
	out := deploymentModel
	for _, s := range segs {
		out = strings.Replace(out, "*", s, 1)
	}
	return out
}
