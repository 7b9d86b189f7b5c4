package integration

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/llmq/llmq/pkg/messages"
)

// TestStartedUnaskedFindsNobody: a worker starts a fresh request of a
// caller it has heard from without a pickup check; when its "started" event
// finds nobody on the caller's inbox (the caller vanished in between), the
// call stops at once and the request is held as a pickup that found nobody
// would be: it stays queued, no second call is made while nobody answers,
// and it leaves the queue once the caller is announced gone. The caller
// here is a raw NATS subscriber speaking the wire contract.
func TestStartedUnaskedFindsNobody(t *testing.T) {
	fake := newFake(t)
	const group = "vanishing"
	g := startEmbeddedGateway(t, relOneGroup(t, group, fake, 0, nil), 1)
	nc, js := relJS(t, g.NATSURL())
	q := observeQueue(t, g.NATSURL())
	subjects, err := messages.NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	inbox := nats.NewInbox()
	publish := func(id string) {
		t.Helper()
		now := time.Now()
		msg := subjects.Msg(&messages.Request{ID: id, Kind: messages.KindChat, Group: group, Band: 5, Priority: 5,
			ReplyTo: inbox + "." + id, Deadline: now.Add(time.Minute), NotifyUntil: now.Add(messages.NotifyWindow),
			Body: []byte(chatBody(group, id))}, now)
		if _, err := js.PublishMsg(waitCtx(t), msg); err != nil {
			t.Fatal(err)
		}
	}

	// First request: the worker has not heard from this caller, so it asks;
	// the caller says go, and gets its answer.
	answered := make(chan struct{})
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		switch m.Header.Get(messages.HeaderEvent) {
		case messages.EventPickup:
			_ = m.Respond([]byte(messages.PickupAccept))
		case messages.EventReply:
			_ = m.Respond(nil)
			close(answered)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	publish("known")
	select {
	case <-answered:
	case <-waitCtx(t).Done():
		t.Fatal("the first request was not answered")
	}
	q.waitMsgs(t, 0)

	// The caller vanishes; its next request, fresh, is started without
	// asking, and the started event finds nobody.
	fake.Hold()
	if err := sub.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	publish("vanished")
	// The call stops when the "no responders" comes back: it may not even
	// have reached the upstream by then. Either way the worker hands the
	// request back for a later try, and it is delivered again (the
	// consumer's third delivery), while no call of it goes on.
	consumer, err := js.Consumer(waitCtx(t), subjects.RequestStream(), subjects.Consumer(5, group))
	if err != nil {
		t.Fatal(err)
	}
	if !relPoll(relWait, func() bool {
		ci, err := consumer.Info(waitCtx(t))
		return err == nil && ci.Delivered.Consumer >= 3 && fake.InFlight() == 0
	}) {
		t.Fatalf("the vanished caller's request was not handed back with its call stopped (upstream: %+v)", fake.Requests())
	}
	if rs := fake.Requests(); len(rs) > 1 && !rs[1].Cancelled {
		t.Fatalf("the call of the vanished caller's request was not stopped: %+v", rs[1])
	}
	if n := q.state(t).Msgs; n != 1 {
		t.Fatalf("the stream holds %d requests, want the vanished caller's one, held", n)
	}
	calls := fake.Count()
	// Announced gone: the request leaves the queue, unserved.
	if err := nc.Publish(subjects.Gone(), []byte(inbox)); err != nil {
		t.Fatal(err)
	}
	q.waitDrained(t)
	if n := fake.Count(); n != calls {
		t.Errorf("the upstream was called %d times, want %d (no call while nobody answered)", n, calls)
	}
}
