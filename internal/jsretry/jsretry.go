// Package jsretry decides which failed JetStream calls are worth repeating,
// and repeats publishes until they are acknowledged or a bound passes.
//
// A JetStream cluster that loses the leader of a stream or consumer has
// nobody answering for it until the remaining replicas elect a new leader
// (about 4 to 9 s with nats-server's election timeouts). Meanwhile a publish
// or API request gets "no responders" at once, or, when it reached the dying
// leader, no answer at all. Both end when the new leader is there, so they
// are repeated rather than reported. A repeated publish is safe only when
// JetStream can tell it from a new message: every publish made here carries
// a Nats-Msg-Id, and a repeat of one that was stored is acknowledged as a
// duplicate with the first one's sequence (see Publish for the one
// exception).
package jsretry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Attempt bounds one attempt of a call: an answer that has not come by then
// was most likely lost with a leader, and the call is made again.
const Attempt = time.Second

// Retryable reports whether a call that failed with err may succeed when
// made again: nobody answered for the stream or consumer (no leader), the
// answer did not come in time, or JetStream answered that it is not
// available yet (a cluster still forming, a stream still placing its
// replicas). Cancellation of the caller's own context is not retryable; the
// caller checks its context first.
func Retryable(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503 covers "JetStream not enabled" (a node whose JetStream is
		// still starting), "cluster not available" and "insufficient
		// resources" (too few nodes known yet for the replicas).
		return apiErr.Code == http.StatusServiceUnavailable || apiErr.Code == http.StatusRequestTimeout ||
			apiErr.ErrorCode == errCodeNoPeers
	}
	return false
}

// errCodeNoPeers is nats-server's "no suitable peers for placement"
// (JSClusterNoPeersErrF, status 400), which a cluster whose nodes have not
// all joined yet answers to a stream with more replicas than it knows.
const errCodeNoPeers jetstream.ErrorCode = 10005

// Backoff is the pause before attempt n+1 (n counts from 0): 25 ms,
// doubling, at most 250 ms, so a publish made during an election is
// acknowledged within a quarter second of the new leader.
func Backoff(n int) time.Duration {
	return min(25*time.Millisecond<<min(n, 4), 250*time.Millisecond)
}

// Sleep waits d or until ctx ends; it reports whether the wait was whole.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// Publish publishes msg, which must carry a Nats-Msg-Id, and repeats it
// while it fails with a retryable error and ctx lasts, each attempt bounded
// by Attempt. It returns the acknowledgement (Duplicate set when an earlier
// attempt had stored the message) or the error of the last attempt, and how
// many attempts it made.
//
// A clustered stream checks the Nats-Msg-Id before a publish's
// expectations (expected last sequence per subject), so a repeat of a
// revision-checked write that was stored is acknowledged as a duplicate. A
// single server checks the expectations first and refuses such a repeat as
// a lost race: a caller that repeated (attempts > 1) and got a conflict
// looks at the last message whether it was its own.
func Publish(ctx context.Context, js jetstream.JetStream, msg *nats.Msg, opts ...jetstream.PublishOpt) (ack *jetstream.PubAck, attempts int, err error) {
	if msg.Header.Get(jetstream.MsgIDHeader) == "" {
		return nil, 0, fmt.Errorf("jsretry: publish to %s without %s cannot be repeated safely", msg.Subject, jetstream.MsgIDHeader)
	}
	// nats.go repeats on "no responders" by itself; Do does it, with its
	// own pauses, so one bound holds.
	opts = append(opts, jetstream.WithRetryAttempts(0))
	attempts, err = Do(ctx, func(ctx context.Context) error {
		ack, err = js.PublishMsg(ctx, msg, opts...)
		return err
	})
	return ack, attempts, err
}

// Do calls f, which must be safe to repeat (creating a stream with the same
// configuration, reading, a publish with a Nats-Msg-Id), until it succeeds,
// fails with an error that is not Retryable, or ctx ends, each call bounded
// by Attempt and the pauses between them by Backoff. It returns how many
// calls it made and the last call's error.
func Do(ctx context.Context, f func(context.Context) error) (attempts int, err error) {
	for n := 0; ; n++ {
		actx, cancel := context.WithTimeout(ctx, Attempt)
		err = f(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !Retryable(err) {
			return n + 1, err
		}
		if !Sleep(ctx, Backoff(n)) {
			return n + 1, err
		}
	}
}
