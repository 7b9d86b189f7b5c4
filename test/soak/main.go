// Command soak runs llmq under load with faults and counts what every caller
// got. It builds cmd/gateway and cmd/worker, starts a standalone NATS
// JetStream server (this program re-run as "soak nats-server", with a file
// store), one gateway and three worker processes, all as real OS processes
// on loopback, and two fake OpenAI upstreams in this process: the main one
// and a spare, reached through a port that can be closed, which serves the
// second deployment of model group soak-a and the only one of soak-c. It
// then sends requests across every priority band (chat, completions and
// streams, three model groups, a sprinkle of bad inputs) while it SIGKILLs
// random workers (and starts them again), restarts NATS once, and makes the
// spare misbehave in windows (its host down, garbage, answers cut short, no
// answer; spare.go).
//
// Every request must end with exactly one HTTP response: a request with no
// response (transport error or client-side timeout) is "lost". An answer
// delivered to two callers, or an answer to another caller's request, is
// "answered twice" / "wrong answer". A 200 (JSON, or a stream ending in
// [DONE]) that is not an answer an upstream gave in full to that request is
// "answered 200 without being served". A request the provider answered with
// 200 whose caller nevertheless got an error is an "answer lost in transit".
// The run fails (exit status 1) if any of them is not zero, if a JSON
// answer's x-llmq-deployment names a deployment of the other upstream, if a
// bad input got an unexpected status, or if the request stream is not empty
// at the end. Outcomes such as 503 broker_unavailable while NATS is down or
// 502 provider_unreachable when every attempt hit the spare while its host
// was down are named and counted, not failures.
//
// Usage (from the repository root):
//
//	scripts/soak            # full: 20,000 requests, at most 15 minutes
//	scripts/soak -short     # quick: 1,000 requests (also SOAK_SHORT=1)
//	go run ./test/soak -h   # every flag
//
// Bounded in count and time: -n requests, -max-duration for the whole run;
// every wait has a deadline. Loopback only.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "nats-server" {
		if err := runNATS(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "soak nats-server:", err)
			os.Exit(1)
		}
		return
	}
	ok, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// runNATS is the standalone NATS server process: a JetStream server with a
// file store on a loopback port, until SIGTERM or SIGINT.
func runNATS(args []string) error {
	fs := flag.NewFlagSet("nats-server", flag.ContinueOnError)
	listen := fs.String("listen", "127.0.0.1:4222", "client listen address (loopback)")
	store := fs.String("store", "", "JetStream store directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	srv, err := natsembed.Start(natsembed.Options{Listen: *listen, StoreDir: *store, Name: "llmq-soak-nats"})
	if err != nil {
		return err
	}
	fmt.Println("nats-server ready on", srv.ClientURL())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	srv.Shutdown()
	return nil
}

// options are the soak's flags.
type options struct {
	n             int
	short         bool
	rate          float64
	concurrency   int
	workers       int
	slots         int
	maxDuration   time.Duration
	killMin       time.Duration
	killMax       time.Duration
	natsDown      time.Duration
	ackWait       int
	queueTimeout  int
	latency       time.Duration
	clientTimeout time.Duration
	badEvery      int
	seed          uint64
	keep          bool
	report        string
}

func parseFlags() options {
	var o options
	flag.IntVar(&o.n, "n", 20000, "requests to send (bad inputs included)")
	flag.BoolVar(&o.short, "short", os.Getenv("SOAK_SHORT") != "", "quick run: 1,000 requests, faster faults (also SOAK_SHORT=1)")
	flag.Float64Var(&o.rate, "rate", 120, "requests per second")
	flag.IntVar(&o.concurrency, "concurrency", 256, "most requests in flight at once")
	flag.IntVar(&o.workers, "workers", 3, "worker processes")
	flag.IntVar(&o.slots, "slots", 8, "slots per worker process")
	flag.DurationVar(&o.maxDuration, "max-duration", 15*time.Minute, "bound of the whole run")
	flag.DurationVar(&o.killMin, "kill-min", 4*time.Second, "least time between two worker kills")
	flag.DurationVar(&o.killMax, "kill-max", 12*time.Second, "most time between two worker kills")
	flag.DurationVar(&o.natsDown, "nats-down", 2*time.Second, "how long NATS stays down during its restart")
	flag.IntVar(&o.ackWait, "ack-wait", 3, "llmq_settings.ack_wait in seconds")
	flag.IntVar(&o.queueTimeout, "queue-timeout", 20, "router_settings.timeout (queue deadline) in seconds")
	flag.DurationVar(&o.latency, "latency", 50*time.Millisecond, "fake upstream latency")
	flag.DurationVar(&o.clientTimeout, "client-timeout", 100*time.Second, "client-side timeout of one request; a request that hits it is lost")
	flag.IntVar(&o.badEvery, "bad-every", 97, "every n-th request is a bad input")
	flag.Uint64Var(&o.seed, "seed", 0, "random seed (0: from the clock)")
	flag.BoolVar(&o.keep, "keep", false, "keep the temporary directory (binaries, stores, logs)")
	flag.StringVar(&o.report, "report", "", "also write the summary (markdown) to this file")
	flag.Parse()
	if o.short {
		o.n = min(o.n, 1000)
		o.killMin, o.killMax = time.Second, 3*time.Second
		o.rate = max(o.rate, 150)
	}
	if o.seed == 0 {
		o.seed = uint64(time.Now().UnixNano())
	}
	return o
}

// ---------------------------------------------------------------------------
// Processes

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startProc(name, bin string, args []string, env []string, logDir string) (*proc, error) {
	logf, err := os.OpenFile(filepath.Join(logDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	fmt.Fprintf(logf, "=== %s start %s\n", name, time.Now().Format(time.RFC3339Nano))
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return nil, err
	}
	p := &proc{name: name, cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		_ = logf.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// stop sends SIGTERM and waits up to d, then kills. It reports whether the
// process exited by itself.
func (p *proc) stop(d time.Duration) bool {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(d):
		p.kill()
		return false
	}
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitTCP(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			_ = c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s does not accept connections after %s: %w", addr, d, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LLMQ_") {
			env = append(env, kv)
		}
	}
	return env
}

// ---------------------------------------------------------------------------
// Requests

// groups are the soak's model groups.
var groups = []string{"soak-a", "soak-b"}

// badInput is one malformed request and the status it must get.
type badInput struct {
	name, method, path, contentType, body string
	status                                int
}

func badInputs() []badInput {
	chat := "/v1/chat/completions"
	msgs := `"messages":[{"role":"user","content":"hi"}]`
	return []badInput{
		{"malformed JSON", "POST", chat, "application/json", `{"model":"soak-a","messages":[`, 400},
		{"empty body", "POST", chat, "application/json", ``, 400},
		{"wrong content type", "POST", chat, "text/plain", `{"model":"soak-a",` + msgs + `}`, 415},
		{"missing model", "POST", chat, "application/json", `{` + msgs + `}`, 400},
		{"model not a string", "POST", chat, "application/json", `{"model":7,` + msgs + `}`, 400},
		{"messages not an array", "POST", chat, "application/json", `{"model":"soak-a","messages":"hi"}`, 400},
		{"completions without prompt", "POST", "/v1/completions", "application/json", `{"model":"soak-a"}`, 400},
		{"unknown model", "POST", chat, "application/json", `{"model":"no-such-model",` + msgs + `}`, 404},
		{"priority a string", "POST", chat, "application/json", `{"model":"soak-a",` + msgs + `,"priority":"high"}`, 400},
		{"priority a fraction", "POST", chat, "application/json", `{"model":"soak-a",` + msgs + `,"priority":1.5}`, 400},
		{"max_tokens 0", "POST", chat, "application/json", `{"model":"soak-a",` + msgs + `,"max_tokens":0}`, 400},
		{"max_tokens a string", "POST", chat, "application/json", `{"model":"soak-a",` + msgs + `,"max_tokens":"10"}`, 400},
		{"body over the maximum", "POST", chat, "application/json", `{"model":"soak-a","messages":[{"role":"user","content":"` + strings.Repeat("x", 800_000) + `"}]}`, 413},
		{"invalid UTF-8", "POST", chat, "application/json", "{\"model\":\"soak-a\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\"}]}", 400},
		{"unknown path", "POST", "/v1/embeddings", "application/json", `{"model":"soak-a","input":"x"}`, 404},
		{"wrong method", "GET", chat, "", ``, 405},
	}
}

// outcome is how one request ended.
type outcome struct {
	sent       bool
	bad        *badInput
	content    string
	group      string
	kind       string // chat, completion, stream, bad
	band       int
	status     int    // 0: no HTTP response
	code       string // OpenAI error code, or the stream's error event code
	err        string // transport error (lost)
	reqID      string // x-llmq-request-id
	deployment string // x-llmq-deployment
	text       string // the answer's text (a stream's pieces joined)
	answerID   string // the answer's id (a stream's first chunk's)
	mixed      bool   // a stream whose chunks carry more than one id
	done       bool   // a stream that ended with [DONE]
	sentAt     time.Duration
	took       time.Duration
	queueMs    int
}

type client struct {
	hc    *http.Client
	base  string
	began time.Time
}

func (c *client) send(ctx context.Context, i int, rnd *rand.Rand, bad []badInput, badEvery int) (o outcome) {
	o.sent = true
	var method, path, ctype, body string
	if badEvery > 0 && i%badEvery == badEvery-1 {
		b := bad[(i/badEvery)%len(bad)]
		o.bad, o.kind = &b, "bad"
		method, path, ctype, body = b.method, b.path, b.contentType, b.body
	} else {
		o.content = fmt.Sprintf("soak-%d", i)
		o.band = rnd.IntN(10) // priorities 0..9: every band of the default table
		group := groups[i%len(groups)]
		if i%10 == 9 {
			group = spareOnlyGroup
		}
		o.group = group
		method, path, ctype = "POST", "/v1/chat/completions", "application/json"
		extra := fmt.Sprintf(`,"priority":%d,"max_tokens":16`, o.band)
		switch r := rnd.IntN(100); {
		case r < 10:
			o.kind, path = "completion", "/v1/completions"
			body = fmt.Sprintf(`{"model":%q,"prompt":%q%s}`, group, o.content, extra)
		case r < 15:
			o.kind = "stream"
			body = fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}],"stream":true%s}`, group, o.content, extra)
		default:
			o.kind = "chat"
			body = fmt.Sprintf(`{"model":%q,"messages":[{"role":"user","content":%q}]%s}`, group, o.content, extra)
		}
	}
	start := time.Now()
	o.sentAt = start.Sub(c.began)
	defer func() { o.took = time.Since(start) }()
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, strings.NewReader(body))
	if err != nil {
		o.err = err.Error()
		return o
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		o.err = err.Error()
		return o
	}
	defer resp.Body.Close()
	o.status = resp.StatusCode
	o.reqID = resp.Header.Get("x-llmq-request-id")
	o.deployment = resp.Header.Get("x-llmq-deployment")
	o.queueMs, _ = strconv.Atoi(resp.Header.Get("x-llmq-queue-ms"))
	if o.kind == "stream" && resp.StatusCode == http.StatusOK && strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		c.readStream(resp.Body, &o)
		return o
	}
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		o.err = "reading the answer: " + err.Error()
		o.status = 0
		return o
	}
	if resp.StatusCode != http.StatusOK {
		o.code = errorCode(data)
		return o
	}
	var ans struct {
		ID      string `json:"id"`
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
			Text string `json:"text"`
		} `json:"choices"`
	}
	if json.Unmarshal(data, &ans) != nil || len(ans.Choices) == 0 {
		o.code = "malformed_answer"
		return o
	}
	o.text, o.answerID = ans.Choices[0].Message.Content+ans.Choices[0].Text, ans.ID
	return o
}

func (c *client) readStream(r io.Reader, o *outcome) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var text strings.Builder
	defer func() { o.text = text.String() }()
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		if line == "[DONE]" {
			o.done = true
			return
		}
		if strings.Contains(line, `"error"`) {
			o.code = "stream_error:" + errorCode([]byte(line))
			continue
		}
		var ch struct {
			ID      string `json:"id"`
			Choices []struct {
				Delta struct {
					Content string `json:"content"`
				} `json:"delta"`
				Text string `json:"text"`
			} `json:"choices"`
		}
		if json.Unmarshal([]byte(line), &ch) == nil {
			if o.answerID == "" {
				o.answerID = ch.ID
			} else if ch.ID != o.answerID {
				o.mixed = true
			}
			for _, c := range ch.Choices {
				text.WriteString(c.Delta.Content + c.Text)
			}
		}
	}
	if o.code == "" {
		o.code = "stream_cut"
		if err := sc.Err(); err != nil {
			o.code = "stream_cut: " + err.Error()
		}
	}
}

func errorCode(body []byte) string {
	var e struct {
		Error *struct {
			Code any `json:"code"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error == nil {
		return "not_an_openai_error"
	}
	if s, ok := e.Error.Code.(string); ok {
		return s
	}
	return fmt.Sprint(e.Error.Code)
}

// seqOf returns n of a fake answer id "chatcmpl-fake-n" or "cmpl-fake-n".
func seqOf(id string) int {
	n, _ := strconv.Atoi(id[strings.LastIndexByte(id, '-')+1:])
	return n
}

// ---------------------------------------------------------------------------
// The run

type faults struct {
	mu         sync.Mutex
	kills      int
	restarts   int
	natsDown   time.Duration
	natsAt     time.Duration
	natsGraceq bool
	log        []string
}

func (f *faults) add(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.log = append(f.log, fmt.Sprintf(format, args...))
}

func run() (bool, error) {
	o := parseFlags()
	rnd := rand.New(rand.NewPCG(o.seed, o.seed^0x9e3779b97f4a7c15))
	runCtx, cancelRun := context.WithTimeout(context.Background(), o.maxDuration)
	defer cancelRun()
	sigCtx, stopSig := signal.NotifyContext(runCtx, os.Interrupt, syscall.SIGTERM)
	defer stopSig()
	ctx := sigCtx

	root, err := moduleRoot()
	if err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp("", "llmq-soak-")
	if err != nil {
		return false, err
	}
	if o.keep {
		fmt.Println("keeping", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	binDir, logDir, natsStore := filepath.Join(tmp, "bin"), filepath.Join(tmp, "logs"), filepath.Join(tmp, "nats")
	for _, d := range []string{binDir, logDir, natsStore} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return false, err
		}
	}
	fmt.Println("building cmd/gateway and cmd/worker ...")
	bctx, bcancel := context.WithTimeout(ctx, 5*time.Minute)
	build := exec.CommandContext(bctx, "go", "build", "-o", binDir+string(os.PathSeparator), "./cmd/gateway", "./cmd/worker")
	build.Dir = root
	out, err := build.CombinedOutput()
	bcancel()
	if err != nil {
		return false, fmt.Errorf("go build: %w\n%s", err, out)
	}
	self, err := os.Executable()
	if err != nil {
		return false, err
	}

	fake := fakeupstream.New(fakeupstream.Options{Latency: o.latency, StreamChunks: 4, ChunkGap: 5 * time.Millisecond})
	defer fake.Close()
	spare := fakeupstream.New(fakeupstream.Options{Latency: o.latency, Reply: spareReply, StreamChunks: 4, ChunkGap: 5 * time.Millisecond})
	defer spare.Close()
	sparePort, err := newDownable(strings.TrimSuffix(strings.TrimPrefix(spare.URL, "http://"), "/v1"))
	if err != nil {
		return false, err
	}
	defer sparePort.close()

	natsPort, err := freePort()
	if err != nil {
		return false, err
	}
	gwPort, err := freePort()
	if err != nil {
		return false, err
	}
	natsAddr := fmt.Sprintf("127.0.0.1:%d", natsPort)
	natsURL := "nats://" + natsAddr
	cfgPath := filepath.Join(tmp, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(configYAML(fake.URL, "http://"+sparePort.addr+"/v1", o)), 0o600); err != nil {
		return false, err
	}

	startNATS := func() (*proc, error) {
		p, err := startProc("nats", self, []string{"nats-server", "-listen", natsAddr, "-store", natsStore}, baseEnv(), logDir)
		if err != nil {
			return nil, err
		}
		if err := waitTCP(natsAddr, 15*time.Second); err != nil {
			p.kill()
			return nil, err
		}
		return p, nil
	}
	natsProc, err := startNATS()
	if err != nil {
		return false, err
	}
	var procsMu sync.Mutex
	defer func() {
		procsMu.Lock()
		defer procsMu.Unlock()
		natsProc.stop(15 * time.Second)
	}()

	common := append(baseEnv(), "LLMQ_CONFIG="+cfgPath, "LLMQ_NATS_URL="+natsURL, "LLMQ_LOG_LEVEL=info", "LLMQ_SHUTDOWN_TIMEOUT=5s")
	gw, err := startProc("gateway", filepath.Join(binDir, "gateway"), nil, append(slices.Clone(common), fmt.Sprintf("LLMQ_LISTEN=127.0.0.1:%d", gwPort)), logDir)
	if err != nil {
		return false, err
	}
	defer gw.stop(15 * time.Second)
	base := fmt.Sprintf("http://127.0.0.1:%d", gwPort)
	if err := waitReady(base, 30*time.Second); err != nil {
		return false, err
	}
	startWorker := func(i int) (*proc, error) {
		return startProc(fmt.Sprintf("worker-%d", i), filepath.Join(binDir, "worker"), nil,
			append(slices.Clone(common), fmt.Sprintf("LLMQ_WORKER_SLOTS=%d", o.slots)), logDir)
	}
	workers := make([]*proc, o.workers)
	for i := range workers {
		if workers[i], err = startWorker(i); err != nil {
			return false, err
		}
	}
	defer func() {
		procsMu.Lock()
		defer procsMu.Unlock()
		for _, w := range workers {
			w.stop(15 * time.Second)
		}
	}()

	nc, err := nats.Connect(natsURL, nats.Name("llmq-soak-observer"), nats.MaxReconnects(-1), nats.ReconnectWait(250*time.Millisecond))
	if err != nil {
		return false, err
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)

	// Faults.
	var sentCount atomic.Int64
	f := &faults{}
	loadDone := make(chan struct{})
	var faultWG sync.WaitGroup
	began := time.Now()
	windows := spareWindows()
	faultWG.Go(func() { runWindows(ctx, loadDone, windows, o.n, &sentCount, began, spare, sparePort, f) })
	faultWG.Go(func() {
		natsDone := false
		next := time.Now().Add(randDur(rnd, o.killMin, o.killMax))
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-loadDone:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if !natsDone && sentCount.Load() >= int64(o.n/2) {
				natsDone = true
				at := time.Now()
				procsMu.Lock()
				graceful := natsProc.stop(15 * time.Second)
				procsMu.Unlock()
				time.Sleep(o.natsDown)
				p, err := startNATS()
				if err != nil {
					f.add("NATS restart FAILED: %v", err)
					continue
				}
				procsMu.Lock()
				natsProc = p
				procsMu.Unlock()
				f.mu.Lock()
				f.restarts++
				f.natsDown = time.Since(at)
				f.natsAt = at.Sub(began)
				f.natsGraceq = graceful
				f.mu.Unlock()
				f.add("%6.1fs NATS restarted (SIGTERM, down %s, same port and store)", at.Sub(began).Seconds(), time.Since(at).Round(time.Millisecond))
			}
			if time.Now().After(next) {
				i := rnd.IntN(len(workers))
				procsMu.Lock()
				w := workers[i]
				procsMu.Unlock()
				w.kill()
				f.mu.Lock()
				f.kills++
				f.mu.Unlock()
				gap := randDur(rnd, 300*time.Millisecond, 1500*time.Millisecond)
				f.add("%6.1fs SIGKILL worker-%d, restarted after %s", time.Since(began).Seconds(), i, gap.Round(time.Millisecond))
				time.Sleep(gap)
				nw, err := startWorker(i)
				if err != nil {
					f.add("worker-%d restart FAILED: %v", i, err)
				} else {
					procsMu.Lock()
					workers[i] = nw
					procsMu.Unlock()
				}
				next = time.Now().Add(randDur(rnd, o.killMin, o.killMax))
			}
		}
	})

	// Load.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = o.concurrency
	c := &client{hc: &http.Client{Transport: tr, Timeout: o.clientTimeout}, base: base, began: began}
	bad := badInputs()
	results := make([]outcome, o.n)
	sem := make(chan struct{}, o.concurrency)
	var loadWG sync.WaitGroup
	interval := time.Duration(float64(time.Second) / o.rate)
	fmt.Printf("sending %d requests at %.0f/s ...\n", o.n, o.rate)
	progress := time.NewTicker(10 * time.Second)
	defer progress.Stop()
	var answered atomic.Int64
	for i := 0; i < o.n; i++ {
		if d := time.Until(began.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-time.After(d):
			case <-ctx.Done():
			}
		}
		select {
		case <-progress.C:
			fmt.Printf("  %6.1fs sent %d, answered %d\n", time.Since(began).Seconds(), sentCount.Load(), answered.Load())
		default:
		}
		if ctx.Err() != nil {
			break
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		sentCount.Add(1)
		r := rand.New(rand.NewPCG(o.seed, uint64(i)))
		loadWG.Go(func() {
			defer func() { <-sem }()
			results[i] = c.send(context.WithoutCancel(ctx), i, r, bad, o.badEvery)
			if results[i].status != 0 {
				answered.Add(1)
			}
		})
	}
	sendTime := time.Since(began)
	waitDone := make(chan struct{})
	go func() {
		loadWG.Wait()
		close(waitDone)
	}()
	for waiting := true; waiting; {
		select {
		case <-waitDone:
			waiting = false
		case <-progress.C:
			fmt.Printf("  %6.1fs sent %d, answered %d (waiting for the rest)\n", time.Since(began).Seconds(), sentCount.Load(), answered.Load())
		}
	}
	close(loadDone)
	faultWG.Wait()
	loadTime := time.Since(began)

	// The request stream must drain: abandoned requests are dropped by
	// workers, redelivered ones served.
	depth := uint64(0)
	drainDeadline := time.Now().Add(60 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var info *jetstream.StreamInfo
		s, err := js.Stream(sctx, "LLMQ_REQUESTS")
		if err == nil {
			info, err = s.Info(sctx)
		}
		cancel()
		if err == nil {
			depth = info.State.Msgs
			if depth == 0 {
				break
			}
		}
		if time.Now().After(drainDeadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	deadLetters := uint64(0)
	{
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if s, err := js.Stream(sctx, "LLMQ_DEAD"); err == nil {
			if info, err := s.Info(sctx); err == nil {
				deadLetters = info.State.Msgs
			}
		}
		cancel()
	}
	for _, u := range []*fakeupstream.Server{fake, spare} {
		if err := u.WaitIdle(contextWithTimeout(30 * time.Second)); err != nil {
			fmt.Println("a fake upstream is still busy:", err)
		}
	}

	ups := []upstream{
		{name: "main", reply: fakeupstream.DefaultReply, calls: fake.Requests()},
		{name: "spare", reply: spareReply, calls: spare.Requests()},
	}
	rep := summarize(o, results[:sentCount.Load()], ups, windows, f, depth, deadLetters, sendTime, loadTime)
	fmt.Print(rep.text)
	if o.report != "" {
		if err := os.WriteFile(o.report, []byte(rep.text), 0o644); err != nil {
			return false, err
		}
	}
	if o.keep {
		fmt.Println("logs in", logDir)
	}
	return rep.ok, nil
}

func contextWithTimeout(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	time.AfterFunc(d, cancel)
	return ctx
}

func randDur(rnd *rand.Rand, lo, hi time.Duration) time.Duration {
	if hi <= lo {
		return lo
	}
	return lo + time.Duration(rnd.Int64N(int64(hi-lo)))
}

func waitReady(base string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(base + "/health/readiness")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the gateway is not ready after %s: %v", d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run the soak from inside the llmq module (scripts/soak does)")
	}
	return filepath.Dir(mod), nil
}

// configYAML is the soak's config: one deployment per group on the main
// upstream, and soak-a's second deployment on the spare upstream, with a
// shorter call timeout and fewer parallel calls so that a hanging spare
// holds few worker slots.
func configYAML(fakeURL, spareURL string, o options) string {
	var b strings.Builder
	b.WriteString("model_list:\n")
	deployment := func(group, id, url string, parallel, timeout int) {
		fmt.Fprintf(&b, `  - model_name: %s
    litellm_params:
      model: openai/%s
      api_base: %s
      api_key: soak
      max_parallel_requests: %d
      timeout: %d
    model_info:
      id: %s
`, group, upstreamModel(group), url, parallel, timeout, id)
	}
	for _, g := range groups {
		deployment(g, g+"-0", fakeURL, 64, 10)
	}
	for _, d := range spareDeployments {
		deployment(d.group, d.id, spareURL, d.parallel, spareTimeout)
	}
	fmt.Fprintf(&b, `router_settings:
  timeout: %d
  num_retries: 2
  allowed_fails: 3
  cooldown_time: 1
llmq_settings:
  ack_wait: %d
`, o.queueTimeout, o.ackWait)
	return b.String()
}

// ---------------------------------------------------------------------------
// Summary

type report struct {
	text string
	ok   bool
}

// upstream is one fake upstream's record of the run.
type upstream struct {
	name  string
	reply string // the text of its answers
	calls []fakeupstream.Request
}

// answerKey names one answer of one upstream: its index in the list and
// the fake's sequence number (in the answer's id).
type answerKey struct{ upstream, seq int }

// clean reports whether call was answered in full: 200, no fault, its
// client still there.
func clean(call fakeupstream.Request) bool {
	return call.Status == http.StatusOK && !call.Cancelled && call.Fault == fakeupstream.FaultNone
}

func summarize(o options, res []outcome, ups []upstream, windows []*window, f *faults, depth, dead uint64, sendTime, loadTime time.Duration) report {
	var (
		sent, answered, lost, badSent, badRight int
		byOutcome                               = map[string]int{}
		lostSamples                             []string
		badWrong                                []string
		wrong                                   int
		twice                                   int
		bands                                   [10]int
		kinds                                   = map[string]int{}
		slowQueue                               int
		servedTook, unavailTook, failTook       []time.Duration
		failSamples                             []string
		slow503                                 int
		unserved, wrongDeployment, bySpare      int
		unservedSamples, transitSamples         []string
	)
	calls := 0
	byContent := map[string][]fakeupstream.Request{} // content -> its calls at every upstream, by arrival
	bySeq := make([]map[int]fakeupstream.Request, len(ups))
	for u, up := range ups {
		calls += len(up.calls)
		bySeq[u] = map[int]fakeupstream.Request{}
		for _, c := range up.calls {
			byContent[c.Content] = append(byContent[c.Content], c)
			bySeq[u][c.Seq] = c
		}
	}
	for _, cs := range byContent {
		sort.SliceStable(cs, func(i, j int) bool { return cs[i].Received.Before(cs[j].Received) })
	}
	// upstreamOf is the upstream of a deployment named in x-llmq-deployment.
	upstreamOf := func(deployment string) int {
		if onSpare(deployment) {
			return 1
		}
		return 0
	}
	seqUsed := map[answerKey]int{}
	idUsed := map[string]int{}
	servedUpstream := func(content string) bool {
		return slices.ContainsFunc(byContent[content], clean)
	}
	endedAs := map[string]string{} // content -> how its request ended
	samplesOf := map[string]int{}  // outcome -> failed requests sampled
	inTransit := 0
	for _, r := range res {
		if !r.sent {
			continue
		}
		sent++
		kinds[r.kind]++
		if r.bad == nil {
			bands[r.band]++
		}
		if r.status == 0 {
			lost++
			endedAs[r.content] = "lost"
			if len(lostSamples) < 10 {
				lostSamples = append(lostSamples, fmt.Sprintf("%s (%s) after %s: %s", r.content, r.kind, r.took.Round(time.Millisecond), r.err))
			}
			continue
		}
		answered++
		if r.reqID != "" {
			idUsed[r.reqID]++
		}
		if r.bad != nil {
			badSent++
			if r.status == r.bad.status {
				badRight++
				byOutcome[fmt.Sprintf("bad input refused (%d)", r.status)]++
			} else {
				badWrong = append(badWrong, fmt.Sprintf("%s: %d %s, want %d", r.bad.name, r.status, r.code, r.bad.status))
				byOutcome[fmt.Sprintf("bad input, WRONG status %d", r.status)]++
			}
			continue
		}
		if r.queueMs >= 1000 {
			slowQueue++
		}
		if r.status == http.StatusOK {
			servedTook = append(servedTook, r.took)
		}
		if r.status == http.StatusServiceUnavailable {
			unavailTook = append(unavailTook, r.took)
		}
		key := ""
		switch {
		case r.status != http.StatusOK:
			key = fmt.Sprintf("%d %s", r.status, r.code)
		case r.kind == "stream" && !r.done:
			key = "200 stream ended with " + r.code
		default:
			// A 200 answer (JSON, or a stream that ended with [DONE]) must
			// be an answer an upstream gave in full to this request: its
			// text is that upstream's, its id names a call of this request
			// there that was served cleanly.
			u := slices.IndexFunc(ups, func(up upstream) bool { return up.reply == r.text })
			var call fakeupstream.Request
			found := false
			if u >= 0 {
				call, found = bySeq[u][seqOf(r.answerID)]
			}
			if found {
				seqUsed[answerKey{u, call.Seq}]++
			}
			switch {
			case found && call.Content != r.content:
				wrong++
				key = "200 WRONG ANSWER (another request's)"
			case !found || !clean(call) || r.mixed || r.code != "":
				unserved++
				key = "200 WITHOUT BEING SERVED"
				if len(unservedSamples) < 10 {
					unservedSamples = append(unservedSamples, fmt.Sprintf("%s (%s): text %q, id %q, a call of it found: %v (status %d, fault %s, cancelled %v), chunks of several answers: %v, error event: %q",
						r.content, r.kind, r.text, r.answerID, found, call.Status, call.Fault, call.Cancelled, r.mixed, r.code))
				}
			default:
				key = "200 served"
				if r.kind == "stream" {
					key = "200 served (stream)"
				}
				if u == 1 {
					bySpare++
				}
				if r.kind != "stream" && upstreamOf(r.deployment) != u {
					wrongDeployment++
				}
			}
		}
		byOutcome[key]++
		endedAs[r.content] = key
		if r.status != http.StatusOK && r.status != http.StatusServiceUnavailable && samplesOf[key] < 3 {
			samplesOf[key]++
			failSamples = append(failSamples, fmt.Sprintf("%s (%s, %s, band %d, request id %s, sent at %.1fs): %d %s after %s; the provider answered it with 200: %v",
				r.content, r.kind, r.group, r.band, r.reqID, r.sentAt.Seconds(), r.status, r.code, r.took.Round(time.Millisecond), servedUpstream(r.content)))
		}
		if r.status != http.StatusOK && r.status != http.StatusServiceUnavailable {
			failTook = append(failTook, r.took)
		}
		if r.status == http.StatusServiceUnavailable && r.took > time.Second {
			slow503++
		}
		if r.status != http.StatusOK && servedUpstream(r.content) {
			inTransit++
			if len(transitSamples) < 10 {
				transitSamples = append(transitSamples, fmt.Sprintf("%s (%s, %s, band %d, request id %s, sent at %.1fs): %d %s after %s",
					r.content, r.kind, r.group, r.band, r.reqID, r.sentAt.Seconds(), r.status, r.code, r.took.Round(time.Millisecond)))
			}
		}
	}
	for _, n := range seqUsed {
		if n > 1 {
			twice += n - 1
		}
	}
	for _, n := range idUsed {
		if n > 1 {
			twice += n - 1
		}
	}
	// Provider side.
	repeated, concurrent := 0, 0
	for _, cs := range byContent {
		if len(cs) > 1 {
			repeated++
		}
		for k := 1; k < len(cs); k++ {
			prev, next := cs[k-1], cs[k]
			if prev.Finished.IsZero() || next.Received.Before(prev.Finished) {
				concurrent++
			}
		}
	}

	ok := lost == 0 && twice == 0 && wrong == 0 && unserved == 0 && wrongDeployment == 0 && inTransit == 0 && depth == 0 && len(badWrong) == 0
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("\n## Soak result: %s\n\n", map[bool]string{true: "PASS", false: "FAIL"}[ok])
	w("- command: `scripts/soak %s` (seed %d)\n", flagLine(o), o.seed)
	w("- machine: %d CPUs (%s), %s/%s, %s\n", runtime.NumCPU(), cpuModel(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	w("- processes: 1 NATS (standalone, file store), 1 gateway, %d workers x %d slots; two fake upstreams (main, spare) with latency %s\n", o.workers, o.slots, o.latency)
	w("- settings: ack_wait %ds, queue timeout %ds, num_retries 2, allowed_fails 3, cooldown_time 1s, client timeout %s\n", o.ackWait, o.queueTimeout, o.clientTimeout)
	w("- deployments: soak-a-0 and soak-b-0 on the main upstream (timeout 10s, 64 parallel); on the spare upstream, which misbehaves in windows (below), with timeout %ds:", spareTimeout)
	for _, d := range spareDeployments {
		w(" %s (group %s, %d parallel)", d.id, d.group, d.parallel)
	}
	w("; no fallbacks\n")
	w("- duration: %s sending, %s until the last answer\n\n", sendTime.Round(time.Second), loadTime.Round(time.Second))
	w("| figure | value |\n|---|---|\n")
	w("| requests sent | %d |\n", sent)
	w("| answered (exactly one HTTP response) | %d |\n", answered)
	w("| **lost** (no response / client timeout) | **%d** |\n", lost)
	w("| **answered twice** | **%d** |\n", twice)
	w("| **wrong answer** (another request's answer) | **%d** |\n", wrong)
	w("| **answered 200 without being served** (a 200, or a stream ending in [DONE], that is not an answer an upstream gave in full to that request) | **%d** |\n", unserved)
	w("| **JSON answers whose x-llmq-deployment names a deployment of another upstream** | **%d** |\n", wrongDeployment)
	w("| request stream depth at the end | %d |\n", depth)
	w("| dead letters | %d |\n", dead)
	w("| provider calls | %d for %d distinct requests (main upstream %d, spare %d) |\n", calls, len(byContent), len(ups[0].calls), len(ups[1].calls))
	w("| served by the spare upstream | %d |\n", bySpare)
	w("| requests the provider saw more than once | %d |\n", repeated)
	w("| requests at the provider twice at once | %d |\n", concurrent)
	w("| **answer lost in transit** (the provider answered 200, the caller got an error) | **%d** |\n", inTransit)
	w("| served: time to answer p50 / p99 / max | %s |\n", quantiles(servedTook))
	w("| 503 broker_unavailable: time to answer p50 / p99 / max | %s |\n", quantiles(unavailTook))
	w("| other failures: time to answer p50 / p99 / max | %s |\n", quantiles(failTook))
	w("| 503 broker_unavailable answered after more than 1 s | %d |\n", slow503)
	w("| served with a queue wait >= 1 s | %d |\n", slowQueue)
	w("\nOutcomes:\n\n| outcome | count |\n|---|---|\n")
	keys := make([]string, 0, len(byOutcome))
	for k := range byOutcome {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w("| %s | %d |\n", k, byOutcome[k])
	}
	w("\nRequests by kind: chat %d, completion %d, stream %d, bad input %d. By band (0..9): %v.\n", kinds["chat"], kinds["completion"], kinds["stream"], kinds["bad"], bands)
	w("\nBad inputs: %d sent, %d refused with the expected status.\n", badSent, badRight)
	for _, s := range badWrong {
		w("- WRONG: %s\n", s)
	}
	f.mu.Lock()
	w("\nFaults: %d worker SIGKILLs (each restarted), %d NATS restart(s)", f.kills, f.restarts)
	if f.restarts > 0 {
		w(" (at %.0fs, graceful stop: %v, down %s)", f.natsAt.Seconds(), f.natsGraceq, f.natsDown.Round(time.Millisecond))
	}
	w(".\n\n")
	sort.SliceStable(f.log, func(i, j int) bool { return logTime(f.log[i]) < logTime(f.log[j]) })
	for _, l := range f.log {
		w("    %s\n", l)
	}
	f.mu.Unlock()
	w("\nThe spare upstream by window and deployment. Calls it received: calls of the deployment that reached the spare with the window's fault")
	w(" (while its host is down, only calls on kept-alive connections get there; new connections are refused and counted nowhere).")
	w(" Those requests ended: the final outcome of each request one of those calls belonged to.\n\n")
	w("| window | from–to | deployment | calls it received | those requests ended | requests of its group sent in the window ended |\n|---|---|---|---|---|---|\n")
	rows := spareRows(windows, ups[1].calls,
		func(content string) string { return endedAs[content] },
		func(group string, from, to time.Duration) []string {
			var out []string
			for _, r := range res {
				if r.sent && r.bad == nil && r.group == group && r.sentAt >= from && r.sentAt < to {
					out = append(out, endedAs[r.content])
				}
			}
			return out
		})
	for _, r := range rows {
		w("| %s: %s | %.1f–%.1f s | %s | %d | %s | %s |\n", r.w.name, r.w.describe(), r.w.start.Seconds(), r.w.end.Seconds(), r.d.id, r.calls, tally(r.requests), tally(r.sent))
	}
	for _, win := range windows {
		if !win.happened {
			w("| %s | not reached | | | | |\n", win.name)
		}
	}
	if len(unservedSamples) > 0 {
		w("\nAnswered 200 without being served (first %d):\n", len(unservedSamples))
		for _, s := range unservedSamples {
			w("- %s\n", s)
		}
	}
	if len(transitSamples) > 0 {
		w("\nAnswers lost in transit (first %d):\n", len(transitSamples))
		for _, s := range transitSamples {
			w("- %s\n", s)
		}
	}
	if len(failSamples) > 0 {
		w("\nFailed requests other than 503 (the first 3 of each outcome):\n")
		for _, s := range failSamples {
			w("- %s\n", s)
		}
	}
	if len(lostSamples) > 0 {
		w("\nLost (first %d):\n", len(lostSamples))
		for _, s := range lostSamples {
			w("- %s\n", s)
		}
	}
	return report{text: b.String(), ok: ok}
}

// logTime is the time, in seconds, a fault log line begins with; lines
// without one sort last.
func logTime(line string) float64 {
	if fs := strings.Fields(line); len(fs) > 0 {
		if t, err := strconv.ParseFloat(strings.TrimSuffix(fs[0], "s"), 64); err == nil {
			return t
		}
	}
	return math.Inf(1)
}

// quantiles formats the p50, p99 and maximum of ds.
func quantiles(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[min(len(ds)-1, int(p*float64(len(ds))))] }
	r := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	return r(q(0.50)) + " / " + r(q(0.99)) + " / " + r(ds[len(ds)-1])
}

func flagLine(o options) string {
	if o.short {
		return "-short"
	}
	return fmt.Sprintf("-n %d", o.n)
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for line := range bytes.Lines(data) {
		if k, v, ok := strings.Cut(string(line), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
