package integration

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// upstreamHost is the vendor host name of the proxy test. The .invalid
// top-level domain never resolves (RFC 2606), so a call that skipped the
// proxy fails instead of reaching any network.
const upstreamHost = "llmq-upstream.invalid"

// TestProviderCallsHonourHTTPSProxy checks that provider calls go through
// HTTPS_PROXY, as corporate networks need. Go reads HTTPS_PROXY (and
// SSL_CERT_FILE, for the fake vendor's certificate) once per process, from
// the real environment, so the gateway runs in a child process of this test
// binary with those variables set, as a user would run it. The parent runs
// a CONNECT proxy on loopback and an HTTPS fake vendor; the proxy sends the
// tunnel for llmq-upstream.invalid:443 to the fake.
func TestProviderCallsHonourHTTPSProxy(t *testing.T) {
	if os.Getenv("LLMQ_TEST_PROXY_CHILD") == "1" {
		proxyChild(t)
		return
	}
	dir := t.TempDir()
	cert, certFile := selfSigned(t, dir, upstreamHost)
	fake := fakeupstream.New(fakeupstream.Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	t.Cleanup(fake.Close)
	fakeAddr := strings.TrimPrefix(strings.TrimSuffix(fake.URL, "/v1"), "https://")
	proxy := startConnectProxy(t, map[string]string{upstreamHost + ":443": fakeAddr})

	cmd := exec.CommandContext(waitCtx(t), os.Args[0], "-test.run=^TestProviderCallsHonourHTTPSProxy$", "-test.v")
	cmd.Env = append(os.Environ(),
		"LLMQ_TEST_PROXY_CHILD=1",
		"LLMQ_TEST_DATA="+dir,
		"HTTPS_PROXY=http://"+proxy.addr,
		"https_proxy=http://"+proxy.addr,
		"NO_PROXY=", "no_proxy=",
		"SSL_CERT_FILE="+certFile,
	)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child gateway: %v\n%s", err, out)
	}
	if got := proxy.tunnels(); len(got) != 1 || got[0] != upstreamHost+":443" {
		t.Errorf("the proxy opened tunnels %q, want one to %s:443", got, upstreamHost)
	}
	r := only(t, fake)
	if r.Host != upstreamHost || r.Path != "/openai/v1/chat/completions" || r.Header.Get("Authorization") != "Bearer gsk-proxy" {
		t.Errorf("the vendor saw Host %q path %q auth %q", r.Host, r.Path, r.Header.Get("Authorization"))
	}
}

// proxyChild is the child process: a gateway whose only deployment is at
// https://llmq-upstream.invalid, called once with openai-go.
func proxyChild(t *testing.T) {
	env := baseEnv(writeText(t, `
model_list:
  - model_name: groq
    litellm_params: {model: groq/llama-3.3-70b, api_base: "https://`+upstreamHost+`/openai/v1", api_key: gsk-proxy}
`))
	env.DataDir = t.TempDir()
	env.EmbeddedWorkers = 1
	ctx, cancel := context.WithCancel(t.Context())
	g, err := app.StartGateway(ctx, env, noEnv, newTestLog(t))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() { cancel(); _ = g.Wait() }()
	oc := openai.NewClient(option.WithBaseURL("http://"+g.Addr().String()+"/v1/"), option.WithAPIKey("x"), option.WithMaxRetries(0))
	chat(t, oc, "groq")
}

// selfSigned writes a self-signed certificate for host into dir and returns
// it and the PEM file's path.
func selfSigned(t *testing.T, dir, host string) (tls.Certificate, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "vendor.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, path
}

// connectProxy is an HTTP CONNECT proxy on loopback that only tunnels to
// the targets it was given (host:port -> loopback address).
type connectProxy struct {
	addr   string
	mu     sync.Mutex
	opened []string
}

func (p *connectProxy) tunnels() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.opened...)
}

func startConnectProxy(t *testing.T, routes map[string]string) *connectProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &connectProxy{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { p.serve(c, routes) })
		}
	})
	return p
}

func (p *connectProxy) serve(c net.Conn, routes map[string]string) {
	defer c.Close()
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	to, ok := routes[req.Host]
	if req.Method != http.MethodConnect || !ok {
		_, _ = io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
		return
	}
	up, err := net.Dial("tcp", to)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	p.mu.Lock()
	p.opened = append(p.opened, req.Host)
	p.mu.Unlock()
	_, _ = io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n")
	done := make(chan struct{})
	go func() { _, _ = io.Copy(up, br); up.(*net.TCPConn).CloseWrite(); close(done) }()
	_, _ = io.Copy(c, up)
	<-done
}
