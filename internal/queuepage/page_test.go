package queuepage

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
)

func TestHandler(t *testing.T) {
	srv := httptest.NewServer(Handler())
	defer srv.Close()
	for _, c := range []struct {
		path, ctype, contains string
	}{
		{"/ui", "text/html", `<script src="/ui/page.js"`},
		{"/ui/", "text/html", `<link rel="stylesheet" href="/ui/page.css">`},
		{"/ui/page.js", "text/javascript", `fetch("/v1/queue"`},
		{"/ui/page.css", "text/css", ".heat"},
	} {
		t.Run(c.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + c.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), c.ctype) {
				t.Fatalf("GET %s: %d %s", c.path, resp.StatusCode, resp.Header.Get("Content-Type"))
			}
			if !strings.Contains(string(body), c.contains) {
				t.Errorf("GET %s lacks %q", c.path, c.contains)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
				t.Errorf("GET %s: Content-Security-Policy %q", c.path, csp)
			}
			// Nothing from another host: no CDN, works without a network.
			if m := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}`).FindString(string(body)); m != "" {
				t.Errorf("GET %s refers to another host: %s", c.path, m)
			}
		})
	}
	for _, path := range []string{"/ui/index.html", "/ui/assets/page.js", "/ui/x"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", path, resp.StatusCode)
		}
	}
}
