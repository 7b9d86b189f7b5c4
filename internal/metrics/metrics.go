// Package metrics defines llmq's Prometheus metrics, registered on a
// registry the caller injects (never the global one). Names use base units
// and the _total / _seconds suffixes; labels are bounded: band numbers,
// configured model group names, deployment ids, outcome names and limit
// kinds — never request ids, keys or prompt text. A request for a model group
// that is not configured is counted under group "unknown".
//
// Tenants are labels only where the operator listed them (TenantLabels):
// every other tenant counts as "other".
//
// The gateway records requests, outcomes, queue waits and the requests it
// has parked; workers record
// queue depth (from the remaining count in fetched messages' metadata and
// the safety-net poll, never by extra JetStream API calls), in-flight calls,
// provider latency and tokens, cooldowns, limiter use and dead letters.
package metrics

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Label values used when a value is not known.
const (
	NoBand       = "none"
	UnknownGroup = "unknown"
)

// Metrics holds every collector. Its methods are safe for concurrent use.
type Metrics struct {
	requests     *prometheus.CounterVec
	queueWait    *prometheus.HistogramVec
	queueDepth   *prometheus.GaugeVec
	inFlight     *prometheus.GaugeVec
	providerTime *prometheus.HistogramVec
	tokens       *prometheus.CounterVec
	cooldowns    *prometheus.CounterVec
	coolingDown  *prometheus.GaugeVec
	limiterUse   *prometheus.GaugeVec
	deadLetters  *prometheus.CounterVec
	parked       prometheus.Gauge
	tenantReqs   *prometheus.CounterVec
	tenantTokens *prometheus.CounterVec
	batches      *prometheus.GaugeVec
	batchesEnded *prometheus.CounterVec
	batchLines   *prometheus.CounterVec
}

// New creates the collectors and registers them on reg.
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_requests_total",
			Help: "Requests that ended, by priority band, model group and outcome.",
		}, []string{"band", "group", "outcome"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmq_queue_wait_seconds",
			Help:    "Time from enqueue to pickup by a worker, by band and group.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
		}, []string{"band", "group"}),
		queueDepth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_queue_depth",
			Help: "Requests waiting in the queue, by band and group, as last seen by this process.",
		}, []string{"band", "group"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_deployment_in_flight",
			Help: "Provider calls in progress in this process, by deployment.",
		}, []string{"deployment"}),
		providerTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "llmq_provider_request_duration_seconds",
			Help:    "Provider call latency by deployment and outcome.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300},
		}, []string{"deployment", "outcome"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_provider_tokens_total",
			Help: "Tokens the providers reported, by deployment and kind (prompt or completion).",
		}, []string{"deployment", "kind"}),
		cooldowns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_deployment_cooldowns_total",
			Help: "Times a deployment was put in cooldown, by deployment and reason (rate_limited or failures).",
		}, []string{"deployment", "reason"}),
		coolingDown: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_deployment_cooling_down",
			Help: "1 while a deployment is in cooldown, else 0.",
		}, []string{"deployment"}),
		limiterUse: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_limiter_utilization_ratio",
			Help: "Share of a deployment's limit in use (0 to 1), by deployment and limit (rpm, tpm, parallel).",
		}, []string{"deployment", "limit"}),
		deadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_dead_letters_total",
			Help: "Requests moved to the dead-letter stream, by reason (undecodable, failed or unserved).",
		}, []string{"reason"}),
		parked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "llmq_gateway_parked_requests",
			Help: "Requests waiting with their HTTP connection taken over from net/http (LLMQ_PARK_AFTER).",
		}),
		tenantReqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_tenant_requests_total",
			Help: "Requests that ended at this gateway, by tenant (listed tenants only; others are \"other\") and outcome.",
		}, []string{"tenant", "outcome"}),
		tenantTokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_tenant_served_tokens_total",
			Help: "Tokens (prompt plus completion, as the provider reported them) of requests served by this worker, by tenant (listed tenants only; others are \"other\").",
		}, []string{"tenant"}),
		batches: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "llmq_batches",
			Help: "Batches not over, by status (validating, in_progress, cancelling, finalizing), as this gateway last saw them.",
		}, []string{"status"}),
		batchesEnded: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_batches_ended_total",
			Help: "Batches this gateway ended, by final status (completed, failed, expired, cancelled).",
		}, []string{"status"}),
		batchLines: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "llmq_batch_lines_total",
			Help: "Batch lines this gateway ended, by outcome (a request outcome, or batch_expired and batch_cancelled for lines that never ran).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.requests, m.queueWait, m.queueDepth, m.inFlight, m.providerTime, m.tokens,
		m.cooldowns, m.coolingDown, m.limiterUse, m.deadLetters, m.parked, m.tenantReqs, m.tenantTokens,
		m.batches, m.batchesEnded, m.batchLines)
	return m
}

// Band formats a band number as a label value.
func Band(b int) string { return strconv.Itoa(b) }

// Request counts a finished request.
func (m *Metrics) Request(band, group, outcome string) {
	m.requests.WithLabelValues(band, group, outcome).Inc()
}

// Parked adds delta to the requests parked in this gateway.
func (m *Metrics) Parked(delta int) { m.parked.Add(float64(delta)) }

// QueueWait observes the time a request waited for a worker.
func (m *Metrics) QueueWait(band, group string, d time.Duration) {
	m.queueWait.WithLabelValues(band, group).Observe(d.Seconds())
}

// QueueDepth sets the depth of one band and group.
func (m *Metrics) QueueDepth(band, group string, n uint64) {
	m.queueDepth.WithLabelValues(band, group).Set(float64(n))
}

// CallStarted and CallEnded track in-flight provider calls.
func (m *Metrics) CallStarted(deployment string) { m.inFlight.WithLabelValues(deployment).Inc() }

// CallEnded records a finished provider call.
func (m *Metrics) CallEnded(deployment, outcome string, d time.Duration, promptTokens, completionTokens int64) {
	m.inFlight.WithLabelValues(deployment).Dec()
	m.providerTime.WithLabelValues(deployment, outcome).Observe(d.Seconds())
	if promptTokens > 0 {
		m.tokens.WithLabelValues(deployment, "prompt").Add(float64(promptTokens))
	}
	if completionTokens > 0 {
		m.tokens.WithLabelValues(deployment, "completion").Add(float64(completionTokens))
	}
}

// Cooldown counts a deployment entering cooldown and marks it for d.
func (m *Metrics) Cooldown(deployment, reason string, d time.Duration) {
	m.cooldowns.WithLabelValues(deployment, reason).Inc()
	g := m.coolingDown.WithLabelValues(deployment)
	g.Set(1)
	time.AfterFunc(d, func() { g.Set(0) })
}

// LimiterUse sets the share of a deployment's limit in use.
func (m *Metrics) LimiterUse(deployment, limit string, ratio float64) {
	m.limiterUse.WithLabelValues(deployment, limit).Set(ratio)
}

// DeadLetter counts a request moved to the dead-letter stream.
func (m *Metrics) DeadLetter(reason string) { m.deadLetters.WithLabelValues(reason).Inc() }

// TenantRequest counts a finished request of a tenant; tenant is a label
// from TenantLabels.
func (m *Metrics) TenantRequest(tenant, outcome string) {
	m.tenantReqs.WithLabelValues(tenant, outcome).Inc()
}

// TenantTokens counts the tokens of a served request of a tenant; tenant is
// a label from TenantLabels.
func (m *Metrics) TenantTokens(tenant string, n int64) {
	if n > 0 {
		m.tenantTokens.WithLabelValues(tenant).Add(float64(n))
	}
}

// OtherTenant is the label of every tenant the operator did not list.
const OtherTenant = "other"

// TenantLabels maps tenants to bounded label values: a listed tenant is its
// own label, any other is OtherTenant. Tenants named by trusted keys are
// unbounded, so only the operator's list may become labels. The zero value
// maps every tenant to OtherTenant. It is safe for concurrent use (it is
// read-only after NewTenantLabels).
type TenantLabels struct{ listed map[string]bool }

// NewTenantLabels returns the labels for the listed tenants.
func NewTenantLabels(listed []string) TenantLabels {
	l := TenantLabels{listed: make(map[string]bool, len(listed))}
	for _, t := range listed {
		l.listed[t] = true
	}
	return l
}

// Label returns tenant's label value.
func (l TenantLabels) Label(tenant string) string {
	if l.listed[tenant] {
		return tenant
	}
	return OtherTenant
}

// Batches sets the number of batches not over in status.
func (m *Metrics) Batches(status string, n int) { m.batches.WithLabelValues(status).Set(float64(n)) }

// BatchEnded counts a batch that ended in status.
func (m *Metrics) BatchEnded(status string) { m.batchesEnded.WithLabelValues(status).Inc() }

// BatchLine counts a batch line that ended with outcome.
func (m *Metrics) BatchLine(outcome string) { m.batchLines.WithLabelValues(outcome).Inc() }
