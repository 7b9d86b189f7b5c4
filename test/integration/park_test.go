package integration

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

// Parked requests (LLMQ_PARK_AFTER): a request that waits in the queue
// longer than ParkAfter gives its HTTP connection back from net/http and is
// answered from the reply. These tests check what its caller and an
// operator see: the same answer and headers as an unparked request, with
// "Connection: close"; the parked gauge; a caller that leaves is never sent
// upstream, and a call in progress is cancelled.

const parkAfter = 100 * time.Millisecond

// startParkingGateway starts an embedded gateway without workers that parks
// requests after parkAfter.
func startParkingGateway(t *testing.T, cfgPath string) *gateway {
	t.Helper()
	return startGateway(t, parkingEnv(t, cfgPath))
}

// parkingEnv is the environment of startParkingGateway's gateway.
func parkingEnv(t *testing.T, cfgPath string) config.Env {
	env := baseEnv(cfgPath)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.ParkAfter = parkAfter
	return env
}

// waitMetric waits until the gateway's sample of metric with labels
// (relMetric) reads want.
func waitMetric(t *testing.T, g *gateway, want float64, metric string, labels ...string) {
	t.Helper()
	var got float64
	if !relPoll(waitLimit, func() bool { got = relMetric(t, g.URL+"/metrics", metric, labels...); return got == want }) {
		t.Fatalf("%s%q is %v, want %v", metric, labels, got, want)
	}
}

// requestsEnded waits until the gateway counted n requests of priority
// band with outcome for the group "park".
func requestsEnded(t *testing.T, g *gateway, band int, outcome string, n float64) {
	t.Helper()
	waitMetric(t, g, n, "llmq_requests_total", `band="`+strconv.Itoa(band)+`"`, `group="park"`, `outcome="`+outcome+`"`)
}

// postInBackground posts a chat request for "park" with content until ctx
// ends; the channel gets its transport error.
func postInBackground(ctx context.Context, g *gateway, content string) <-chan error {
	done := make(chan error, 1)
	go func() {
		_, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("park", content))
		done <- err
	}()
	return done
}

const parkedGauge = "llmq_gateway_parked_requests"

// TestParkedRequestIsServed: a request that waited past ParkAfter is parked
// and, once a worker starts, gets the same answer through openai-go as any
// other, with llmq's headers and "Connection: close".
func TestParkedRequestIsServed(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("park", "park-0", fake, 0)}})
	g := startParkingGateway(t, cfg)
	oc := openai.NewClient(option.WithBaseURL(g.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))

	type answer struct {
		c    *openai.ChatCompletion
		resp *http.Response
		err  error
	}
	done := make(chan answer, 1)
	go func() {
		var a answer
		a.c, a.err = oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
			Model:    "park",
			Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("parked")},
		}, option.WithJSONSet("priority", 2), option.WithResponseInto(&a.resp))
		done <- a
	}()
	waitMetric(t, g, 1, parkedGauge)
	startWorker(t, cfg, g.NATSURL(), 2)

	var a answer
	select {
	case a = <-done:
	case <-time.After(waitLimit):
		t.Fatal("no answer to the parked request")
	}
	if a.err != nil {
		t.Fatalf("chat completion: %v", a.err)
	}
	if len(a.c.Choices) == 0 || a.c.Choices[0].Message.Content != fakeReply {
		t.Fatalf("choices %+v, want the fake's reply", a.c.Choices)
	}
	h := a.resp.Header
	if got := h.Get("x-llmq-deployment"); got != "park-0" {
		t.Errorf("x-llmq-deployment %q, want park-0", got)
	}
	if got := h.Get("x-llmq-priority"); got != "2" {
		t.Errorf("x-llmq-priority %q, want 2", got)
	}
	if got := h.Get("x-llmq-band"); got != strconv.Itoa(bandOf(2)) {
		t.Errorf("x-llmq-band %q, want %d", got, bandOf(2))
	}
	if h.Get("x-llmq-request-id") == "" {
		t.Error("no x-llmq-request-id")
	}
	if ms, err := strconv.ParseInt(h.Get("x-llmq-queue-ms"), 10, 64); err != nil || ms < parkAfter.Milliseconds() {
		t.Errorf("x-llmq-queue-ms %q, want at least %d", h.Get("x-llmq-queue-ms"), parkAfter.Milliseconds())
	}
	if got := h.Get("Content-Type"); got != "application/json" {
		t.Errorf("Content-Type %q, want application/json", got)
	}
	if !a.resp.Close {
		t.Error("the parked answer does not close the connection")
	}
	waitMetric(t, g, 0, parkedGauge)
	requestsEnded(t, g, bandOf(2), "served", 1)

	// A request answered before ParkAfter keeps its connection.
	r := mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("park", "quick"))
	checkServed(t, r)
	if r.Header.Get("Connection") == "close" {
		t.Error("a request answered at once closes its connection")
	}
}

// TestParkedCallerLeavesBeforePickup: a parked request whose caller hung up
// is refused when a worker finds it; the provider never sees it.
func TestParkedCallerLeavesBeforePickup(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("park", "park-0", fake, 0)}})
	g := startParkingGateway(t, cfg)
	q := observeQueue(t, g.NATSURL())

	ctx, hangUp := context.WithCancel(waitCtx(t))
	done := postInBackground(ctx, g, "gone before pickup")
	waitMetric(t, g, 1, parkedGauge)
	hangUp()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("the caller's request ended with %v, want it cancelled", err)
	}
	startWorker(t, cfg, g.NATSURL(), 2)
	q.waitDrained(t)
	requestsEnded(t, g, bandOf(5), "cancelled", 1)
	waitMetric(t, g, 0, parkedGauge)
	if n := fake.Count(); n != 0 {
		t.Fatalf("the provider received %d requests for a caller that left; want 0", n)
	}
}

// TestParkedCallerLeavesDuringCall: when the caller of a parked request
// hangs up while the provider works on it, the provider call is cancelled.
func TestParkedCallerLeavesDuringCall(t *testing.T) {
	fake := newFake(t)
	fake.Hold()
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("park", "park-0", fake, 0)}})
	g := startParkingGateway(t, cfg)

	ctx, hangUp := context.WithCancel(waitCtx(t))
	done := postInBackground(ctx, g, "gone during the call")
	waitMetric(t, g, 1, parkedGauge)
	startWorker(t, cfg, g.NATSURL(), 2)
	waitUpstream(t, fake, 1)
	hangUp()
	<-done
	waitIdle(t, fake) // the held call ended without Release: cancelled
	if recs := fake.Requests(); len(recs) != 1 || !recs[0].Cancelled {
		t.Fatalf("upstream requests %+v, want one, cancelled", recs)
	}
	requestsEnded(t, g, bandOf(5), "cancelled", 1)
	waitMetric(t, g, 0, parkedGauge)
}

// TestParkedQueueTimeout: a parked request whose queue deadline passes gets
// the same 408 as any other, through openai-go.
func TestParkedQueueTimeout(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("park", "park-0", fake, 0)}})
	g := startParkingGateway(t, cfg)
	oc := openai.NewClient(option.WithBaseURL(g.URL+"/v1/"), option.WithAPIKey("unused"), option.WithMaxRetries(0))

	start := time.Now()
	_, err := oc.Chat.Completions.New(waitCtx(t), openai.ChatCompletionNewParams{
		Model:    "park",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("nobody serves this")},
	}, option.WithJSONSet("timeout", 0.5))
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusRequestTimeout {
		t.Fatalf("error %v, want a 408 from the API", err)
	}
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("the 408 came after %s, before the 0.5 s timeout", waited)
	}
	if !strings.Contains(apiErr.Message, "queue") {
		t.Errorf("error message %q does not say the queue timed out", apiErr.Message)
	}
	waitMetric(t, g, 0, parkedGauge)
	if n := fake.Count(); n != 0 {
		t.Fatalf("the provider received %d requests; want 0", n)
	}
}

// TestParkedAnsweredDuringShutdown: a gateway told to stop still answers
// the parked requests it holds while workers serve them (within
// LLMQ_SHUTDOWN_TIMEOUT), then stops.
func TestParkedAnsweredDuringShutdown(t *testing.T) {
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("park", "park-0", fake, 0)}})
	ctx, stop := context.WithCancel(t.Context())
	defer stop()
	gw, err := app.StartGateway(ctx, parkingEnv(t, cfg), noEnv, newTestLog(t))
	if err != nil {
		t.Fatalf("start gateway: %v", err)
	}
	g := &gateway{Gateway: gw, URL: "http://" + gw.Addr().String()}

	done := make(chan *result, 1)
	go func() {
		r, err := post(waitCtx(t), g.URL+"/v1/chat/completions", "", chatBody("park", "answered while stopping"))
		if err != nil {
			t.Errorf("POST: %v", err)
		}
		done <- r
	}()
	waitMetric(t, g, 1, parkedGauge)
	stop()
	if !relPoll(waitLimit, func() bool { // the HTTP server has stopped accepting
		c, err := net.Dial("tcp", gw.Addr().String())
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	}) {
		t.Fatal("the stopping gateway still accepts connections")
	}
	startWorker(t, cfg, g.NATSURL(), 1)
	select {
	case r := <-done:
		if r != nil {
			checkServed(t, r)
		}
	case <-time.After(waitLimit):
		t.Fatal("the parked request got no answer while the gateway stopped")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- gw.Wait() }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("the gateway stopped with %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the gateway did not stop after its parked request was answered")
	}
}
