package app

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/llmq/llmq/internal/config"
)

// ErrConfigInvalid is returned by CheckConfig for a config with errors.
var ErrConfigInvalid = errors.New("the config has errors")

// CheckConfig validates the config file at path without starting anything
// and writes a report to w: every error, every warning, and for each
// deployment its resolved endpoint, where its key comes from (never the key)
// and its limits. It returns an error matching ErrConfigInvalid when the
// config has errors, or the error that kept it from reading the file.
func CheckConfig(w io.Writer, path string, lookup func(string) (string, bool)) error {
	cfg, err := config.Check(path, lookup)
	if cfg == nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	problems := config.Problems(err)
	fmt.Fprintf(w, "config %s: %d errors, %d warnings, %d deployments\n", path, len(problems), len(cfg.Warnings), len(cfg.ModelList))
	section := func(title string, lines []string) {
		if len(lines) == 0 {
			return
		}
		fmt.Fprintf(w, "\n%s:\n", title)
		for _, l := range lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
	}
	section("errors", problems)
	section("warnings", cfg.Warnings)
	if len(cfg.ModelList) > 0 {
		fmt.Fprintf(w, "\ndeployments:\n")
	}
	for _, d := range cfg.ModelList {
		describeDeployment(w, d)
	}
	if len(problems) > 0 {
		return fmt.Errorf("config %s: %w (%d)", path, ErrConfigInvalid, len(problems))
	}
	return nil
}

func describeDeployment(w io.Writer, d config.Deployment) {
	p := d.Params
	kind := "model group"
	if d.IsWildcard() {
		kind = "wildcard group"
	}
	fmt.Fprintf(w, "  %s (%s %q)\n", d.ModelInfo.ID, kind, d.ModelName)
	switch {
	case p.MockResponse != nil:
		fmt.Fprintf(w, "    endpoint: mock_response, no network call\n")
	case p.Endpoint == nil:
		fmt.Fprintf(w, "    endpoint: not resolved (see the errors)\n")
	default:
		e := p.Endpoint
		fmt.Fprintf(w, "    endpoint: %s, POST %s, model %q\n", e.Name(), e.URL(), e.Model)
		fmt.Fprintf(w, "    key:      %s\n", p.KeySource)
	}
	limit := func(name string, v int64) string {
		if v <= 0 {
			return name + " none"
		}
		return name + " " + strconv.FormatInt(v, 10)
	}
	fmt.Fprintf(w, "    limits:   %s, %s, %s\n", limit("rpm", p.RPM), limit("tpm", p.TPM),
		limit("max_parallel_requests", int64(p.MaxParallelRequests)))
	if len(p.Defaults) > 0 || len(p.Headers) > 0 {
		fmt.Fprintf(w, "    sent with each call: %s\n", strings.Join(append(slices.Sorted(maps.Keys(p.Defaults)),
			headerNames(p.Headers)...), ", "))
	}
}

func headerNames(h map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(h)) {
		out = append(out, "header "+k)
	}
	return out
}
