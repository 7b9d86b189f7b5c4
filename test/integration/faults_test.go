package integration

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// A provider fault, as a deployment that has it: a fake upstream that
// misbehaves, or an address that cannot answer at all.
type faultCase struct {
	name string
	// start returns the deployment's api_base and, when the upstream can
	// count them, a function that returns the calls it received.
	start func(t *testing.T) (apiBase string, arrivals func() int)
	code  string // the error code the caller gets
	// status is what the caller gets without a fallback.
	status int
	// cutStream: a stream relays its first event before the fault, so the
	// caller gets 200, that event and an error event; it is not retried.
	cutStream bool
	// timeout is the deployment's timeout, in seconds (0: 30).
	timeout float64
}

func faultyFake(f fakeupstream.Fault, failStatus int) func(t *testing.T) (string, func() int) {
	return func(t *testing.T) (string, func() int) {
		fake := newFake(t)
		fake.SetFault(f)
		if failStatus != 0 {
			fake.FailNext(1<<20, failStatus, "")
		}
		return fake.URL, fake.Count
	}
}

var faultCases = []faultCase{
	{name: "refused", code: "provider_unreachable", status: 502, start: func(t *testing.T) (string, func() int) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_ = ln.Close() // nothing listens there any more
		return "http://" + ln.Addr().String() + "/v1", nil
	}},
	{name: "tls", code: "provider_unreachable", status: 502, start: func(t *testing.T) (string, func() int) {
		// A certificate the worker does not trust: the handshake fails.
		s := httptest.NewUnstartedServer(http.NotFoundHandler())
		s.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake errors are the point
		s.StartTLS()
		t.Cleanup(s.Close)
		return s.URL + "/v1", nil
	}},
	{name: "reset", code: "provider_unreachable", status: 502, start: faultyFake(fakeupstream.FaultReset, 0)},
	{name: "5xx", code: "provider_error", status: 502, start: faultyFake(fakeupstream.FaultNone, http.StatusServiceUnavailable)},
	{name: "hang", code: "provider_timeout", status: 504, timeout: 0.3, start: faultyFake(fakeupstream.FaultHang, 0)},
	{name: "garbage", code: "provider_bad_response", status: 502, start: faultyFake(fakeupstream.FaultGarbage, 0)},
	{name: "cut", code: "provider_bad_response", status: 502, cutStream: true, start: faultyFake(fakeupstream.FaultCut, 0)},
}

// faultKinds are the four ways of asking: chat and text completions,
// streaming and not.
var faultKinds = []struct {
	name   string
	path   string
	stream bool
}{
	{"chat", "/v1/chat/completions", false},
	{"chat stream", "/v1/chat/completions", true},
	{"completion", "/v1/completions", false},
	{"completion stream", "/v1/completions", true},
}

const faultRetries = 2

// TestProviderFaults drives every provider fault through the gateway, for
// chat and text completions, streaming and not: the caller gets the fault's
// status and error code (never a 200 it was not served), the deployment saw
// 1 + num_retries calls, and a group with a fallback is answered by its
// fallback, which x-llmq-deployment names. A stream cut after its first
// event ends with an error event and no [DONE], and is not tried again.
func TestProviderFaults(t *testing.T) {
	backup := newFake(t)
	models := []map[string]any{{
		"model_name":     "backup",
		"litellm_params": map[string]any{"model": "openai/backup-upstream", "api_base": backup.URL, "api_key": "k"},
		"model_info":     map[string]any{"id": "backup-0"},
	}}
	var fallbacks []map[string][]string
	arrivals := map[string]func() int{}
	for _, fc := range faultCases {
		for _, withFallback := range []bool{false, true} {
			group := "nofallback-" + fc.name
			if withFallback {
				group = "fallback-" + fc.name
				fallbacks = append(fallbacks, map[string][]string{group: {"backup"}})
			}
			base, count := fc.start(t)
			arrivals[group] = count
			timeout := fc.timeout
			if timeout == 0 {
				timeout = 30
			}
			models = append(models, map[string]any{
				"model_name":     group,
				"litellm_params": map[string]any{"model": "openai/" + group, "api_base": base, "api_key": "k", "timeout": timeout},
				"model_info":     map[string]any{"id": group + "-0"},
			})
		}
	}
	cfg := writeYAMLConfig(t, map[string]any{
		"model_list": models,
		"router_settings": map[string]any{
			"num_retries": faultRetries,
			"retry_after": 0.01,
			// Every call here fails: no cooldown may change the counts.
			"allowed_fails": 1000,
			"fallbacks":     fallbacks,
		},
	})
	g := startEmbeddedGateway(t, cfg, 8)

	var backupMu sync.Mutex // the fallback cases share the backup upstream
	for _, fc := range faultCases {
		for _, withFallback := range []bool{false, true} {
			group := "nofallback-" + fc.name
			if withFallback {
				group = "fallback-" + fc.name
			}
			t.Run(group, func(t *testing.T) {
				t.Parallel()
				total := 0 // calls the deployment should have seen so far
				for _, k := range faultKinds {
					body := chatBody(group, "fault "+k.name)
					if k.path == "/v1/completions" {
						body = completionBody(group, "fault "+k.name)
					}
					if k.stream {
						body = body[:len(body)-1] + `,"stream":true}`
					}
					cut := fc.cutStream && k.stream
					if withFallback && !cut {
						backupMu.Lock()
					}
					before := backup.Count()
					r := mustPost(t, g.URL+k.path, "", body)
					after := backup.Count()
					if withFallback && !cut {
						backupMu.Unlock()
					}
					switch {
					case cut:
						checkCutStream(t, k.name, r, fc.code)
					case withFallback:
						if r.Status != http.StatusOK || r.Header.Get("x-llmq-deployment") != "backup-0" {
							t.Errorf("%s: status %d, x-llmq-deployment %q; want 200 from backup-0: %s", k.name, r.Status, r.Header.Get("x-llmq-deployment"), r)
						}
						if after != before+1 {
							t.Errorf("%s: the fallback upstream saw %d calls, want 1", k.name, after-before)
						}
						if k.stream && !strings.HasSuffix(string(r.Body), "data: [DONE]\n\n") {
							t.Errorf("%s: the fallback's stream does not end with [DONE]: %s", k.name, r.Body)
						}
					default:
						if r.Status != fc.status || relErrorCode(r.Body) != fc.code {
							t.Errorf("%s: status %d code %q, want %d %q: %s", k.name, r.Status, relErrorCode(r.Body), fc.status, fc.code, r)
						}
					}
					calls := 1 + faultRetries
					if cut {
						calls = 1
					}
					total += calls
					if count := arrivals[group]; count != nil {
						if got := count(); got != total {
							t.Errorf("%s: the deployment saw %d calls in all, want %d (%d for this request)", k.name, got, total, calls)
						}
					}
					metric := relMetric(t, g.URL+"/metrics", "llmq_provider_request_duration_seconds_count",
						fmt.Sprintf(`deployment="%s-0"`, group), fmt.Sprintf(`outcome="%s"`, fc.code))
					if want := float64(total); metric != want {
						t.Errorf("%s: llmq_provider_request_duration_seconds_count{outcome=%q} = %v, want %v", k.name, fc.code, metric, want)
					}
				}
			})
		}
	}
}

// checkCutStream checks a stream whose provider broke after the first
// event: 200 with that event, then an error event with code, and no [DONE].
func checkCutStream(t *testing.T, kind string, r *result, code string) {
	t.Helper()
	events := strings.Split(strings.TrimSpace(string(r.Body)), "\n\n")
	if r.Status != http.StatusOK || len(events) != 2 {
		t.Errorf("%s: status %d with %d events, want 200 with the first event and an error: %s", kind, r.Status, len(events), r)
		return
	}
	if last := events[len(events)-1]; !strings.HasPrefix(last, `data: {"error":`) || relErrorCode([]byte(last)) != code {
		t.Errorf("%s: the stream ends with %q, want an error event with code %q", kind, last, code)
	}
	if strings.Contains(string(r.Body), "[DONE]") {
		t.Errorf("%s: a broken stream sent [DONE]: %s", kind, r.Body)
	}
}

// TestFaultsCountTowardCooldown checks which faults count toward
// allowed_fails: a deployment that cannot be reached, and one whose
// streams break after their first event, are cooled down; one that answers
// 401 is not (the fault is the key's, not the deployment's).
func TestFaultsCountTowardCooldown(t *testing.T) {
	refused, _ := faultCases[0].start(t)
	cut := newFake(t)
	cut.SetFault(fakeupstream.FaultCut)
	denied := newFake(t)
	denied.FailNext(1<<20, http.StatusUnauthorized, "")
	deployment := func(group, base string) map[string]any {
		return map[string]any{
			"model_name":     group,
			"litellm_params": map[string]any{"model": "openai/" + group, "api_base": base, "api_key": "k"},
			"model_info":     map[string]any{"id": group + "-0"},
		}
	}
	cfg := writeYAMLConfig(t, map[string]any{
		"model_list": []map[string]any{deployment("refused", refused), deployment("cut", cut.URL), deployment("denied", denied.URL)},
		"router_settings": map[string]any{
			"num_retries": 1, "retry_after": 0.01,
			"allowed_fails": 1, // a second failure within a minute cools the deployment down
			"cooldown_time": 60,
		},
	})
	g := startEmbeddedGateway(t, cfg, 4)
	cooldowns := func(group string) float64 {
		return relMetric(t, g.URL+"/metrics", "llmq_deployment_cooldowns_total", `deployment="`+group+`-0"`, `reason="failures"`)
	}

	if r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("refused", "hi")); r.Status != http.StatusBadGateway {
		t.Errorf("refused: %s", r)
	}
	if n := cooldowns("refused"); n != 1 {
		t.Errorf("refused: %v cooldowns after two failed calls with allowed_fails 1, want 1", n)
	}
	for range 2 { // a broken stream is not retried: two requests, two failures
		r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("cut", "hi", `"stream":true`))
		checkCutStream(t, "cut", r, "provider_bad_response")
	}
	if n := cooldowns("cut"); n != 1 {
		t.Errorf("cut: %v cooldowns after two broken streams with allowed_fails 1, want 1", n)
	}
	for range 3 {
		if r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("denied", "hi")); r.Status != http.StatusUnauthorized {
			t.Errorf("denied: %s", r)
		}
	}
	if n := cooldowns("denied"); n != -1 {
		t.Errorf("denied: %v cooldowns after three 401 answers, want none", n)
	}
}

// TestQueueDeadlineAfterPickup checks that the queue deadline binds the
// waits of a request a worker already picked up: one whose deployment
// answered 429 and cools down for a minute ends with 408 at its deadline,
// and one whose retries back off past its deadline ends with its last fault
// then, not after the backoff.
func TestQueueDeadlineAfterPickup(t *testing.T) {
	limited := newFake(t)
	limited.FailNext(1, http.StatusTooManyRequests, "60")
	refused, _ := faultCases[0].start(t)
	cfg := writeYAMLConfig(t, map[string]any{
		"model_list": []map[string]any{
			{"model_name": "limited", "litellm_params": map[string]any{"model": "openai/limited", "api_base": limited.URL, "api_key": "k"}},
			{"model_name": "refused", "litellm_params": map[string]any{"model": "openai/refused", "api_base": refused, "api_key": "k"}},
		},
		"router_settings": map[string]any{"num_retries": 3, "retry_after": 60, "allowed_fails": 100},
	})
	g := startEmbeddedGateway(t, cfg, 4)

	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("limited", "hi", `"timeout":1`))
	if r.Status != http.StatusRequestTimeout || relErrorCode(r.Body) != "queue_timeout" {
		t.Errorf("cooling down past the deadline: %s; want 408 queue_timeout", r)
	}
	if n := limited.Count(); n != 1 {
		t.Errorf("the rate-limited deployment saw %d calls, want 1", n)
	}
	r = mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("refused", "hi", `"timeout":1`))
	if r.Status != http.StatusBadGateway || relErrorCode(r.Body) != "provider_unreachable" {
		t.Errorf("backing off past the deadline: %s; want 502 provider_unreachable", r)
	}
}
