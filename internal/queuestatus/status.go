// Package queuestatus reads the state of llmq's queue for operators: how
// many requests wait in each band and model group, how old the oldest one
// is, how much of its limits each deployment uses across all workers, and
// how many requests are in the dead-letter stream. It costs one stream-info
// request plus one message lookup per non-empty band and group, and a few
// for the newest dead letters, so it is meant for an on-demand status view
// (GET /v1/queue, the /ui page, llmqctl status), not for a hot path; metrics
// come from message metadata.
package queuestatus

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/deadletter"
	"github.com/llmq/llmq/internal/pauses"
	"github.com/llmq/llmq/internal/router"
	"github.com/llmq/llmq/internal/waitstats"
	"github.com/llmq/llmq/pkg/messages"
)

// Queue is the backlog of one band and group.
type Queue struct {
	Band  int    `json:"band"`
	Group string `json:"group"`
	// Depth counts the requests in the stream: waiting, or being served and
	// not yet acknowledged.
	Depth uint64 `json:"depth"`
	// OldestWaitMs is the age of the oldest of them, in milliseconds.
	OldestWaitMs int64 `json:"oldest_wait_ms"`
	// Tenants splits Depth by the subject the requests wait on: the band
	// and group's own (anonymous callers, old publishers) and each tenant
	// lane, largest first.
	Tenants []TenantQueue `json:"tenants"`
}

// TenantQueue is the backlog of one subject of a band and group.
type TenantQueue struct {
	// Tenant is the tenant of the oldest request there. Tenants whose names
	// hash to the same lane share it, and then only the oldest one's shows.
	Tenant       string `json:"tenant"`
	Depth        uint64 `json:"depth"`
	OldestWaitMs int64  `json:"oldest_wait_ms"`
}

// Status is the queue's state at one moment.
type Status struct {
	Stream      string       `json:"stream"`
	Total       uint64       `json:"total"`
	Queues      []Queue      `json:"queues"` // non-empty (band, group) pairs, by band then group
	Deployments []Deployment `json:"deployments"`
	// DeadLetters is nil when the dead-letter stream cannot be read (it
	// does not exist yet, or this connection may not read it).
	DeadLetters *DeadLetters `json:"dead_letters,omitempty"`
	// Paused are the groups and bands an operator paused (llmqctl pause);
	// band -1 is the whole group. Set by the caller.
	Paused []pauses.Pause `json:"paused"`
	// QueueWait is, per band, how many requests the gateway that answers
	// answered in the last minute after a pickup, and the p50 and p99 of
	// their waits for it (internal/waitstats); absent where nobody recorded
	// them (llmqctl). Set by the caller.
	QueueWait []waitstats.Band `json:"queue_wait,omitempty"`
	// Batches are the batches not over (/v1/batches), oldest first. Set by
	// the caller.
	Batches []Batch `json:"batches"`
}

// Batch is one batch that is not over: its lines wait in Band like any
// request, and are counted in Queues.
type Batch struct {
	ID       string `json:"id"`
	Status   string `json:"status"`
	Band     int    `json:"band"`
	Priority int64  `json:"priority"`
	// Tenant is who its lines are for ("" for anonymous callers).
	Tenant    string `json:"tenant,omitempty"`
	Total     int    `json:"total"`
	Completed int    `json:"completed"`
	Failed    int    `json:"failed"`
	CreatedAt int64  `json:"created_at"` // Unix seconds
	ExpiresAt int64  `json:"expires_at"` // Unix seconds
}

// DeadLetters summarises the dead-letter stream.
type DeadLetters struct {
	Count  uint64       `json:"count"`
	Latest []DeadLetter `json:"latest"` // newest first, at most LatestDeadLetters
}

// DeadLetter is one entry of DeadLetters.Latest.
type DeadLetter struct {
	Seq       uint64 `json:"seq"` // its id for llmqctl dead show/replay/purge
	Band      int    `json:"band"`
	Group     string `json:"group"`
	RequestID string `json:"request_id,omitempty"`
	Reason    string `json:"reason"` // cut to MaxReason bytes
	AgeMs     int64  `json:"age_ms"`
}

// deadReadTimeout bounds the reading of the dead-letter stream.
const deadReadTimeout = 2 * time.Second

// LatestDeadLetters is how many dead letters Status lists; MaxReason bounds
// the length of each one's reason.
const (
	LatestDeadLetters = 5
	MaxReason         = 200
)

// Deployment is one deployment's use of its limits, across every worker
// process (from the shared limiter state; zero without limits).
type Deployment struct {
	ID            string     `json:"id"`
	Group         string     `json:"group"`
	InFlight      int        `json:"in_flight"`
	MaxParallel   int        `json:"max_parallel_requests,omitempty"`
	RequestsUsed  int64      `json:"rpm_used"`
	RPM           int64      `json:"rpm,omitempty"`
	TokensUsed    int64      `json:"tpm_used"`
	TPM           int64      `json:"tpm,omitempty"`
	CooldownUntil *time.Time `json:"cooldown_until,omitempty"`
	// CooldownMs is the time left of the cooldown, in milliseconds, from
	// the reader's clock (so a page need not trust its own).
	CooldownMs     int64  `json:"cooldown_remaining_ms,omitempty"`
	CooldownReason string `json:"cooldown_reason,omitempty"`
}

// Deployments reports every deployment of r, sorted by group and id.
func Deployments(r *router.Router, now time.Time) []Deployment {
	out := []Deployment{}
	for _, d := range r.Deployments() {
		dep := Deployment{ID: d.ID, Group: d.Group}
		if d.Limiter != nil {
			u := d.Limiter.Usage(now)
			dep.InFlight, dep.MaxParallel = u.InFlight, u.Limits.MaxParallel
			dep.RequestsUsed, dep.RPM = u.Requests, u.Limits.RPM
			dep.TokensUsed, dep.TPM = u.Tokens, u.Limits.TPM
			if !u.CooldownUntil.IsZero() {
				dep.CooldownUntil = &u.CooldownUntil
				dep.CooldownMs = max(u.CooldownUntil.Sub(now).Milliseconds(), 1)
				dep.CooldownReason = u.CooldownReason
			}
		}
		out = append(out, dep)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group != out[j].Group {
			return out[i].Group < out[j].Group
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Read returns the status of the request stream of subjects.
func Read(ctx context.Context, js jetstream.JetStream, subjects messages.Subjects, now time.Time) (*Status, error) {
	stream, err := js.Stream(ctx, subjects.RequestStream())
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", subjects.RequestStream(), err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(subjects.RequestWildcard()))
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", subjects.RequestStream(), err)
	}
	st := &Status{Stream: subjects.RequestStream(), Total: info.State.Msgs, Queues: []Queue{}, Paused: []pauses.Pause{}}
	// A band and group's requests may be on several subjects (its own and
	// its tenant lanes'): one queue each, with the oldest of them.
	at := map[[2]any]int{}
	for subj, n := range info.State.Subjects {
		band, group, err := subjects.ParseRequest(subj)
		if err != nil || n == 0 {
			continue
		}
		k := [2]any{band, group}
		i, ok := at[k]
		if !ok {
			i = len(st.Queues)
			at[k] = i
			st.Queues = append(st.Queues, Queue{Band: band, Group: group})
		}
		q := &st.Queues[i]
		q.Depth += n
		tq := TenantQueue{Tenant: messages.TenantAnonymous, Depth: n}
		if m, err := stream.GetMsg(ctx, info.State.FirstSeq, jetstream.WithGetMsgSubject(subj)); err == nil {
			tq.OldestWaitMs = max(now.Sub(m.Time).Milliseconds(), 0)
			if t := m.Header.Get(messages.HeaderTenant); t != "" {
				tq.Tenant = t
			}
			q.OldestWaitMs = max(q.OldestWaitMs, tq.OldestWaitMs)
		}
		q.Tenants = append(q.Tenants, tq)
	}
	for i := range st.Queues {
		sort.Slice(st.Queues[i].Tenants, func(a, b int) bool {
			x, y := st.Queues[i].Tenants[a], st.Queues[i].Tenants[b]
			if x.Depth != y.Depth {
				return x.Depth > y.Depth
			}
			return x.Tenant < y.Tenant
		})
	}
	sort.Slice(st.Queues, func(i, j int) bool {
		a, b := st.Queues[i], st.Queues[j]
		if a.Band != b.Band {
			return a.Band < b.Band
		}
		return a.Group < b.Group
	})
	st.DeadLetters = readDead(ctx, js, subjects, now)
	return st, nil
}

// readDead summarises the dead-letter stream, or returns nil if it cannot
// be read.
func readDead(ctx context.Context, js jetstream.JetStream, subjects messages.Subjects, now time.Time) *DeadLetters {
	// Bounded on its own: a connection that may not read the stream gets no
	// answer at all, and the queue's status must not wait for it.
	ctx, cancel := context.WithTimeout(ctx, deadReadTimeout)
	defer cancel()
	dead, err := deadletter.Open(ctx, js, subjects)
	if err != nil {
		return nil
	}
	state, err := dead.State(ctx)
	if err != nil {
		return nil
	}
	out := &DeadLetters{Count: state.Count, Latest: []DeadLetter{}}
	latest, _ := dead.Latest(ctx, LatestDeadLetters)
	for _, l := range latest {
		reason := l.Reason
		if len(reason) > MaxReason {
			reason = strings.ToValidUTF8(reason[:MaxReason], "") + "…"
		}
		out.Latest = append(out.Latest, DeadLetter{Seq: l.Seq, Band: l.Band, Group: l.Group, RequestID: l.RequestID,
			Reason: reason, AgeMs: max(now.Sub(l.Time).Milliseconds(), 0)})
	}
	return out
}
