package integration

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"
)

// relCluster is a JetStream cluster of in-process nats-server nodes on loopback.
type relCluster struct {
	nodes []*server.Server
}

// relStartCluster starts n nodes that route to each other and waits until
// JetStream has a meta leader and every node is current.
func relStartCluster(t *testing.T, n int) *relCluster {
	t.Helper()
	ports := relFreePorts(t, n)
	var routes []string
	for _, p := range ports {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", p))
	}
	c := &relCluster{}
	t.Cleanup(func() {
		for _, s := range c.nodes {
			s.Shutdown()
			s.WaitForShutdown()
		}
	})
	for i := range n {
		opts := &server.Options{
			ServerName: fmt.Sprintf("rel-n%d", i+1),
			Host:       "127.0.0.1",
			Port:       server.RANDOM_PORT,
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "llmq-rel", Host: "127.0.0.1", Port: ports[i]},
			Routes:     server.RoutesFromStr(strings.Join(routes, ",")),
		}
		s, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("node %d: %v", i+1, err)
		}
		s.Start()
		c.nodes = append(c.nodes, s)
	}
	for _, s := range c.nodes {
		if !s.ReadyForConnections(relWait) {
			t.Fatalf("node %s not ready", s.Name())
		}
	}
	if !relPoll(relWait, func() bool {
		leader := false
		for _, s := range c.nodes {
			leader = leader || s.JetStreamIsLeader()
			if !s.JetStreamIsCurrent() {
				return false
			}
		}
		return leader
	}) {
		t.Fatal("the JetStream cluster elected no meta leader")
	}
	return c
}

// URLs are the client URLs of every node, comma-separated.
func (c *relCluster) URLs() string {
	var urls []string
	for _, s := range c.nodes {
		urls = append(urls, s.ClientURL())
	}
	return strings.Join(urls, ",")
}

// node returns the node named name.
func (c *relCluster) node(name string) *server.Server {
	for _, s := range c.nodes {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

// hosting returns the name of the running node that holds a client
// connection named client, or "".
func (c *relCluster) hosting(client string) string {
	for _, s := range c.nodes {
		if !s.Running() {
			continue
		}
		cz, err := s.Connz(&server.ConnzOptions{})
		if err != nil {
			continue
		}
		for _, ci := range cz.Conns {
			if ci.Name == client {
				return s.Name()
			}
		}
	}
	return ""
}

// relStreamLeader returns the name of stream's leader, or "" while there is none.
func relStreamLeader(ctx context.Context, js jetstream.JetStream, stream string) string {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return ""
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return ""
	}
	return info.Cluster.Leader
}

// TestReliabilityClusterLeaderLoss: a 3-node JetStream cluster with
// replicated streams (llmq_settings.replicas: 3); the gateway and two
// workers know all three URLs. Under load (100 requests over 5 s), the
// request stream's leader node is stopped (gracefully, in this process: it
// hands its leadership over). No request is refused or lost: every caller
// gets 200, since a publish that meets the stream without a leader is
// repeated within the gateway's publish bound (5 s); after the failover new
// requests are served; the provider never has one request twice at once.
// (The stopped node is never the gateway's own: a gateway that loses its
// NATS connection is the subject of
// TestReliabilityGatewayReconnectKeepsAnswers; a crash of the leader's
// process, whichever node it is, of TestReliabilityProcClusterLeaderSIGKILL.)
func TestReliabilityClusterLeaderLoss(t *testing.T) {
	cluster := relStartCluster(t, 3)
	fake := newFake(t)
	fake.SetLatency(100 * time.Millisecond)
	const group = "replicated"
	cfg := relOneGroup(t, group, fake, 0, map[string]any{"replicas": 3, "ack_wait": 3})
	urls := cluster.URLs()
	g := startRemoteGateway(t, cfg, urls)
	for range 2 {
		env := relEnv(cfg, urls)
		env.WorkerSlots = 8
		relStartWorker(t, env)
	}
	_, js := relJS(t, urls)

	// Make sure the leader we stop is not the gateway's node.
	gwNode := cluster.hosting("llmq-gateway")
	if gwNode == "" {
		t.Fatal("no node holds the gateway's connection")
	}
	var leader string
	for attempt := 0; attempt < 5; attempt++ {
		ctx := relCtx(t, 5*time.Second)
		if !relPoll(5*time.Second, func() bool { leader = relStreamLeader(ctx, js, requestStream); return leader != "" }) {
			t.Fatal("the request stream has no leader")
		}
		if leader != gwNode {
			break
		}
		if _, err := js.Conn().Request("$JS.API.STREAM.LEADER.STEPDOWN."+requestStream, nil, 2*time.Second); err != nil {
			t.Logf("stepdown: %v", err)
		}
		relPoll(5*time.Second, func() bool { l := relStreamLeader(ctx, js, requestStream); return l != "" && l != leader })
	}
	if leader == gwNode {
		t.Fatalf("the request stream's leader stays on the gateway's node %s", gwNode)
	}
	t.Logf("gateway on %s, request stream leader %s", gwNode, leader)

	type sent struct {
		n      int
		answer relAnswer
	}
	const total, spacing = 100, 50 * time.Millisecond
	var (
		mu      sync.Mutex
		results []sent
		wg      sync.WaitGroup
	)
	start := time.Now()
	for i := range total {
		if i == 40 {
			cluster.node(leader).Shutdown()
			t.Logf("stopped the stream leader %s after %s", leader, time.Since(start).Round(time.Millisecond))
		}
		ch := relPostAsync(t, fmt.Sprint("load-", i), g.URL+"/v1/chat/completions", chatBody(group, fmt.Sprint("load-", i), fmt.Sprintf(`"priority":%d`, i%10)), relWait)
		wg.Go(func() {
			a := <-ch
			mu.Lock()
			results = append(results, sent{i, a})
			mu.Unlock()
		})
		time.Sleep(spacing)
	}
	wg.Wait()

	dist := map[string]int{}
	for _, s := range results {
		a := s.answer
		switch {
		case a.err != nil:
			dist["lost (no HTTP answer)"]++
			t.Errorf("LOST: %v", a)
		case a.r.Status == http.StatusOK:
			dist["200 served"]++
		default:
			dist[fmt.Sprintf("%d %s", a.r.Status, relErrorCode(a.r.Body))]++
			t.Errorf("unexpected answer: %v", a)
		}
	}
	t.Logf("outcomes of %d requests: %v", len(results), dist)

	// After the failover: a new leader, and new requests are served.
	var newLeader string
	if !relPoll(relWait, func() bool {
		newLeader = relStreamLeader(relCtx(t, 2*time.Second), js, requestStream)
		return newLeader != "" && newLeader != leader
	}) {
		t.Fatal("the request stream elected no new leader")
	}
	for i := range 10 {
		checkServed(t, mustPost(t, g.URL+"/v1/chat/completions", "", chatBody(group, fmt.Sprint("after-", i))))
	}
	relWaitStreamMsgs(t, js, requestStream, 0)
	waitIdle(t, fake)

	recs, distinct, twice := relNeverTwiceAtOnce(t, fake)
	t.Logf("new stream leader %s; the provider received %d calls for %d distinct requests; called more than once: %q",
		newLeader, recs, distinct, twice)
}
