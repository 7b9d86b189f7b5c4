package batch

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func chatLine(id string) string {
	return fmt.Sprintf(`{"custom_id":%q,"method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[{"role":"user","content":"hi"}]}}`, id)
}

// check feeds file to a checker in pieces of size chunk, as an upload
// arrives, and returns what it found.
func check(file string, chunk, maxLines, maxLine int, maxBytes int64) (int, string, error) {
	c := newChecker(maxLines, maxLine, maxBytes)
	for len(file) > 0 {
		n := min(chunk, len(file))
		if _, err := c.Write([]byte(file[:n])); err != nil {
			return 0, "", err
		}
		file = file[n:]
	}
	return c.finish()
}

func TestChecker(t *testing.T) {
	good := chatLine("a") + "\n" + chatLine("b") + "\r\n" + chatLine("c")
	for _, tc := range []struct {
		name      string
		file      string
		maxLines  int
		maxLine   int
		maxBytes  int64
		lines     int
		errLine   int
		errCode   string
		tooLarge  bool
		errSubstr string
	}{
		{name: "good", file: good, lines: 3},
		{name: "final newline", file: good + "\n", lines: 3},
		{name: "blank then more", file: chatLine("a") + "\n\n" + chatLine("b"), errLine: 2, errCode: "invalid_jsonl"},
		{name: "empty", file: "\n", errLine: 1, errCode: "empty_file"},
		{name: "duplicate", file: chatLine("a") + "\n" + chatLine("a"), errLine: 2, errCode: "duplicate_custom_id", errSubstr: "also used by line 1"},
		{name: "not json", file: chatLine("a") + "\n{oops", errLine: 2, errCode: "invalid_json_line"},
		{name: "array", file: "[1]", errLine: 1, errCode: "invalid_json_line"},
		{name: "get", file: strings.Replace(chatLine("a"), "POST", "GET", 1), errLine: 1, errCode: "invalid_method"},
		{name: "embeddings", file: strings.Replace(chatLine("a"), "/v1/chat/completions", "/v1/embeddings", 1), errLine: 1, errCode: "invalid_url"},
		{name: "two urls", file: chatLine("a") + "\n" + strings.Replace(chatLine("b"), "/v1/chat/completions", "/v1/completions", 1), errLine: 2, errCode: "mismatched_url"},
		{name: "body string", file: `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":"x"}`, errLine: 1, errCode: "invalid_body"},
		{name: "no model", file: `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"messages":[]}}`, errLine: 1, errCode: "missing_model"},
		{name: "stream", file: `{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"m","stream":true}}`, errLine: 1, errCode: "invalid_body"},
		{name: "too many lines", file: good, maxLines: 2, errLine: 3, errCode: "too_many_lines"},
		{name: "line too long", file: chatLine("a") + "\n" + chatLine(strings.Repeat("x", 200)), maxLine: 150, errLine: 2, errCode: "line_too_long"},
		{name: "file too large", file: good, maxBytes: 100, tooLarge: true},
	} {
		for _, chunk := range []int{1, 7, 1 << 20} {
			t.Run(fmt.Sprintf("%s/chunk %d", tc.name, chunk), func(t *testing.T) {
				maxLines, maxLine, maxBytes := tc.maxLines, tc.maxLine, tc.maxBytes
				if maxLines == 0 {
					maxLines = 100
				}
				if maxLine == 0 {
					maxLine = 1 << 20
				}
				if maxBytes == 0 {
					maxBytes = 1 << 30
				}
				lines, url, err := check(tc.file, chunk, maxLines, maxLine, maxBytes)
				var le *LineError
				switch {
				case tc.tooLarge:
					if !errors.Is(err, errTooLarge) {
						t.Fatalf("err %v, want errTooLarge", err)
					}
				case tc.errLine != 0:
					if !errors.As(err, &le) || le.Line != tc.errLine || le.Code != tc.errCode || !strings.Contains(le.Error(), tc.errSubstr) {
						t.Fatalf("err %v (%#v), want line %d code %s", err, le, tc.errLine, tc.errCode)
					}
					if !strings.HasPrefix(le.Error(), fmt.Sprintf("line %d: ", tc.errLine)) {
						t.Errorf("message %q does not name the line", le.Error())
					}
				default:
					if err != nil || lines != tc.lines || url != EndpointChat {
						t.Fatalf("got %d lines, url %q, err %v; want %d lines", lines, url, err, tc.lines)
					}
				}
			})
		}
	}
}

func TestLineReader(t *testing.T) {
	rd := newLineReader(strings.NewReader(chatLine("a") + "\r\n" + chatLine("b") + "\n\n"))
	var ids []string
	for {
		l, err := rd.read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, *l.CustomID)
	}
	if fmt.Sprint(ids) != "[a b]" || rd.next != 2 {
		t.Fatalf("read %v, next %d", ids, rd.next)
	}
}
