package jsretry_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/jsretry"
	"github.com/llmq/llmq/internal/natsembed"
)

func start(t *testing.T) jetstream.JetStream {
	t.Helper()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	nc, err := srv.Connect("jsretry-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func msg(id string) *nats.Msg {
	m := nats.NewMsg("t.x")
	m.Header.Set(jetstream.MsgIDHeader, id)
	m.Data = []byte("x")
	return m
}

// A publish made while nobody answers for the subject (as while a stream
// elects a leader) is repeated until the stream is there, and stored once.
func TestPublishRidesOutNoResponders(t *testing.T) {
	js := start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(ctx, msg("first"), jetstream.WithRetryAttempts(0)); !errors.Is(err, jetstream.ErrNoStreamResponse) || !jsretry.Retryable(err) {
		t.Fatalf("a publish without a stream failed with %v, want a retryable no-responders error", err)
	}
	created := make(chan error, 1)
	published := make(chan error, 1)
	go func() {
		ack, _, err := jsretry.Publish(ctx, js, msg("r-1"))
		if err == nil && ack.Duplicate {
			err = errors.New("acknowledged as a duplicate")
		}
		published <- err
	}()
	// The publish is being repeated (no stream yet); then the stream comes.
	time.Sleep(100 * time.Millisecond)
	go func() {
		_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}})
		created <- err
	}()
	if err := <-created; err != nil {
		t.Fatal(err)
	}
	if err := <-published; err != nil {
		t.Fatalf("the publish made before the stream existed failed: %v", err)
	}
	s, _ := js.Stream(ctx, "T")
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("the stream holds %d messages, want 1", info.State.Msgs)
	}
}

// A repeat of a revision-checked write that was stored (its
// acknowledgement lost) on a single server: the server checks the expected
// last sequence before the Nats-Msg-Id, so the repeat is refused as a lost
// race (not stored twice), with a conflict error that is not retried. The
// limiter tells its own write by the Nats-Msg-Id of the key's last message;
// a clustered stream acknowledges the repeat as a duplicate instead
// (TestReliabilityProcClusterLeaderSIGKILL covers the cluster).
func TestRepeatedRevisionCheckedWriteOnOneServer(t *testing.T) {
	js := start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	first, _, err := jsretry.Publish(ctx, js, msg("w-1"), jetstream.WithExpectLastSequencePerSubject(0))
	if err != nil {
		t.Fatal(err)
	}
	_, attempts, err := jsretry.Publish(ctx, js, msg("w-1"), jetstream.WithExpectLastSequencePerSubject(0))
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != jetstream.JSErrCodeStreamWrongLastSequence || jsretry.Retryable(err) || attempts != 1 {
		t.Fatalf("the repeated write gave %v after %d attempts, want one wrong-last-sequence conflict", err, attempts)
	}
	last, err := s.GetLastMsgForSubject(ctx, "t.x")
	if err != nil {
		t.Fatal(err)
	}
	if last.Sequence != first.Sequence || last.Header.Get(jetstream.MsgIDHeader) != "w-1" {
		t.Errorf("the key's last message is sequence %d with id %q, want the first write (%d, w-1)", last.Sequence, last.Header.Get(jetstream.MsgIDHeader), first.Sequence)
	}
}

// A publish without a Nats-Msg-Id cannot be repeated safely: refused.
func TestPublishNeedsAMsgID(t *testing.T) {
	js := start(t)
	if _, _, err := jsretry.Publish(t.Context(), js, nats.NewMsg("t.x")); err == nil {
		t.Error("a publish without Nats-Msg-Id was accepted")
	}
}
