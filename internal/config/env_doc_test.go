package config

import (
	"bufio"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// envExample is the documented list of environment variables, relative to
// this package's directory (where go test runs).
const envExample = "../../.env.example"

var (
	// envAssignment matches "LLMQ_NAME=value", commented out or not.
	envAssignment = regexp.MustCompile(`^#?\s*(LLMQ_[A-Z0-9_]+)=(.*)$`)
	// envName matches any mention of an LLMQ_ variable.
	envName = regexp.MustCompile(`\bLLMQ_[A-Z0-9_]+`)
)

// envVar is one Env field as envconfig reads it.
type envVar struct {
	name, def, desc string
}

// envVars lists the variables of Env from its struct tags, as envconfig
// derives them: prefix LLMQ_, then the envconfig tag (or the upper-cased field
// name when there is none).
func envVars(t *testing.T) []envVar {
	t.Helper()
	var vars []envVar
	rt := reflect.TypeFor[Env]()
	for i := range rt.NumField() {
		f := rt.Field(i)
		if !f.IsExported() || f.Tag.Get("ignored") == "true" {
			continue
		}
		if f.Type.Kind() == reflect.Struct && f.Type.String() != "time.Time" {
			t.Fatalf("Env.%s is a nested struct; teach this test how envconfig names its fields", f.Name)
		}
		key := f.Tag.Get("envconfig")
		if key == "" {
			key = strings.ToUpper(f.Name)
		}
		vars = append(vars, envVar{name: "LLMQ_" + key, def: f.Tag.Get("default"), desc: f.Tag.Get("desc")})
	}
	return vars
}

// TestEnvExampleDocumentsEnv checks .env.example against Env: every variable
// appears once as an assignment (commented out or not) whose value is the
// `default` tag, and the file mentions no LLMQ_ variable Env lacks.
func TestEnvExampleDocumentsEnv(t *testing.T) {
	f, err := os.Open(envExample)
	if err != nil {
		t.Fatalf("the environment variables must be documented in .env.example at the repository root: %v", err)
	}
	defer f.Close()

	documented := map[string]string{} // name -> value
	mentioned := map[string]int{}     // name -> first line
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		for _, name := range envName.FindAllString(text, -1) {
			if _, ok := mentioned[name]; !ok {
				mentioned[name] = line
			}
		}
		m := envAssignment.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		name, value := m[1], unquote(strings.TrimSpace(m[2]))
		if prev, dup := documented[name]; dup {
			t.Errorf(".env.example:%d: %s is assigned again (first value %q)", line, name, prev)
			continue
		}
		documented[name] = value
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("reading .env.example: %v", err)
	}

	vars := envVars(t)
	known := map[string]bool{}
	for _, v := range vars {
		known[v.name] = true
		if v.desc == "" {
			t.Errorf("Env field of %s has no desc tag; give it a one-line meaning", v.name)
		}
		got, ok := documented[v.name]
		switch {
		case !ok:
			t.Errorf(".env.example lacks %s: add a line %q with a comment saying what it does (%s)", v.name, "# "+v.name+"="+v.def, v.desc)
		case got != v.def:
			t.Errorf(".env.example gives %s the default %q, but Env's default tag is %q", v.name, got, v.def)
		}
	}
	names := make([]string, 0, len(mentioned))
	for name := range mentioned {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if !known[name] {
			t.Errorf(".env.example:%d names %s, which config.Env does not have", mentioned[name], name)
		}
	}
}

// unquote strips one pair of matching quotes around an env-file value.
func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		return s[1 : len(s)-1]
	}
	return s
}
