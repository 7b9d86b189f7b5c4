package batch

import (
	"testing"
	"time"

	"github.com/llmq/llmq/internal/natsembed"
)

// TestProbes: a driver whose inbox answers is never gone; one whose inbox
// nobody listens on is gone once it has been missing on every ask for the
// grace period, and only then; an answer in between starts the count anew.
func TestProbes(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect("probes-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	driver, err := srv.Connect("driver")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(driver.Close)
	s := &Service{nc: driver, inbox: driver.NewInbox()}
	sub, err := s.answerProbes()
	if err != nil {
		t.Fatal(err)
	}
	if err := driver.Flush(); err != nil {
		t.Fatal(err)
	}

	const grace = 2 * time.Second
	p := newProbes(nc, 5*time.Second, grace)
	t0 := time.Unix(1_000_000, 0)
	ask := func(at time.Duration) bool {
		p.tick()
		return p.gone(s.inbox, t0.Add(at))
	}
	if ask(0) || ask(10*time.Second) {
		t.Fatal("a driver that answers is gone")
	}
	if p.gone("", t0.Add(time.Hour)) {
		t.Fatal("a driver without an inbox is gone (only its lease can tell)")
	}

	// The driver stops listening (its process died): "no responders".
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := driver.Flush(); err != nil {
		t.Fatal(err)
	}
	base := 20 * time.Second
	if ask(base) || ask(base+grace-time.Millisecond) {
		t.Fatal("gone before the grace period")
	}
	if !ask(base + grace) {
		t.Fatal("not gone after the grace period of no responders")
	}

	// It listens again (it reconnected): the count starts anew.
	if sub, err = s.answerProbes(); err != nil {
		t.Fatal(err)
	}
	if err := driver.Flush(); err != nil {
		t.Fatal(err)
	}
	base = time.Minute
	if ask(base) {
		t.Fatal("a driver that answers again is gone")
	}
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := driver.Flush(); err != nil {
		t.Fatal(err)
	}
	if ask(base+time.Second) || ask(base+time.Second+grace-time.Millisecond) {
		t.Fatal("a driver missing for less than the grace period since it last answered is gone")
	}
	if !ask(base + time.Second + grace) {
		t.Fatal("not gone after the grace period of no responders")
	}
}
