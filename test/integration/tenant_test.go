package integration

// Tenants (issue 14): who a request is for, from the key or, for a trusted
// key, from x-llmq-tenant; the wire contract's Llmq-Tenant, and publishers
// that predate it.

import (
	"bytes"
	"context"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/llmq/llmq/internal/fakeupstream"
	"github.com/llmq/llmq/pkg/client"
	"github.com/llmq/llmq/pkg/messages"
)

type tenantKey struct {
	Name    string  `yaml:"name"`
	Key     string  `yaml:"key"`
	Trusted bool    `yaml:"trusted,omitempty"`
	Weight  float64 `yaml:"weight,omitempty"`
}

type tenantEntry struct {
	Name   string  `yaml:"name"`
	Weight float64 `yaml:"weight,omitempty"`
}

type tenantLLMQ struct {
	Keys     []tenantKey   `yaml:"keys,omitempty"`
	Tenants  []tenantEntry `yaml:"tenants,omitempty"`
	Replicas int           `yaml:"replicas,omitempty"`
}

type tenantConfig struct {
	ModelList       []deployment     `yaml:"model_list"`
	GeneralSettings *generalSettings `yaml:"general_settings,omitempty"`
	LLMQ            *tenantLLMQ      `yaml:"llmq_settings,omitempty"`
}

// postAs posts a chat request with key and, when tenant is not empty, the
// x-llmq-tenant header.
func postAs(t *testing.T, url, key, tenant, body string) *result {
	t.Helper()
	req, err := http.NewRequestWithContext(waitCtx(t), http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+key)
	if tenant != "" {
		req.Header.Set("x-llmq-tenant", tenant)
	}
	r, err := do(req)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestTenantFromKey(t *testing.T) {
	const (
		master = "sk-master-tenant"
		teamA  = "sk-team-a-tenant"
		svc    = "sk-service-tenant"
	)
	fake := newFake(t)
	cfg := writeYAMLConfig(t, tenantConfig{
		ModelList:       []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)},
		GeneralSettings: &generalSettings{MasterKey: master},
		LLMQ: &tenantLLMQ{
			Keys:    []tenantKey{{Name: "team-a", Key: teamA}, {Name: "svc", Key: svc, Trusted: true}},
			Tenants: []tenantEntry{{Name: "acme", Weight: 2}},
		},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	chat := g.URL + "/v1/chat/completions"

	for _, tt := range []struct{ key, header, want string }{
		{teamA, "", "team-a"},
		{master, "", "master"},
		{svc, "", "svc"},
		{svc, "acme", "acme"},
		{svc, "unlisted-customer", "unlisted-customer"},
	} {
		r := postAs(t, chat, tt.key, tt.header, chatBody("alpha", "for "+tt.want))
		checkServed(t, r)
		if got := r.Header.Get("x-llmq-tenant"); got != tt.want {
			t.Errorf("key %q, header %q: x-llmq-tenant %q, want %q", tt.key, tt.header, got, tt.want)
		}
	}

	// A key that is not trusted may not speak for another tenant: 403,
	// nothing queued, nothing sent upstream.
	before := fake.Count()
	r := postAs(t, chat, teamA, "acme", chatBody("alpha", "spoofed"))
	checkError(t, r, http.StatusForbidden, "")
	if !strings.Contains(string(r.Body), `"code":"tenant_not_allowed"`) || !strings.Contains(string(r.Body), "trusted") {
		t.Errorf("403 body does not say why: %s", r.Body)
	}
	if n := fake.Count(); n != before {
		t.Errorf("the upstream saw %d more requests after the refused one", n-before)
	}

	// Listed tenants are labels; the one the operator did not list is "other".
	for _, labels := range [][]string{
		{`tenant="team-a"`, `outcome="served"`},
		{`tenant="acme"`, `outcome="served"`},
		{`tenant="other"`, `outcome="served"`},
		{`tenant="team-a"`, `outcome="forbidden"`},
	} {
		waitMetric(t, g, 1, "llmq_tenant_requests_total", labels...)
	}
	if r := mustGet(t, g.URL+"/metrics", ""); bytes.Contains(r.Body, []byte("unlisted-customer")) {
		t.Errorf("an unlisted tenant became a metric label")
	}
}

// TestTenantOverNATS: an internal service names the tenant in Llmq-Tenant;
// a publisher that predates it (no header) is the anonymous tenant.
func TestTenantOverNATS(t *testing.T) {
	fake := newFake(t)
	cfg := writeYAMLConfig(t, tenantConfig{
		ModelList: []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)},
		LLMQ:      &tenantLLMQ{Tenants: []tenantEntry{{Name: "acme"}}},
	})
	g := startEmbeddedGateway(t, cfg, 2)
	cl := relClient(t, g.NATSURL())

	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	for _, tenant := range []string{"", "acme"} {
		_, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: "alpha", Priority: 3, Tenant: tenant,
			Body: []byte(chatBody("alpha", "over NATS for "+tenant))})
		if err != nil {
			t.Fatalf("tenant %q: %v", tenant, err)
		}
	}
	// A bad tenant is refused before anything is published.
	if _, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: "alpha", Tenant: "bad\ttenant",
		Body: []byte(chatBody("alpha", "bad tenant"))}); !strings.Contains(errString(err), "tenant") {
		t.Errorf("a tab in the tenant: err %v, want an invalid request naming the tenant", err)
	}
	// The worker counted each request's tokens under its tenant (the fake
	// reports usage for every answer).
	for _, tenant := range []string{"anonymous", "acme"} {
		var v float64
		if !relPoll(waitLimit, func() bool {
			v = relMetric(t, g.URL+"/metrics", "llmq_tenant_served_tokens_total", `tenant="`+tenant+`"`)
			return v > 0
		}) {
			t.Errorf("llmq_tenant_served_tokens_total for %s is %v, want its tokens", tenant, v)
		}
	}
	if n := fake.Count(); n != 2 {
		t.Errorf("the upstream saw %d requests, want 2", n)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Keys of the flood tests: the flooding team-b's lane (messages.Lane: 3)
// comes before the quiet team-a's (22), so lane order alone would not let
// team-a through.
const (
	floodMaster = "sk-master-flood"
	floodKey    = "sk-flooding-team"
	quietKey    = "sk-quiet-team"
)

func floodConfig(t *testing.T, fake *fakeupstream.Server, replicas int) string {
	return writeYAMLConfig(t, tenantConfig{
		ModelList:       []deployment{fakeDeployment("shared", "shared-0", fake, 1)},
		GeneralSettings: &generalSettings{MasterKey: floodMaster},
		LLMQ: &tenantLLMQ{Replicas: replicas,
			Keys: []tenantKey{{Name: "team-b", Key: floodKey}, {Name: "team-a", Key: quietKey}}},
	})
}

// runFlood holds the group's one parallel call with a request of the
// master tenant, queues floods requests of team-b ("a0", "a1", ...) and
// then quiets of team-a ("b0", ...), all at priority 3, each stored before
// the next is sent; releases the upstream, checks every answer and returns
// the order in which the upstream saw the queued requests.
func runFlood(t *testing.T, gatewayURL, natsURL string, fake *fakeupstream.Server, floods, quiets int) []string {
	t.Helper()
	q := observeQueue(t, natsURL)
	chat := gatewayURL + "/v1/chat/completions"
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	results := make(chan *result, floods+quiets+1)
	send := func(key, content string) {
		r, err := post(ctx, chat, key, chatBody("shared", content, `"priority":3`))
		if err != nil {
			r = &result{Status: -1, Body: []byte(err.Error())}
		}
		results <- r
	}
	fake.Hold()
	go send(floodMaster, "held")
	waitUpstream(t, fake, 1)
	first := q.state(t).LastSeq
	sent := 1
	for i := range floods {
		go send(floodKey, "a"+strconv.Itoa(i))
		q.waitStored(t, first+uint64(sent))
		sent++
	}
	for i := range quiets {
		go send(quietKey, "b"+strconv.Itoa(i))
		q.waitStored(t, first+uint64(sent))
		sent++
	}
	fake.Release()
	for range sent {
		select {
		case r := <-results:
			checkServed(t, r)
		case <-ctx.Done():
			t.Fatalf("not every request was answered; the upstream saw %q", contents(fake))
		}
	}
	return contents(fake)[1:]
}

// checkTurns checks that the quiet tenant's requests all went out among the
// first within requests of order, and the flooding tenant's in the order
// sent.
func checkTurns(t *testing.T, order []string, quiets, within int) {
	t.Helper()
	var quietAt []int
	var floodOrder []string
	for i, c := range order {
		if strings.HasPrefix(c, "b") {
			quietAt = append(quietAt, i)
		} else {
			floodOrder = append(floodOrder, c)
		}
	}
	if len(quietAt) != quiets || quietAt[quiets-1] >= within {
		t.Errorf("the upstream saw %q: the quiet tenant's requests at %v, want all among the first %d, not behind the flood", order, quietAt, within)
	}
	for i, c := range floodOrder {
		if c != "a"+strconv.Itoa(i) {
			t.Errorf("the flooding tenant's requests went out as %q, want in the order sent (first come, first served inside a tenant)", floodOrder)
			break
		}
	}
}

// TestTenantFloodDoesNotHoldBackOthers: in one band and model group, a
// tenant that floods the queue does not make another tenant wait behind
// its whole backlog: with both waiting, they take turns (equal weights,
// equal sizes), where first come, first served would serve the flood
// first.
func TestTenantFloodDoesNotHoldBackOthers(t *testing.T) {
	fake := newFake(t)
	g := startEmbeddedGateway(t, floodConfig(t, fake, 0), 4)
	order := runFlood(t, g.URL, g.NATSURL(), fake, 8, 2)
	// Taking turns, the first turn to either (a tie): both in the first 4.
	checkTurns(t, order, 2, 4)
}

// TestTenantFloodClusterTwoWorkers: the same on a 3-node JetStream cluster
// with replicated streams, a gateway and two worker processes sharing the
// group's one parallel call (a shared limit): the lanes' consumers are
// created (with three replicas) as tenants first need them, and the shares
// hold across the processes, which learn what the other served from its
// served-tokens hints. A process may pick a tenant before it hears of the
// other's last call, so the bound is looser than in one process.
func TestTenantFloodClusterTwoWorkers(t *testing.T) {
	cluster := relStartCluster(t, 3)
	fake := newFake(t)
	cfg := floodConfig(t, fake, 3)
	urls := cluster.URLs()
	g := startRemoteGateway(t, cfg, urls)
	for range 2 {
		env := relEnv(cfg, urls)
		env.WorkerSlots = 4
		relStartWorker(t, env)
	}
	order := runFlood(t, g.URL, urls, fake, 12, 3)
	checkTurns(t, order, 3, 9)

	_, js := relJS(t, urls)
	ctx := relCtx(t, 5*time.Second)
	stream, err := js.Stream(ctx, requestStream)
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"team-a", "team-b"} {
		name := messages.DefaultPrefix + "_b3_shared_t" + strconv.Itoa(messages.Lane(tenant))
		c, err := stream.Consumer(ctx, name)
		if err != nil {
			t.Fatalf("the lane consumer %s of tenant %s: %v", name, tenant, err)
		}
		if info := c.CachedInfo(); info.Config.Replicas != 3 || info.Config.InactiveThreshold <= 0 {
			t.Errorf("lane consumer %s: replicas %d, inactive threshold %v; want 3 and a threshold (idle lanes are removed)", name, info.Config.Replicas, info.Config.InactiveThreshold)
		}
	}
}

// TestTenantLanesBounded: many tenants that each send one request cost at
// most messages.TenantLanes consumers per band and group, whatever their
// number, and every request is served.
func TestTenantLanesBounded(t *testing.T) {
	fake := newFake(t)
	cfg := writeYAMLConfig(t, tenantConfig{ModelList: []deployment{fakeDeployment("alpha", "alpha-0", fake, 0)}})
	g := startEmbeddedGateway(t, cfg, 8)
	cl := relClient(t, g.NATSURL())
	nc, _ := relJS(t, g.NATSURL())
	const tenants = 300
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	errs := make(chan error, tenants)
	for i := range tenants {
		go func() {
			_, _, err := cl.Do(ctx, &client.Request{Kind: messages.KindChat, Group: "alpha", Priority: 3,
				Tenant: "customer-" + strconv.Itoa(i), Body: []byte(chatBody("alpha", "from customer "+strconv.Itoa(i)))})
			errs <- err
		}()
	}
	for range tenants {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, requestStream)
	if err != nil {
		t.Fatal(err)
	}
	bands := messages.DefaultBands().Count()
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if max := bands + messages.TenantLanes; info.State.Consumers > max {
		t.Errorf("%d tenants left %d consumers, want at most %d (one per band, and one per tenant lane of the band used)", tenants, info.State.Consumers, max)
	}
	t.Logf("%d tenants: %d consumers", tenants, info.State.Consumers)
}

// TestAgingLiftsLowerBands: with aging on, a request of band 9 that waited
// is lifted to band 0 and goes before the band-0 requests that arrived
// after it (never before those that arrived earlier); with a step of one
// nanosecond every waiting request is fully lifted at once, so the order is
// arrival order. Without aging the same requests go strictly by band.
func TestAgingLiftsLowerBands(t *testing.T) {
	for _, tt := range []struct {
		name  string
		aging map[string]any
		want  []string
	}{
		{"off", nil, []string{"p0-a", "p0-b", "p0-c", "p0-d", "p9"}},
		{"on", map[string]any{"step": "1ns", "limit_band": 0}, []string{"p0-a", "p0-b", "p9", "p0-c", "p0-d"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fake := newFake(t)
			llmq := map[string]any{}
			if tt.aging != nil {
				llmq["aging"] = tt.aging
			}
			cfg := relWriteConfig(t, relConfig{ModelList: []deployment{fakeDeployment("aged", "aged-0", fake, 1)}, LLMQ: llmq})
			g := startEmbeddedGateway(t, cfg, 4)
			q := observeQueue(t, g.NATSURL())
			ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
			defer cancel()
			results := make(chan *result, 8)
			send := func(content string, priority int) {
				r, err := post(ctx, g.URL+"/v1/chat/completions", "", chatBody("aged", content, `"priority":`+strconv.Itoa(priority)))
				if err != nil {
					r = &result{Status: -1, Body: []byte(err.Error())}
				}
				results <- r
			}
			fake.Hold()
			go send("held", 0)
			waitUpstream(t, fake, 1)
			subs := []struct {
				content  string
				priority int
			}{{"p0-a", 0}, {"p0-b", 0}, {"p9", 9}, {"p0-c", 0}, {"p0-d", 0}}
			for i, s := range subs {
				go send(s.content, s.priority)
				q.waitStored(t, uint64(i+2))
			}
			fake.Release()
			for range len(subs) + 1 {
				select {
				case r := <-results:
					checkServed(t, r)
				case <-ctx.Done():
					t.Fatalf("not every request was answered; the upstream saw %q", contents(fake))
				}
			}
			if got := contents(fake)[1:]; !slices.Equal(got, tt.want) {
				t.Errorf("the upstream saw %q, want %q", got, tt.want)
			}
		})
	}
}

// TestTenantQueuedBeforeAnyWorker: requests of named tenants queued while no
// worker runs (their lanes' consumers do not exist yet) are served, in
// band order, once a worker starts.
func TestTenantQueuedBeforeAnyWorker(t *testing.T) {
	fake := newFake(t)
	cfg := floodConfig(t, fake, 0)
	natsURL := startNATS(t)
	g := startRemoteGateway(t, cfg, natsURL)
	q := observeQueue(t, natsURL)
	ctx, cancel := context.WithTimeout(t.Context(), 3*waitLimit)
	defer cancel()
	subs := []struct {
		key, content string
		priority     int
	}{{floodKey, "b-p5", 5}, {quietKey, "a-p0", 0}, {floodMaster, "m-p9", 9}}
	results := make(chan *result, len(subs))
	for i, s := range subs {
		go func() {
			r, err := post(ctx, g.URL+"/v1/chat/completions", s.key, chatBody("shared", s.content, `"priority":`+strconv.Itoa(s.priority)))
			if err != nil {
				r = &result{Status: -1, Body: []byte(err.Error())}
			}
			results <- r
		}()
		q.waitStored(t, uint64(i+1))
	}
	startWorker(t, cfg, natsURL, 4)
	for range subs {
		select {
		case r := <-results:
			checkServed(t, r)
		case <-ctx.Done():
			t.Fatalf("not every queued request was answered; the upstream saw %q", contents(fake))
		}
	}
	if got, want := contents(fake), []string{"a-p0", "b-p5", "m-p9"}; !slices.Equal(got, want) {
		t.Errorf("the upstream saw %q, want %q (band order)", got, want)
	}
}
