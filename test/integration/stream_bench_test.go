package integration

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// benchStreamChunks is the number of content chunks of every benchmark stream.
const benchStreamChunks = 64

// benchChunkGap spaces a stream's chunks so that 64 of them take about
// 3 s: long enough to hold every stream of a round open while the heap is
// measured, once all of them have their first chunk.
const benchChunkGap = 50 * time.Millisecond

// benchStreams is the number of concurrent streams: LLMQ_BENCH_STREAMS, or 20
// (enough for CI's -benchtime=1x; the figures use 200).
func benchStreams(b *testing.B) int { return benchEnv(b, "LLMQ_BENCH_STREAMS", 20, "streams") }

// benchEnv is the positive whole number in the environment variable name,
// or def when it is unset; what says what it counts, for the error.
func benchEnv(b *testing.B, name string, def int, what string) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		b.Fatalf("%s=%q: want a positive number of %s", name, v, what)
	}
	return n
}

// streamRound is one round of n concurrent streams to url.
type streamRound struct {
	ttft     []time.Duration // per stream: from sending the request to reading its first event
	heap     int64           // HeapInuse with every stream open mid-way, minus before the round (after GC both)
	upstream int             // streams the upstream was still sending when the heap was measured
}

// runStreamRound opens n streams to url at once, waits until each has its
// first event, measures the heap while all of them are open, then reads every
// stream to its [DONE].
func runStreamRound(b *testing.B, hc *http.Client, fake *fakeupstream.Server, url, body string, n int) streamRound {
	b.Helper()
	heapInuse := func() int64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return int64(ms.HeapInuse)
	}
	before := heapInuse()

	ctx, cancel := context.WithTimeout(b.Context(), 3*waitLimit)
	defer cancel()
	type first struct {
		ttft time.Duration
		err  error
	}
	firsts := make(chan first, n)
	ends := make(chan error, n)
	for range n {
		go func() {
			start := time.Now()
			s, err := openSSE(ctx, hc, url, body)
			if err != nil {
				firsts <- first{err: err}
				return
			}
			defer s.Close()
			if _, err := s.Next(); err != nil {
				firsts <- first{err: fmt.Errorf("first event: %w", err)}
				return
			}
			firsts <- first{ttft: time.Since(start)}
			events, err := s.Rest()
			if err == nil && (len(events) == 0 || events[len(events)-1] != "[DONE]") {
				err = fmt.Errorf("the stream ended without [DONE] after %d more events", len(events))
			}
			ends <- err
		}()
	}
	var r streamRound
	wait := time.After(waitLimit)
	for range n {
		select {
		case f := <-firsts:
			if f.err != nil {
				b.Fatalf("%s: %v", url, f.err)
			}
			r.ttft = append(r.ttft, f.ttft)
		case <-wait:
			b.Fatalf("%s: %d of %d streams had their first event after %s", url, len(r.ttft), n, waitLimit)
		}
	}
	r.upstream = fake.InFlight()
	r.heap = heapInuse() - before
	wait = time.After(waitLimit)
	for i := range n {
		select {
		case err := <-ends:
			if err != nil {
				b.Fatalf("%s: %v", url, err)
			}
		case <-wait:
			b.Fatalf("%s: %d of %d streams ended after %s", url, i, n, waitLimit)
		}
	}
	return r
}

// ttftPercentile returns the p-th percentile (nearest rank) of ds, in milliseconds.
func ttftPercentile(ds []time.Duration, p float64) float64 {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := max(int(math.Ceil(p/100*float64(len(s))))-1, 0)
	return float64(s[i]) / float64(time.Millisecond)
}

// BenchmarkStreamTTFT measures what llmq adds to a stream's time to first
// token, and what an open stream costs in memory.
//
// Each iteration runs two rounds of N concurrent streams of 64 chunks
// (N = LLMQ_BENCH_STREAMS, default 20): one straight to the fake upstream,
// one through the gateway (embedded NATS, N in-process worker slots, the
// same fake upstream). Reported:
//
//   - ttft-p50-added-ms, ttft-p99-added-ms: the gateway round's time to first
//     event minus the direct round's, at the 50th and 99th percentile of all
//     streams of all iterations.
//   - bytes/stream: heap in use (runtime.MemStats.HeapInuse after a GC) with
//     the N streams open mid-way, minus before the round, divided by N; the
//     direct round's figure subtracted, so what remains is what the gateway,
//     NATS and the worker hold per stream (everything runs in this process).
//     path-bytes/stream is the gateway round's figure before the subtraction.
//
// A round fails if any stream does not start or does not end with [DONE].
func BenchmarkStreamTTFT(b *testing.B) {
	n := benchStreams(b)
	reply := strings.TrimSpace(strings.Repeat("token ", benchStreamChunks))
	fake := fakeupstream.New(fakeupstream.Options{Reply: reply, StreamChunks: benchStreamChunks, ChunkGap: benchChunkGap})
	b.Cleanup(fake.Close)
	cfg := writeStreamConfig(b, configFile{ModelList: []deployment{fakeDeployment("bench", "bench-0", fake, 0)}})
	env := baseEnv(cfg)
	env.DataDir = b.TempDir()
	env.EmbeddedWorkers = n
	env.LogLevel = "error"
	ctx, cancel := context.WithCancel(context.Background())
	g, err := app.StartGateway(ctx, env, noEnv, newTestLog(b))
	if err != nil {
		cancel()
		b.Fatalf("start gateway: %v", err)
	}
	b.Cleanup(func() {
		cancel()
		if err := g.Wait(); err != nil {
			b.Errorf("gateway stopped with: %v", err)
		}
	})
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * n, DisableCompression: true}}
	b.Cleanup(hc.CloseIdleConnections)

	direct := fake.URL + "/chat/completions"
	directBody := chatBody(upstreamModel("bench"), "how fast?", `"stream":true`)
	viaGateway := "http://" + g.Addr().String() + "/v1/chat/completions"
	gatewayBody := chatBody("bench", "how fast?", `"stream":true`)

	// Warm up: open the connections, fill the pools.
	runStreamRound(b, hc, fake, direct, directBody, n)
	runStreamRound(b, hc, fake, viaGateway, gatewayBody, n)

	var directTTFT, gatewayTTFT []time.Duration
	var directHeap, gatewayHeap int64
	rounds := 0
	for b.Loop() {
		d := runStreamRound(b, hc, fake, direct, directBody, n)
		gw := runStreamRound(b, hc, fake, viaGateway, gatewayBody, n)
		for _, r := range []streamRound{d, gw} {
			if r.upstream < n {
				b.Logf("only %d of %d streams were still open when the heap was measured", r.upstream, n)
			}
		}
		directTTFT = append(directTTFT, d.ttft...)
		gatewayTTFT = append(gatewayTTFT, gw.ttft...)
		directHeap += d.heap
		gatewayHeap += gw.heap
		rounds++
	}
	streams := float64(rounds * n)
	b.ReportMetric(ttftPercentile(gatewayTTFT, 50)-ttftPercentile(directTTFT, 50), "ttft-p50-added-ms")
	b.ReportMetric(ttftPercentile(gatewayTTFT, 99)-ttftPercentile(directTTFT, 99), "ttft-p99-added-ms")
	b.ReportMetric(ttftPercentile(gatewayTTFT, 50), "ttft-p50-ms")
	b.ReportMetric(ttftPercentile(gatewayTTFT, 99), "ttft-p99-ms")
	b.ReportMetric(float64(gatewayHeap-directHeap)/streams, "bytes/stream")
	b.ReportMetric(float64(gatewayHeap)/streams, "path-bytes/stream")
	b.ReportMetric(float64(n), "streams")
}
