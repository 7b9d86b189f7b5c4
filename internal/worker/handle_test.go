package worker

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/llmq/llmq/pkg/messages"
)

// TestRequestLog: a request's log lines carry its id, band, group and tenant, as
// Logger.With would add them, also under a group.
func TestRequestLog(t *testing.T) {
	var out bytes.Buffer
	base := slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelInfo}))
	log := slog.New(requestLog{Handler: base.Handler(), req: &messages.Request{ID: "r1", Band: 3, Group: "g", Tenant: "acme"}})

	log.Debug("hidden")
	log.Info("served", "duration", "1s")
	log.WithGroup("call").Info("retrying", "try", 2)
	log.With("deployment", "d1").Warn("failed")

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	want := []string{
		`msg=served duration=1s request_id=r1 band=3 group=g tenant=acme`,
		`msg=retrying request_id=r1 band=3 group=g tenant=acme call.try=2`,
		`msg=failed request_id=r1 band=3 group=g tenant=acme deployment=d1`,
	}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), out.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d is %q, want it to contain %q", i+1, lines[i], w)
		}
	}
}
