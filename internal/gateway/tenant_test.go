package gateway_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/llmq/llmq/internal/gateway"
	"github.com/llmq/llmq/pkg/messages"
)

func TestTenant(t *testing.T) {
	keys := []gateway.Key{
		{Name: "team-a", Secret: "sk-team-a"},
		{Name: "svc", Secret: "sk-svc", Trusted: true},
	}
	tests := []struct {
		name   string
		open   bool   // the gateway without keys
		key    string // "" sends none
		header []string
		// want is the tenant submitted; "" means refused with status/code.
		want   string
		status int
		code   string
	}{
		{name: "key without header is the key's name", key: "sk-team-a", want: "team-a"},
		{name: "master key is master", key: "sk-master", want: messages.TenantMaster},
		{name: "no keys is anonymous", open: true, want: messages.TenantAnonymous},
		{name: "trusted key names a tenant", key: "sk-svc", header: []string{"acme"}, want: "acme"},
		{name: "trusted key without header is its own", key: "sk-svc", want: "svc"},
		{name: "master key may name a tenant", key: "sk-master", header: []string{"acme"}, want: "acme"},
		{name: "untrusted key may not", key: "sk-team-a", header: []string{"acme"}, status: http.StatusForbidden, code: "tenant_not_allowed"},
		{name: "untrusted key may not name itself either", key: "sk-team-a", header: []string{"team-a"}, status: http.StatusForbidden, code: "tenant_not_allowed"},
		{name: "no keys: nobody may", open: true, header: []string{"acme"}, status: http.StatusForbidden, code: "tenant_not_allowed"},
		{name: "empty header value", key: "sk-svc", header: []string{""}, status: http.StatusBadRequest, code: "invalid_tenant"},
		{name: "too long", key: "sk-svc", header: []string{strings.Repeat("x", messages.MaxTenantBytes+1)}, status: http.StatusBadRequest, code: "invalid_tenant"},
		{name: "two headers", key: "sk-svc", header: []string{"a", "b"}, status: http.StatusBadRequest, code: "invalid_tenant"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub := &recordingSubmitter{}
			srv := startGateway(t, gateway.Options{Policy: gateway.Policy{MasterKey: "sk-master", Keys: keys}}, sub)
			if tt.open {
				srv = startGateway(t, gateway.Options{}, sub)
			}
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(chatReq))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tt.key != "" {
				req.Header.Set("Authorization", "Bearer "+tt.key)
			}
			for _, v := range tt.header {
				req.Header.Add(gateway.HeaderTenant, v)
			}
			resp, body := send(t, srv, req)
			if tt.want == "" {
				checkError(t, resp, body, tt.status, "", tt.code)
				if n := len(sub.requests()); n != 0 {
					t.Errorf("%d requests submitted, want none", n)
				}
				return
			}
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d, want 200 (%s)", resp.StatusCode, body)
			}
			reqs := sub.requests()
			if len(reqs) != 1 || reqs[0].Tenant != tt.want {
				t.Fatalf("submitted %+v, want one request for tenant %q", reqs, tt.want)
			}
			if got := resp.Header.Get(gateway.HeaderTenant); got != tt.want {
				t.Errorf("%s = %q, want %q", gateway.HeaderTenant, got, tt.want)
			}
		})
	}
}
