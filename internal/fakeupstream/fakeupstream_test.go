package fakeupstream

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func post(ctx context.Context, t *testing.T, url, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer test-key")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestChat(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx := testCtx(t)
	if !strings.HasSuffix(s.URL, "/v1") || !strings.HasPrefix(s.URL, "http://127.0.0.1:") {
		t.Fatalf("URL = %q", s.URL)
	}
	body := `{"model":"m1","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi "},{"type":"text","text":"there"}]}]}`
	resp, b := post(ctx, t, s.URL+"/chat/completions", body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content-type %q: %s", resp.StatusCode, resp.Header.Get("Content-Type"), b)
	}
	var got struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Created int64  `json:"created"`
		Model   string `json:"model"`
		Choices []struct {
			Index   int `json:"index"`
			Message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "chatcmpl-fake-1" || got.Object != "chat.completion" || got.Model != "m1" || got.Created == 0 {
		t.Fatalf("bad response: %s", b)
	}
	if len(got.Choices) != 1 || got.Choices[0].Message.Role != "assistant" || got.Choices[0].Message.Content != DefaultReply || got.Choices[0].FinishReason != "stop" {
		t.Fatalf("bad choices: %s", b)
	}
	// "be brief" + "hi there" = 16 chars -> 4 tokens; reply has 5 words.
	if got.Usage.PromptTokens != 4 || got.Usage.CompletionTokens != 5 || got.Usage.TotalTokens != 9 {
		t.Fatalf("bad usage: %+v", got.Usage)
	}

	reqs := s.Requests()
	if len(reqs) != 1 || s.Count() != 1 {
		t.Fatalf("recorded %d", len(reqs))
	}
	r := reqs[0]
	if r.Seq != 1 || r.Path != "/v1/chat/completions" || r.Model != "m1" || r.Stream || r.Content != "hi there" ||
		r.Status != 200 || r.Cancelled || r.Finished.IsZero() || string(r.Body) != body ||
		r.Header.Get("Authorization") != "Bearer test-key" {
		t.Fatalf("bad record: %+v", r)
	}
	if s.InFlight() != 0 || s.MaxInFlight() != 1 {
		t.Fatalf("inflight %d max %d", s.InFlight(), s.MaxInFlight())
	}
}

func TestCompletion(t *testing.T) {
	s := New(Options{Reply: "one two three"})
	defer s.Close()
	ctx := testCtx(t)
	// Path without /v1 is accepted too.
	url := strings.TrimSuffix(s.URL, "/v1") + "/completions"
	resp, b := post(ctx, t, url, `{"model":"m2","prompt":["say something","ignored"]}`)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var got struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.ID != "cmpl-fake-1" || got.Object != "text_completion" || got.Model != "m2" ||
		len(got.Choices) != 1 || got.Choices[0].Text != "one two three" || got.Choices[0].FinishReason != "stop" {
		t.Fatalf("bad response: %s", b)
	}
	if got.Usage.PromptTokens != 4 || got.Usage.CompletionTokens != 3 || got.Usage.TotalTokens != 7 {
		t.Fatalf("bad usage: %+v", got.Usage)
	}
	if r := s.Requests()[0]; r.Content != "say something" || r.Path != "/completions" {
		t.Fatalf("bad record: %+v", r)
	}
}

func TestErrors(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx := testCtx(t)
	for _, tc := range []struct {
		path, body string
		status     int
	}{
		{"/models", `{}`, 404},
		{"/chat/completions", `{not json`, 400},
	} {
		resp, b := post(ctx, t, s.URL+tc.path, tc.body)
		var e struct {
			Error struct {
				Message string  `json:"message"`
				Type    string  `json:"type"`
				Param   *string `json:"param"`
			} `json:"error"`
		}
		if resp.StatusCode != tc.status || json.Unmarshal(b, &e) != nil || e.Error.Message == "" || e.Error.Type == "" {
			t.Fatalf("%s: status %d body %s", tc.path, resp.StatusCode, b)
		}
	}
	if s.Count() != 2 {
		t.Fatalf("count %d", s.Count())
	}
}

// readStream returns the data payloads of an SSE response.
func readStream(t *testing.T, resp *http.Response) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		d, ok := strings.CutPrefix(line, "data: ")
		if !ok {
			t.Fatalf("unexpected line %q", line)
		}
		out = append(out, d)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestStreamChat(t *testing.T) {
	s := New(Options{Reply: "abcdefghij", StreamChunks: 3, ChunkGap: time.Millisecond})
	defer s.Close()
	ctx := testCtx(t)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions",
		strings.NewReader(`{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hey"}]}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.Header.Get("Content-Type") != "text/event-stream" || resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("headers %v", resp.Header)
	}
	data := readStream(t, resp)
	// 3 content chunks, finish chunk, usage chunk, [DONE].
	if len(data) != 6 || data[5] != "[DONE]" {
		t.Fatalf("got %d events: %q", len(data), data)
	}
	type chunk struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Delta struct {
				Role    string  `json:"role"`
				Content *string `json:"content"`
			} `json:"delta"`
			FinishReason *string `json:"finish_reason"`
		} `json:"choices"`
		Usage *struct {
			TotalTokens int `json:"total_tokens"`
		} `json:"usage"`
	}
	var text strings.Builder
	wantPieces := []string{"abcd", "efg", "hij"}
	for i := range 3 {
		var c chunk
		if err := json.Unmarshal([]byte(data[i]), &c); err != nil {
			t.Fatal(err)
		}
		if c.ID != "chatcmpl-fake-1" || c.Object != "chat.completion.chunk" || c.Model != "m" || len(c.Choices) != 1 ||
			c.Choices[0].FinishReason != nil || c.Choices[0].Delta.Content == nil || *c.Choices[0].Delta.Content != wantPieces[i] {
			t.Fatalf("chunk %d: %s", i, data[i])
		}
		if (i == 0) != (c.Choices[0].Delta.Role == "assistant") {
			t.Fatalf("role on chunk %d: %s", i, data[i])
		}
		text.WriteString(*c.Choices[0].Delta.Content)
	}
	if text.String() != "abcdefghij" {
		t.Fatalf("text %q", text.String())
	}
	var fin chunk
	if err := json.Unmarshal([]byte(data[3]), &fin); err != nil {
		t.Fatal(err)
	}
	if len(fin.Choices) != 1 || fin.Choices[0].FinishReason == nil || *fin.Choices[0].FinishReason != "stop" || fin.Choices[0].Delta.Content != nil {
		t.Fatalf("final chunk: %s", data[3])
	}
	var uc chunk
	if err := json.Unmarshal([]byte(data[4]), &uc); err != nil {
		t.Fatal(err)
	}
	if len(uc.Choices) != 0 || uc.Usage == nil || uc.Usage.TotalTokens != 2 {
		t.Fatalf("usage chunk: %s", data[4])
	}
	if r := s.Requests()[0]; !r.Stream || r.Status != 200 || r.Cancelled {
		t.Fatalf("record %+v", r)
	}
}

func TestStreamCompletionDefaultChunks(t *testing.T) {
	s := New(Options{Reply: "ab"}) // shorter than 4 chunks: empty pieces allowed
	defer s.Close()
	ctx := testCtx(t)
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/completions",
		strings.NewReader(`{"model":"m","stream":true,"prompt":"p"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data := readStream(t, resp)
	// 4 content chunks, finish chunk, [DONE] (no usage chunk).
	if len(data) != 6 || data[5] != "[DONE]" {
		t.Fatalf("got %d events: %q", len(data), data)
	}
	var text strings.Builder
	for i := range 4 {
		var c struct {
			Object  string `json:"object"`
			Choices []struct {
				Text string `json:"text"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(data[i]), &c); err != nil || c.Object != "text_completion" || len(c.Choices) != 1 {
			t.Fatalf("chunk %d: %s", i, data[i])
		}
		text.WriteString(c.Choices[0].Text)
	}
	if text.String() != "ab" {
		t.Fatalf("text %q", text.String())
	}
}

func TestHoldRelease(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx := testCtx(t)
	s.Hold()
	const n = 3
	done := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions",
				strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}]}`))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			done <- resp.StatusCode
		}()
	}
	if err := s.WaitForRequests(ctx, n); err != nil {
		t.Fatal(err)
	}
	if s.InFlight() != n || s.MaxInFlight() != n {
		t.Fatalf("inflight %d max %d", s.InFlight(), s.MaxInFlight())
	}
	select {
	case <-done:
		t.Fatal("held request answered before Release")
	case <-time.After(20 * time.Millisecond):
	}
	released := time.Now()
	s.Release()
	wg.Wait()
	close(done)
	for st := range done {
		if st != 200 {
			t.Fatalf("status %d", st)
		}
	}
	for i, r := range s.Requests() {
		if r.Seq != i+1 || r.Finished.Before(released) || r.Cancelled {
			t.Fatalf("record %d: %+v", i, r)
		}
	}
	// After Release, new requests are not held.
	if resp, _ := post(ctx, t, s.URL+"/chat/completions", `{"model":"m","messages":[]}`); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}

	s.Reset()
	if s.Count() != 0 || s.MaxInFlight() != 0 {
		t.Fatalf("after Reset: count %d max %d", s.Count(), s.MaxInFlight())
	}
	post(ctx, t, s.URL+"/chat/completions", `{"model":"m","messages":[]}`)
	if r := s.Requests(); len(r) != 1 || r[0].Seq != 1 {
		t.Fatalf("after Reset: %+v", r)
	}
}

func TestFailNext(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx := testCtx(t)
	s.FailNext(2, http.StatusTooManyRequests, "7")
	body := `{"model":"m","messages":[{"role":"user","content":"x"}]}`
	for range 2 {
		resp, b := post(ctx, t, s.URL+"/chat/completions", body)
		var e struct {
			Error struct {
				Message string          `json:"message"`
				Type    string          `json:"type"`
				Param   json.RawMessage `json:"param"`
				Code    string          `json:"code"`
			} `json:"error"`
		}
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "7" || e.Error.Message == "" ||
			e.Error.Type == "" || e.Error.Code == "" || string(e.Error.Param) != "null" {
			t.Fatalf("status %d retry-after %q body %s", resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
	}
	resp, _ := post(ctx, t, s.URL+"/chat/completions", body)
	if resp.StatusCode != 200 || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("third request: status %d", resp.StatusCode)
	}
	s.FailNext(1, http.StatusServiceUnavailable, "")
	resp, _ = post(ctx, t, s.URL+"/chat/completions", body)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("status %d retry-after %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	reqs := s.Requests()
	want := []int{429, 429, 200, 503}
	for i, r := range reqs {
		if r.Status != want[i] {
			t.Fatalf("request %d status %d, want %d", i, r.Status, want[i])
		}
	}
}

func TestCancelDuringHold(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx := testCtx(t)
	s.Hold()
	defer s.Release()
	reqCtx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(reqCtx, http.MethodPost, s.URL+"/chat/completions",
			strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"x"}]}`))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	if err := s.WaitForRequests(ctx, 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("client error %v", err)
	}
	if err := s.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	r := s.Requests()[0]
	if !r.Cancelled || r.Finished.IsZero() || r.Status != 0 {
		t.Fatalf("record %+v", r)
	}
}

func TestLatencyCancelled(t *testing.T) {
	s := New(Options{Latency: time.Minute})
	defer s.Close()
	ctx, cancel := context.WithTimeout(testCtx(t), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/completions", strings.NewReader(`{"model":"m","prompt":"x"}`))
	if _, err := http.DefaultClient.Do(req); err == nil {
		t.Fatal("expected timeout")
	}
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if r := s.Requests()[0]; !r.Cancelled {
		t.Fatalf("record %+v", r)
	}
	s.SetLatency(0)
	if resp, _ := post(testCtx(t), t, s.URL+"/completions", `{"model":"m","prompt":"x"}`); resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

func TestWaitForRequestsTimeout(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := s.WaitForRequests(ctx, 1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v", err)
	}
}

func TestCloseWhileHeld(t *testing.T) {
	s := New(Options{})
	ctx := testCtx(t)
	s.Hold()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions", strings.NewReader(`{"model":"m"}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	if err := s.WaitForRequests(ctx, 1); err != nil {
		t.Fatal(err)
	}
	s.Close() // must not hang
	s.Close()
}

func TestSplitEven(t *testing.T) {
	got := splitEven("héllo", 2)
	if len(got) != 2 || got[0] != "hél" || got[1] != "lo" {
		t.Fatalf("%q", got)
	}
}

func TestFaultRecorded(t *testing.T) {
	s := New(Options{})
	defer s.Close()
	body := `{"model":"m","messages":[{"role":"user","content":"x"}]}`
	for _, f := range []Fault{FaultReset, FaultGarbage, FaultCut, FaultHang, FaultNone} {
		s.SetFault(f)
		ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, s.URL+"/chat/completions", strings.NewReader(body))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		cancel()
	}
	s.SetFault(FaultGarbage)
	s.FailNext(1, http.StatusServiceUnavailable, "") // takes precedence: no fault applied
	post(testCtx(t), t, s.URL+"/chat/completions", body)
	if err := s.WaitIdle(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		fault  Fault
		status int
	}{{FaultReset, 0}, {FaultGarbage, 200}, {FaultCut, 200}, {FaultHang, 0}, {FaultNone, 200}, {FaultNone, 503}}
	reqs := s.Requests()
	if len(reqs) != len(want) {
		t.Fatalf("%d requests recorded, want %d", len(reqs), len(want))
	}
	for i, w := range want {
		if reqs[i].Fault != w.fault || reqs[i].Status != w.status {
			t.Errorf("request %d: fault %s status %d, want %s %d", i, reqs[i].Fault, reqs[i].Status, w.fault, w.status)
		}
	}
	if got := FaultCut.String(); got != "cut" {
		t.Errorf("FaultCut.String() = %q", got)
	}
}
