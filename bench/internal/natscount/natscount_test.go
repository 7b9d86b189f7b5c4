package natscount

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/llmq/llmq/internal/natsembed"
	"github.com/nats-io/nats.go"
)

// TestRead counts a publisher's messages to a subscriber on a real server:
// each is one in (from the publisher) and one out (to the subscriber), on
// the server and on the two named connections.
func TestRead(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Monitor: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	pub, err := srv.Connect("pub")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	sub, err := srv.Connect("sub")
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	got := make(chan *nats.Msg, 10)
	if _, err := sub.ChanSubscribe("x", got); err != nil {
		t.Fatal(err)
	}
	if err := sub.Flush(); err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()
	hc := &http.Client{}
	urls := []string{srv.MonitorURL()}
	before, err := Read(ctx, hc, urls)
	if err != nil {
		t.Fatal(err)
	}
	const n = 3
	for range n {
		if err := pub.Publish("x", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	for range n {
		<-got
	}
	after, err := Read(ctx, hc, urls)
	if err != nil {
		t.Fatal(err)
	}
	d := after.Sub(before)
	want := InOut{In: n, Out: n}
	if d.All != want || d.Clients != want {
		t.Errorf("server counted %+v (clients %+v), want %+v", d.All, d.Clients, want)
	}
	if r := d.Routes(); r != (InOut{}) {
		t.Errorf("routes %+v on a single server", r)
	}
	if d.ByConn["pub"] != (InOut{In: n}) || d.ByConn["sub"] != (InOut{Out: n}) {
		t.Errorf("by connection %+v, want pub %d in, sub %d out", d.ByConn, n, n)
	}
	if got := d.BySub()["sub x"]; got != n {
		t.Errorf("subscription x of sub delivered %d, want %d (by subscription: %v)", got, n, d.BySub())
	}
	per := d.Per(2)
	if per.All.Sum() != 3 || per.ByConn["pub"].In != 1.5 {
		t.Errorf("per 2 requests: %+v", per)
	}
}

// TestReadFails checks that an endpoint that is not a NATS monitor is an
// error, not zero counts.
func TestReadFails(t *testing.T) {
	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	_, err := Read(context.Background(), notFound.Client(), []string{notFound.URL})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("Read of a server answering 404: %v", err)
	}
}

func TestSubClass(t *testing.T) {
	for _, tt := range []struct{ subject, want string }{
		{"llmq.req.>", "llmq.req.>"},
		{"llmq.wake.>", "llmq.wake.>"},
		{"_INBOX.2WektWKmqHS5ltMBj0JroQ.*", "_INBOX.*.*"},
		{"_INBOX.2WektWKmqHS5ltMBj0JroQ.PUlpuqQD.r.*", "_INBOX.*.*.r.*"},
		{"_INBOX.2WektWKmqHS5ltMBj0Ju38", "_INBOX.*"},
		{"$JS.ACK.LLMQ_REQUESTS.llmq_b5_bench.*.*.*.*.*", "$JS.ACK.LLMQ_REQUESTS.>"},
		{"$JS.API.CONSUMER.MSG.NEXT.LLMQ_REQUESTS.llmq_b5_bench_t3", "$JS.API.CONSUMER.MSG.NEXT.LLMQ_REQUESTS.*"},
		{"$JS.API.>", "$JS.API.>"},
		{"$NRG.AE.S-R3F-abc", "$NRG.AE.>"},
		{"llmq.req.5.benchmarks", "llmq.req.5.benchmarks"}, // lower case: a name, not generated
	} {
		if got := subClass(tt.subject); got != tt.want {
			t.Errorf("subClass(%q) = %q, want %q", tt.subject, got, tt.want)
		}
	}
}
