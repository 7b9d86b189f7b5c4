package batch

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/tidwall/gjson"
)

// The endpoints a batch may run, and the kind of request each is.
const (
	EndpointChat       = "/v1/chat/completions"
	EndpointCompletion = "/v1/completions"
)

// LineError is a problem with one line of an input file. Line counts from 1.
type LineError struct {
	Line    int
	Code    string
	Message string
}

func (e *LineError) Error() string { return "line " + strconv.Itoa(e.Line) + ": " + e.Message }

// errTooLarge ends an upload over the size limit.
var errTooLarge = errors.New("file too large")

// line is one request line of an input file.
type line struct {
	CustomID *string         `json:"custom_id"`
	Method   *string         `json:"method"`
	URL      *string         `json:"url"`
	Body     json.RawMessage `json:"body"`
}

// checker validates an input file as it streams by (it is the writer side
// of an io.TeeReader in front of the object store): JSONL, each line an
// object with a unique non-empty custom_id, method POST, the same url on
// every line (one of the endpoints) and a JSON object body with a model and
// without "stream": true. It keeps the custom ids (for uniqueness) and at
// most one partial line, never the file. A blank line ends nothing: only a
// final newline may follow the last line.
type checker struct {
	maxLines int
	maxLine  int   // bytes of one line
	maxBytes int64 // of the whole file

	bytes   int64
	lines   int
	blank   int // line number of a blank line seen, 0 = none
	url     string
	ids     map[string]int // custom_id → line
	partial []byte
}

func newChecker(maxLines, maxLine int, maxBytes int64) *checker {
	return &checker{maxLines: maxLines, maxLine: maxLine, maxBytes: maxBytes, ids: make(map[string]int)}
}

// Write takes the next bytes of the file; the first problem is its error.
func (c *checker) Write(p []byte) (int, error) {
	n := len(p)
	c.bytes += int64(n)
	if c.bytes > c.maxBytes {
		return 0, errTooLarge
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if len(c.partial)+len(p) > c.maxLine {
				return 0, &LineError{Line: c.lines + 1, Code: "line_too_long", Message: fmt.Sprintf("the line is longer than %d bytes", c.maxLine)}
			}
			c.partial = append(c.partial, p...)
			return n, nil
		}
		ln := p[:i]
		if len(c.partial) > 0 {
			if len(c.partial)+i > c.maxLine {
				return 0, &LineError{Line: c.lines + 1, Code: "line_too_long", Message: fmt.Sprintf("the line is longer than %d bytes", c.maxLine)}
			}
			ln = append(c.partial, ln...)
			c.partial = c.partial[:0]
		}
		if err := c.line(ln); err != nil {
			return 0, err
		}
		p = p[i+1:]
	}
	return n, nil
}

// finish checks the last line (without a final newline) and the file as a
// whole; it returns the number of request lines and their url.
func (c *checker) finish() (int, string, error) {
	if len(c.partial) > 0 {
		if err := c.line(c.partial); err != nil {
			return 0, "", err
		}
	}
	if c.lines == 0 {
		return 0, "", &LineError{Line: 1, Code: "empty_file", Message: "the file has no request lines"}
	}
	return c.lines, c.url, nil
}

func (c *checker) line(ln []byte) error {
	ln = bytes.TrimSuffix(ln, []byte{'\r'})
	if len(bytes.TrimSpace(ln)) == 0 {
		if c.blank == 0 {
			c.blank = c.lines + 1
		}
		return nil
	}
	c.lines++
	no := c.lines
	if c.blank != 0 {
		return &LineError{Line: c.blank, Code: "invalid_jsonl", Message: "the line is empty; every line must be a request"}
	}
	if no > c.maxLines {
		return &LineError{Line: no, Code: "too_many_lines", Message: fmt.Sprintf("a batch file may have at most %d lines", c.maxLines)}
	}
	l, err := parseLine(ln, no)
	if err != nil {
		return err
	}
	if prev, dup := c.ids[*l.CustomID]; dup {
		return &LineError{Line: no, Code: "duplicate_custom_id", Message: fmt.Sprintf("custom_id %q is also used by line %d; custom_id must be unique", *l.CustomID, prev)}
	}
	c.ids[*l.CustomID] = no
	switch {
	case c.url == "":
		c.url = *l.URL
	case *l.URL != c.url:
		return &LineError{Line: no, Code: "mismatched_url", Message: fmt.Sprintf("url is %q but line 1 has %q; every line of a batch must use the same url", *l.URL, c.url)}
	}
	return nil
}

// parseLine decodes and checks one line (number no).
func parseLine(ln []byte, no int) (*line, error) {
	bad := func(code, format string, args ...any) error {
		return &LineError{Line: no, Code: code, Message: fmt.Sprintf(format, args...)}
	}
	trimmed := bytes.TrimLeft(ln, " \t")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, bad("invalid_json_line", "the line is not a JSON object")
	}
	var l line
	if err := json.Unmarshal(ln, &l); err != nil {
		return nil, bad("invalid_json_line", "the line is not valid JSON: %v", err)
	}
	switch {
	case l.CustomID == nil || *l.CustomID == "":
		return nil, bad("missing_custom_id", "custom_id must be a non-empty string")
	case l.Method == nil || *l.Method != "POST":
		return nil, bad("invalid_method", "method must be \"POST\"")
	case l.URL == nil:
		return nil, bad("missing_url", "url is required")
	case *l.URL != EndpointChat && *l.URL != EndpointCompletion:
		return nil, bad("invalid_url", "url must be %q or %q, got %q", EndpointChat, EndpointCompletion, *l.URL)
	}
	body := bytes.TrimLeft(l.Body, " \t")
	if len(body) == 0 || body[0] != '{' {
		return nil, bad("invalid_body", "body must be a JSON object")
	}
	if m := gjson.GetBytes(body, "model"); m.Type != gjson.String || m.Str == "" {
		return nil, bad("missing_model", "body.model must be a non-empty string")
	}
	if gjson.GetBytes(body, "stream").Type == gjson.True {
		return nil, bad("invalid_body", "body.stream must not be true: a batch line is not streamed")
	}
	l.Body = body
	return &l, nil
}

// lineReader reads the request lines of a stored, valid input file one at
// a time.
type lineReader struct {
	rd   *bufio.Reader
	next int // index (from 0) of the next request line
}

func newLineReader(r io.Reader) *lineReader { return &lineReader{rd: bufio.NewReaderSize(r, 64<<10)} }

// read returns the next request line, io.EOF after the last.
func (r *lineReader) read() (*line, error) {
	for {
		ln, err := r.rd.ReadBytes('\n')
		if len(bytes.TrimSpace(ln)) > 0 {
			l, perr := parseLine(bytes.TrimRight(ln, "\r\n"), r.next+1)
			if perr != nil {
				return nil, perr
			}
			r.next++
			return l, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
