package integration

// Helpers of the reliability tests (issue 5): crashes, restarts, overload
// and bad input. The tests themselves live in reliability_*_test.go. Every
// helper here is prefixed "rel" so it cannot clash with the shared harness.
//
// The tests use real NATS servers (natsembed or nats-server/v2 in process,
// stores in t.TempDir()), real HTTP, real gateway and worker code (in process
// through internal/app, or as the built cmd/worker binary when a true SIGKILL
// or SIGTERM matters) and the fake upstream. Everything listens on loopback.
// Every wait is bounded (relWait at most), every loop is bounded in count and
// in time.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/internal/natsembed"
	"github.com/llmq/llmq/internal/provider"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/worker"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

// relWait bounds every single wait of the reliability tests.
const relWait = 15 * time.Second

// relDeadStream is the dead-letter stream of the default subject prefix.
const relDeadStream = "LLMQ_DEAD"

// relSubjects are the subjects of the default prefix.
var relSubjects, _ = messages.NewSubjects("")

// relCtx is a context for one bounded wait of d (at most relWait).
func relCtx(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), min(d, relWait))
	t.Cleanup(cancel)
	return ctx
}

// relPoll calls cond every 10 ms until it reports true or d (at most
// relWait) has passed; it reports whether cond came true.
func relPoll(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(min(d, relWait))
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// Config

// relConfig is a config file with the router_settings and llmq_settings keys
// the reliability tests set (ack_wait, max_queued, replicas, num_retries).
type relConfig struct {
	ModelList      []deployment   `yaml:"model_list"`
	RouterSettings map[string]any `yaml:"router_settings,omitempty"`
	LLMQ           map[string]any `yaml:"llmq_settings,omitempty"`
}

// relWriteConfig writes cfg into a fresh temporary directory and returns its path.
func relWriteConfig(t *testing.T, cfg relConfig) string {
	t.Helper()
	return writeYAMLConfig(t, cfg)
}

// relOneGroup is a config with one deployment (id "<group>-0") of group on
// fake, with the given llmq_settings.
func relOneGroup(t *testing.T, group string, fake *fakeupstream.Server, maxParallel int, llmq map[string]any) string {
	t.Helper()
	return relWriteConfig(t, relConfig{ModelList: []deployment{fakeDeployment(group, group+"-0", fake, maxParallel)}, LLMQ: llmq})
}

// ---------------------------------------------------------------------------
// NATS

// relNATS is a standalone JetStream server that can be stopped and started
// again on the same port with the same store directory, like a restarted
// nats-server with a file store.
type relNATS struct {
	t    *testing.T
	dir  string
	port int
	mu   sync.Mutex
	srv  *natsembed.Server
}

// relStartNATS starts a standalone JetStream server on a free loopback port,
// its store in t.TempDir(); it is shut down when the test ends.
func relStartNATS(t *testing.T) *relNATS {
	t.Helper()
	n := &relNATS{t: t, dir: t.TempDir()}
	srv, err := natsembed.Start(natsembed.Options{Listen: "127.0.0.1:-1", StoreDir: n.dir, Name: "llmq-rel"})
	if err != nil {
		t.Fatalf("start NATS: %v", err)
	}
	n.srv = srv
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.ClientURL(), "nats://"))
	n.port, _ = strconv.Atoi(port)
	if n.port == 0 {
		t.Fatalf("NATS client URL %q has no port", srv.ClientURL())
	}
	t.Cleanup(n.Stop)
	return n
}

// URL is the server's client URL; it does not change across restarts.
func (n *relNATS) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.port) }

// Stop shuts the server down (gracefully, as on SIGTERM) and waits until it is down.
func (n *relNATS) Stop() {
	n.mu.Lock()
	srv := n.srv
	n.srv = nil
	n.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
	}
}

// Start starts the server again on the same port with the same store.
func (n *relNATS) Start() {
	n.t.Helper()
	var srv *natsembed.Server
	var err error
	// The port was just released; binding it again can fail for a moment.
	for i := 0; i < 50; i++ {
		srv, err = natsembed.Start(natsembed.Options{Listen: fmt.Sprintf("127.0.0.1:%d", n.port), StoreDir: n.dir, Name: "llmq-rel"})
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		n.t.Fatalf("restart NATS on port %d: %v", n.port, err)
	}
	n.mu.Lock()
	n.srv = srv
	n.mu.Unlock()
}

// relClient is a pkg/client Client on its own connection to url, as an
// internal service has it; it is closed when the test ends.
func relClient(t testing.TB, url string) *client.Client {
	t.Helper()
	nc, _ := relJS(t, url)
	cl, err := client.New(nc, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}

// relJS connects to url for the test's own observations and returns the
// connection and its JetStream context.
func relJS(t testing.TB, url string) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.Name("llmq-reliability-test"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatalf("connect to NATS at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// relStreamInfo returns the state of stream name, with per-subject counts.
func relStreamInfo(t *testing.T, js jetstream.JetStream, name string) *jetstream.StreamInfo {
	t.Helper()
	ctx := relCtx(t, relWait)
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatalf("stream %s: %v", name, err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		t.Fatalf("stream %s info: %v", name, err)
	}
	return info
}

// relWaitStreamMsgs waits until stream name holds n messages.
func relWaitStreamMsgs(t *testing.T, js jetstream.JetStream, name string, n uint64) {
	t.Helper()
	var last uint64
	var lastErr error
	ok := relPoll(relWait, func() bool {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		defer cancel()
		s, err := js.Stream(ctx, name)
		if err != nil {
			lastErr = err
			return false
		}
		info, err := s.Info(ctx)
		if err != nil {
			lastErr = err
			return false
		}
		last = info.State.Msgs
		return last == n
	})
	if !ok {
		t.Fatalf("stream %s holds %d messages, want %d (last error %v)", name, last, n, lastErr)
	}
}

// relDeadLetters returns every message of the dead-letter stream, in order.
func relDeadLetters(t *testing.T, js jetstream.JetStream) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := relCtx(t, relWait)
	s, err := js.Stream(ctx, relDeadStream)
	if err != nil {
		t.Fatalf("stream %s: %v", relDeadStream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("stream %s info: %v", relDeadStream, err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && seq > 0 && len(out) < 1000; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

// relReplies counts the reply messages workers publish to callers' inboxes,
// by request id (the last token of the inbox subject). It subscribes to
// every inbox, so a test that uses it must not rely on NATS answering "no
// responders" for a vanished caller.
type relReplies struct {
	mu sync.Mutex
	n  map[string]int
}

func relSniffReplies(t *testing.T, nc *nats.Conn) *relReplies {
	t.Helper()
	r := &relReplies{n: map[string]int{}}
	sub, err := nc.Subscribe("_INBOX.>", func(m *nats.Msg) {
		if m.Header.Get(messages.HeaderEvent) != messages.EventReply {
			return
		}
		id := m.Subject[strings.LastIndexByte(m.Subject, '.')+1:]
		r.mu.Lock()
		r.n[id]++
		r.mu.Unlock()
	})
	if err != nil {
		t.Fatalf("subscribe to inboxes: %v", err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return r
}

// count returns how many replies request id received.
func (r *relReplies) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[id]
}

// ---------------------------------------------------------------------------
// Processes in this test binary

// relGateway is a gateway whose shutdown the test controls.
type relGateway struct {
	*gateway
	cancel  context.CancelFunc
	once    sync.Once
	stopErr error
}

// relStartGateway starts a gateway with env; Stop shuts it down (as SIGTERM
// does) and is called when the test ends if the test did not.
func relStartGateway(t *testing.T, env config.Env, extraLog ...io.Writer) *relGateway {
	t.Helper()
	logOut := io.MultiWriter(append([]io.Writer{newTestLog(t)}, extraLog...)...)
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	g, err := app.StartGateway(ctx, env, noEnv, logOut)
	if err != nil {
		cancel()
		t.Fatalf("start gateway: %v", err)
	}
	rg := &relGateway{gateway: &gateway{Gateway: g, URL: "http://" + g.Addr().String()}, cancel: cancel}
	t.Cleanup(func() { _ = rg.Stop() })
	return rg
}

// Stop cancels the gateway's context and waits until it has stopped, at
// most relWait; it returns what Wait returned.
func (g *relGateway) Stop() error {
	g.once.Do(func() {
		g.cancel()
		done := make(chan error, 1)
		go func() { done <- g.Wait() }()
		select {
		case g.stopErr = <-done:
		case <-time.After(relWait):
			g.stopErr = fmt.Errorf("the gateway did not stop within %s", relWait)
		}
	})
	return g.stopErr
}

// relEnv is the environment of a gateway or worker on an external NATS server.
func relEnv(cfgPath, natsURL string) config.Env {
	env := baseEnv(cfgPath)
	env.NATSURL = natsURL
	return env
}

// relWorker is an in-process worker (app.RunWorker with its own NATS
// connection) whose shutdown the test controls.
type relWorker struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// relStartWorker runs app.RunWorker with env until Stop or the end of the test.
func relStartWorker(t *testing.T, env config.Env, extraLog ...io.Writer) *relWorker {
	t.Helper()
	logOut := io.MultiWriter(append([]io.Writer{newTestLog(t)}, extraLog...)...)
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	w := &relWorker{cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- app.RunWorker(ctx, env, noEnv, logOut) }()
	t.Cleanup(func() {
		if err := w.Stop(); err != nil {
			t.Errorf("worker stopped with: %v", err)
		}
	})
	return w
}

// Stop cancels the worker's context (as SIGTERM does) and waits for
// RunWorker to return, at most relWait.
func (w *relWorker) Stop() error {
	w.once.Do(func() {
		w.cancel()
		select {
		case w.err = <-w.done:
		case <-time.After(relWait):
			w.err = fmt.Errorf("the worker did not stop within %s", relWait)
		}
	})
	return w.err
}

// relRawWorker is a worker pool built directly from internal/worker on its
// own NATS connection, wired like internal/app/worker.go does. Kill closes
// the connection abruptly: its acks, in-progress acks and replies stop, as
// when its process is killed, while the goroutines keep running.
type relRawWorker struct {
	nc     *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// relStartRawWorker serves the one-deployment group of a relOneGroup config
// whose deployment is on fake; edit, if given, changes the pool's options.
func relStartRawWorker(t *testing.T, natsURL, group, deploymentID string, fake *fakeupstream.Server, ackWait time.Duration, slots int, edit ...func(*worker.Options)) *relRawWorker {
	t.Helper()
	nc, err := nats.Connect(natsURL, nats.Name("llmq-raw-worker"))
	if err != nil {
		t.Fatalf("connect raw worker: %v", err)
	}
	rt := router.New(router.SimpleShuffle, []router.Deployment{{
		ID: deploymentID, Group: group,
		Value: provider.NewOpenAI(provider.OpenAIOptions{BaseURL: fake.URL, APIKey: "test", Model: upstreamModel(group), Timeout: 30 * time.Second}),
	}}, nil)
	opts := worker.Options{
		Subjects: relSubjects, Bands: messages.DefaultBands().Count(), Groups: []string{group}, Slots: slots,
		Router: rt, AckWait: ackWait, DrainTimeout: time.Second, Logger: app.NewLogger(baseEnv(""), newTestLog(t)).With("component", "raw-worker"),
	}
	for _, e := range edit {
		e(&opts)
	}
	pool, err := worker.New(nc, opts)
	if err != nil {
		nc.Close()
		t.Fatalf("raw worker: %v", err)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	w := &relRawWorker{nc: nc, cancel: cancel, done: make(chan error, 1)}
	go func() { w.done <- pool.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(relWait):
			t.Errorf("the raw worker did not stop within %s", relWait)
		}
		nc.Close()
	})
	return w
}

// relHintsOnly sets a raw worker's safety-net poll an hour apart, so it finds
// requests by their wake-up hints only: a request whose hint is lost waits
// for as long as the test does.
func relHintsOnly(o *worker.Options) { o.PollInterval = time.Hour }

// Kill closes the worker's NATS connection at once.
func (w *relRawWorker) Kill() { w.nc.Close() }

// ---------------------------------------------------------------------------
// Real processes (built binaries)

// relBuild builds the main package pkg (e.g. "cmd/worker") of this module
// into t.TempDir() and returns the binary's path. A cached build takes a few
// seconds; a test that needs a true SIGKILL or SIGTERM pays for it.
func relBuild(t testing.TB, pkg string) string {
	t.Helper()
	return filepath.Join(relBuildAll(t, "github.com/llmq/llmq/"+pkg), filepath.Base(pkg))
}

// relBuildAll builds the main packages named by their import paths (this
// module's, or one go.mod requires, such as github.com/nats-io/nats-server/v2)
// with one go build into t.TempDir(), and returns that directory; each
// binary is named as go build names it (gateway, worker, nats-server).
func relBuildAll(t testing.TB, pkgs ...string) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("the go command is needed to build %q for a real-process test: %v", pkgs, err)
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goBin, append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %q: %v\n%s", pkgs, err, b)
	}
	return dir
}

// relProc is a running process of a built binary.
type relProc struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	Log  *logLines
}

// relStartProc starts bin with args and the LLMQ_* variables of vars (and
// no other LLMQ_* variable of this process's environment); its output goes
// to t.Log and to Log. It is killed when the test ends if it still runs.
func relStartProc(t testing.TB, bin string, vars map[string]string, args ...string) *relProc {
	t.Helper()
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "LLMQ_") {
			env = append(env, kv)
		}
	}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		env = append(env, k+"="+vars[k])
	}
	p := &relProc{done: make(chan struct{}), Log: newLogLines()}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	out := io.MultiWriter(newTestLog(t), p.Log)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// Kill sends SIGKILL and waits until the process is gone.
func (p *relProc) Kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-p.done
}

// Exited waits up to d for the process to exit and returns its exit error
// (nil for status 0) and whether it exited.
func (p *relProc) Exited(d time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(min(d, relWait)):
		return nil, false
	}
}

// relWorkerVars are the variables of a worker process on natsURL.
func relWorkerVars(cfgPath, natsURL string, slots int) map[string]string {
	return map[string]string{
		"LLMQ_CONFIG":           cfgPath,
		"LLMQ_NATS_URL":         natsURL,
		"LLMQ_WORKER_SLOTS":     strconv.Itoa(slots),
		"LLMQ_LOG_LEVEL":        "info",
		"LLMQ_SHUTDOWN_TIMEOUT": "1s",
	}
}

// ---------------------------------------------------------------------------
// A TCP proxy that can cut a client off NATS

// relProxy relays TCP connections to a target. Cut closes every relayed
// connection and refuses new ones until Restore, so a client behind it is
// disconnected from NATS while every other client stays connected.
type relProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	cut    bool
	wg     sync.WaitGroup
}

func relStartProxy(t *testing.T, target string) *relProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &relProxy{ln: ln, target: strings.TrimPrefix(target, "nats://"), open: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// URL is the NATS URL of the proxy.
func (p *relProxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *relProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			p.mu.Unlock()
			_ = c.Close()
			continue
		}
		p.open[c], p.open[up] = struct{}{}, struct{}{}
		p.mu.Unlock()
		relay := func(dst, src net.Conn) {
			_, _ = io.Copy(dst, src)
			_ = dst.Close()
			_ = src.Close()
			p.mu.Lock()
			delete(p.open, dst)
			delete(p.open, src)
			p.mu.Unlock()
		}
		p.wg.Go(func() { relay(up, c) })
		p.wg.Go(func() { relay(c, up) })
	}
}

// Cut closes every relayed connection and refuses new ones.
func (p *relProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	for c := range p.open {
		_ = c.Close()
	}
	p.mu.Unlock()
}

// Restore accepts connections again.
func (p *relProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// ---------------------------------------------------------------------------
// HTTP

// relAnswer is the end of one HTTP request made in a goroutine.
type relAnswer struct {
	name string
	r    *result
	err  error
	took time.Duration
}

func (a relAnswer) String() string {
	if a.err != nil {
		return fmt.Sprintf("%s: no answer after %s: %v", a.name, a.took.Round(time.Millisecond), a.err)
	}
	return fmt.Sprintf("%s: %s (after %s)", a.name, a.r, a.took.Round(time.Millisecond))
}

// relPostAsync posts body to url in a goroutine, bounded by limit (at most
// relWait), and delivers the end on the returned channel.
func relPostAsync(t *testing.T, name, url, body string, limit time.Duration) <-chan relAnswer {
	t.Helper()
	ch := make(chan relAnswer, 1)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), min(limit, relWait))
	go func() {
		defer cancel()
		start := time.Now()
		r, err := post(ctx, url, "", body)
		ch <- relAnswer{name: name, r: r, err: err, took: time.Since(start)}
	}()
	return ch
}

// relAwait receives one answer, failing the test if none comes within relWait.
func relAwait(t *testing.T, ch <-chan relAnswer) relAnswer {
	t.Helper()
	select {
	case a := <-ch:
		return a
	case <-time.After(relWait + time.Second):
		t.Fatalf("no end of the HTTP request within %s", relWait)
		return relAnswer{}
	}
}

// relSend sends a request with a raw body and content type and reads the answer.
func relSend(t *testing.T, method, url, contentType string, body io.Reader) *result {
	t.Helper()
	req, err := http.NewRequestWithContext(relCtx(t, relWait), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	r, err := do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

// relMetric returns the value of the sample of metric whose labels contain
// every one of labels (e.g. `reason="failed"`) in the Prometheus text at
// url, or -1 when there is none.
func relMetric(t *testing.T, url, metric string, labels ...string) float64 {
	t.Helper()
	r := mustGet(t, url, "")
	for line := range strings.Lines(string(r.Body)) {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !(name == metric || strings.HasPrefix(name, metric+"{")) {
			continue
		}
		if slices.ContainsFunc(labels, func(l string) bool { return !strings.Contains(name, l) }) {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// relErrorCode returns the "code" of an OpenAI error body, or "".
func relErrorCode(body []byte) string {
	i := bytes.Index(body, []byte(`"code":"`))
	if i < 0 {
		return ""
	}
	rest := body[i+len(`"code":"`):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return ""
	}
	return string(rest[:j])
}

// relNeverTwiceAtOnce checks that no request (told by its content) was at
// fake's provider twice at once: a second call of the same request may only
// begin after the first ended. It returns the number of calls, of distinct
// requests, and the requests called more than once, sorted.
func relNeverTwiceAtOnce(t *testing.T, fake *fakeupstream.Server) (calls, distinct int, twice []string) {
	t.Helper()
	recs := fake.Requests()
	byContent := map[string][]int{}
	for i, r := range recs {
		byContent[r.Content] = append(byContent[r.Content], i)
	}
	for content, idx := range byContent {
		if len(idx) < 2 {
			continue
		}
		twice = append(twice, content)
		for k := 1; k < len(idx); k++ {
			prev, next := recs[idx[k-1]], recs[idx[k]]
			if prev.Finished.IsZero() || next.Received.Before(prev.Finished) {
				t.Errorf("%s was at the provider twice at once", content)
			}
		}
	}
	slices.Sort(twice)
	return len(recs), len(byContent), twice
}
