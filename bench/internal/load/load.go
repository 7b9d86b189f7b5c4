// Package load sends HTTP load with vegeta's attacker: open loop at a fixed
// rate (requests leave on schedule whatever the answers do, so a slow system
// sees its queue grow instead of the load shrinking), or closed loop with a
// fixed number of clients that each send the next request when the last one
// is answered (maximum throughput). Every attack is bounded by its duration
// and by its context: cancelling the context aborts requests in flight.
package load

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"

	"github.com/llmq/llmq/internal/gateway"
)

// Target is one kind of request. Samples carry the Tag of their target.
type Target struct {
	Tag    string
	URL    string // distinct per Tag: samples are matched back by URL
	Body   []byte
	Header http.Header
}

// Shape is the pattern of an attack.
type Shape struct {
	// Rate is requests per second, open loop. Zero means closed loop.
	Rate int
	// Clients is the number of concurrent clients of a closed loop.
	Clients int
	// Duration is how long requests are sent.
	Duration time.Duration
	// MaxInFlight caps an open loop's requests in flight; 0 means
	// DefaultMaxInFlight.
	MaxInFlight int
}

func (s Shape) String() string {
	if s.Rate > 0 {
		return fmt.Sprintf("open loop %d req/s for %s", s.Rate, s.Duration)
	}
	return fmt.Sprintf("closed loop %d clients for %s", s.Clients, s.Duration)
}

// DefaultMaxInFlight caps the requests an open-loop attack has in flight
// unless Shape.MaxInFlight says otherwise. Past the cap the attack can no
// longer keep its rate: it has become closed loop. The cap keeps a collapsing
// system from exhausting this process's file descriptors (every request in
// flight holds one or two connections, and a hop another two).
const DefaultMaxInFlight = 3000

// Sample is the outcome of one request.
type Sample struct {
	Tag     string
	Sent    time.Time     // when the request was started
	Latency time.Duration // until the whole answer was read
	Code    int           // HTTP status; 0 if there was no answer
	Err     string
	// QueueMs is the gateway's x-llmq-queue-ms header (time from enqueue to
	// pickup, whole milliseconds), or -1 when the answer had none.
	QueueMs int
}

// OK reports an answer with status 200.
func (s Sample) OK() bool { return s.Code == http.StatusOK && s.Err == "" }

// NewClient returns an HTTP/1.1 client with keep-alive and room for
// maxConns idle connections per host; timeout bounds each request.
func NewClient(maxConns int, timeout time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext:         d.DialContext,
			MaxIdleConnsPerHost: maxConns,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		},
	}
}

// ctxTransport binds every request to one context, so that cancelling it
// aborts the attack's requests in flight (vegeta's targets carry none).
type ctxTransport struct {
	ctx  context.Context
	base http.RoundTripper
}

func (t ctxTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.base.RoundTrip(r.WithContext(t.ctx))
}

// Attack sends requests to targets, round robin, in the given shape, using
// client's connections, and returns one sample per request once every
// request has ended. It returns early, with the samples so far and ctx's
// error, when ctx ends.
func Attack(ctx context.Context, client *http.Client, targets []Target, shape Shape) ([]Sample, error) {
	if len(targets) == 0 {
		return nil, errors.New("load: no targets")
	}
	if shape.Duration <= 0 || (shape.Rate <= 0 && shape.Clients <= 0) {
		return nil, fmt.Errorf("load: bad shape %+v", shape)
	}
	tags := make(map[string]string, len(targets))
	vts := make([]vegeta.Target, len(targets))
	for i, t := range targets {
		if tag, dup := tags[t.URL]; dup && tag != t.Tag {
			return nil, fmt.Errorf("load: targets %q and %q share the URL %s", tag, t.Tag, t.URL)
		}
		tags[t.URL] = t.Tag
		h := t.Header.Clone()
		if h == nil {
			h = http.Header{}
		}
		h.Set("Content-Type", "application/json")
		vts[i] = vegeta.Target{Method: http.MethodPost, URL: t.URL, Body: t.Body, Header: h}
	}

	c := *client
	c.Transport = ctxTransport{ctx: ctx, base: client.Transport}
	opts := []func(*vegeta.Attacker){vegeta.Client(&c), vegeta.MaxBody(0), vegeta.Redirects(vegeta.NoFollow)}
	rate := vegeta.Rate{Freq: shape.Rate, Per: time.Second}
	if shape.Rate > 0 {
		opts = append(opts, vegeta.Workers(uint64(min(max(shape.Rate/10, 16), 512))), vegeta.MaxWorkers(uint64(cmp.Or(shape.MaxInFlight, DefaultMaxInFlight))))
	} else {
		rate = vegeta.Rate{} // infinite: each worker sends as soon as it is free
		opts = append(opts, vegeta.Workers(uint64(shape.Clients)), vegeta.MaxWorkers(uint64(shape.Clients)))
	}
	atk := vegeta.NewAttacker(opts...)
	stop := context.AfterFunc(ctx, func() { atk.Stop() })
	defer stop()

	capacity := 1024
	if shape.Rate > 0 {
		capacity = int(float64(shape.Rate)*shape.Duration.Seconds()) + 16
	}
	samples := make([]Sample, 0, capacity)
	for r := range atk.Attack(vegeta.NewStaticTargeter(vts...), rate, shape.Duration, "") {
		samples = append(samples, sampleOf(r, tags[r.URL]))
	}
	return samples, ctx.Err()
}

func sampleOf(r *vegeta.Result, tag string) Sample {
	s := Sample{Tag: tag, Sent: r.Timestamp, Latency: r.Latency, Code: int(r.Code), Err: r.Error, QueueMs: -1}
	if v := r.Headers.Get(gateway.HeaderQueueMs); v != "" {
		if ms, err := strconv.Atoi(v); err == nil {
			s.QueueMs = ms
		}
	}
	return s
}
