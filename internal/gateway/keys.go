package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/llmq/llmq/pkg/messages"
)

// Key is one API key and its priority policy.
type Key struct {
	Name   string
	Secret string
	// MaxPriority is the most important priority the key may use; requests
	// asking for better are served at it. Nil: no ceiling.
	MaxPriority *int64
	// DefaultPriority applies when a request names none; nil: the server's.
	DefaultPriority *int64
	// RPMLimit caps the key's requests per minute at this gateway; 0 = none.
	RPMLimit int64
	// Models are the groups the key may use; empty = all.
	Models []string
	// ReadQueue lets the key read the queue status, as the master key may.
	ReadQueue bool
	// Trusted lets the key name the tenant it sends for in x-llmq-tenant.
	Trusted bool
}

// keyring authenticates callers. Keys are compared as SHA-256 digests in
// constant time, and every key is compared, so neither the time nor the
// order reveals how much of a key matched or which key it was.
// masterName is the policy name of general_settings.master_key; keys in
// llmq_settings.keys may not use it.
const masterName = messages.TenantMaster

type keyring struct {
	keys []*policy
}

type policy struct {
	Key
	digest [sha256.Size]byte
	models map[string]bool // nil = all
	window *rpmWindow      // nil = no limit
}

func newKeyring(master string, keys []Key) *keyring {
	if master == "" && len(keys) == 0 {
		return nil
	}
	k := &keyring{}
	if master != "" {
		// The master key is the operator's: it may act for any tenant.
		k.keys = append(k.keys, &policy{Key: Key{Name: masterName, Secret: master, Trusted: true}, digest: sha256.Sum256([]byte(master))})
	}
	for _, key := range keys {
		p := &policy{Key: key, digest: sha256.Sum256([]byte(key.Secret))}
		if len(key.Models) > 0 {
			p.models = make(map[string]bool, len(key.Models))
			for _, m := range key.Models {
				p.models[m] = true
			}
		}
		if key.RPMLimit > 0 {
			p.window = newRPMWindow(key.RPMLimit, time.Minute)
		}
		k.keys = append(k.keys, p)
	}
	return k
}

// carry keeps the rpm_limit counts of old's keys in k where a key's name
// and limit are the same in both (a reload). Either may be nil.
func (k *keyring) carry(old *keyring) {
	if k == nil || old == nil {
		return
	}
	for _, p := range k.keys {
		for _, o := range old.keys {
			if p.window != nil && o.window != nil && p.Name == o.Name && p.RPMLimit == o.RPMLimit {
				p.window = o.window
			}
		}
	}
}

// lookup returns the policy of the presented key, or nil.
func (k *keyring) lookup(presented string) *policy {
	d := sha256.Sum256([]byte(presented))
	var found *policy
	for _, p := range k.keys {
		if subtle.ConstantTimeCompare(d[:], p.digest[:]) == 1 {
			found = p
		}
	}
	return found
}

// allows reports whether the key may use group.
func (p *policy) allows(group string) bool { return p == nil || p.models == nil || p.models[group] }

// priority applies the key's default and ceiling to the asked-for priority.
func (p *policy) priority(asked *int64, serverDefault int64) int64 {
	v := serverDefault
	if p != nil && p.DefaultPriority != nil {
		v = *p.DefaultPriority
	}
	if asked != nil {
		v = *asked
	}
	if p != nil && p.MaxPriority != nil && v < *p.MaxPriority {
		v = *p.MaxPriority
	}
	return v
}

// admit counts one request against the key's rpm_limit.
func (p *policy) admit(now time.Time) *messages.Error {
	if p == nil || p.window == nil {
		return nil
	}
	if wait, ok := p.window.admit(now); !ok {
		return &messages.Error{Outcome: messages.OutcomeRateLimited, Code: "rate_limit_exceeded",
			Message:    "the key " + strconv.Quote(p.Name) + " is over its rpm_limit of " + strconv.FormatInt(p.RPMLimit, 10),
			RetryAfter: strconv.FormatInt(int64(math.Ceil(wait.Seconds())), 10)}
	}
	return nil
}

// rpmWindow is an exact sliding-window log: it admits at most limit events
// in any window of length per. Memory is one timestamp per allowed event.
type rpmWindow struct {
	mu   sync.Mutex
	per  time.Duration
	ring []time.Time // the last len(ring) admissions, oldest at next
	next int
}

func newRPMWindow(limit int64, per time.Duration) *rpmWindow {
	return &rpmWindow{per: per, ring: make([]time.Time, limit)}
}

// admit records an event at now if the window allows it; otherwise it
// returns how long until it would.
func (w *rpmWindow) admit(now time.Time) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	oldest := w.ring[w.next]
	if !oldest.IsZero() && now.Sub(oldest) < w.per {
		return w.per - now.Sub(oldest), false
	}
	w.ring[w.next] = now
	w.next = (w.next + 1) % len(w.ring)
	return 0, true
}

type policyKey struct{}

// auth authenticates the caller and puts its policy in the request context.
// Whether authentication is on is decided per request: a reload may turn it
// on or off.
func (s *Server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		keys := s.cur.Load().keys
		if keys == nil {
			next.ServeHTTP(w, r)
			return
		}
		presented, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		var p *policy
		if ok {
			p = keys.lookup(strings.TrimSpace(presented))
		}
		if p == nil {
			writeError(w, messages.Errorf(messages.OutcomeUnauthenticated, "", "a valid API key is required: send Authorization: Bearer <key>"))
			s.opts.Metrics.Request(noBand, unknownGroup, messages.OutcomeUnauthenticated.String())
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), policyKey{}, p)))
	})
}

// queueReaders lets only the master key and keys with ReadQueue through
// (when authentication is on).
func (s *Server) queueReaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := policyOf(r.Context()); p != nil && p.Name != masterName && !p.ReadQueue {
			writeError(w, messages.Errorf(messages.OutcomeForbidden, "", "only the master key and keys with read_queue may read the queue status"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// policyOf returns the caller's policy, nil when authentication is off.
func policyOf(ctx context.Context) *policy {
	p, _ := ctx.Value(policyKey{}).(*policy)
	return p
}

// tenant returns who a request is for: the tenant its x-llmq-tenant header
// names, if its key is trusted; otherwise the key's name (master for the
// master key), or anonymous without authentication. A header from a key that
// is not trusted, or without authentication, is refused (403): an untrusted
// caller must not be able to spend another tenant's share. With an error it
// returns the caller's own tenant, whom the refusal is counted for.
func (p *policy) tenant(h http.Header) (string, *messages.Error) {
	own := messages.TenantAnonymous
	if p != nil {
		own = p.Name
	}
	named := h.Values(HeaderTenant)
	if len(named) == 0 {
		return own, nil
	}
	switch {
	case p == nil:
		return own, &messages.Error{Outcome: messages.OutcomeForbidden, Code: "tenant_not_allowed",
			Message: "the " + HeaderTenant + " header needs a trusted key (llmq_settings.keys[].trusted), and this gateway has no keys"}
	case !p.Trusted:
		return own, &messages.Error{Outcome: messages.OutcomeForbidden, Code: "tenant_not_allowed",
			Message: "the key " + strconv.Quote(p.Name) + " may not name a tenant: only a key with trusted: true may send " + HeaderTenant}
	case len(named) > 1:
		return own, &messages.Error{Outcome: messages.OutcomeInvalidRequest, Code: "invalid_tenant",
			Message: "send one " + HeaderTenant + " header, not " + strconv.Itoa(len(named))}
	}
	if err := messages.ValidTenant(named[0]); err != nil {
		return own, &messages.Error{Outcome: messages.OutcomeInvalidRequest, Code: "invalid_tenant",
			Message: HeaderTenant + ": " + err.Error()}
	}
	return named[0], nil
}

// Caller is who sent a request, for the handlers mounted with
// Options.Routes (internal/batch): the key's name and policy.
type Caller struct{ p *policy }

// CallerOf returns the caller of a request that passed authentication.
func CallerOf(ctx context.Context) Caller { return Caller{policyOf(ctx)} }

// Name is the key's name: "master" for general_settings.master_key, ""
// when authentication is off.
func (c Caller) Name() string {
	if c.p == nil {
		return ""
	}
	return c.p.Name
}

// Master reports whether the caller may see everyone's resources: the
// master key, or anyone when authentication is off.
func (c Caller) Master() bool { return c.p == nil || c.p.Name == masterName }

// Allows reports whether the caller may use the model group.
func (c Caller) Allows(group string) bool { return c.p.allows(group) }

// Tenant is who the caller's requests are for, as for a completion: the
// tenant the x-llmq-tenant header of h names if the key is trusted, else
// the key's own; a header from any other key is refused (403).
func (c Caller) Tenant(h http.Header) (string, *messages.Error) { return c.p.tenant(h) }

// Clamp raises priority to the key's max_priority.
func (c Caller) Clamp(priority int64) int64 {
	if c.p != nil && c.p.MaxPriority != nil && priority < *c.p.MaxPriority {
		return *c.p.MaxPriority
	}
	return priority
}
