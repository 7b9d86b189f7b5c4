package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// relSettle runs the garbage collector and returns the goroutine count and
// the heap in use.
func relSettle() (goroutines int, heap uint64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return runtime.NumGoroutine(), ms.HeapInuse
}

// relWaitGoroutines waits until at most limit goroutines run and returns the last count.
func relWaitGoroutines(limit int) int {
	n := 0
	relPoll(10*time.Second, func() bool {
		n, _ = relSettle()
		return n <= limit
	})
	return n
}

// relStableGoroutines waits (at most two seconds) until the goroutine count
// stops changing between two looks 50 ms apart, and returns it: goroutines of
// connections just closed take a moment to return.
func relStableGoroutines() (goroutines int, heap uint64) {
	last, _ := relSettle()
	for range 40 {
		time.Sleep(50 * time.Millisecond)
		n, h := relSettle()
		if n == last {
			return n, h
		}
		last = n
	}
	return relSettle()
}

// relGoroutineDump returns the stacks of every goroutine, for a failure message.
func relGoroutineDump() string {
	buf := make([]byte, 1<<20)
	return string(buf[:runtime.Stack(buf, true)])
}

// TestReliabilityNoLeaks: after a load run of a few hundred requests (plain
// and streaming, all bands, both endpoints) drains, the gateway process
// (embedded NATS and in-process workers) returns to its baseline goroutine
// count and heap, and the stream is empty; once the gateway is stopped, the
// goroutines it started are gone too.
func TestReliabilityNoLeaks(t *testing.T) {
	const group = "leaky"
	fake := newFake(t)
	cfg := relOneGroup(t, group, fake, 0, nil)
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	defer hc.CloseIdleConnections()
	before, _ := relSettle()

	env := baseEnv(cfg)
	env.DataDir = t.TempDir()
	env.EmbeddedNATSListen = "127.0.0.1:-1"
	env.EmbeddedWorkers = 8
	g := relStartGateway(t, env)
	q := observeQueue(t, g.NATSURL())

	send := func(ctx context.Context, i int) error {
		url, body := g.URL+"/v1/chat/completions", chatBody(group, fmt.Sprint("leak-", i), fmt.Sprintf(`"priority":%d`, i%10))
		switch i % 5 {
		case 1:
			url, body = g.URL+"/v1/completions", completionBody(group, fmt.Sprint("leak-", i), fmt.Sprintf(`"priority":%d`, i%10))
		case 2:
			body = chatBody(group, fmt.Sprint("leak-", i), `"stream":true`)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || (i%5 == 2 && !strings.Contains(string(b), "[DONE]")) {
			return fmt.Errorf("request %d: %d %s", i, resp.StatusCode, b)
		}
		return nil
	}
	run := func(n, concurrency int) {
		ctx, cancel := context.WithTimeout(t.Context(), relWait)
		defer cancel()
		work := make(chan int)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var errs []error
		for range concurrency {
			wg.Go(func() {
				for i := range work {
					if err := send(ctx, i); err != nil {
						mu.Lock()
						errs = append(errs, err)
						mu.Unlock()
					}
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatalf("%d of %d requests failed; first: %v", len(errs), n, errs[0])
		}
	}

	run(40, 8) // warm up: connection pools, consumers, buffers
	q.waitDrained(t)
	if err := fake.WaitIdle(relCtx(t, relWait)); err != nil {
		t.Fatal(err)
	}
	// Idle keep-alive connections are pools, not leaks: the load below opens
	// more of them (32 callers, 8 worker slots) than the warm-up did.
	hc.CloseIdleConnections()
	fake.CloseIdleConnections()
	baseG, baseHeap := relStableGoroutines()

	run(400, 32)
	q.waitDrained(t)
	waitIdle(t, fake)
	hc.CloseIdleConnections()
	fake.CloseIdleConnections()
	const slack = 8
	if n := relWaitGoroutines(baseG + slack); n > baseG+slack {
		t.Errorf("after the load drained, %d goroutines run; the baseline was %d\n%s", n, baseG, relGoroutineDump())
	}
	_, heap := relSettle()
	const heapSlack = 16 << 20
	if heap > baseHeap+heapSlack {
		t.Errorf("after the load drained, the heap in use is %d MiB; the baseline was %d MiB", heap>>20, baseHeap>>20)
	}
	t.Logf("goroutines: %d before the gateway, %d at the baseline; heap in use: %d KiB at the baseline, %d KiB after 400 requests",
		before, baseG, baseHeap>>10, heap>>10)

	if err := g.Stop(); err != nil {
		t.Errorf("the gateway stopped with: %v", err)
	}
	fake.Close()
	hc.CloseIdleConnections()
	http.DefaultClient.CloseIdleConnections()
	if n := relWaitGoroutines(before + slack); n > before+slack {
		t.Errorf("after the gateway stopped, %d goroutines run; before it started %d\n%s", n, before, relGoroutineDump())
	}
}
