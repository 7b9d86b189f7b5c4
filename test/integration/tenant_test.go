package integration

// Tenants (issue 14): who a request is for, from the key or, for a trusted
// key, from x-llmq-tenant; the wire contract's Llmq-Tenant, and publishers
// that predate it.

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

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
	Keys    []tenantKey   `yaml:"keys,omitempty"`
	Tenants []tenantEntry `yaml:"tenants,omitempty"`
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
	nc, err := nats.Connect(g.NATSURL(), nats.Name("llmq-test-internal-service"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cl, err := client.New(nc, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })

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
