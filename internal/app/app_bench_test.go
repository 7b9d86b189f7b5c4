package app_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/llmq/llmq/internal/app"
	"github.com/llmq/llmq/internal/config"
)

// benchConfig has one model group served by a mock deployment: no network
// call leaves the process.
const benchConfig = `model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      mock_response: "hello from the benchmark"
    model_info:
      id: mock-bench
router_settings:
  timeout: 60
`

// BenchmarkEnqueueAndWait measures the gateway's whole enqueue-and-wait path
// against an in-process server: an HTTP chat request is parsed, published to
// the embedded JetStream server, picked up by one of four in-process worker
// slots (pickup handshake, mock call, reply, ack) and answered. The allocation
// figures count the whole process: gateway, NATS server and workers.
func BenchmarkEnqueueAndWait(b *testing.B) {
	dir := b.TempDir()
	cfgPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(benchConfig), 0o600); err != nil {
		b.Fatal(err)
	}
	env := config.Env{
		Config:             cfgPath,
		Listen:             "127.0.0.1:0",
		DataDir:            filepath.Join(dir, "data"),
		EmbeddedNATSListen: "", // in-process connections only
		EmbeddedWorkers:    4,
		WorkerSlots:        1,
		LogLevel:           "error",
		LogFormat:          "text",
		MaxBodyBytes:       786432,
		ShutdownTimeout:    5 * time.Second,
		PublishTimeout:     10 * time.Second,
	}
	ctx, cancel := context.WithCancel(b.Context())
	g, err := app.StartGateway(ctx, env, func(string) (string, bool) { return "", false }, io.Discard)
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

	url := "http://" + g.Addr().String() + "/v1/chat/completions"
	body := []byte(`{"model":"bench","messages":[{"role":"user","content":"hi"}],"priority":3}`)
	client := &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
	}
	b.Cleanup(client.CloseIdleConnections)
	post := func() error {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return &statusError{resp.Status}
		}
		return nil
	}
	if err := post(); err != nil { // the first request also opens the consumers' paths
		b.Fatalf("first request: %v", err)
	}

	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := post(); err != nil {
				b.Errorf("request: %v", err)
				return
			}
		}
	})
}

type statusError struct{ status string }

func (e *statusError) Error() string { return "status " + e.status }
