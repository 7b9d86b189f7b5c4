package gateway

import (
	"bytes"
	"encoding/json"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

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
// llmq needs. The top level is decoded once into raw values, so nested
// content is never decoded; when the body repeats a key, the last one wins.
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
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, invalid("", "the request body is not a JSON object: %v", err)
	}
	if top == nil {
		return nil, invalid("", "the request body is not a JSON object")
	}
	p := &parsed{}
	model, ok := top["model"]
	if !ok || isNull(model) {
		return nil, invalid("model", "you must provide a model parameter")
	}
	if err := json.Unmarshal(model, &p.Model); err != nil || p.Model == "" {
		return nil, invalid("model", "model must be a non-empty string")
	}
	switch kind {
	case messages.KindChat:
		msgs, ok := top["messages"]
		var list []json.RawMessage
		if !ok || isNull(msgs) {
			return nil, invalid("messages", "messages is required")
		}
		if json.Unmarshal(msgs, &list) != nil || len(list) == 0 {
			return nil, invalid("messages", "messages must be a non-empty array")
		}
		for i, m := range list {
			if len(m) == 0 || m[0] != '{' {
				return nil, invalid("messages", "messages[%d] must be an object", i)
			}
		}
	case messages.KindCompletion:
		prompt, ok := top["prompt"]
		if !ok || isNull(prompt) {
			return nil, invalid("prompt", "prompt is required")
		}
		if c := prompt[0]; c != '"' && c != '[' {
			return nil, invalid("prompt", "prompt must be a string or an array")
		}
	}
	if raw, ok := top["priority"]; ok && !isNull(raw) {
		v, err := parseInteger(raw)
		if err != nil {
			return nil, invalid("priority", "priority must be an integer (lower is more important), got %s", clip(raw))
		}
		p.Priority = &v
	}
	if raw, ok := top["stream"]; ok && !isNull(raw) {
		if err := json.Unmarshal(raw, &p.Stream); err != nil {
			return nil, invalid("stream", "stream must be a boolean")
		}
	}
	if raw, ok := top["timeout"]; ok && !isNull(raw) {
		var secs float64
		if err := json.Unmarshal(raw, &secs); err != nil || secs < 0.001 || math.IsInf(secs, 0) || secs > 1e9 {
			return nil, invalid("timeout", "timeout must be a number of seconds from 0.001 to 1e9")
		}
		p.Timeout = time.Duration(secs * float64(time.Second))
	}
	for _, f := range []string{"max_tokens", "max_completion_tokens"} {
		if raw, ok := top[f]; ok && !isNull(raw) {
			v, err := parseInteger(raw)
			if err != nil || v < 1 || v > math.MaxInt32 {
				return nil, invalid(f, "%s must be an integer from 1 to %d", f, math.MaxInt32)
			}
		}
	}
	p.Body = data
	if hasAny(top, llmqFields) {
		for _, f := range llmqFields {
			delete(top, f)
		}
		b, err := json.Marshal(top)
		if err != nil {
			return nil, invalid("", "the request body could not be re-encoded: %v", err)
		}
		p.Body = b
	}
	return p, nil
}

func hasAny(m map[string]json.RawMessage, keys []string) bool {
	for _, k := range keys {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

func isNull(raw json.RawMessage) bool { return string(raw) == "null" }

// parseInteger accepts only an integer JSON number literal: an optional
// minus sign and digits, no fraction or exponent, within int64.
func parseInteger(raw json.RawMessage) (int64, error) {
	s := string(raw)
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

func clip(raw json.RawMessage) string {
	if len(raw) > 40 {
		return string(raw[:40]) + "…"
	}
	return string(raw)
}
