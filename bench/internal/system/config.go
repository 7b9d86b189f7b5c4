// Package system starts the systems under test on 127.0.0.1: the llmq
// gateway in this process (app.StartGateway with its embedded NATS server and
// workers, or connected to an external NATS) or as separate gateway and
// worker processes, in-process workers (app.RunWorker), a 3-node NATS
// JetStream cluster of three processes (StartCluster, RunNode), and a plain
// HTTP forwarding hop as the baseline. The fake upstream is
// internal/fakeupstream, used as is.
//
// Every Start function returns a value whose Close stops what it started and
// waits for it, within a bounded time.
package system

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"gopkg.in/yaml.v3"
)

// Group is the model group of every benchmark config.
const Group = "bench"

// Config is what varies between the benchmark configs.
type Config struct {
	// UpstreamURL is the base URL (ending in /v1) of the one deployment.
	UpstreamURL string
	// QueueTimeout is router_settings.timeout, the queue deadline.
	QueueTimeout time.Duration
	// Replicas is llmq_settings.replicas, the JetStream replicas of the
	// streams and consumers; 0 leaves it out (llmq's default, 1).
	Replicas int
}

// WriteConfig writes a LiteLLM-shaped config with one model group, Group,
// served by one deployment at c.UpstreamURL with no concurrency limit, and
// c.Replicas, into dir and returns its path.
func WriteConfig(dir string, c Config) (string, error) {
	type params struct {
		Model   string  `yaml:"model"`
		APIBase string  `yaml:"api_base"`
		APIKey  string  `yaml:"api_key"`
		Timeout float64 `yaml:"timeout"`
	}
	type deployment struct {
		ModelName string            `yaml:"model_name"`
		Params    params            `yaml:"litellm_params"`
		ModelInfo map[string]string `yaml:"model_info"`
	}
	doc := struct {
		ModelList      []deployment   `yaml:"model_list"`
		RouterSettings map[string]any `yaml:"router_settings"`
		LLMQSettings   map[string]any `yaml:"llmq_settings,omitempty"`
	}{
		ModelList: []deployment{{
			ModelName: Group,
			Params:    params{Model: "openai/" + Group + "-upstream", APIBase: c.UpstreamURL, APIKey: "bench", Timeout: 120},
			ModelInfo: map[string]string{"id": "fake-upstream"},
		}},
		RouterSettings: map[string]any{"timeout": c.QueueTimeout.Seconds(), "num_retries": 0},
	}
	if c.Replicas > 0 {
		doc.LLMQSettings = map[string]any{"replicas": c.Replicas}
	}
	data, err := yaml.Marshal(doc)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("write config: %w", err)
	}
	return path, nil
}

// ChatBody is a small chat completion request for Group. A priority below 0
// leaves the field out (the router's default priority applies).
func ChatBody(priority int) []byte {
	p := ""
	if priority >= 0 {
		p = `,"priority":` + strconv.Itoa(priority)
	}
	return []byte(`{"model":"` + Group + `","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16` + p + `}`)
}

// ChatURL is the chat completions URL under base (which ends in /v1).
func ChatURL(base string) string { return base + "/chat/completions" }
