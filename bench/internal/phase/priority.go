package phase

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/llmq/llmq/bench/internal/load"
	"github.com/llmq/llmq/bench/internal/stats"
	"github.com/llmq/llmq/bench/internal/system"
	"github.com/llmq/llmq/internal/fakeupstream"
)

// PriorityConfig configures the priority separation phase.
type PriorityConfig struct {
	// Slots is the number of worker slots; UpstreamLatency the length of a
	// call. Capacity is Slots / UpstreamLatency requests per second.
	Slots           int
	UpstreamLatency time.Duration
	// Rate is the offered load, half with priority 0 (band 0) and half with
	// priority 9 (band 9), for Duration.
	Rate     int
	Duration time.Duration
	// Grace is how long answers are awaited after the last request was
	// sent; then every request still waiting is cancelled.
	Grace time.Duration
	// Tolerance is the margin of the inversion count (stats.Inversions).
	Tolerance time.Duration
	// Dump, when set, is a CSV file that receives one line per request.
	Dump string
	// R3 keeps the queue in a fresh 3-node NATS cluster (replicas 3); the
	// worker slots are then an app.RunWorker beside the gateway.
	R3 bool
}

// maxPriorityInFlight bounds the requests in flight of the priority phase:
// two file descriptors each must fit under the usual limit of 20,000.
const maxPriorityInFlight = 8000

// Band is one band's figures.
type Band struct {
	Band     int
	Sent     int
	Served   int // answered with 200
	Unserved int // still queued (or in a call) when the phase ended
	Failed   int // any other ending
	// Queue wait (x-llmq-queue-ms) and latency of the served requests.
	QueueP50, QueueP99, QueueMax time.Duration
	LatencyP50, LatencyP99       time.Duration
}

// PriorityResult is the priority separation phase's outcome.
type PriorityResult struct {
	Config   PriorityConfig
	Capacity float64 // Slots / UpstreamLatency, requests per second
	// Offered is the requests sent per second over Duration: below
	// Config.Rate when the load generator could not keep up.
	Offered    float64
	High, Low  Band // band 0 and band 9
	Inversions int
	// ServedRate is the answered requests per second over the phase.
	ServedRate float64
}

// Priority offers twice the capacity of a few worker slots, half in band 0
// and half in band 9, and measures how well band 0 is kept from waiting.
func Priority(ctx context.Context, env Env, cfg PriorityConfig) (_ *PriorityResult, err error) {
	if cfg.Slots < 1 || cfg.Rate < 2 || cfg.UpstreamLatency <= 0 {
		return nil, fmt.Errorf("bad priority config %+v", cfg)
	}
	fake := fakeupstream.New(fakeupstream.Options{Latency: cfg.UpstreamLatency})
	defer fake.Close()
	po, _, closeNATS, err := env.natsFor(ctx, "priority", cfg.R3, system.Config{UpstreamURL: fake.URL, QueueTimeout: 10 * time.Minute})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, closeNATS()) }()
	name := phaseName("priority", cfg.R3)
	gw, err := system.StartGateway(ctx, po, cfg.Slots)
	if err != nil {
		return nil, fmt.Errorf("start the gateway: %w", err)
	}
	defer func() { err = errors.Join(err, gw.Close()) }()
	client := load.NewClient(4096, cfg.Duration+cfg.Grace+time.Minute)
	defer client.CloseIdleConnections()

	// Warm up: one round of calls fills the connection pools.
	warm := []load.Target{{Tag: "warm", URL: system.ChatURL(gw.URL), Body: system.ChatBody(5)}}
	if _, err := load.Attack(ctx, client, warm, load.Shape{Clients: cfg.Slots, Duration: cfg.UpstreamLatency}); err != nil {
		return nil, err
	}
	fake.Reset()

	targets := []load.Target{
		{Tag: "0", URL: system.ChatURL(gw.URL) + "?band=0", Body: system.ChatBody(0)},
		{Tag: "9", URL: system.ChatURL(gw.URL) + "?band=9", Body: system.ChatBody(9)},
	}
	res := &PriorityResult{Config: cfg, Capacity: float64(cfg.Slots) / cfg.UpstreamLatency.Seconds()}
	env.logf("%s: %d slots, upstream %s (capacity %.0f req/s), offering %d req/s for %s, bands 0 and 9 half each",
		name, cfg.Slots, cfg.UpstreamLatency, res.Capacity, cfg.Rate, cfg.Duration)
	actx, cancel := context.WithTimeout(ctx, cfg.Duration+cfg.Grace)
	defer cancel()
	// Band 9 is meant to pile up: every request may still be waiting at the
	// end, each holding a client and a server connection in this process.
	shape := load.Shape{Rate: cfg.Rate, Duration: cfg.Duration,
		MaxInFlight: min(int(float64(cfg.Rate)*(cfg.Duration+cfg.Grace).Seconds())+cfg.Rate, maxPriorityInFlight)}
	samples, err := load.Attack(actx, client, targets, shape)
	if err != nil && ctx.Err() != nil {
		return nil, err
	}
	fake.Reset()
	if cfg.Dump != "" {
		if err := dumpSamples(cfg.Dump, samples); err != nil {
			return nil, err
		}
	}

	var high, low []stats.Wait
	var first, last time.Time
	served := 0
	for _, s := range samples {
		if first.IsZero() || s.Sent.Before(first) {
			first = s.Sent
		}
		if s.OK() {
			served++
			if end := s.Sent.Add(s.Latency); end.After(last) {
				last = end
			}
		}
		w := stats.Wait{Enqueued: s.Sent}
		if s.QueueMs >= 0 {
			w.Picked = s.Sent.Add(time.Duration(s.QueueMs) * time.Millisecond)
		}
		if s.Tag == "0" {
			high = append(high, w)
		} else {
			low = append(low, w)
		}
	}
	res.Offered = float64(len(samples)) / cfg.Duration.Seconds()
	res.High = bandOf(0, samples, "0", actx.Err() != nil)
	res.Low = bandOf(9, samples, "9", actx.Err() != nil)
	res.Inversions = stats.Inversions(high, low, cfg.Tolerance)
	if last.After(first) {
		res.ServedRate = float64(served) / last.Sub(first).Seconds()
	}
	env.logf("%s: band 0 served %d/%d, queue p50=%s p99=%s; band 9 served %d/%d (%d still queued), queue p50=%s p99=%s; inversions %d",
		name, res.High.Served, res.High.Sent, res.High.QueueP50, res.High.QueueP99,
		res.Low.Served, res.Low.Sent, res.Low.Unserved, res.Low.QueueP50, res.Low.QueueP99, res.Inversions)
	return res, nil
}

// bandOf summarises the samples tagged tag. When cancelled is set, requests
// with no answer were cut off at the end of the phase: they count as
// unserved, not failed.
func bandOf(band int, samples []load.Sample, tag string, cancelled bool) Band {
	b := Band{Band: band}
	var queue, lat []time.Duration
	for _, s := range samples {
		if s.Tag != tag {
			continue
		}
		b.Sent++
		switch {
		case s.OK():
			b.Served++
			queue = append(queue, time.Duration(s.QueueMs)*time.Millisecond)
			lat = append(lat, s.Latency)
		case cancelled && s.Code == 0:
			b.Unserved++
		default:
			b.Failed++
		}
	}
	slices.Sort(queue)
	slices.Sort(lat)
	b.QueueP50, b.QueueP99 = stats.Percentile(queue, 50), stats.Percentile(queue, 99)
	if len(queue) > 0 {
		b.QueueMax = queue[len(queue)-1]
	}
	b.LatencyP50, b.LatencyP99 = stats.Percentile(lat, 50), stats.Percentile(lat, 99)
	return b
}

// dumpSamples writes one CSV line per request: its band, when it was sent
// (ms after the first), its status, queue wait and latency in ms.
func dumpSamples(path string, samples []load.Sample) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"band", "sent_ms", "status", "queue_ms", "latency_ms"})
	var first time.Time
	for _, s := range samples {
		if first.IsZero() || s.Sent.Before(first) {
			first = s.Sent
		}
	}
	for _, s := range samples {
		_ = w.Write([]string{s.Tag, strconv.FormatFloat(float64(s.Sent.Sub(first))/1e6, 'f', 3, 64), strconv.Itoa(s.Code),
			strconv.Itoa(s.QueueMs), strconv.FormatFloat(float64(s.Latency)/1e6, 'f', 3, 64)})
	}
	w.Flush()
	return errors.Join(w.Error(), f.Close())
}
