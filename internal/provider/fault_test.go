package provider

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/pkg/messages"
)

// refusedURL is a loopback base URL on which nothing listens.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String() + "/v1"
	_ = ln.Close()
	return url
}

// noDNS is a client whose resolver asks a loopback port where no DNS server
// listens, so every name fails to resolve without leaving the machine.
func noDNS(t *testing.T) *http.Client {
	t.Helper()
	dead := refusedURL(t)[len("http://"):]
	dead = dead[:strings.IndexByte(dead, '/')]
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", dead)
	}}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Resolver: r}).DialContext
	return &http.Client{Transport: tr}
}

func handler(status int, contentType, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// TestFaults drives every fault of a provider through a real HTTP call and
// checks the one outcome, status and message it becomes.
func TestFaults(t *testing.T) {
	const chat = `{"model":"m","messages":[{"role":"user","content":"hi"}]}`
	const chatStream = `{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	fake := func(f fakeupstream.Fault) string {
		s := fakeupstream.New(fakeupstream.Options{})
		s.SetFault(f)
		t.Cleanup(s.Close)
		return s.URL
	}
	server := func(h http.HandlerFunc) string {
		s := httptest.NewServer(h)
		t.Cleanup(s.Close)
		return s.URL + "/v1"
	}
	tests := []struct {
		name    string
		url     string
		client  *http.Client
		stream  bool
		timeout time.Duration
		cancel  bool // the caller goes away after 50 ms
		outcome messages.Outcome
		status  int    // HTTP status the caller gets
		message string // part of the error message
		body    string // the exact error body, when it is the provider's
	}{
		{name: "refused", url: refusedURL(t), outcome: messages.OutcomeProviderUnreachable, status: 502, message: "connection refused"},
		{name: "refused stream", url: refusedURL(t), stream: true, outcome: messages.OutcomeProviderUnreachable, status: 502, message: "connection refused"},
		{name: "dns", url: "http://provider.llmq-test.invalid/v1", client: noDNS(t), outcome: messages.OutcomeProviderUnreachable, status: 502, message: "lookup provider.llmq-test.invalid"},
		{name: "tls", url: func() string {
			s := httptest.NewTLSServer(handler(200, "application/json", "{}"))
			t.Cleanup(s.Close)
			return s.URL + "/v1"
		}(), outcome: messages.OutcomeProviderUnreachable, status: 502, message: "certificate"},
		{name: "reset", url: fake(fakeupstream.FaultReset), outcome: messages.OutcomeProviderUnreachable, status: 502},
		{name: "reset stream", url: fake(fakeupstream.FaultReset), stream: true, outcome: messages.OutcomeProviderUnreachable, status: 502},
		{name: "503 html", url: server(handler(503, "text/html", "<html>down</html>")), outcome: messages.OutcomeProviderError, status: 502, message: "503 Service Unavailable"},
		{name: "500 openai body", url: server(handler(500, "application/json", `{"error":{"message":"The server had an error","type":"server_error"}}`)), outcome: messages.OutcomeProviderError, status: 502, message: "The server had an error"},
		{name: "401 passed through", url: server(handler(401, "application/json", `{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}`)), outcome: messages.OutcomeProviderError, status: 401, body: `{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}`},
		{name: "404 not json", url: server(handler(404, "text/plain", "not found")), outcome: messages.OutcomeProviderError, status: 404, message: "404 Not Found"},
		{name: "garbage", url: fake(fakeupstream.FaultGarbage), outcome: messages.OutcomeProviderBadResponse, status: 502, message: "not a JSON object"},
		{name: "empty 200", url: server(handler(200, "application/json", "")), outcome: messages.OutcomeProviderBadResponse, status: 502, message: "not a JSON object"},
		{name: "200 with an error", url: server(handler(200, "application/json", `{"error":{"message":"overloaded"}}`)), outcome: messages.OutcomeProviderError, status: 502, message: "overloaded"},
		{name: "cut body", url: fake(fakeupstream.FaultCut), outcome: messages.OutcomeProviderBadResponse, status: 502, message: "cut short"},
		{name: "hang", url: fake(fakeupstream.FaultHang), timeout: 50 * time.Millisecond, outcome: messages.OutcomeProviderTimeout, status: 504},
		{name: "hang stream", url: fake(fakeupstream.FaultHang), stream: true, timeout: 50 * time.Millisecond, outcome: messages.OutcomeProviderTimeout, status: 504},
		{name: "caller gone", url: fake(fakeupstream.FaultHang), timeout: time.Minute, cancel: true, outcome: messages.OutcomeCancelled, status: 499},
		{name: "stream cut", url: fake(fakeupstream.FaultCut), stream: true, outcome: messages.OutcomeProviderBadResponse, status: 502, message: "cut short"},
		{name: "stream without DONE", url: server(handler(200, "text/event-stream", "data: {\"choices\":[]}\n\n")), stream: true, outcome: messages.OutcomeProviderBadResponse, status: 502, message: "without [DONE]"},
		{name: "stream without events", url: server(handler(200, "text/event-stream", "data: [DONE]\n\n")), stream: true, outcome: messages.OutcomeProviderBadResponse, status: 502, message: "before any event"},
		{name: "stream not a stream", url: server(handler(200, "application/json", `{"choices":[]}`)), stream: true, outcome: messages.OutcomeProviderBadResponse, status: 502, message: "not text/event-stream"},
		{name: "stream bad event", url: server(handler(200, "text/event-stream", "data: <html>\n\ndata: [DONE]\n\n")), stream: true, outcome: messages.OutcomeProviderBadResponse, status: 502, message: "not a JSON object"},
		{name: "stream error event", url: server(handler(200, "text/event-stream", "data: {\"error\":{\"message\":\"overloaded\"}}\n\n")), stream: true, outcome: messages.OutcomeProviderError, status: 502, message: "overloaded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewOpenAI(OpenAIOptions{BaseURL: tt.url, APIKey: "k", Model: "m", Timeout: tt.timeout, HTTPClient: tt.client})
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			var err error
			if tt.stream {
				_, err = p.Stream(ctx, messages.KindChat, []byte(chatStream), func([]byte) error { return nil })
			} else {
				_, err = p.Call(ctx, messages.KindChat, []byte(chat))
			}
			if err == nil {
				t.Fatal("the call succeeded")
			}
			if got := messages.OutcomeOf(err); got != tt.outcome {
				t.Fatalf("outcome %v, want %v (error: %v)", got, tt.outcome, err)
			}
			status := tt.outcome.Status()
			var e *messages.Error
			if errors.As(err, &e) {
				status = e.HTTPStatus()
				if tt.body != "" && string(messages.ErrorBody(e)) != tt.body {
					t.Errorf("body %s, want the provider's %s", messages.ErrorBody(e), tt.body)
				}
			}
			if status != tt.status {
				t.Errorf("status %d, want %d", status, tt.status)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error %q does not say %q", err, tt.message)
			}
		})
	}
}

// TestRetryAfterKept checks that a 429's Retry-After reaches the policy.
func TestRetryAfterKept(t *testing.T) {
	s := fakeupstream.New(fakeupstream.Options{})
	defer s.Close()
	s.FailNext(1, http.StatusTooManyRequests, "7")
	_, err := NewOpenAI(OpenAIOptions{BaseURL: s.URL, APIKey: "k", Model: "m"}).Call(t.Context(), messages.KindChat, []byte(`{"messages":[]}`))
	var e *messages.Error
	if !errors.As(err, &e) || e.ProviderStatus != 429 || e.RetryAfter != "7" {
		t.Fatalf("error %#v, want provider status 429 with Retry-After 7", err)
	}
}
