package integration

// Real-process cluster tests (issue 18): a fresh 3-node JetStream cluster of
// nats-server processes (the nats-server binary built from the version
// go.mod requires), with gateways and workers as processes of the built
// cmd/gateway and cmd/worker, all started at the same moment; and a SIGKILL
// of the request stream's leader under load.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/fakeupstream"
)

// relNATSServerPkg is the nats-server main package, built at the version
// go.mod requires: the test needs nothing installed.
const relNATSServerPkg = "github.com/nats-io/nats-server/v2"

// relPublishBound is LLMQ_PUBLISH_TIMEOUT's default, the gateway's publish bound:
// only past it may a request be refused while a stream elects a leader.
const relPublishBound = 10 * time.Second

// relColdStartBound bounds the wait for a system started all at once to be
// ready. A fresh R3 cluster takes a few seconds to elect its leaders; this
// is a bound for a loaded machine, not a figure.
const relColdStartBound = 90 * time.Second

// relProcSystem is a 3-node nats-server cluster, gateways and workers, each
// its own process.
type relProcSystem struct {
	URLs     string     // the nodes' client URLs, comma-separated
	names    []string   // the nodes' server names: nats-1 …
	nodes    []*relProc // in the order of names
	Gateways []string   // the gateways' base URLs (http://127.0.0.1:port)
	gateways []*relProc
	workers  []*relProc
}

// relFreePorts returns n distinct loopback ports that were free a moment ago.
func relFreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// relStartProcSystem starts, in one go and without waiting for any of them,
// gateways gateway processes, workers worker processes (4 slots each) and
// the three nodes of a fresh JetStream cluster (stores in t.TempDir()), all
// on loopback, with the config at cfg. The binaries are in bin (see
// relBuildAll). Everything is killed when the test ends.
func relStartProcSystem(t *testing.T, bin, cfg string, gateways, workers int) *relProcSystem {
	t.Helper()
	const size = 3
	ports := relFreePorts(t, 2*size+gateways)
	client, cluster, web := ports[:size], ports[size:2*size], ports[2*size:]
	sys := &relProcSystem{}
	var urls []string
	for i := range size {
		sys.names = append(sys.names, "nats-"+strconv.Itoa(i+1))
		urls = append(urls, fmt.Sprintf("nats://127.0.0.1:%d", client[i]))
	}
	sys.URLs = strings.Join(urls, ",")
	common := map[string]string{
		"LLMQ_CONFIG": cfg, "LLMQ_NATS_URL": sys.URLs, "LLMQ_LOG_LEVEL": "info", "LLMQ_SHUTDOWN_TIMEOUT": "2s",
	}
	vars := func(extra ...string) map[string]string {
		m := map[string]string{}
		for k, v := range common {
			m[k] = v
		}
		for i := 0; i+1 < len(extra); i += 2 {
			m[extra[i]] = extra[i+1]
		}
		return m
	}
	// Gateways and workers first: they find no NATS at all for a moment.
	for i := range gateways {
		sys.Gateways = append(sys.Gateways, fmt.Sprintf("http://127.0.0.1:%d", web[i]))
		sys.gateways = append(sys.gateways, relStartProc(t, filepath.Join(bin, "gateway"),
			vars("LLMQ_LISTEN", fmt.Sprintf("127.0.0.1:%d", web[i]), "LLMQ_EMBEDDED_WORKERS", "0")))
	}
	for range workers {
		sys.workers = append(sys.workers, relStartProc(t, filepath.Join(bin, "worker"), vars("LLMQ_WORKER_SLOTS", "4")))
	}
	for i := range size {
		var routes []string
		for j := range size {
			if j != i {
				routes = append(routes, fmt.Sprintf("nats-route://127.0.0.1:%d", cluster[j]))
			}
		}
		sys.nodes = append(sys.nodes, relStartProc(t, filepath.Join(bin, "nats-server"), nil,
			"--server_name", sys.names[i], "-a", "127.0.0.1", "-p", strconv.Itoa(client[i]),
			"-js", "-sd", t.TempDir(),
			"--cluster_name", "llmq-test", "--cluster", fmt.Sprintf("nats://127.0.0.1:%d", cluster[i]),
			"--routes", strings.Join(routes, ",")))
	}
	return sys
}

// procs are every process of the system with a name for messages.
func (s *relProcSystem) procs() map[string]*relProc {
	m := map[string]*relProc{}
	for i, p := range s.nodes {
		m[s.names[i]] = p
	}
	for i, p := range s.gateways {
		m[fmt.Sprint("gateway-", i+1)] = p
	}
	for i, p := range s.workers {
		m[fmt.Sprint("worker-", i+1)] = p
	}
	return m
}

// exited names the processes that have exited, with how.
func (s *relProcSystem) exited() []string {
	var out []string
	for name, p := range s.procs() {
		select {
		case <-p.done:
			out = append(out, fmt.Sprintf("%s exited: %v", name, p.err))
		default:
		}
	}
	slices.Sort(out)
	return out
}

// waitReady waits, at most relColdStartBound, until every gateway answers
// 200 on /health/readiness (connected, streams and consumers in place, the
// limits bucket open) and every worker logged that its slots started. No
// process may exit meanwhile. It returns how long it waited.
func (s *relProcSystem) waitReady(t *testing.T) time.Duration {
	t.Helper()
	start := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), relColdStartBound)
	defer cancel()
	ready := make([]bool, len(s.Gateways))
	var last string
	for {
		if gone := s.exited(); len(gone) > 0 {
			t.Fatalf("a process exited during start-up: %q", gone)
		}
		all := true
		for i, u := range s.Gateways {
			if ready[i] {
				continue
			}
			r, err := get(ctx, u+"/health/readiness", "")
			switch {
			case err != nil:
				last = fmt.Sprintf("gateway-%d: %v", i+1, err)
			case r.Status == http.StatusOK:
				ready[i] = true
			default:
				last = fmt.Sprintf("gateway-%d: %s", i+1, r)
			}
			all = all && ready[i]
		}
		for _, w := range s.workers {
			all = all && w.Log.has("worker slots started")
		}
		if all {
			return time.Since(start)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the system was not ready within %s; last answer: %s", relColdStartBound, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// node returns the process of the node named name.
func (s *relProcSystem) node(name string) *relProc {
	if i := slices.Index(s.names, name); i >= 0 {
		return s.nodes[i]
	}
	return nil
}

// has reports whether a logged line contains part.
func (l *logLines) has(part string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.ContainsFunc(l.lines, func(line string) bool { return strings.Contains(line, part) })
}

// relProcConfig is the config of the real-process cluster tests: one group
// served by fake with replicas 3 and max_parallel_requests, so the shared
// limits bucket is created too (the third thing issue 18 saw time out).
func relProcConfig(t *testing.T, fake *fakeupstream.Server) string {
	t.Helper()
	return relOneGroup(t, "replicated", fake, 64, map[string]any{"replicas": 3, "ack_wait": 3})
}

// TestReliabilityProcClusterColdStart: three nats-server processes forming
// a fresh cluster, two gateways and two workers (config with replicas: 3
// and a concurrency limit), all started at the same moment, five times in a
// row, each on new stores. Every time, no process exits, both gateways
// become ready and serve requests, both workers start their slots. Before
// issue 18 one gateway or both exited at start-up in every run ("create
// stream LLMQ_DEAD: context deadline exceeded" and the like).
func TestReliabilityProcClusterColdStart(t *testing.T) {
	bin := relBuildAll(t, relNATSServerPkg, "github.com/llmq/llmq/cmd/gateway", "github.com/llmq/llmq/cmd/worker")
	fake := newFake(t)
	var took []string
	for round := range 5 {
		ok := t.Run(fmt.Sprint("round-", round+1), func(t *testing.T) {
			sys := relStartProcSystem(t, bin, relProcConfig(t, fake), 2, 2)
			d := sys.waitReady(t)
			took = append(took, d.Round(100*time.Millisecond).String())
			for i, u := range sys.Gateways {
				for k := range 3 {
					checkServed(t, mustPost(t, u+"/v1/chat/completions", "", chatBody("replicated", fmt.Sprintf("round %d gateway %d #%d", round+1, i+1, k))))
				}
			}
			if gone := sys.exited(); len(gone) > 0 {
				t.Errorf("processes exited: %q", gone)
			}
		})
		if !ok {
			break
		}
	}
	t.Logf("ready after (all processes started at once): %s", strings.Join(took, ", "))
}

// TestReliabilityProcClusterLeaderSIGKILL: the cold-started system of
// TestReliabilityProcClusterColdStart under load (300 requests over about
// 6 s, alternating between the two gateways); a third of the way in, the
// request stream leader's nats-server process gets SIGKILL. Every caller
// gets exactly one answer: 200, or 503 broker_unavailable with Retry-After
// only once the gateway's publish bound (5 s) has passed without a leader;
// no request is at the provider twice at once; after the failover new
// requests are served and the stream drains. The counts and the time the
// stream was without a leader are logged for RELIABILITY.md.
func TestReliabilityProcClusterLeaderSIGKILL(t *testing.T) {
	bin := relBuildAll(t, relNATSServerPkg, "github.com/llmq/llmq/cmd/gateway", "github.com/llmq/llmq/cmd/worker")
	fake := newFake(t)
	fake.SetLatency(100 * time.Millisecond)
	sys := relStartProcSystem(t, bin, relProcConfig(t, fake), 2, 2)
	sys.waitReady(t)

	nc, err := nats.Connect(sys.URLs, nats.Name("test-observer"), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	var leader string
	if !relPoll(relWait, func() bool {
		leader = relStreamLeader(relCtx(t, 2*time.Second), js, requestStream)
		return leader != ""
	}) {
		t.Fatal("the request stream has no leader")
	}

	type sent struct {
		at     time.Time
		answer relAnswer
	}
	const total, spacing, killAt = 300, 20 * time.Millisecond, 100
	// Requests sent at the kill may wait for the election and then for a
	// consumer leader: bound each by more than relWait.
	const answerBound = 45 * time.Second
	var (
		mu      sync.Mutex
		results []sent
		wg      sync.WaitGroup
		killed  time.Time
	)
	for i := range total {
		if i == killAt {
			killed = time.Now()
			sys.node(leader).Kill(t)
			t.Logf("SIGKILL to the request stream's leader %s", leader)
		}
		at := time.Now()
		url := sys.Gateways[i%2] + "/v1/chat/completions"
		body := chatBody("replicated", fmt.Sprint("load-", i), fmt.Sprintf(`"priority":%d`, i%10))
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(t.Context()), answerBound)
			defer cancel()
			start := time.Now()
			r, err := post(ctx, url, "", body)
			mu.Lock()
			results = append(results, sent{at, relAnswer{name: fmt.Sprint("load-", i), r: r, err: err, took: time.Since(start)}})
			mu.Unlock()
		})
		time.Sleep(spacing)
	}
	// The time without a leader, as an observer sees it.
	var newLeader string
	relPoll(relWait, func() bool {
		newLeader = relStreamLeader(relCtx(t, time.Second), js, requestStream)
		return newLeader != "" && newLeader != leader
	})
	elected := time.Since(killed)
	wg.Wait()

	dist := map[string]int{}
	var slowest time.Duration // of the requests sent after the kill that were served
	for _, s := range results {
		a := s.answer
		switch {
		case a.err != nil:
			dist["lost (no HTTP answer)"]++
			t.Errorf("LOST: %v", a)
		case a.r.Status == http.StatusOK:
			dist["200 served"]++
			if s.at.After(killed) {
				slowest = max(slowest, a.took)
			}
		case a.r.Status == http.StatusServiceUnavailable && relErrorCode(a.r.Body) == "broker_unavailable" && a.r.Header.Get("Retry-After") != "":
			dist["503 broker_unavailable"]++
			if !strings.Contains(string(a.r.Body), "within "+relPublishBound.String()) {
				t.Errorf("refused before the publish bound of %s: %v", relPublishBound, a)
			}
		default:
			dist[fmt.Sprintf("%d %s", a.r.Status, relErrorCode(a.r.Body))]++
			t.Errorf("unexpected answer: %v", a)
		}
	}
	t.Logf("outcomes of %d requests: %v", len(results), dist)
	t.Logf("new stream leader %s seen %s after the SIGKILL (polled; %q when none was seen within %s); slowest answer of a request sent after the kill: %s",
		newLeader, elected.Round(100*time.Millisecond), newLeader, relWait, slowest.Round(100*time.Millisecond))
	if newLeader == "" || newLeader == leader {
		t.Fatal("the request stream elected no new leader")
	}

	for i := range 10 {
		checkServed(t, mustPost(t, sys.Gateways[i%2]+"/v1/chat/completions", "", chatBody("replicated", fmt.Sprint("after-", i))))
	}
	relWaitStreamMsgs(t, js, requestStream, 0)
	waitIdle(t, fake)
	recs, distinct, twice := relNeverTwiceAtOnce(t, fake)
	t.Logf("the provider received %d calls for %d distinct requests; called more than once: %q", recs, distinct, twice)
	if gone := sys.exited(); len(gone) != 1 {
		t.Errorf("processes exited: %q, want only the killed node", gone)
	}
}
