package messages

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// DefaultPrefix is the subject prefix used when llmq_settings.subject_prefix is empty.
const DefaultPrefix = "llmq"

// Subjects builds and parses the subjects of one llmq installation. The zero
// value is not usable; build it with [NewSubjects].
type Subjects struct {
	prefix string
}

// NewSubjects returns the subjects for prefix, which must be one NATS token
// of ASCII letters, digits, '-' and '_'.
func NewSubjects(prefix string) (Subjects, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !isPlainToken(prefix) {
		return Subjects{}, fmt.Errorf("subject prefix %q: only ASCII letters, digits, '-' and '_' are allowed", prefix)
	}
	return Subjects{prefix: prefix}, nil
}

// Prefix returns the subject prefix.
func (s Subjects) Prefix() string { return s.prefix }

// Request returns the subject of the band and group's own lane, where
// requests of the anonymous tenant (and of publishers that name no tenant)
// are published.
func (s Subjects) Request(band int, group string) string {
	return s.prefix + ".req." + strconv.Itoa(band) + "." + EncodeToken(group)
}

// TenantLanes is how many lanes a band and group has for named tenants,
// besides its own (for the anonymous tenant). A tenant's requests go to the
// lane [Lane] names; each lane has a consumer of its own, so a worker can
// choose between tenants before it fetches. Tenants are hashed to lanes so
// that any number of tenants costs at most TenantLanes consumers per band
// and group; two tenants that share a lane are first come, first served
// between themselves.
const TenantLanes = 32

// NoLane is the lane of the anonymous tenant: the band and group's own
// subject, without a lane token.
const NoLane = -1

// Lane returns the lane of tenant's requests: NoLane for TenantAnonymous
// and "", else the FNV-1a hash of the name modulo TenantLanes.
func Lane(tenant string) int {
	if tenant == "" || tenant == TenantAnonymous {
		return NoLane
	}
	h := uint32(2166136261)
	for i := 0; i < len(tenant); i++ {
		h ^= uint32(tenant[i])
		h *= 16777619
	}
	return int(h % TenantLanes)
}

// laneToken is lane's subject token: "t" and the lane number.
func laneToken(lane int) string { return "t" + strconv.Itoa(lane) }

// RequestLane returns the subject a request of the band, group and tenant
// lane (see Lane) is published to: the band and group's own subject for
// NoLane, else that subject and the lane token ("llmq.req.3.gpt-4o.t17").
func (s Subjects) RequestLane(band int, group string, lane int) string {
	if lane < 0 {
		return s.Request(band, group)
	}
	return s.Request(band, group) + "." + laneToken(lane)
}

// WakeLane is Wake for one lane of a band and group.
func (s Subjects) WakeLane(band int, group string, lane int) string {
	if lane < 0 {
		return s.Wake(band, group)
	}
	return s.Wake(band, group) + "." + laneToken(lane)
}

// Served is the subject of a served-tokens hint: a worker sums the tokens
// it served per tenant, band and group, and publishes the sums (headers
// only: HeaderTenant, HeaderTokens, HeaderWorker) to
// <prefix>.served.<band>.<group>[.<lane>] every few milliseconds while it
// serves; every worker hears them, so tenants share capacity across the
// pool without a round trip, or a message, per request.
func (s Subjects) Served(band int, group string, lane int) string {
	sub := s.prefix + ".served." + strconv.Itoa(band) + "." + EncodeToken(group)
	if lane >= 0 {
		sub += "." + laneToken(lane)
	}
	return sub
}

// ServedWildcard matches every served-tokens hint.
func (s Subjects) ServedWildcard() string { return s.prefix + ".served.>" }

// RequestWildcard matches every request subject.
func (s Subjects) RequestWildcard() string { return s.prefix + ".req.>" }

// WakeWildcard matches every wake-up hint the request stream republishes.
func (s Subjects) WakeWildcard() string { return s.prefix + ".wake.>" }

// Wake returns the wake-up hint subject of one band and group.
func (s Subjects) Wake(band int, group string) string {
	return s.prefix + ".wake." + strconv.Itoa(band) + "." + EncodeToken(group)
}

// Gone is the subject on which a client that closes announces its inbox
// prefix (the payload): its requests' pickups and answers that find nobody
// on the inbox are dropped at once instead of being held for a reconnect.
func (s Subjects) Gone() string { return s.prefix + ".gone" }

// Left is the subject on which a caller announces a request it gave up
// while it waited, before its Llmq-Notify-Until (payload: the request's
// Llmq-Reply subject), so that no worker starts it without asking.
func (s Subjects) Left() string { return s.prefix + ".left" }

// Reload is the subject on which every gateway and worker process takes a
// request to reload its config file (llmqctl reload); each one answers
// with a messages.ReloadResult.
func (s Subjects) Reload() string { return s.prefix + ".admin.reload" }

// RequestStream is the name of the JetStream work-queue stream holding requests.
func (s Subjects) RequestStream() string { return strings.ToUpper(s.prefix) + "_REQUESTS" }

// DeadLetterStream is the name of the stream that keeps requests that failed for good.
func (s Subjects) DeadLetterStream() string { return strings.ToUpper(s.prefix) + "_DEAD" }

// DeadLetterWildcard matches every dead-letter subject.
func (s Subjects) DeadLetterWildcard() string { return s.prefix + ".dead.>" }

// DeadLetter returns the subject a request that failed for good is copied
// to: its request subject with "req" replaced by "dead".
func (s Subjects) DeadLetter(requestSubject string) string {
	if rest, ok := strings.CutPrefix(requestSubject, s.prefix+".req."); ok {
		return s.prefix + ".dead." + rest
	}
	return s.prefix + ".dead.unknown"
}

// LimitsBucket is the name of the JetStream KV bucket that holds the shared
// limiter state of the deployments (pkg/limiter).
func (s Subjects) LimitsBucket() string { return s.prefix + "_limits" }

// PausesBucket is the name of the JetStream KV bucket that holds the model
// groups and bands an operator paused (llmqctl pause): workers take no new
// request of them.
func (s Subjects) PausesBucket() string { return s.prefix + "_pauses" }

// BatchReply is the reply subject (Llmq-Reply) of line n (from 0) of the
// batch id: a batch line is an ordinary request whose "caller's inbox" is
// this subject, answered by whichever gateway holds a subscription to
// [Subjects.BatchReplyWildcard] (internal/batch) rather than by a waiting
// client. id must be one plain token (letters, digits, '-', '_').
func (s Subjects) BatchReply(id string, n int) string {
	return s.prefix + ".batch." + id + "." + strconv.Itoa(n)
}

// BatchReplyWildcard matches every batch line's reply subject.
func (s Subjects) BatchReplyWildcard() string { return s.prefix + ".batch.>" }

// IsBatchReply reports whether subject is a batch line's reply subject.
func (s Subjects) IsBatchReply(subject string) bool {
	return strings.HasPrefix(subject, s.prefix+".batch.")
}

// ParseBatchReply splits a batch line's reply subject into batch id and line.
func (s Subjects) ParseBatchReply(subject string) (id string, n int, err error) {
	rest, ok := strings.CutPrefix(subject, s.prefix+".batch.")
	id, line, ok2 := strings.Cut(rest, ".")
	if ok && ok2 && isPlainToken(id) {
		if n, err = strconv.Atoi(line); err == nil && n >= 0 {
			return id, n, nil
		}
	}
	return "", 0, fmt.Errorf("%w: %q is not a batch reply subject", ErrBadSubject, subject)
}

// FilesBucket is the JetStream Object Store bucket of /v1/files.
func (s Subjects) FilesBucket() string { return s.prefix + "_files" }

// BatchesBucket is the KV bucket of the /v1/batches records.
func (s Subjects) BatchesBucket() string { return s.prefix + "_batches" }

// BatchLinesBucket is the KV bucket of the batch lines' results, one key
// "<batch id>.<line>" per line.
func (s Subjects) BatchLinesBucket() string { return s.prefix + "_batch_lines" }

// Consumer returns the durable consumer name that serves one band and group
// (its own lane, NoLane).
func (s Subjects) Consumer(band int, group string) string {
	return s.prefix + "_b" + strconv.Itoa(band) + "_" + EncodeToken(group)
}

// ConsumerLane returns the durable consumer name that serves one lane of a
// band and group.
func (s Subjects) ConsumerLane(band int, group string, lane int) string {
	if lane < 0 {
		return s.Consumer(band, group)
	}
	return s.Consumer(band, group) + "_" + laneToken(lane)
}

// ErrBadSubject reports a subject that is not an llmq request or wake subject.
var ErrBadSubject = errors.New("not an llmq request subject")

// ParseRequest splits a request, wake, dead-letter or served subject into
// band and group (of any lane).
func (s Subjects) ParseRequest(subject string) (band int, group string, err error) {
	band, group, _, err = s.ParseLane(subject)
	return band, group, err
}

// ParseLane splits a request, wake, dead-letter or served subject into
// band, group and lane (NoLane for the band and group's own subject).
func (s Subjects) ParseLane(subject string) (band int, group string, lane int, err error) {
	rest, ok := strings.CutPrefix(subject, s.prefix+".")
	if !ok {
		return 0, "", 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	kind, rest, _ := strings.Cut(rest, ".")
	if kind != "req" && kind != "wake" && kind != "dead" && kind != "served" {
		return 0, "", 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	b, tok, ok := strings.Cut(rest, ".")
	if !ok {
		return 0, "", 0, fmt.Errorf("%w: %q", ErrBadSubject, subject)
	}
	lane = NoLane
	if tok, lt, ok := strings.Cut(tok, "."); ok {
		n, err := strconv.Atoi(strings.TrimPrefix(lt, "t"))
		if !strings.HasPrefix(lt, "t") || err != nil || n < 0 || n >= TenantLanes || laneToken(n) != lt || tok == "" {
			return 0, "", 0, fmt.Errorf("%w: lane %q in %q", ErrBadSubject, lt, subject)
		}
		lane = n
		rest = tok
	} else {
		rest = tok
	}
	band, err = strconv.Atoi(b)
	if err != nil || band < 0 {
		return 0, "", 0, fmt.Errorf("%w: band %q", ErrBadSubject, b)
	}
	group, err = DecodeToken(rest)
	if err != nil {
		return 0, "", 0, fmt.Errorf("%w: %w", ErrBadSubject, err)
	}
	return band, group, lane, nil
}

func isPlain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

func isPlainToken(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isPlain(s[i]) {
			return false
		}
	}
	return s != ""
}

const hexDigits = "0123456789ABCDEF"

// EncodeToken writes a model group name as one NATS subject token that is also
// a valid consumer name: ASCII letters, digits, '-' and '_' stay, every other
// byte becomes '=' and two upper-case hex digits. The empty name encodes as "=".
func EncodeToken(group string) string {
	if isPlainToken(group) {
		return group
	}
	if group == "" {
		return "="
	}
	var b strings.Builder
	b.Grow(len(group) + 8)
	for i := 0; i < len(group); i++ {
		c := group[i]
		if isPlain(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('=')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&0xF])
	}
	return b.String()
}

// DecodeToken reverses [EncodeToken].
func DecodeToken(tok string) (string, error) {
	if tok == "=" {
		return "", nil
	}
	if isPlainToken(tok) {
		return tok, nil
	}
	out := make([]byte, 0, len(tok))
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case isPlain(c):
			out = append(out, c)
		case c == '=' && i+2 < len(tok):
			hi, lo := unhex(tok[i+1]), unhex(tok[i+2])
			if hi < 0 || lo < 0 {
				return "", fmt.Errorf("bad escape in group token %q", tok)
			}
			out = append(out, byte(hi<<4|lo))
			i += 2
		default:
			return "", fmt.Errorf("bad character %q in group token %q", c, tok)
		}
	}
	return string(out), nil
}

func unhex(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}
