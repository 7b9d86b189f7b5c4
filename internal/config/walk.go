package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// envPrefix marks a value to be read from the environment.
const envPrefix = "os.environ/"

// liteLLMTopLevel are LiteLLM's top-level keys; those llmq has no field for are warned
// about, any other unknown top-level key is an error.
var liteLLMTopLevel = map[string]bool{
	"model_list": true, "router_settings": true, "litellm_settings": true,
	"general_settings": true, "environment_variables": true, "callback_settings": true,
	"guardrails": true, "mcp_servers": true, "credential_list": true, "include": true,
	"files_settings": true, "assistant_settings": true, "finetune_settings": true,
	"search_tools": true, "vector_store_registry": true,
}

// strictBlock is the top-level block in which an unknown key is an error.
const strictBlock = "llmq_settings"

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// walker goes over a YAML node tree alongside the Go type it will be decoded into. It
// resolves os.environ/ values in place, finds unknown keys and duplicate keys, and
// decodes every leaf on its own so that type errors get a path.
type walker struct {
	lookup   func(string) (string, bool)
	problems []*FieldError
	warnings []string
	// reported holds the raw yaml.v3 messages ("line N: ...") already turned into
	// problems, so the full decode does not report them again.
	reported map[string]bool
	resolved map[*yaml.Node]bool
	// active guards against alias cycles.
	active map[*yaml.Node]bool
	// dropped are paths the decoder leaves zero because of a problem reported elsewhere.
	dropped []string
	// env maps the path of each value read from the environment to its
	// variable, so that a key's source can be told without the key.
	env map[string]string
}

// inlineKeys are, per struct type with an inline map, the keys that map
// takes without a warning.
var inlineKeys = map[reflect.Type]map[string]bool{
	reflect.TypeFor[LiteLLMParams](): callParamKeys,
}

var anyType = reflect.TypeFor[any]()

func newWalker(lookup func(string) (string, bool)) *walker {
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	return &walker{
		lookup:   lookup,
		reported: map[string]bool{},
		resolved: map[*yaml.Node]bool{},
		active:   map[*yaml.Node]bool{},
		env:      map[string]string{},
	}
}

func (w *walker) problem(path, format string, args ...any) {
	w.problems = append(w.problems, &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)})
}

// covers reports whether a problem was found at path or above it, so that validation
// need not report it again.
func (w *walker) covers(path string) bool {
	for _, p := range w.problems {
		if covered(path, p.Path) {
			return true
		}
	}
	for _, d := range w.dropped {
		if covered(path, d) {
			return true
		}
	}
	return false
}

// walk visits n, to be decoded into a value of type t found at path. strict makes
// unknown keys errors instead of warnings.
func (w *walker) walk(n *yaml.Node, t reflect.Type, path string, strict bool) {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil || w.active[n.Alias] {
			return // the decoder reports alias cycles
		}
		w.active[n.Alias] = true
		defer delete(w.active, n.Alias)
		w.walk(n.Alias, t, path, strict)
		return
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return
	}
	st := t
	for st.Kind() == reflect.Pointer {
		st = st.Elem()
	}
	isLeaf := t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType)
	switch {
	case !isLeaf && st.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		w.mapping(n, st, path, strict)
	case !isLeaf && st.Kind() == reflect.Slice && st.Elem().Kind() == reflect.Struct && n.Kind == yaml.SequenceNode:
		for i, item := range n.Content {
			w.walk(item, st.Elem(), fmt.Sprintf("%s[%d]", path, i), strict)
		}
	default:
		w.leaf(n, t, path)
	}
}

// mapping visits the keys of n against the fields of struct type t.
func (w *walker) mapping(n *yaml.Node, t reflect.Type, path string, strict bool) {
	w.duplicates(n, path)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" {
			w.merge(v, t, path, strict)
			continue
		}
		at := child(path, k.Value)
		f, ok := fieldByYAMLName(t, k.Value)
		switch {
		case ok:
			w.walk(v, f.Type, at, strict || (path == "" && k.Value == strictBlock))
		case inlineKeys[t][k.Value]:
			w.walk(v, anyType, at, strict)
		case path == "" && liteLLMTopLevel[k.Value], path != "" && !strict:
			w.warnings = append(w.warnings, at+": ignored by llmq")
		default:
			w.problem(at, "unknown key")
		}
	}
}

// merge visits the mappings merged in with "<<" as part of the struct at path.
func (w *walker) merge(v *yaml.Node, t reflect.Type, path string, strict bool) {
	if v.Kind == yaml.AliasNode {
		if v.Alias == nil || w.active[v.Alias] {
			return
		}
		w.active[v.Alias] = true
		defer delete(w.active, v.Alias)
		v = v.Alias
	}
	switch v.Kind {
	case yaml.MappingNode:
		w.mapping(v, t, path, strict)
	case yaml.SequenceNode:
		for _, item := range v.Content {
			if item.Kind == yaml.AliasNode || item.Kind == yaml.MappingNode {
				w.merge(item, t, path, strict)
			}
		}
	}
	// Anything else is reported by the decoder.
}

// duplicates reports keys that appear twice in mapping n, with the decoder's message
// so that the full decode does not report them again.
func (w *walker) duplicates(n *yaml.Node, path string) {
	first := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if f, ok := first[k.Value]; ok {
			w.reported[fmt.Sprintf("line %d: mapping key %#v already defined at line %d", k.Line, k.Value, f.Line)] = true
			w.problem(child(path, k.Value), "key appears twice (lines %d and %d)", f.Line, k.Line)
			// The decoder leaves the whole mapping zero.
			w.dropped = append(w.dropped, path)
			continue
		}
		first[k.Value] = k
	}
}

// leaf resolves os.environ/ values in n and decodes n into a fresh value of type t,
// reporting any type error at path.
func (w *walker) leaf(n *yaml.Node, t reflect.Type, path string) {
	w.resolve(n, path)
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return
	}
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		w.problem(path, "%v", err)
		return
	}
	for _, msg := range te.Errors {
		w.reported[msg] = true
		w.problem(path, "%s", lineLast(msg))
	}
}

var linePrefix = regexp.MustCompile(`^line (\d+): (.*)$`)

// lineLast turns yaml.v3's "line N: msg" into "msg (line N)".
func lineLast(msg string) string {
	if m := linePrefix.FindStringSubmatch(msg); m != nil {
		return m[2] + " (line " + m[1] + ")"
	}
	return msg
}

// resolve replaces every scalar value "os.environ/NAME" under n with the value of NAME.
// Mapping keys are left alone.
func (w *walker) resolve(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.AliasNode:
		if n.Alias != nil && !w.active[n.Alias] {
			w.active[n.Alias] = true
			w.resolve(n.Alias, path)
			delete(w.active, n.Alias)
		}
	case yaml.SequenceNode:
		for i, item := range n.Content {
			w.resolve(item, fmt.Sprintf("%s[%d]", path, i))
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			w.resolve(n.Content[i+1], child(path, n.Content[i].Value))
		}
	case yaml.ScalarNode:
		if w.resolved[n] || n.ShortTag() != "!!str" || !strings.HasPrefix(n.Value, envPrefix) {
			return
		}
		w.resolved[n] = true
		name := strings.TrimPrefix(n.Value, envPrefix)
		w.env[path] = name
		v, ok := w.lookup(name)
		switch {
		case name == "":
			w.problem(path, "%q names no environment variable", n.Value)
		case !ok:
			w.problem(path, "environment variable %s is not set", name)
		}
		if name == "" || !ok {
			// Decode as the zero value; the problem above stands for the field.
			n.Tag, n.Value, n.Style = "!!null", "", 0
			return
		}
		// Read the value as if written unquoted in the file, so numbers stay numbers;
		// a value that would read as null stays a string.
		n.Value, n.Style, n.Tag = v, 0, ""
		if n.ShortTag() == "!!null" {
			n.Tag = "!!str"
		}
	}
}

// fieldByYAMLName returns the field of struct type t that yaml.v3 decodes key into.
func fieldByYAMLName(t reflect.Type, key string) (reflect.StructField, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || opts == "inline" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// child returns the path of key inside the mapping at path.
func child(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
