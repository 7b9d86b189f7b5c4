// Package reload carries a configuration reload to a running process and
// its answer back: the process's own SIGHUP, and a request on the
// subject every gateway and worker process listens on (llmqctl reload asks
// them all at once and collects their answers).
//
// Serve owns the order: one reload at a time per process, in the order the
// triggers arrive. What a reload does is the process's (internal/app).
package reload

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go"
)

// Result is one process's answer to a reload.
type Result struct {
	// Process names the process: its kind, host and pid.
	Process string `json:"process"`
	// OK reports that the new configuration is in force.
	OK bool `json:"ok"`
	// Error says why the reload was refused (the running configuration is
	// kept), one problem a line.
	Error string `json:"error,omitempty"`
	// Groups and Deployments describe the configuration in force after it.
	Groups      []string `json:"groups,omitempty"`
	Deployments int      `json:"deployments,omitempty"`
}

// Func reloads and says how it went.
type Func func(ctx context.Context) Result

// Serve runs reloads until ctx ends: one for each signal on sig (may be
// nil) and each request on subject over nc, which gets the Result as its
// answer. A reload is bounded by timeout.
func Serve(ctx context.Context, nc *nats.Conn, subject string, sig <-chan os.Signal, timeout time.Duration, do Func) error {
	reqs := make(chan *nats.Msg, 16)
	sub, err := nc.ChanSubscribe(subject, reqs)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", subject, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	run := func() Result {
		rctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return do(rctx)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sig:
			run()
		case m := <-reqs:
			res, _ := json.Marshal(run())
			if m.Reply != "" {
				_ = m.Respond(res)
			}
		}
	}
}

// Ask asks every process listening on subject to reload and returns the
// answers that came within wait. No answer at all is an error.
func Ask(ctx context.Context, nc *nats.Conn, subject string, wait time.Duration) ([]Result, error) {
	inbox := nc.NewInbox()
	answers := make(chan *nats.Msg, 64)
	sub, err := nc.ChanSubscribe(inbox, answers)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, err
	}
	if err := nc.FlushWithContext(ctx); err != nil {
		return nil, err
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var out []Result
	for {
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-timer.C:
			if len(out) == 0 {
				return nil, fmt.Errorf("no gateway or worker process answered on %s within %s (is the subject prefix right? see --prefix)", subject, wait)
			}
			return out, nil
		case m := <-answers:
			if len(m.Data) == 0 && m.Header.Get("Status") == "503" {
				continue // no responders: nobody listens (yet); the wait decides
			}
			var r Result
			if err := json.Unmarshal(m.Data, &r); err != nil {
				r = Result{Process: "?", Error: "undecodable answer: " + err.Error()}
			}
			out = append(out, r)
		}
	}
}
