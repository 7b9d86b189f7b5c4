package limiter

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/llmq/llmq/internal/jsretry"
)

// Defaults of Options.
const (
	DefaultSlotTTL = 30 * time.Second
	DefaultPeriod  = time.Minute
)

// markerTTL is how long the bucket keeps the marker JetStream leaves when a key
// expires by its TTL (LimitMarkerTTL). Watchers learn of expiries through it.
const markerTTL = 15 * time.Minute

// maxCAS bounds the compare-and-set attempts of one operation.
const maxCAS = 16

// giveBackTimeout bounds the NATS calls that give back a partly taken
// reservation after the caller's context has ended.
const giveBackTimeout = 5 * time.Second

var bucketName = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)

// Options configure a Set.
type Options struct {
	// Bucket is the name of the JetStream KV bucket holding the state, e.g.
	// "llmq_limits". Every process that shares limits uses the same bucket.
	Bucket string
	// Replicas of the bucket's stream: 1 on a single server, 3 in a cluster.
	// Zero means 1.
	Replicas int
	// SlotTTL is how long a concurrency slot outlives its holder when the
	// holder stops refreshing it (crash). Callers refresh with KeepAlive every
	// SlotTTL/3 during long calls. Rounded up to whole seconds; zero means
	// DefaultSlotTTL.
	SlotTTL time.Duration
	// Clock returns the current time; nil means time.Now. All processes must
	// share one notion of time (NTP): the state holds absolute times.
	Clock func() time.Time
	// Period is the window of the rpm and tpm limits; zero means
	// DefaultPeriod (one minute). Tests use short periods. Every process must
	// use the same period.
	Period time.Duration
	// Margin widens the window the admission log enforces to Period+Margin.
	// The limiter admits calls; a provider counts their arrivals, which come
	// a variable moment later (fetch, pickup check, HTTP, a busy machine). No
	// window of Period at the provider holds more than the limit as long as
	// that delay varies by less than Margin. It costs Margin/(Period+Margin)
	// of the rate under saturation (0.4 % for 250 ms of a minute). Zero means
	// DefaultMargin, at most Period/10. Every process must use the same.
	Margin time.Duration
}

// DefaultMargin is the Margin of a one-minute period.
const DefaultMargin = 250 * time.Millisecond

// Validate reports every problem of o, joined.
func (o Options) Validate() error {
	var errs []error
	if !bucketName.MatchString(o.Bucket) {
		errs = append(errs, fmt.Errorf("%w: bucket %q must match %s", ErrInvalidOptions, o.Bucket, bucketName))
	}
	if o.Replicas < 0 || o.Replicas > 5 {
		errs = append(errs, fmt.Errorf("%w: replicas %d not in 0..5", ErrInvalidOptions, o.Replicas))
	}
	if o.SlotTTL < 0 {
		errs = append(errs, fmt.Errorf("%w: negative slot TTL %v", ErrInvalidOptions, o.SlotTTL))
	}
	if o.Period < 0 || (o.Period > 0 && o.Period < time.Millisecond) {
		errs = append(errs, fmt.Errorf("%w: period %v shorter than 1ms", ErrInvalidOptions, o.Period))
	}
	if o.Margin < 0 {
		errs = append(errs, fmt.Errorf("%w: negative margin %v", ErrInvalidOptions, o.Margin))
	}
	return errors.Join(errs...)
}

func (o Options) withDefaults() Options {
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	if o.SlotTTL == 0 {
		o.SlotTTL = DefaultSlotTTL
	}
	o.SlotTTL = ttlSeconds(o.SlotTTL)
	if o.Clock == nil {
		o.Clock = time.Now
	}
	if o.Period == 0 {
		o.Period = DefaultPeriod
	}
	if o.Margin == 0 {
		o.Margin = min(DefaultMargin, o.Period/10)
	}
	return o
}

// Set is the limiter state of many deployments in one process, backed by one
// KV bucket shared by every process. It keeps a local mirror of the bucket,
// fed by a KV watcher, so that Headroom, Usage and CoolingDown answer without
// a round trip and compare-and-set starts from the mirrored revision.
//
// A Set is safe for concurrent use. It does not own the NATS connection: close
// the Set before the connection.
type Set struct {
	js      jetstream.JetStream
	kv      jetstream.KeyValue
	stream  jetstream.Stream
	subject string // "$KV.<bucket>." prefix of keys
	opts    Options
	id      []byte // this process's id, the value of the slots it holds

	mu       sync.Mutex
	deps     map[string]*depMirror // by deployment token
	limiters map[string]*Limiter   // by deployment id
	closed   bool

	changed  chan struct{}
	watcher  jetstream.KeyWatcher
	cancel   context.CancelFunc
	loopDone chan struct{}
	stop     chan struct{}
	once     sync.Once
}

// depMirror is the mirrored state of one deployment.
type depMirror struct {
	rate      rateState
	rateRev   uint64
	cool      cooldown
	coolRev   uint64
	coolTimer *time.Timer
	slots     map[int]*slotMirror
	admitted  time.Time // when this process last saw an admission (local clock)
}

type slotMirror struct {
	rev      uint64 // revision of the last message on the key (0: none)
	live     bool   // held by someone
	claiming bool   // a Reserve of this process is trying to take it
}

// Open creates the bucket if needed (or updates its configuration), starts the
// watcher and returns once the mirror holds the bucket's current content.
func Open(ctx context.Context, js jetstream.JetStream, opts Options) (*Set, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: nil JetStream", ErrInvalidOptions)
	}
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         opts.Bucket,
		Description:    "llmq deployment limits",
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       opts.Replicas,
		LimitMarkerTTL: markerTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("%w: bucket %s: %w", ErrUnavailable, opts.Bucket, err)
	}
	stream, err := js.Stream(ctx, "KV_"+opts.Bucket)
	if err != nil {
		return nil, fmt.Errorf("%w: bucket stream %s: %w", ErrUnavailable, opts.Bucket, err)
	}
	s := &Set{
		js:       js,
		kv:       kv,
		stream:   stream,
		subject:  "$KV." + opts.Bucket + ".",
		opts:     opts,
		id:       []byte(nuid.Next()),
		deps:     map[string]*depMirror{},
		limiters: map[string]*Limiter{},
		changed:  make(chan struct{}, 1),
		loopDone: make(chan struct{}),
		stop:     make(chan struct{}),
	}
	// The watcher's context must live as long as the Set: the ordered
	// consumer behind it uses it to recreate itself after a gap.
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("%w: watch %s: %w", ErrUnavailable, opts.Bucket, err)
	}
	s.watcher, s.cancel = w, cancel
	for synced := false; !synced; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				s.shutdown()
				return nil, fmt.Errorf("%w: watcher of %s closed", ErrUnavailable, opts.Bucket)
			}
			if e == nil {
				synced = true
				continue
			}
			s.apply(e)
		case <-ctx.Done():
			s.shutdown()
			return nil, fmt.Errorf("%w: initial sync of %s: %w", ErrUnavailable, opts.Bucket, context.Cause(ctx))
		}
	}
	go s.loop()
	return s, nil
}

func (s *Set) loop() {
	defer close(s.loopDone)
	for {
		select {
		case e, ok := <-s.watcher.Updates():
			if !ok {
				return
			}
			if e != nil {
				s.apply(e)
			}
		case <-s.stop:
			return
		}
	}
}

// Close stops the watcher and the cooldown timers. It neither settles nor
// releases open reservations: their concurrency slots expire after SlotTTL,
// as a crashed process's would, so settle them first on a clean shutdown.
// Close is idempotent and always returns nil.
func (s *Set) Close() error {
	s.once.Do(func() {
		s.mu.Lock()
		s.closed = true
		for _, d := range s.deps {
			if d.coolTimer != nil {
				d.coolTimer.Stop()
			}
		}
		s.mu.Unlock()
		close(s.stop)
		<-s.loopDone
		s.shutdown()
	})
	return nil
}

// shutdown stops the watcher and drains its channel so that the NATS
// dispatcher never blocks on it.
func (s *Set) shutdown() {
	_ = s.watcher.Stop()
	s.cancel()
	updates := s.watcher.Updates()
	go func() {
		for range updates {
		}
	}()
}

// Changed receives a value (buffered, never blocking the sender) whenever
// the mirror changes in a way that may free capacity: a slot released or
// expired, a cooldown ended or shortened, a rate state updated without a new
// admission (settle, cancel, reset). Wake waiting workers with it, then let
// them call Reserve again. Time passing frees rate capacity too; that time is
// in LimitedError.Until.
func (s *Set) Changed() <-chan struct{} { return s.changed }

func (s *Set) notify() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *Set) now() time.Time { return s.opts.Clock() }

// Deployment returns the limiter of deployment id with limits l. It is
// idempotent per id: later calls return the same Limiter and replace its
// limits with l (a configuration reload).
func (s *Set) Deployment(id string, l Limits) *Limiter {
	s.mu.Lock()
	defer s.mu.Unlock()
	if lim, ok := s.limiters[id]; ok {
		lim.setLimits(l)
		return lim
	}
	lim := &Limiter{set: s, id: id, tok: depToken(id), sem: make(chan struct{}, 1)}
	lim.setLimits(l)
	s.limiters[id] = lim
	s.depLocked(lim.tok)
	return lim
}

func (s *Set) depLocked(tok string) *depMirror {
	d, ok := s.deps[tok]
	if !ok {
		d = &depMirror{slots: map[int]*slotMirror{}}
		s.deps[tok] = d
	}
	return d
}

func (d *depMirror) slot(i int) *slotMirror {
	sm, ok := d.slots[i]
	if !ok {
		sm = &slotMirror{}
		d.slots[i] = sm
	}
	return sm
}

// apply folds one watcher entry into the mirror.
func (s *Set) apply(e jetstream.KeyValueEntry) {
	s.record(e.Key(), e.Value(), e.Revision(), e.Operation() != jetstream.KeyValuePut)
}

// record folds one observed revision of key into the mirror, whether it came
// from the watcher, from this process's own write or from a re-read. Older
// revisions than the mirror's are ignored.
func (s *Set) record(key string, value []byte, rev uint64, deleted bool) {
	tok, kind, idx, ok := parseKey(key)
	if !ok {
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	d := s.depLocked(tok)
	freed := false
	switch kind {
	case kindRate:
		if rev <= d.rateRev {
			break
		}
		old := d.rate
		d.rateRev = rev
		d.rate = rateState{}
		if !deleted {
			if st, err := decodeRate(value); err == nil {
				d.rate = st
			}
		}
		// An update that admitted nothing gave something back.
		admitted := d.rate.rpm.seq > old.rpm.seq || d.rate.tpm.seq > old.tpm.seq
		freed = !admitted
		if admitted {
			d.admitted = s.now()
		}
	case kindCool:
		if rev <= d.coolRev {
			break
		}
		old := d.cool
		d.coolRev = rev
		d.cool = cooldown{}
		if !deleted {
			if c, err := decodeCool(value); err == nil {
				d.cool = c
			}
		}
		freed = d.cool.until < old.until
		s.scheduleCoolLocked(d)
	case kindSlot:
		sm := d.slot(idx)
		if rev <= sm.rev {
			break
		}
		freed = sm.live && deleted
		if !sm.live && !deleted {
			d.admitted = s.now()
		}
		sm.rev, sm.live = rev, !deleted
	}
	s.mu.Unlock()
	if freed {
		s.notify()
	}
}

// scheduleCoolLocked arms a timer that fires Changed when the cooldown ends.
func (s *Set) scheduleCoolLocked(d *depMirror) {
	wait := time.Duration(d.cool.until - s.now().UnixNano())
	if d.cool.until == 0 || wait <= 0 {
		if d.coolTimer != nil {
			d.coolTimer.Stop()
		}
		return
	}
	if d.coolTimer == nil {
		d.coolTimer = time.AfterFunc(wait, s.notify)
		return
	}
	d.coolTimer.Reset(wait)
}

// errConflict is a lost compare-and-set.
var errConflict = errors.New("revision conflict")

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}

// WriteBound bounds one write to the bucket, repeats included: a write that
// meets the bucket's stream without a leader (a cluster node failed) is
// repeated until the new leader answers or this much time has passed.
const WriteBound = 5 * time.Second

// write publishes m, a revision-checked write, repeating it while the
// bucket's stream has no leader (see internal/jsretry). Each write carries a
// Nats-Msg-Id of its own, so a repeat of a write that was stored, but whose
// acknowledgement was lost, is acknowledged as that write rather than
// applied twice. A single server refuses such a repeat as a lost race
// instead: then the key's last message, if it carries the write's id, is
// the write.
func (s *Set) write(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	ctx, cancel := context.WithTimeout(ctx, WriteBound)
	defer cancel()
	id := nuid.Next()
	m.Header.Set(jetstream.MsgIDHeader, id)
	ack, attempts, err := jsretry.Publish(ctx, s.js, m, opts...)
	if err != nil && attempts > 1 && isConflict(err) {
		if last, gerr := s.stream.GetLastMsgForSubject(ctx, m.Subject); gerr == nil && last.Header.Get(jetstream.MsgIDHeader) == id {
			return &jetstream.PubAck{Stream: s.stream.CachedInfo().Config.Name, Sequence: last.Sequence, Duplicate: true}, nil
		}
	}
	return ack, err
}

// put writes value under key if the key's last revision is rev (0: the key has
// no message), giving the message a TTL. It is kv.Update with a per-key TTL,
// which kv.Update cannot set. A lost race returns errConflict.
func (s *Set) put(ctx context.Context, key string, value []byte, rev uint64, ttl time.Duration) (uint64, error) {
	m := &nats.Msg{Subject: s.subject + key, Data: value, Header: nats.Header{}}
	ack, err := s.write(ctx, m,
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttl))
	if err != nil {
		if isConflict(err) {
			return 0, errConflict
		}
		return 0, fmt.Errorf("%w: put %s: %w", ErrUnavailable, key, err)
	}
	s.record(key, value, ack.Sequence, false)
	return ack.Sequence, nil
}

// del places a delete marker on key if its last revision is rev.
func (s *Set) del(ctx context.Context, key string, rev uint64) error {
	m := nats.NewMsg(s.subject + key)
	m.Header.Set(kvOperationHeader, "DEL")
	ack, err := s.write(ctx, m, jetstream.WithExpectLastSequencePerSubject(rev))
	if err != nil {
		if isConflict(err) {
			return errConflict
		}
		return fmt.Errorf("%w: delete %s: %w", ErrUnavailable, key, err)
	}
	s.record(key, nil, ack.Sequence, true)
	return nil
}

// forget resets the mirror of a key that has no message left (its expiry
// marker expired too), so that the next write expects revision 0.
func (s *Set) forget(key string) {
	tok, kind, idx, ok := parseKey(key)
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.depLocked(tok)
	switch kind {
	case kindRate:
		d.rate, d.rateRev = rateState{}, 0
	case kindCool:
		d.cool, d.coolRev = cooldown{}, 0
	case kindSlot:
		sm := d.slot(idx)
		sm.rev, sm.live = 0, false
	}
}

const (
	kvOperationHeader = "KV-Operation"
	markerReason      = "Nats-Marker-Reason"
)

// fetch re-reads the last message of key from the stream (deleted keys
// included, which kv.Get hides) and folds it into the mirror.
func (s *Set) fetch(ctx context.Context, key string) (value []byte, rev uint64, deleted bool, err error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, s.subject+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		s.forget(key)
		return nil, 0, true, nil
	}
	if err != nil {
		return nil, 0, false, fmt.Errorf("%w: get %s: %w", ErrUnavailable, key, err)
	}
	deleted = m.Header.Get(kvOperationHeader) != "" || m.Header.Get(markerReason) != ""
	s.record(key, m.Data, m.Sequence, deleted)
	return m.Data, m.Sequence, deleted, nil
}
