package gateway

import (
	"bytes"
	"encoding/json"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

// chatWith returns a valid chat body with extra top-level members (raw JSON,
// without the leading comma) appended.
func chatWith(extra string) []byte {
	b := `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]`
	if extra != "" {
		b += "," + extra
	}
	return []byte(b + "}")
}

// parseOK parses data and fails the test on an error.
func parseOK(t *testing.T, kind messages.Kind, data []byte) *parsed {
	t.Helper()
	p, err := parseBody(kind, data)
	if err != nil {
		t.Fatalf("parseBody(%s, %s): %v", kind, data, err)
	}
	return p
}

// checkRejected checks that err is a 400 invalid_request for param.
func checkRejected(t *testing.T, data []byte, p *parsed, err *messages.Error, param string) {
	t.Helper()
	if err == nil {
		t.Fatalf("parseBody(%s) = %+v, want a 400 for param %q", data, p, param)
	}
	if p != nil {
		t.Errorf("parseBody(%s) returned a result with its error", data)
	}
	if err.Outcome != messages.OutcomeInvalidRequest || err.HTTPStatus() != 400 {
		t.Errorf("parseBody(%s): outcome %v status %d, want invalid_request 400", data, err.Outcome, err.HTTPStatus())
	}
	if err.Param != param {
		t.Errorf("parseBody(%s): param %q, want %q (%v)", data, err.Param, param, err)
	}
	if err.Message == "" {
		t.Errorf("parseBody(%s): empty message", data)
	}
}

// topKeys returns the top-level members of a JSON object.
func topKeys(t *testing.T, body []byte) map[string]json.RawMessage {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		t.Fatalf("body %s is not a JSON object: %v", body, err)
	}
	return top
}

func TestParsePriority(t *testing.T) {
	valid := []struct {
		name, raw string // raw "" = absent
		want      *int64
	}{
		{"negative", "-5", new(int64(-5))},
		{"zero", "0", new(int64(0))},
		{"minus zero", "-0", new(int64(0))},
		{"one", "1", new(int64(1))},
		{"2^40", "1099511627776", new(int64(1 << 40))},
		{"max int64", "9223372036854775807", new(int64(9223372036854775807))},
		{"min int64", "-9223372036854775808", new(int64(-9223372036854775808))},
		{"spaces around", "  7\n", new(int64(7))},
		{"null", "null", nil},
		{"absent", "", nil},
	}
	for _, tt := range valid {
		t.Run("valid/"+tt.name, func(t *testing.T) {
			extra := ""
			if tt.raw != "" {
				extra = `"priority":` + tt.raw
			}
			p := parseOK(t, messages.KindChat, chatWith(extra))
			switch {
			case tt.want == nil && p.Priority != nil:
				t.Errorf("Priority = %d, want nil", *p.Priority)
			case tt.want != nil && (p.Priority == nil || *p.Priority != *tt.want):
				t.Errorf("Priority = %v, want %d", p.Priority, *tt.want)
			}
		})
	}
	// Anything that is not an integer JSON number literal within int64 is a
	// 400 with param "priority"; 1e3 and 1.0 denote integers but are not
	// integer literals.
	invalid := []struct{ name, raw string }{
		{"string digit", `"1"`},
		{"fraction", "1.5"},
		{"integer with fraction", "1.0"},
		{"minus zero with fraction", "-0.0"},
		{"exponent", "1e3"},
		{"upper-case exponent", "1E3"},
		{"true", "true"},
		{"false", "false"},
		{"array", "[1]"},
		{"object", "{}"},
		{"empty string", `""`},
		{"above int64", "9223372036854775808"},
		{"below int64", "-9223372036854775809"},
		{"huge", "1" + strings.Repeat("0", 400)},
	}
	for _, tt := range invalid {
		t.Run("invalid/"+tt.name, func(t *testing.T) {
			data := chatWith(`"priority":` + tt.raw)
			p, err := parseBody(messages.KindChat, data)
			checkRejected(t, data, p, err, "priority")
		})
	}
}

func TestParseDuplicateKeyLastWins(t *testing.T) {
	tests := []struct {
		name  string
		extra string
		want  *int64
		param string // "" = valid
	}{
		{"two integers", `"priority":1,"priority":7`, new(int64(7)), ""},
		{"invalid then integer", `"priority":"x","priority":2`, new(int64(2)), ""},
		{"integer then invalid", `"priority":2,"priority":"x"`, nil, "priority"},
		{"integer then null", `"priority":2,"priority":null`, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := chatWith(tt.extra)
			p, err := parseBody(messages.KindChat, data)
			if tt.param != "" {
				checkRejected(t, data, p, err, tt.param)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Priority, tt.want) {
				t.Errorf("Priority = %v, want %v", p.Priority, tt.want)
			}
			if strings.Contains(string(p.Body), "priority") {
				t.Errorf("Body %s still has a priority", p.Body)
			}
		})
	}
	p := parseOK(t, messages.KindChat, []byte(`{"model":"a","model":"b","messages":[{}]}`))
	if p.Model != "b" {
		t.Errorf("duplicate model: Model = %q, want the last, %q", p.Model, "b")
	}
}

func TestParseStripsLLMQFields(t *testing.T) {
	tests := []struct {
		name string
		body string
	}{
		{"priority", `{"model":"gpt-4o","priority":3,"messages":[{"role":"user","content":"hi"}]}`},
		{"timeout", `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"timeout":2.5}`},
		{"both, null", `{"priority":null,"timeout":null,"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`},
		{"both, with other fields", `{
			"model": "gpt-4o",
			"messages": [{"role": "user", "content": "<b>&amp;</b> \u00e9 \ud83d\ude00"}],
			"priority": -2, "timeout": 30,
			"temperature": 0.20, "max_tokens": 100, "stream": false,
			"metadata": {"priority": 1, "timeout": 2},
			"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
			"big": 123456789012345678901234567890, "n": null, "user": ""
		}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := parseOK(t, messages.KindChat, []byte(tt.body))
			in, out := topKeys(t, []byte(tt.body)), topKeys(t, p.Body)
			for _, f := range []string{"priority", "timeout"} {
				if _, ok := out[f]; ok {
					t.Errorf("Body still has %q: %s", f, p.Body)
				}
				delete(in, f)
			}
			if got, want := slices.Sorted(maps.Keys(out)), slices.Sorted(maps.Keys(in)); !slices.Equal(got, want) {
				t.Fatalf("Body keys %v, want %v", got, want)
			}
			for k, raw := range in {
				if !sameJSON(t, raw, out[k]) {
					t.Errorf("member %q changed from %s to %s", k, raw, out[k])
				}
			}
		})
	}
}

// sameJSON reports whether two JSON texts denote the same value, keeping
// numbers exact.
func sameJSON(t *testing.T, a, b []byte) bool {
	t.Helper()
	decode := func(data []byte) any {
		d := json.NewDecoder(bytes.NewReader(data))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		return v
	}
	return reflect.DeepEqual(decode(a), decode(b))
}

func TestParseKeepsBodyWithoutLLMQFields(t *testing.T) {
	for _, body := range []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
		"{ \"messages\" : [ {\"role\":\"user\",\n\"content\":\"<&>\"} ],\t\"model\":\"gpt-4o\" , \"temperature\": 1.50, \"Priority\": 1, \"metadata\":{\"priority\":1} }\n",
		`{"model":"gpt-4o","messages":[{}],"model":"gpt-4o"}`,
	} {
		p := parseOK(t, messages.KindChat, []byte(body))
		if !bytes.Equal(p.Body, []byte(body)) {
			t.Errorf("Body changed without llmq fields:\n got %s\nwant %s", p.Body, body)
		}
	}
}

func TestParseValid(t *testing.T) {
	tests := []struct {
		name    string
		kind    messages.Kind
		body    string
		stream  bool
		timeout time.Duration
	}{
		{"chat", messages.KindChat, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`, false, 0},
		{"chat stream", messages.KindChat, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}`, true, 0},
		{"chat stream false", messages.KindChat, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":false}`, false, 0},
		{"chat stream null", messages.KindChat, `{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":null}`, false, 0},
		{"chat timeout", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"timeout":2.5}`, false, 2500 * time.Millisecond},
		{"chat timeout integer", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"timeout":30}`, false, 30 * time.Second},
		{"chat timeout exponent", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"timeout":1e2}`, false, 100 * time.Second},
		{"chat max_tokens", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"max_tokens":1,"max_completion_tokens":2147483647}`, false, 0},
		{"chat max_tokens null", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"max_tokens":null}`, false, 0},
		{"completion string", messages.KindCompletion, `{"model":"gpt-4o","prompt":"Say hi"}`, false, 0},
		{"completion empty string", messages.KindCompletion, `{"model":"gpt-4o","prompt":""}`, false, 0},
		{"completion array", messages.KindCompletion, `{"model":"gpt-4o","prompt":["a","b"],"stream":true}`, true, 0},
		{"completion spaces", messages.KindCompletion, `{ "model" : "gpt-4o" , "prompt" :  "x" }`, false, 0},
		{"completion ignores messages", messages.KindCompletion, `{"model":"gpt-4o","prompt":"x","messages":5}`, false, 0},
		{"chat ignores prompt", messages.KindChat, `{"model":"gpt-4o","messages":[{}],"prompt":5}`, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := parseOK(t, tt.kind, []byte(tt.body))
			if p.Model != "gpt-4o" || p.Stream != tt.stream || p.Timeout != tt.timeout {
				t.Errorf("parseBody = model %q stream %v timeout %v; want gpt-4o %v %v", p.Model, p.Stream, p.Timeout, tt.stream, tt.timeout)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	chat, completion := messages.KindChat, messages.KindCompletion
	tests := []struct {
		name  string
		kind  messages.Kind
		body  string
		param string
	}{
		{"empty", chat, ``, ""},
		{"whitespace", chat, " \n\t ", ""},
		{"invalid UTF-8", chat, "{\"model\":\"gpt-4o\xff\",\"messages\":[{}]}", ""},
		{"array", chat, `[]`, ""},
		{"string", chat, `"x"`, ""},
		{"number", chat, `1`, ""},
		{"null", chat, `null`, ""},
		{"truncated", chat, `{"model":"gpt-4o"`, ""},
		{"trailing data", chat, `{"model":"gpt-4o","messages":[{}]} {}`, ""},
		{"not JSON", chat, `model=gpt-4o`, ""},
		{"missing model", chat, `{"messages":[{}]}`, "model"},
		{"null model", chat, `{"model":null,"messages":[{}]}`, "model"},
		{"empty model", chat, `{"model":"","messages":[{}]}`, "model"},
		{"numeric model", chat, `{"model":4,"messages":[{}]}`, "model"},
		{"array model", chat, `{"model":["gpt-4o"],"messages":[{}]}`, "model"},
		{"missing messages", chat, `{"model":"gpt-4o"}`, "messages"},
		{"null messages", chat, `{"model":"gpt-4o","messages":null}`, "messages"},
		{"empty messages", chat, `{"model":"gpt-4o","messages":[]}`, "messages"},
		{"string messages", chat, `{"model":"gpt-4o","messages":"hi"}`, "messages"},
		{"object messages", chat, `{"model":"gpt-4o","messages":{"role":"user"}}`, "messages"},
		{"number message", chat, `{"model":"gpt-4o","messages":[1]}`, "messages"},
		{"string message", chat, `{"model":"gpt-4o","messages":["hi"]}`, "messages"},
		{"null message", chat, `{"model":"gpt-4o","messages":[{},null]}`, "messages"},
		{"array message", chat, `{"model":"gpt-4o","messages":[[]]}`, "messages"},
		{"missing prompt", completion, `{"model":"gpt-4o"}`, "prompt"},
		{"null prompt", completion, `{"model":"gpt-4o","prompt":null}`, "prompt"},
		{"number prompt", completion, `{"model":"gpt-4o","prompt":1}`, "prompt"},
		{"object prompt", completion, `{"model":"gpt-4o","prompt":{}}`, "prompt"},
		{"bool prompt", completion, `{"model":"gpt-4o","prompt":true}`, "prompt"},
		{"string stream", chat, `{"model":"gpt-4o","messages":[{}],"stream":"true"}`, "stream"},
		{"number stream", chat, `{"model":"gpt-4o","messages":[{}],"stream":1}`, "stream"},
		{"zero timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":0}`, "timeout"},
		{"negative timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":-1}`, "timeout"},
		{"string timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":"5"}`, "timeout"},
		{"bool timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":true}`, "timeout"},
		{"huge timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":1e10}`, "timeout"},
		{"overflowing timeout", chat, `{"model":"gpt-4o","messages":[{}],"timeout":1e400}`, "timeout"},
		{"zero max_tokens", chat, `{"model":"gpt-4o","messages":[{}],"max_tokens":0}`, "max_tokens"},
		{"negative max_tokens", chat, `{"model":"gpt-4o","messages":[{}],"max_tokens":-1}`, "max_tokens"},
		{"fraction max_tokens", chat, `{"model":"gpt-4o","messages":[{}],"max_tokens":1.5}`, "max_tokens"},
		{"string max_tokens", chat, `{"model":"gpt-4o","messages":[{}],"max_tokens":"10"}`, "max_tokens"},
		{"huge max_tokens", chat, `{"model":"gpt-4o","messages":[{}],"max_tokens":2147483648}`, "max_tokens"},
		{"zero max_completion_tokens", completion, `{"model":"gpt-4o","prompt":"x","max_completion_tokens":0}`, "max_completion_tokens"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := parseBody(tt.kind, []byte(tt.body))
			checkRejected(t, []byte(tt.body), p, err, tt.param)
		})
	}
}

func FuzzParseBody(f *testing.F) {
	seeds := []string{
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}`,
		`{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"priority":-3,"timeout":1.5,"stream":true}`,
		`{"model":"gpt-4o","prompt":"hi","priority":null,"timeout":null,"max_tokens":5}`,
		`{"model":"gpt-4o","prompt":["a"],"priority":1,"priority":2}`,
		`{"\u0070riority":1,"model":"m","messages":[{}]}`,
		`{"model":"m","messages":[{}],"priority":1e3}`,
		`{"model":"m","messages":[{}],"priority":9223372036854775808}`,
		`{"model":"m","messages":[{}],"timeout":1e-300}`,
		`{"model":"m","messages":[{}],"max_tokens":"10"}`,
		`{"model":"\ud800","messages":[{"content":"<&>"}],"priority":0}`,
		`{"model":"m","messages":[{}]} x`,
		`[]`, `null`, `""`, ``, " ", "\xff", `{`, `{"model":1}`,
	}
	for _, s := range seeds {
		f.Add(true, []byte(s))
		f.Add(false, []byte(s))
	}
	f.Fuzz(func(t *testing.T, chat bool, data []byte) {
		kind := messages.KindCompletion
		if chat {
			kind = messages.KindChat
		}
		in := bytes.Clone(data)
		p, err := parseBody(kind, data)
		if !bytes.Equal(in, data) {
			t.Fatalf("parseBody changed its input")
		}
		if err != nil {
			if p != nil || err.Outcome != messages.OutcomeInvalidRequest || err.HTTPStatus() != 400 {
				t.Fatalf("parseBody error %v (outcome %v) with result %v", err, err.Outcome, p)
			}
			return
		}
		if p.Model == "" {
			t.Fatalf("accepted an empty model: %s", data)
		}
		if !json.Valid(p.Body) {
			t.Fatalf("Body is not valid JSON: %q", p.Body)
		}
		out := topKeys(t, p.Body)
		for _, k := range llmqFields {
			if _, ok := out[k]; ok {
				t.Fatalf("Body has %q: %s", k, p.Body)
			}
		}
		var model string
		if err := json.Unmarshal(out["model"], &model); err != nil || model != p.Model {
			t.Fatalf("Body's model %s is not Model %q", out["model"], p.Model)
		}
		if !hasAny(topKeys(t, data), llmqFields) && !bytes.Equal(p.Body, data) {
			t.Fatalf("Body changed without llmq fields:\n got %s\nwant %s", p.Body, data)
		}
	})
}

// hasAny reports whether m has one of keys.
func hasAny(m map[string]json.RawMessage, keys []string) bool {
	return slices.ContainsFunc(keys, func(k string) bool { _, ok := m[k]; return ok })
}

func BenchmarkParseBody(b *testing.B) {
	msgs := make([]map[string]string, 0, 8)
	for i := range 8 {
		role := "user"
		if i%2 == 1 {
			role = "assistant"
		}
		msgs = append(msgs, map[string]string{"role": role, "content": strings.Repeat("Lorem ipsum dolor sit amet, consectetur. ", 5)})
	}
	body, err := json.Marshal(map[string]any{
		"model": "gpt-4o", "messages": msgs, "priority": 2, "temperature": 0.7, "max_tokens": 512, "stream": false,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := parseBody(messages.KindChat, body); err != nil {
			b.Fatal(err)
		}
	}
}

// TestParseTinyTimeoutIsNotDropped: a positive timeout under a nanosecond
// passes the "positive" check but converts to a Duration of 0, which means
// "no per-request timeout", so the request waits the server's full queue
// timeout instead of the (tiny) one it asked for. It should either be
// rejected or become a positive Duration.
func TestParseTinyTimeoutIsNotDropped(t *testing.T) {
	for _, raw := range []string{"1e-10", "0.0000000001", "5e-324"} {
		data := chatWith(`"timeout":` + raw)
		p, err := parseBody(messages.KindChat, data)
		if err != nil {
			if err.Param != "timeout" {
				t.Errorf("timeout %s rejected with param %q, want timeout", raw, err.Param)
			}
			continue
		}
		if p.Timeout <= 0 {
			t.Errorf("timeout %s accepted as Timeout %v, which means no timeout at all", raw, p.Timeout)
		}
	}
}
