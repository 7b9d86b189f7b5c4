package provider

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/openai/openai-go/v3/azure"
	"github.com/openai/openai-go/v3/option"
	"github.com/tidwall/gjson"
	"github.com/tidwall/sjson"

	"github.com/llmq/llmq/internal/vendor"
	"github.com/llmq/llmq/pkg/messages"
)

// endpointOptions point an openai-go client at o's endpoint and
// authenticate it the way the vendor wants (internal/vendor). Only the
// deployment's own key is ever set: an empty key removes the Authorization
// header openai-go would otherwise fill from OPENAI_API_KEY, and the
// OpenAI-Organization and OpenAI-Project headers it would fill from
// OPENAI_ORG_ID and OPENAI_PROJECT_ID are removed unless configured.
func endpointOptions(o OpenAIOptions) []option.RequestOption {
	var opts []option.RequestOption
	base := strings.TrimSuffix(o.BaseURL, "/")
	switch o.Shape {
	case vendor.AzureDeployments:
		// {base}/openai/deployments/{model}/chat/completions?api-version=…,
		// the key in api-key or an Entra token as Bearer.
		opts = append(opts, azure.WithEndpoint(base, o.APIVersion))
		if plainLoopback(base) {
			opts = append(opts, azure.WithUnsafeAllowHTTP())
		}
		if o.ADToken != "" {
			opts = append(opts, azure.WithTokenCredential(staticToken(o.ADToken)))
		} else {
			opts = append(opts, azure.WithAPIKey(o.APIKey))
		}
	case vendor.AzureV1:
		opts = append(opts, option.WithBaseURL(base+"/openai/v1/"))
		opts = append(opts, keyOptions(o)...)
	default:
		if base == "" {
			base = "https://api.openai.com/v1"
		}
		opts = append(opts, option.WithBaseURL(base+"/"))
		if o.APIVersion != "" {
			opts = append(opts, option.WithQuery("api-version", o.APIVersion))
		}
		opts = append(opts, keyOptions(o)...)
	}
	if o.Shape != vendor.AzureDeployments { // the azure package clears them itself
		for _, h := range []string{"OpenAI-Organization", "OpenAI-Project"} {
			opts = append(opts, option.WithHeaderDel(h))
		}
	}
	// Sorted so that a header named twice with different cases ends the
	// same way every time.
	names := make([]string, 0, len(o.Headers))
	for k := range o.Headers {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		opts = append(opts, option.WithHeader(k, o.Headers[k]))
	}
	return opts
}

// keyOptions send the key (or an Azure Entra token) as the endpoint's auth wants.
func keyOptions(o OpenAIOptions) []option.RequestOption {
	switch {
	case o.ADToken != "":
		return []option.RequestOption{option.WithAPIKey(o.ADToken)}
	case o.APIKey == "":
		// Local servers (vLLM, Ollama) often need no key.
		return []option.RequestOption{option.WithHeaderDel("Authorization")}
	case o.Auth == vendor.APIKeyHeader:
		return []option.RequestOption{option.WithHeaderDel("Authorization"), option.WithHeader("api-key", o.APIKey)}
	}
	return []option.RequestOption{option.WithAPIKey(o.APIKey)}
}

// plainLoopback reports an http:// base on a loopback address, which
// openai-go's azure package only calls with WithUnsafeAllowHTTP (tests,
// local emulators). Config refuses plain http elsewhere for Azure.
func plainLoopback(base string) bool {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" {
		return false
	}
	if u.Hostname() == "localhost" {
		return true
	}
	ip := net.ParseIP(u.Hostname())
	return ip != nil && ip.IsLoopback()
}

// staticToken is an Entra ID token given in the config (azure_ad_token), as
// the azcore.TokenCredential openai-go's azure package takes. It is used as
// long as the process runs; refreshing it is the operator's business, as
// with LiteLLM's azure_ad_token.
type staticToken string

func (t staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(t), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

var _ azcore.TokenCredential = staticToken("")

// prepare sets the body's model to the deployment's provider model (for a
// wildcard group, the requested model fitted into it) and adds the
// deployment's default fields the caller did not send.
func (p *OpenAI) prepare(body []byte) ([]byte, error) {
	model := p.model
	if strings.Contains(model, "*") {
		model = messages.FillWildcard(p.group, model, gjson.GetBytes(body, "model").String())
	}
	body, err := sjson.SetBytes(body, "model", model)
	if err != nil {
		return nil, fmt.Errorf("%w: set model: %w", messages.ErrInternal, err)
	}
	for k, v := range p.defaults {
		path := gjson.Escape(k)
		if gjson.GetBytes(body, path).Exists() {
			continue // the caller's value wins
		}
		if body, err = sjson.SetBytes(body, path, v); err != nil {
			return nil, fmt.Errorf("%w: set %s: %w", messages.ErrInternal, k, err)
		}
	}
	return body, nil
}
