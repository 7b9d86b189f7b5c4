// Package queuepage serves llmq's live queue page, GET /ui: requests waiting
// per band and model group as a heat map of their oldest wait, each
// deployment's calls in flight, rpm and tpm against its limits and its
// cooldown, and the dead letters. The page is static; its script polls GET
// /v1/queue twice a second with the key the operator types in, sent as a
// bearer header and kept in sessionStorage at most, never in a URL. The page
// itself holds no data, so it is served without a key; /v1/queue decides
// who may read the queue (the master key).
//
// Every asset is embedded in the binary: plain HTML, CSS and JavaScript, no
// library and no request to any other host (the Content-Security-Policy
// forbids them).
package queuepage

import (
	"embed"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Path is where the page is served; its assets are under Path + "/".
const Path = "/ui"

// files maps the served paths to the embedded files and their types.
var files = map[string]struct{ name, ctype string }{
	Path:               {"assets/index.html", "text/html; charset=utf-8"},
	Path + "/":         {"assets/index.html", "text/html; charset=utf-8"},
	Path + "/page.js":  {"assets/page.js", "text/javascript; charset=utf-8"},
	Path + "/page.css": {"assets/page.css", "text/css; charset=utf-8"},
}

// csp allows the page only its own script, style and /v1/queue.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler serves GET Path and the assets under Path + "/"; anything else under
// it is a 404.
func Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		body, err := assets.ReadFile(f.name)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", f.ctype)
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		_, _ = w.Write(body)
	})
}
