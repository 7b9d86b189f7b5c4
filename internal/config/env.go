package config

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/llmq/llmq/pkg/client"
)

// Env holds the process settings, read from LLMQ_* variables by the binaries' main.
type Env struct {
	Config              string        `envconfig:"CONFIG" default:"deploy/config.example.yaml" desc:"path of the YAML config (LiteLLM config.yaml shape plus llmq_settings)"`
	Listen              string        `envconfig:"LISTEN" default:":4000" desc:"gateway HTTP listen address"`
	NATSURL             string        `envconfig:"NATS_URL" desc:"NATS server URL(s), comma-separated; empty = the gateway embeds a JetStream server"`
	NATSCreds           string        `envconfig:"NATS_CREDS" desc:"NATS credentials file (.creds: JWT and nkey seed)"`
	NATSNKeySeed        string        `envconfig:"NATS_NKEY_SEED" desc:"file holding a NATS nkey seed"`
	NATSUser            string        `envconfig:"NATS_USER" desc:"NATS user name (with LLMQ_NATS_PASSWORD)"`
	NATSPassword        string        `envconfig:"NATS_PASSWORD" desc:"NATS password"`
	NATSToken           string        `envconfig:"NATS_TOKEN" desc:"NATS authentication token"`
	NATSTLSCA           string        `envconfig:"NATS_TLS_CA" desc:"PEM file of the CAs that sign the NATS server's certificate; enables TLS"`
	NATSTLSCert         string        `envconfig:"NATS_TLS_CERT" desc:"PEM client certificate for NATS (with LLMQ_NATS_TLS_KEY)"`
	NATSTLSKey          string        `envconfig:"NATS_TLS_KEY" desc:"PEM private key of the NATS client certificate"`
	NATSInboxPrefix     string        `envconfig:"NATS_INBOX_PREFIX" desc:"prefix of this process's reply subjects instead of _INBOX, so NATS permissions can keep each role's replies private"`
	DataDir             string        `envconfig:"DATA_DIR" default:"llmq-data" desc:"JetStream store directory of the embedded server"`
	EmbeddedNATSListen  string        `envconfig:"EMBEDDED_NATS_LISTEN" default:"127.0.0.1:4222" desc:"client address of the embedded NATS server; port 0 or -1 picks a free port; empty = no TCP listener (in-process only)"`
	EmbeddedNATSMonitor string        `envconfig:"EMBEDDED_NATS_MONITOR" desc:"host:port of the embedded NATS server's HTTP monitoring endpoints (/varz, /connz, /jsz, …); port 0 or -1 picks a free port; empty = none; loopback hosts only"`
	EmbeddedWorkers     int           `envconfig:"EMBEDDED_WORKERS" default:"16" desc:"worker slots run inside the gateway when it embeds NATS (0 = none)"`
	WorkerSlots         int           `envconfig:"WORKER_SLOTS" default:"16" desc:"concurrent requests one worker process serves"`
	LogLevel            string        `envconfig:"LOG_LEVEL" default:"info" desc:"debug, info, warn or error"`
	LogFormat           string        `envconfig:"LOG_FORMAT" default:"text" desc:"text or json"`
	MaxBodyBytes        int64         `envconfig:"MAX_BODY_BYTES" default:"786432" desc:"largest accepted request body; must fit NATS's max payload (1 MiB by default)"`
	MetricsListen       string        `envconfig:"METRICS_LISTEN" desc:"worker process: address of its /metrics listener (e.g. :9091); empty = none. The gateway serves /metrics on its own port"`
	ShutdownTimeout     time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"30s" desc:"how long SIGTERM waits for in-flight work"`
	PublishTimeout      time.Duration `envconfig:"PUBLISH_TIMEOUT" default:"10s" desc:"gateway: how long a request's publish may wait for JetStream's acknowledgement, repeated while a cluster elects a new stream leader (nats-server takes 4 to 9 s); past it the caller gets 503"`
	ParkAfter           time.Duration `envconfig:"PARK_AFTER" default:"1s" desc:"gateway: a request (not a stream) that waited this long in the queue gives its HTTP/1.x connection's goroutine and buffers back and is answered with Connection: close; 0 = never"`
}

// NATSSecurity returns the NATS connection security settings.
func (e Env) NATSSecurity() client.Security {
	return client.Security{
		CredsFile: e.NATSCreds, NKeySeedFile: e.NATSNKeySeed, User: e.NATSUser, Password: e.NATSPassword,
		Token: e.NATSToken, CAFile: e.NATSTLSCA, CertFile: e.NATSTLSCert, KeyFile: e.NATSTLSKey,
		InboxPrefix: e.NATSInboxPrefix,
	}
}

// Limits of Env.MaxBodyBytes.
const (
	MinBodyBytes = 1 << 10
	MaxBodyBytes = 64 << 20
)

// Validate returns an errors.Join of every problem in e, each naming its variable (e.g.
// "LLMQ_WORKER_SLOTS: must be at least 1"), or nil.
func (e Env) Validate() error {
	var errs []error
	add := func(name, format string, args ...any) {
		errs = append(errs, fmt.Errorf("LLMQ_%s: %s", name, fmt.Sprintf(format, args...)))
	}
	if e.Config == "" {
		add("CONFIG", "must not be empty")
	}
	if e.Listen == "" {
		add("LISTEN", "must not be empty")
	}
	if e.NATSURL == "" && e.DataDir == "" {
		add("DATA_DIR", "must not be empty when LLMQ_NATS_URL is empty (embedded server)")
	}
	for _, v := range []struct{ name, addr string }{
		{"EMBEDDED_NATS_LISTEN", e.EmbeddedNATSListen},
		{"EMBEDDED_NATS_MONITOR", e.EmbeddedNATSMonitor},
	} {
		name, addr := v.name, v.addr
		if addr == "" {
			continue
		}
		_, port, err := net.SplitHostPort(addr)
		if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < -1 || n > 65535 {
			add(name, "must be host:port with a port from -1 to 65535, got %q", addr)
		}
	}
	if e.EmbeddedWorkers < 0 {
		add("EMBEDDED_WORKERS", "must not be negative")
	}
	if e.WorkerSlots < 1 {
		add("WORKER_SLOTS", "must be at least 1")
	}
	switch e.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		add("LOG_LEVEL", "must be debug, info, warn or error, got %q", e.LogLevel)
	}
	switch e.LogFormat {
	case "text", "json":
	default:
		add("LOG_FORMAT", "must be text or json, got %q", e.LogFormat)
	}
	if e.MaxBodyBytes < MinBodyBytes || e.MaxBodyBytes > MaxBodyBytes {
		add("MAX_BODY_BYTES", "must be between %d (1 KiB) and %d (64 MiB), got %d", MinBodyBytes, MaxBodyBytes, e.MaxBodyBytes)
	}
	if e.ShutdownTimeout <= 0 {
		add("SHUTDOWN_TIMEOUT", "must be positive")
	}
	if e.PublishTimeout <= 0 {
		add("PUBLISH_TIMEOUT", "must be positive")
	}
	if e.ParkAfter < 0 {
		add("PARK_AFTER", "must not be negative")
	}
	return errors.Join(errs...)
}
