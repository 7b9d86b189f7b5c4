// Package pauses holds which model groups (or single bands of them) an
// operator paused: workers take no new request of a paused band and group,
// which stays queued (its queue deadline still runs) until it is resumed.
// Calls in progress, and requests a worker already took, finish.
//
// The state lives in a JetStream key-value bucket, <prefix>_pauses
// (messages.Subjects.PausesBucket), so every worker process sees a pause at
// once and a worker that starts later sees it too. A key is the group's
// subject token (messages.EncodeToken) followed by ".all" for the whole
// group or ".b<band>" for one band; its value is a JSON [Pause]. Each
// process keeps a mirror of the bucket fed by a watcher, so [Set.Paused]
// answers without a round trip; llmqctl pause/resume write the keys.
//
// A Set is safe for concurrent use; it does not own the NATS connection:
// close it first.
package pauses

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/pkg/messages"
)

// AllBands is the Band of a pause of a whole group.
const AllBands = -1

// Pause is one paused group, or one band of it.
type Pause struct {
	Group string    `json:"group"`
	Band  int       `json:"band"` // AllBands for the whole group
	Since time.Time `json:"since"`
}

// key is the bucket key of a pause.
func key(group string, band int) string {
	if band == AllBands {
		return messages.EncodeToken(group) + ".all"
	}
	return messages.EncodeToken(group) + ".b" + strconv.Itoa(band)
}

// parseKey reverses key.
func parseKey(k string) (group string, band int, ok bool) {
	tok, which, found := strings.Cut(k, ".")
	if !found {
		return "", 0, false
	}
	group, err := messages.DecodeToken(tok)
	if err != nil {
		return "", 0, false
	}
	if which == "all" {
		return group, AllBands, true
	}
	n, err := strconv.Atoi(strings.TrimPrefix(which, "b"))
	if !strings.HasPrefix(which, "b") || err != nil || n < 0 {
		return "", 0, false
	}
	return group, n, true
}

// groupState is what the mirror knows of one group's pauses.
type groupState struct {
	all   bool
	bands map[int]bool
}

// Set is a process's mirror of the pauses.
type Set struct {
	kv      jetstream.KeyValue
	watcher jetstream.KeyWatcher
	cancel  context.CancelFunc
	stopped chan struct{} // closed by Close
	done    chan struct{} // closed when loop returns
	changed chan struct{}
	once    sync.Once

	mu    sync.Mutex
	state map[string]Pause // by key; written by the watcher loop only
	// view is an immutable snapshot of state by group, read without a lock
	// on the dispatch path.
	view atomic.Pointer[map[string]groupState]
}

// Open creates the bucket of subjects if needed (replicas as the streams),
// starts its watcher and returns once the mirror holds its current content.
func Open(ctx context.Context, js jetstream.JetStream, subjects messages.Subjects, replicas int) (*Set, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      subjects.PausesBucket(),
		Description: "llmq paused model groups and bands",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("pauses bucket %s: %w", subjects.PausesBucket(), err)
	}
	s := &Set{kv: kv, stopped: make(chan struct{}), done: make(chan struct{}), changed: make(chan struct{}, 1), state: map[string]Pause{}}
	s.publish()
	// The watcher's context lives as long as the Set: its ordered consumer
	// uses it to recreate itself after a gap.
	wctx, cancel := context.WithCancel(context.Background())
	w, err := kv.WatchAll(wctx)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("watch %s: %w", subjects.PausesBucket(), err)
	}
	s.watcher, s.cancel = w, cancel
	for synced := false; !synced; {
		select {
		case e, ok := <-w.Updates():
			if !ok {
				s.stop()
				return nil, fmt.Errorf("watcher of %s closed", subjects.PausesBucket())
			}
			if e == nil {
				synced = true
				continue
			}
			s.apply(e)
		case <-ctx.Done():
			s.stop()
			return nil, fmt.Errorf("initial sync of %s: %w", subjects.PausesBucket(), context.Cause(ctx))
		}
	}
	s.publish()
	go s.loop()
	return s, nil
}

func (s *Set) loop() {
	defer close(s.done)
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-s.stopped:
			return
		case u, ok := <-s.watcher.Updates():
			if !ok {
				return
			}
			if e = u; e == nil {
				continue
			}
		}
		s.apply(e)
		s.publish()
		select {
		case s.changed <- struct{}{}:
		default:
		}
	}
}

func (s *Set) apply(e jetstream.KeyValueEntry) {
	group, band, ok := parseKey(e.Key())
	if !ok {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.Operation() != jetstream.KeyValuePut {
		delete(s.state, e.Key())
		return
	}
	p := Pause{Group: group, Band: band, Since: e.Created()}
	var v Pause
	if json.Unmarshal(e.Value(), &v) == nil && !v.Since.IsZero() {
		p.Since = v.Since
	}
	s.state[e.Key()] = p
}

// publish replaces the snapshot Paused reads.
func (s *Set) publish() {
	s.mu.Lock()
	defer s.mu.Unlock()
	view := make(map[string]groupState, len(s.state))
	for _, p := range s.state {
		g := view[p.Group]
		if p.Band == AllBands {
			g.all = true
		} else {
			if g.bands == nil {
				g.bands = map[int]bool{}
			}
			g.bands[p.Band] = true
		}
		view[p.Group] = g
	}
	s.view.Store(&view)
}

// Paused reports whether new requests of band and group are held back.
func (s *Set) Paused(band int, group string) bool {
	view := *s.view.Load()
	if len(view) == 0 {
		return false
	}
	g, ok := view[group]
	return ok && (g.all || g.bands[band])
}

// Changed receives a value (buffered, never blocking the sender) when the
// pauses changed: a dispatcher should look at its queues again.
func (s *Set) Changed() <-chan struct{} { return s.changed }

// List returns the pauses, by group then band (a whole group first).
func (s *Set) List() []Pause {
	s.mu.Lock()
	out := make([]Pause, 0, len(s.state))
	for _, p := range s.state {
		out = append(out, p)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group != out[j].Group {
			return out[i].Group < out[j].Group
		}
		return out[i].Band < out[j].Band
	})
	return out
}

// Pause pauses group, or only its band when band is not AllBands.
func (s *Set) Pause(ctx context.Context, group string, band int, now time.Time) error {
	v, _ := json.Marshal(Pause{Group: group, Band: band, Since: now.UTC()})
	if _, err := s.kv.Put(ctx, key(group, band), v); err != nil {
		return fmt.Errorf("pause %s: %w", describe(group, band), err)
	}
	return nil
}

// ErrNotPaused reports a resume of something that was not paused.
var ErrNotPaused = errors.New("not paused")

// Resume ends the pause of group's band, or, with AllBands, every pause of
// group (the whole group's and each band's). It returns what it resumed.
func (s *Set) Resume(ctx context.Context, group string, band int) ([]Pause, error) {
	var gone []Pause
	for _, p := range s.List() {
		if p.Group != group || (band != AllBands && p.Band != band) {
			continue
		}
		if err := s.kv.Delete(ctx, key(p.Group, p.Band)); err != nil {
			return gone, fmt.Errorf("resume %s: %w", describe(p.Group, p.Band), err)
		}
		gone = append(gone, p)
	}
	if len(gone) == 0 {
		return nil, fmt.Errorf("%w: %s", ErrNotPaused, describe(group, band))
	}
	return gone, nil
}

// describe names a pause for messages.
func describe(group string, band int) string {
	if band == AllBands {
		return strconv.Quote(group)
	}
	return fmt.Sprintf("%q band %d", group, band)
}

// String names the pause: `"chat"` or `"chat" band 3`.
func (p Pause) String() string { return describe(p.Group, p.Band) }

// Close stops the watcher. It is idempotent.
func (s *Set) Close() {
	s.once.Do(func() {
		close(s.stopped)
		<-s.done
		s.stop()
	})
}

// stop stops the watcher and drains its channel, so that the NATS
// dispatcher never blocks on it.
func (s *Set) stop() {
	_ = s.watcher.Stop()
	s.cancel()
	updates := s.watcher.Updates()
	go func() {
		for range updates {
		}
	}()
}
