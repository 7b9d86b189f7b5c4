package system

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"
)

// Hop is a minimal HTTP forwarding proxy: httputil.ReverseProxy with one
// shared keep-alive transport. It is what a plain proxy in front of the
// upstream costs, the baseline llmq is compared with.
type Hop struct {
	// URL is the base URL callers use in place of the upstream's.
	URL string
	srv *http.Server
	ln  net.Listener
}

// StartHop starts a hop on a free loopback port forwarding to upstream (a
// base URL such as http://127.0.0.1:1234/v1; paths are passed through
// unchanged).
func StartHop(upstream string) (*Hop, error) {
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, fmt.Errorf("hop upstream: %w", err)
	}
	origin := &url.URL{Scheme: u.Scheme, Host: u.Host}
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConnsPerHost = 256 // as llmq's provider transport
	proxy := &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(origin) },
		Transport: t,
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	h := &Hop{URL: "http://" + ln.Addr().String() + u.Path, ln: ln,
		srv: &http.Server{Handler: proxy, ReadHeaderTimeout: 10 * time.Second}}
	go func() { _ = h.srv.Serve(ln) }()
	return h, nil
}

// Close stops the hop, waiting up to 5 s for requests in flight.
func (h *Hop) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.srv.Shutdown(ctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
