package integration

// Operations and security (issue 6): the metrics exposition after a known
// workload (golden file), the per-key priority policy, NATS user/password and
// TLS, and the queue status page.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ops")

// ---------------------------------------------------------------------------
// Config with llmq_settings.keys

type opsKey struct {
	Name            string   `yaml:"name"`
	Key             string   `yaml:"key"`
	MaxPriority     *int64   `yaml:"max_priority,omitempty"`
	DefaultPriority *int64   `yaml:"default_priority,omitempty"`
	RPMLimit        int64    `yaml:"rpm_limit,omitempty"`
	Models          []string `yaml:"models,omitempty"`
}

type opsLLMQ struct {
	Keys []opsKey `yaml:"keys,omitempty"`
}

type opsConfig struct {
	ModelList       []deployment     `yaml:"model_list"`
	RouterSettings  *routerSettings  `yaml:"router_settings,omitempty"`
	GeneralSettings *generalSettings `yaml:"general_settings,omitempty"`
	LLMQ            *opsLLMQ         `yaml:"llmq_settings,omitempty"`
}

func writeOpsConfig(t *testing.T, cfg opsConfig) string {
	t.Helper()
	return writeYAMLConfig(t, cfg)
}

// runWorkerEnv runs app.RunWorker with env until the test ends.
func runWorkerEnv(t *testing.T, env config.Env) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- app.RunWorker(ctx, env, noEnv, newTestLog(t)) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("worker stopped with: %v", err)
		}
	})
}

// ---------------------------------------------------------------------------
// 1. Metrics golden file

// metricsFilter keeps the value lines of llmq_requests_total and
// llmq_dead_letters_total and the HELP/TYPE lines of every llmq_ family, sorted.
func metricsFilter(exposition []byte) []string {
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(exposition))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "llmq_requests_total"), strings.HasPrefix(line, "llmq_dead_letters_total"),
			strings.HasPrefix(line, "# HELP llmq_"), strings.HasPrefix(line, "# TYPE llmq_"):
			out = append(out, line)
		}
	}
	slices.Sort(out)
	return out
}

// requestsTotal sums the values of the llmq_requests_total series.
func requestsTotal(t *testing.T, lines []string) float64 {
	t.Helper()
	var sum float64
	for _, l := range lines {
		if !strings.HasPrefix(l, "llmq_requests_total") {
			continue
		}
		f := strings.Fields(l)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", l, err)
		}
		sum += v
	}
	return sum
}

func TestOpsMetricsGolden(t *testing.T) {
	const master = "sk-master-metrics"
	fake := newFake(t)
	canned := "canned answer"
	cfg := writeOpsConfig(t, opsConfig{
		ModelList: []deployment{
			fakeDeployment("alpha", "alpha-0", fake, 0),
			{ModelName: "canned", Params: deployParams{MockResponse: ptr(canned)}, ModelInfo: &modelInfo{ID: "canned-0"}},
		},
		GeneralSettings: &generalSettings{MasterKey: master},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	chat := g.URL + "/v1/chat/completions"

	// The workload: 3 served at priority 0 (alpha), 1 served at priority 9
	// (canned), one 400 (invalid priority), one 404 (unknown model), one 401.
	for i := range 3 {
		checkServed(t, mustPost(t, chat, master, chatBody("alpha", "served "+strconv.Itoa(i), `"priority":0`)))
	}
	if r := mustPost(t, chat, master, chatBody("canned", "mock", `"priority":9`)); r.Status != http.StatusOK || !strings.Contains(string(r.Body), canned) {
		t.Errorf("mock request: %s", r)
	}
	checkError(t, mustPost(t, chat, master, chatBody("alpha", "bad", `"priority":"high"`)), http.StatusBadRequest, "priority")
	checkError(t, mustPost(t, chat, master, chatBody("nosuch", "unknown")), http.StatusNotFound, "model")
	checkError(t, mustPost(t, chat, "", chatBody("alpha", "no key")), http.StatusUnauthorized, "")

	// The gateway counts a request after answering it: wait until all 7 are counted.
	const want = 7
	ctx := waitCtx(t)
	var lines []string
	for {
		r := mustGet(t, g.URL+"/metrics", "")
		if r.Status != http.StatusOK {
			t.Fatalf("GET /metrics: %s", r)
		}
		lines = metricsFilter(r.Body)
		n := requestsTotal(t, lines)
		if n == want {
			break
		}
		if n > want {
			t.Fatalf("llmq_requests_total sums to %v, want %d:\n%s", n, want, strings.Join(lines, "\n"))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("llmq_requests_total sums to %v, want %d:\n%s", n, want, strings.Join(lines, "\n"))
		case <-time.After(5 * time.Millisecond):
		}
	}
	got := strings.Join(lines, "\n") + "\n"

	golden := filepath.Join("testdata", "ops", "metrics.golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(golden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wantText, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if got != string(wantText) {
		t.Errorf("metrics differ from %s (run with -update to rewrite it)\n--- got\n%s--- want\n%s", golden, got, wantText)
	}
}

// ---------------------------------------------------------------------------
// 2. Per-key priority policy

func TestOpsKeyPolicy(t *testing.T) {
	const (
		master      = "sk-master-policy"
		batch       = "sk-batch-policy"
		interactive = "sk-interactive-policy"
	)
	fake := newFake(t)
	cfg := writeOpsConfig(t, opsConfig{
		ModelList: []deployment{
			fakeDeployment("alpha", "alpha-0", fake, 0),
			fakeDeployment("beta", "beta-0", fake, 0),
		},
		GeneralSettings: &generalSettings{MasterKey: master},
		LLMQ: &opsLLMQ{Keys: []opsKey{
			{Name: "batch", Key: batch, MaxPriority: ptr[int64](5), DefaultPriority: ptr[int64](7), RPMLimit: 3, Models: []string{"alpha"}},
			{Name: "interactive", Key: interactive},
		}},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	chat := g.URL + "/v1/chat/completions"

	priorityOf := func(r *result) string { return r.Header.Get("x-llmq-priority") }

	// Forbidden group first: it must not count against the rpm_limit either way.
	r := mustPost(t, chat, batch, chatBody("beta", "forbidden", `"priority":5`))
	checkError(t, r, http.StatusForbidden, "model")

	r = mustPost(t, chat, batch, chatBody("alpha", "clamped", `"priority":0`))
	checkServed(t, r)
	if p := priorityOf(r); p != "5" {
		t.Errorf("batch asking priority 0: x-llmq-priority %q, want 5 (the key's ceiling)", p)
	}
	r = mustPost(t, chat, batch, chatBody("alpha", "default"))
	checkServed(t, r)
	if p := priorityOf(r); p != "7" {
		t.Errorf("batch without priority: x-llmq-priority %q, want 7 (the key's default)", p)
	}
	r = mustPost(t, chat, batch, chatBody("alpha", "third", `"priority":6`))
	checkServed(t, r)
	if p := priorityOf(r); p != "6" {
		t.Errorf("batch asking priority 6: x-llmq-priority %q, want 6", p)
	}
	r = mustPost(t, chat, batch, chatBody("alpha", "fourth", `"priority":6`))
	checkError(t, r, http.StatusTooManyRequests, "")
	var e openAIError
	if json.Unmarshal(r.Body, &e) == nil && e.Error != nil && e.Error.Code != "rate_limit_exceeded" {
		t.Errorf("429 error code %v, want rate_limit_exceeded: %s", e.Error.Code, r.Body)
	}
	if ra, err := strconv.Atoi(r.Header.Get("Retry-After")); err != nil || ra < 1 || ra > 60 {
		t.Errorf("429 Retry-After %q, want 1 to 60 seconds", r.Header.Get("Retry-After"))
	}
	if strings.Contains(string(r.Body), batch) {
		t.Errorf("the 429 body shows the key: %s", r.Body)
	}

	r = mustPost(t, chat, interactive, chatBody("beta", "interactive", `"priority":0`))
	checkServed(t, r)
	if p := priorityOf(r); p != "0" {
		t.Errorf("interactive asking priority 0: x-llmq-priority %q, want 0", p)
	}

	checkError(t, mustPost(t, chat, "sk-unknown", chatBody("alpha", "unknown key")), http.StatusUnauthorized, "")

	r = mustGet(t, g.URL+"/v1/models", batch)
	var models struct {
		Data []struct {
			ID string `json:"id"`
		} `json:"data"`
	}
	if r.Status != http.StatusOK || json.Unmarshal(r.Body, &models) != nil {
		t.Fatalf("GET /v1/models as batch: %s", r)
	}
	var ids []string
	for _, m := range models.Data {
		ids = append(ids, m.ID)
	}
	if !slices.Equal(ids, []string{"alpha"}) {
		t.Errorf("GET /v1/models as batch lists %q, want [alpha]", ids)
	}
	if n := fake.Count(); n != 4 {
		t.Errorf("the upstream received %d requests, want 4 (3 batch, 1 interactive)", n)
	}
}

// ---------------------------------------------------------------------------
// 3. and 4. NATS security

// startSecureNATS starts a JetStream server with opts on a free loopback port.
func startSecureNATS(t *testing.T, opts server.Options) *server.Server {
	t.Helper()
	opts.Host = "127.0.0.1"
	opts.Port = -1
	opts.JetStream = true
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	opts.NoLog = true
	opts.ServerName = "llmq-ops-test"
	srv, err := server.NewServer(&opts)
	if err != nil {
		t.Fatalf("NATS server: %v", err)
	}
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(waitLimit) {
		t.Fatal("the NATS server is not ready")
	}
	return srv
}

// tryStartGateway starts a gateway that is expected to fail; if it starts
// anyway it is stopped and the test fails.
func tryStartGateway(t *testing.T, env config.Env) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	g, err := app.StartGateway(ctx, env, noEnv, newTestLog(t))
	if err == nil {
		cancel()
		_ = g.Wait()
		t.Fatal("the gateway started although it should not have")
	}
	return err
}

func TestOpsNATSUserPassword(t *testing.T) {
	srv := startSecureNATS(t, server.Options{Username: "llmq", Password: "s3cret"})
	url := srv.ClientURL()
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)}})

	env := baseEnv(cfg)
	env.NATSURL = url
	env.NATSUser, env.NATSPassword = "llmq", "s3cret"
	env.EmbeddedWorkers = 0
	g := startGateway(t, env)
	runWorkerEnv(t, env)
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("alpha", "over user/password")))

	bad := env
	bad.NATSPassword = "wrong"
	err := tryStartGateway(t, bad)
	msg := err.Error()
	if !strings.Contains(msg, "refused the credentials") || !strings.Contains(msg, "NATS") {
		t.Errorf("start-up error with a wrong password is not clear: %v", err)
	}
	if strings.Contains(msg, "wrong") || strings.Contains(msg, "s3cret") {
		t.Errorf("start-up error shows a password: %v", err)
	}

	noCreds := env
	noCreds.NATSUser, noCreds.NATSPassword = "", ""
	if err := tryStartGateway(t, noCreds); !strings.Contains(err.Error(), "NATS") {
		t.Errorf("start-up error without credentials does not name NATS: %v", err)
	}
}

// writeTestPKI writes a CA and a server certificate for 127.0.0.1 signed by
// it into dir, and returns the paths of the CA, the certificate and its key.
func writeTestPKI(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "llmq test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server-key.pem", "EC PRIVATE KEY", keyDER)
}

func TestOpsNATSTLS(t *testing.T) {
	caFile, certFile, keyFile := writeTestPKI(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	srv := startSecureNATS(t, server.Options{
		TLS:        true,
		TLSConfig:  &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		TLSTimeout: 2,
	})
	url := srv.ClientURL()
	fake := newFake(t)
	cfg := writeConfig(t, configFile{ModelList: []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)}})

	env := baseEnv(cfg)
	env.NATSURL = url
	env.NATSTLSCA = caFile
	env.EmbeddedWorkers = 0
	g := startGateway(t, env)
	runWorkerEnv(t, env)
	checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody("alpha", "over TLS")))

	noCA := env
	noCA.NATSTLSCA = ""
	if err := tryStartGateway(t, noCA); !strings.Contains(err.Error(), "NATS") {
		t.Errorf("start-up error without the CA does not name NATS: %v", err)
	}
}

// ---------------------------------------------------------------------------
// 5. Queue status

type queueStatus struct {
	Stream string `json:"stream"`
	Total  uint64 `json:"total"`
	Queues []struct {
		Band         int    `json:"band"`
		Group        string `json:"group"`
		Depth        uint64 `json:"depth"`
		OldestWaitMs int64  `json:"oldest_wait_ms"`
	} `json:"queues"`
	Deployments []struct {
		ID    string `json:"id"`
		Group string `json:"group"`
	} `json:"deployments"`
	Batches []struct {
		ID        string `json:"id"`
		Status    string `json:"status"`
		Band      int    `json:"band"`
		Tenant    string `json:"tenant"`
		Total     int    `json:"total"`
		Completed int    `json:"completed"`
		Failed    int    `json:"failed"`
	} `json:"batches"`
}

func TestOpsQueueStatus(t *testing.T) {
	const (
		master = "sk-master-queue"
		other  = "sk-other-queue"
	)
	natsURL := startNATS(t)
	fake := newFake(t)
	cfg := writeOpsConfig(t, opsConfig{
		ModelList:       []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)},
		GeneralSettings: &generalSettings{MasterKey: master},
		LLMQ:            &opsLLMQ{Keys: []opsKey{{Name: "other", Key: other}}},
	})
	env := baseEnv(cfg)
	env.NATSURL = natsURL
	env.EmbeddedWorkers = 0
	g := startGateway(t, env)
	q := observeQueue(t, natsURL)

	// No worker: the requests stay queued until the test cancels them
	// (this cleanup runs before the gateway's).
	ctx, cancel := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	chat := g.URL + "/v1/chat/completions"
	for i, p := range []int{0, 0, 9} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = post(ctx, chat, master, chatBody("alpha", "queued "+strconv.Itoa(i), `"priority":`+strconv.Itoa(p)))
		}()
	}
	q.waitStored(t, 3)

	// Wait until the page shows the backlog with a measurable age.
	deadline := waitCtx(t)
	var st queueStatus
	for {
		r := mustGet(t, g.URL+"/v1/queue", master)
		if r.Status != http.StatusOK {
			t.Fatalf("GET /v1/queue with the master key: %s", r)
		}
		if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("GET /v1/queue Content-Type %q", ct)
		}
		st = queueStatus{}
		if err := json.Unmarshal(r.Body, &st); err != nil {
			t.Fatalf("GET /v1/queue body: %v: %s", err, r.Body)
		}
		if len(st.Queues) == 2 && st.Queues[0].OldestWaitMs > 0 && st.Queues[1].OldestWaitMs > 0 {
			break
		}
		select {
		case <-deadline.Done():
			t.Fatalf("GET /v1/queue never showed the backlog: %s", r.Body)
		case <-time.After(5 * time.Millisecond):
		}
	}
	b0, b9 := bandOf(0), bandOf(9)
	if b0 == b9 {
		t.Fatalf("priorities 0 and 9 share band %d under the default bands", b0)
	}
	if st.Total != 3 {
		t.Errorf("total %d, want 3", st.Total)
	}
	if q0 := st.Queues[0]; q0.Band != b0 || q0.Group != "alpha" || q0.Depth != 2 {
		t.Errorf("first queue %+v, want band %d, group alpha, depth 2", q0, b0)
	}
	if q1 := st.Queues[1]; q1.Band != b9 || q1.Group != "alpha" || q1.Depth != 1 {
		t.Errorf("second queue %+v, want band %d, group alpha, depth 1", q1, b9)
	}
	if len(st.Deployments) != 1 || st.Deployments[0].ID != "alpha-0" || st.Deployments[0].Group != "alpha" {
		t.Errorf("deployments %+v, want [alpha-0 of alpha]", st.Deployments)
	}

	checkError(t, mustGet(t, g.URL+"/v1/queue", other), http.StatusForbidden, "")
	checkError(t, mustGet(t, g.URL+"/v1/queue", ""), http.StatusUnauthorized, "")
	if n := fake.Count(); n != 0 {
		t.Errorf("the upstream received %d requests without any worker", n)
	}
}
