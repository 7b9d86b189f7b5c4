package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
)

// uiScreenshot, when set, is where TestUIPage copies its screenshot of the
// page with requests waiting (docs/ui.png is made this way:
// go test -run TestUIPage ./test/integration -args -ui-screenshot=$PWD/docs/ui.png).
var uiScreenshot = flag.String("ui-screenshot", "", "copy TestUIPage's screenshot to this file")

// browserTestDeps returns node's path, or fails the test with how to
// install what the browser test needs.
func browserTestDeps(t *testing.T) string {
	t.Helper()
	const hint = "; run scripts/install-browser-test-deps (scripts/test does)"
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not on PATH" + hint)
	}
	if _, err := os.Stat("/usr/bin/chromium"); err != nil {
		t.Fatal("Debian's chromium is not installed (/usr/bin/chromium)" + hint)
	}
	if _, err := os.Stat("../ui/node_modules/playwright-core/package.json"); err != nil {
		t.Fatal("playwright-core is not installed in test/ui/node_modules" + hint)
	}
	return node
}

// TestUIPage drives the live queue page in headless Chromium
// (test/ui/page.test.mjs): with requests waiting in two bands (the provider
// holds its calls), one deployment cooling down and one group paused, the
// page shows the same
// counts as GET /v1/queue and updates by itself until the queue is drained;
// without the master key it shows nothing of the queue.
func TestUIPage(t *testing.T) {
	node := browserTestDeps(t)
	const (
		master = "sk-master-ui"
		other  = "sk-other-ui"
		viewer = "sk-viewer-ui" // read_queue: may read the queue status
	)
	fake := newFake(t)
	cfg := writeYAMLConfig(t, map[string]any{
		"model_list": []map[string]any{
			{"model_name": "chat", "litellm_params": map[string]any{"model": "openai/chat", "api_base": fake.URL, "api_key": "k", "max_parallel_requests": 1, "rpm": 600}, "model_info": map[string]any{"id": "chat-0"}},
			{"model_name": "batch", "litellm_params": map[string]any{"model": "openai/batch", "api_base": fake.URL, "api_key": "k", "max_parallel_requests": 2}, "model_info": map[string]any{"id": "batch-0"}},
			{"model_name": "limited", "litellm_params": map[string]any{"model": "openai/limited", "api_base": fake.URL, "api_key": "k"}, "model_info": map[string]any{"id": "limited-0"}},
		},
		"router_settings":  map[string]any{"num_retries": 0, "allowed_fails": 100},
		"general_settings": map[string]any{"master_key": master},
		"llmq_settings":    map[string]any{"keys": []map[string]any{{"name": "other", "key": other}, {"name": "viewer", "key": viewer, "read_queue": true}}},
	})
	g := startEmbeddedGateway(t, cfg, 4)
	chat := g.URL + "/v1/chat/completions"

	// One deployment cools down for a minute (the provider answered 429
	// with Retry-After: 60); its request gives up at its queue deadline.
	fake.FailNext(1, http.StatusTooManyRequests, "60")
	if r := mustPost(t, chat, master, chatBody("limited", "cooling", `"timeout":1`)); r.Status != http.StatusRequestTimeout {
		t.Fatalf("the request to the cooling deployment: %s, want 408", r)
	}

	// Requests wait in two bands: the provider holds the calls it gets.
	fake.Hold()
	q := observeQueue(t, g.NATSURL())
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	var served sync.WaitGroup
	send := func(group string, priority int, n int) {
		for i := range n {
			wg.Add(1)
			served.Add(1)
			go func() {
				defer wg.Done()
				defer served.Done()
				r, err := post(ctx, chat, master, chatBody(group, group+" "+strconv.Itoa(priority)+" "+strconv.Itoa(i), `"priority":`+strconv.Itoa(priority)))
				if err == nil && r.Status != http.StatusOK {
					t.Errorf("%s request: %s", group, r)
				}
			}()
		}
	}
	send("chat", 0, 3)
	send("chat", 9, 2)
	send("batch", 9, 3)
	// One for a tenant the (trusted) master key names.
	wg.Add(1)
	served.Add(1)
	go func() {
		defer wg.Done()
		defer served.Done()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, chat, strings.NewReader(chatBody("chat", "acme 9", `"priority":9`)))
		req.Header.Set("Authorization", "Bearer "+master)
		req.Header.Set("x-llmq-tenant", "acme")
		if r, err := do(req); err == nil && r.Status != http.StatusOK {
			t.Errorf("acme's request: %s", r)
		}
	}()
	// And a one-line batch (its line waits in the last band, behind them).
	oc := openaiClient(g.URL, master)
	f := uploadBatch(t, oc, "ui.jsonl", []string{batchLine("ui-1", "batch", "ui batch line")})
	if _, err := oc.Batches.New(waitCtx(t), openai.BatchNewParams{InputFileID: f.ID, Endpoint: openai.BatchNewParamsEndpointV1ChatCompletions,
		CompletionWindow: openai.BatchNewParamsCompletionWindow24h}); err != nil {
		t.Fatal(err)
	}
	q.waitStored(t, 9+1+1) // and the 408 request before them
	waitUpstream(t, fake, 1+3)

	// And one is paused (llmqctl pause): the page marks it.
	mustCtl(t, ctlEnv(cfg, g.NATSURL()), "pause", "limited")

	out := t.TempDir()
	// Chromium's start and the page's waits (15 s each at most) need more
	// than waitLimit.
	nodeCtx, stop := context.WithTimeout(t.Context(), 2*time.Minute)
	defer stop()
	cmd := exec.CommandContext(nodeCtx, node, "page.test.mjs", g.URL, master, other, out, "chat", "batch", "limited")
	cmd.Dir = "../ui"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node: %v", err)
	}
	lines := bufio.NewScanner(stdout)
	var said []string
	for lines.Scan() {
		said = append(said, lines.Text())
		if lines.Text() == "READY" {
			// The page showed the queue: drain it.
			fake.Release()
			served.Wait()
			q.waitMsgs(t, 0)
			_, _ = io.WriteString(stdin, "drained\n")
			_ = stdin.Close()
		}
	}
	err = cmd.Wait()
	t.Logf("page test output:\n%s\n%s", strings.Join(said, "\n"), stderr.String())
	if err != nil || !strings.Contains(strings.Join(said, "\n"), "PASS") {
		t.Fatalf("the browser test failed (%v): %s", err, stderr.String())
	}
	// Every request answered after a pickup counts in its band's queue
	// waits of the last minute: three in band 0, six in band 9, and the one
	// to the cooling deployment (a worker picked it up, then it waited for
	// the cooldown until its deadline). The batch's line is answered to no
	// caller: it counts in no gateway's waits.
	var st struct {
		QueueWait []struct {
			Band  int   `json:"band"`
			Count int   `json:"count"`
			P99Ms int64 `json:"p99_ms"`
		} `json:"queue_wait"`
	}
	if r := mustGet(t, g.URL+"/v1/queue", master); json.Unmarshal(r.Body, &st) != nil || len(st.QueueWait) != 3 ||
		st.QueueWait[0].Band != 0 || st.QueueWait[0].Count != 3 || st.QueueWait[1].Band != bandOf(5) || st.QueueWait[1].Count != 1 ||
		st.QueueWait[2].Band != bandOf(9) || st.QueueWait[2].Count != 6 {
		t.Errorf("GET /v1/queue queue_wait: %s, want 3 in band 0, 1 in band %d and 6 in band %d", r.Body, bandOf(5), bandOf(9))
	}
	// A key with read_queue reads the status, as the master key does; others may not.
	if r := mustGet(t, g.URL+"/v1/queue", viewer); r.Status != http.StatusOK || !bytes.Contains(r.Body, []byte(`"queue_wait"`)) {
		t.Errorf("GET /v1/queue with a read_queue key: %s, want 200 with the status", r)
	}
	if r := mustGet(t, g.URL+"/v1/queue", other); r.Status != http.StatusForbidden || !bytes.Contains(r.Body, []byte("read_queue")) {
		t.Errorf("GET /v1/queue with a key without read_queue: %s, want 403 naming read_queue", r)
	}
	shot := filepath.Join(out, "ui.png")
	png, err := os.ReadFile(shot)
	if err != nil || !bytes.HasPrefix(png, []byte("\x89PNG")) {
		t.Fatalf("no PNG screenshot at %s: %v", shot, err)
	}
	t.Logf("screenshot: %s (%d bytes)", shot, len(png))
	if *uiScreenshot != "" {
		if err := os.WriteFile(*uiScreenshot, png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
