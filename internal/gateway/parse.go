package gateway

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"

	"github.com/llmq/llmq/pkg/messages"
)

// llmqFields are request fields llmq consumes; providers reject unknown fields,
// so they are removed before the body is queued.
var llmqFields = []string{"priority", "timeout"}

// parsed is what the gateway needs from a request body.
type parsed struct {
	Model    string
	Priority *int64        // nil: absent or null
	Stream   bool          // "stream": true
	Timeout  time.Duration // per-request queue timeout; 0 = none
	Body     []byte        // the body without llmq fields
}

// parseBody validates an OpenAI request body of kind and extracts the fields
// llmq needs. The body is checked once with json.Valid, and its top level is
// walked once without decoding anything below it (gjson); when the body
// repeats a key, the last one wins. The body is not re-encoded: without llmq
// fields it is queued as it came, and with them only the top-level members
// are joined again, each member's text unchanged.
func parseBody(kind messages.Kind, data []byte) (*parsed, *messages.Error) {
	invalid := func(param, format string, args ...any) *messages.Error {
		return messages.Errorf(messages.OutcomeInvalidRequest, param, format, args...)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, invalid("", "the request body is empty; send a JSON object")
	}
	if !utf8.Valid(data) {
		return nil, invalid("", "the request body is not valid UTF-8")
	}
	if !json.Valid(data) {
		var v any
		return nil, invalid("", "the request body is not a JSON object: %v", json.Unmarshal(data, &v))
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if trimmed[0] != '{' {
		return nil, invalid("", "the request body is not a JSON object")
	}
	offset := len(data) - len(trimmed) // of the object in data
	var top topLevel
	gjson.Parse(string(trimmed)).ForEach(func(k, v gjson.Result) bool {
		top.members = append(top.members, member{key: k.Str, start: offset + k.Index, end: offset + v.Index + len(v.Raw)})
		top.last(k.Str, v)
		return true
	})

	p := &parsed{}
	model := top.get("model")
	if !present(model) {
		return nil, invalid("model", "you must provide a model parameter")
	}
	if err := json.Unmarshal([]byte(model.Raw), &p.Model); err != nil || p.Model == "" {
		return nil, invalid("model", "model must be a non-empty string")
	}
	switch kind {
	case messages.KindChat:
		msgs := top.get("messages")
		if !present(msgs) {
			return nil, invalid("messages", "messages is required")
		}
		if !msgs.IsArray() {
			return nil, invalid("messages", "messages must be a non-empty array")
		}
		n, bad := 0, -1
		msgs.ForEach(func(_, m gjson.Result) bool {
			if !m.IsObject() {
				bad = n
				return false
			}
			n++
			return true
		})
		switch {
		case bad >= 0:
			return nil, invalid("messages", "messages[%d] must be an object", bad)
		case n == 0:
			return nil, invalid("messages", "messages must be a non-empty array")
		}
	case messages.KindCompletion:
		prompt := top.get("prompt")
		if !present(prompt) {
			return nil, invalid("prompt", "prompt is required")
		}
		if c := prompt.Raw[0]; c != '"' && c != '[' {
			return nil, invalid("prompt", "prompt must be a string or an array")
		}
	}
	if raw := top.get("priority"); present(raw) {
		v, err := parseInteger(raw.Raw)
		if err != nil {
			return nil, invalid("priority", "priority must be an integer (lower is more important), got %s", clip(raw.Raw))
		}
		p.Priority = &v
	}
	if raw := top.get("stream"); present(raw) {
		if raw.Type != gjson.True && raw.Type != gjson.False {
			return nil, invalid("stream", "stream must be a boolean")
		}
		p.Stream = raw.Type == gjson.True
	}
	if raw := top.get("timeout"); present(raw) {
		secs, err := strconv.ParseFloat(raw.Raw, 64)
		if raw.Type != gjson.Number || err != nil || secs < 0.001 || secs > 1e9 {
			return nil, invalid("timeout", "timeout must be a number of seconds from 0.001 to 1e9")
		}
		p.Timeout = time.Duration(secs * float64(time.Second))
	}
	for _, f := range []string{"max_tokens", "max_completion_tokens"} {
		if raw := top.get(f); present(raw) {
			v, err := parseInteger(raw.Raw)
			if err != nil || v < 1 || v > math.MaxInt32 {
				return nil, invalid(f, "%s must be an integer from 1 to %d", f, math.MaxInt32)
			}
		}
	}
	p.Body = top.without(data, llmqFields)
	return p, nil
}

// present reports whether a member exists with a value other than null.
func present(v gjson.Result) bool { return v.Exists() && v.Type != gjson.Null }

// watched are the top-level keys parseBody reads.
var watched = [...]string{"model", "messages", "prompt", "priority", "stream", "timeout", "max_tokens", "max_completion_tokens"}

// topLevel is what parseBody keeps of a body's top-level members: where each
// lies, and the last value of each watched key.
type topLevel struct {
	members []member
	values  [len(watched)]gjson.Result
}

// member is one top-level member: its key (unescaped) and where its text,
// from the key's opening quote to the value's end, lies in the body.
type member struct {
	key        string
	start, end int
}

// last records v as key's value if key is watched.
func (t *topLevel) last(key string, v gjson.Result) {
	if i := slices.Index(watched[:], key); i >= 0 {
		t.values[i] = v
	}
}

// get returns the last value of a watched key; the zero Result, which does
// not exist, when it is absent.
func (t *topLevel) get(key string) gjson.Result {
	return t.values[slices.Index(watched[:], key)]
}

// without returns data without the members whose key is in drop, or data
// itself when it has none. The other members keep their text and order;
// only the whitespace between members is not kept.
func (t *topLevel) without(data []byte, drop []string) []byte {
	if !slices.ContainsFunc(t.members, func(m member) bool { return slices.Contains(drop, m.key) }) {
		return data
	}
	out := make([]byte, 0, len(data))
	out = append(out, '{')
	for _, m := range t.members {
		if slices.Contains(drop, m.key) {
			continue
		}
		if len(out) > 1 {
			out = append(out, ',')
		}
		out = append(out, data[m.start:m.end]...)
	}
	return append(out, '}')
}

// parseInteger accepts only an integer JSON number literal: an optional
// minus sign and digits, no fraction or exponent, within int64.
func parseInteger(s string) (int64, error) {
	digits := s
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if digits == "" {
		return 0, strconv.ErrSyntax
	}
	for i := 0; i < len(digits); i++ {
		if digits[i] < '0' || digits[i] > '9' {
			return 0, strconv.ErrSyntax
		}
	}
	return strconv.ParseInt(s, 10, 64)
}

func clip(raw string) string {
	if len(raw) > 40 {
		return raw[:40] + "…"
	}
	return raw
}
