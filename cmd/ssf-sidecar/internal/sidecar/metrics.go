package sidecar

import (
	"context"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/promtext"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Histogram bounds, in seconds.
var (
	requestBuckets  = []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	deliveryBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600}
)

// sidecarMetrics is everything /metrics shows. Event counts arrive through
// hooks (proxy.Config.OnRequest, the outbox's Hooks, the transmitter's
// OnSETIssued); the rest is read from the components' statistics at scrape
// time. Labels are route classes, status codes, kinds, sources, stream ids
// and event types — never user data.
type sidecarMetrics struct {
	requests        *promtext.CounterVec
	requestDuration *promtext.HistogramVec
	observerMisses  *promtext.CounterVec
	setsIssued      *promtext.CounterVec
	deliveries      *promtext.CounterVec
	deliveryLatency *promtext.HistogramVec
	deadLettered    *promtext.CounterVec
	verifications   *promtext.CounterVec
	enqueueDropped  *promtext.CounterVec
	fenced          *promtext.CounterVec

	// sources read at scrape time; any may be nil.
	proxyStats  func() proxy.Stats
	tapStats    func() tap.Stats
	outboxStats func(context.Context) ([]outbox.StreamStats, error)
	// limitFailures counts management calls served because the store could
	// not keep their rate-limit state.
	limitFailures func() int64
	// storeHealthy reports whether the store is open and writable (nil).
	storeHealthy func() error
	// signingKeys lists the signing keys the JWKS publishes.
	signingKeys func() []ssf.KeyInfo
	version     string
	log         *slog.Logger
}

func newSidecarMetrics() *sidecarMetrics {
	m := &sidecarMetrics{
		requests: promtext.NewCounterVec("ssf_sidecar_http_requests_total",
			"Requests served on the proxy listener, by route class (proxy, observed, upgrade, ssf) and status code.", "route_class", "code"),
		requestDuration: promtext.NewHistogramVec("ssf_sidecar_http_request_duration_seconds",
			"Time to serve a request on the proxy listener, by route class.", requestBuckets, "route_class"),
		observerMisses: promtext.NewCounterVec("ssf_sidecar_observer_misses_total",
			"Tap steps (before, after) that overran their bound; the request went on unobserved.", "step"),
		setsIssued: promtext.NewCounterVec("ssf_sidecar_sets_issued_total",
			"SETs committed to the outbox, by stream and event type.", "stream_id", "event_type"),
		deliveries: promtext.NewCounterVec("ssf_sidecar_deliveries_total",
			"Push delivery attempts, by stream and outcome (delivered, retry, dead).", "stream_id", "outcome"),
		deliveryLatency: promtext.NewHistogramVec("ssf_sidecar_delivery_latency_seconds",
			"Time from enqueue to the receiver's 2xx (push) or acknowledgement (poll), by stream.", deliveryBuckets, "stream_id"),
		deadLettered: promtext.NewCounterVec("ssf_sidecar_dead_lettered_total",
			"SETs moved to the dead letter, by stream.", "stream_id"),
		fenced: promtext.NewCounterVec("ssf_sidecar_outbox_fenced_total",
			"Delivery outcomes refused because the dispatcher had lost its stream's lease to a newer holder, by stream.", "stream_id"),
		verifications: promtext.NewCounterVec("ssf_sidecar_verification_requests_total",
			"Receiver verification requests, by stream and result (accepted, rate_limited).", "stream_id", "result"),
		enqueueDropped: promtext.NewCounterVec("ssf_sidecar_outbox_enqueue_dropped_total",
			"SETs not queued at enqueue (disabled stream, duplicate key), by stream.", "stream_id"),
		log: slog.New(slog.DiscardHandler),
	}
	// Zero series from the start: an increase() alert sees the first miss.
	m.observerMisses.Add(0, "before")
	m.observerMisses.Add(0, "after")
	return m
}

// onRequest is proxy.Config.OnRequest.
func (m *sidecarMetrics) onRequest(class string, status int, d time.Duration) {
	m.requests.Add(1, class, strconv.Itoa(status))
	m.requestDuration.Observe(d, class)
}

// onObserverMiss is proxy.Config.OnObserverMiss.
func (m *sidecarMetrics) onObserverMiss(step string) { m.observerMisses.Add(1, step) }

// onSETIssued is ssf.Config.OnSETIssued.
func (m *sidecarMetrics) onSETIssued(streamID, eventType string) {
	m.setsIssued.Add(1, streamID, eventType)
}

// onVerification is ssf.Config.OnVerificationRequest.
func (m *sidecarMetrics) onVerification(streamID string, accepted bool) {
	r := "accepted"
	if !accepted {
		r = "rate_limited"
	}
	m.verifications.Add(1, streamID, r)
}

// hooks are the outbox callbacks that feed the delivery metrics.
func (m *sidecarMetrics) hooks() outbox.Hooks {
	return outbox.Hooks{
		OnEnqueue: func(streamID string, _, dropped int) {
			if dropped > 0 {
				m.enqueueDropped.Add(uint64(dropped), streamID)
			}
		},
		OnAttempt: func(streamID, _, _ string, a outbox.Attempt) {
			m.deliveries.Add(1, streamID, a.Outcome)
		},
		OnDelivered: func(streamID, _ string, since time.Duration) {
			m.deliveryLatency.Observe(since, streamID)
		},
		OnDeadLetter: func(streamID, _, _ string) { m.deadLettered.Add(1, streamID) },
		OnFenced:     func(streamID string, _, _ uint64) { m.fenced.Add(1, streamID) },
	}
}

// families collects every metric, the scrape-time ones included.
func (m *sidecarMetrics) families(ctx context.Context) []promtext.Family {
	var stats []outbox.StreamStats
	var statsErr error
	if m.outboxStats != nil {
		stats, statsErr = m.outboxStats(ctx)
		if statsErr != nil {
			m.log.WarnContext(ctx, "metrics: outbox statistics unavailable", slog.Any("error", statsErr))
		} else {
			m.followStreams(stats)
		}
	}
	fams := []promtext.Family{
		m.requests.Family(), m.requestDuration.Family(), m.observerMisses.Family(), m.setsIssued.Family(),
		m.deliveries.Family(), m.deliveryLatency.Family(), m.deadLettered.Family(), m.verifications.Family(),
		m.enqueueDropped.Family(), m.fenced.Family(),
		promtext.Gauge("ssf_sidecar_build_info", "Always 1; the version is a label.", 1, "version", m.version),
	}
	if m.proxyStats != nil {
		s := m.proxyStats()
		fams = append(fams,
			promtext.Counter("ssf_sidecar_upstream_errors_total", "Requests answered 502 because authentik failed.", s.UpstreamErrors),
			promtext.Counter("ssf_sidecar_upstream_timeouts_total", "Requests answered 504 because authentik did not answer in time.", s.UpstreamTimeouts),
			promtext.Counter("ssf_sidecar_client_gone_total", "Requests the client abandoned before the end.", s.ClientGone),
			promtext.Counter("ssf_sidecar_proxy_lane_requests_total", "Proxied requests carried by the proxy's own HTTP/1.1 lane (bodyless GET and HEAD); the rest went through net/http.", s.Lane),
			promtext.Counter("ssf_sidecar_proxy_connections_refused_total", "Client connections closed at once because --max-connections were open.", s.ConnsRefused))
	}
	if m.limitFailures != nil {
		fams = append(fams, promtext.Counter("ssf_sidecar_management_limit_store_failures_total",
			"Management calls served without their rate-limit state stored, because the store failed (the limit held in memory).", uint64(max(m.limitFailures(), 0))))
	}
	if m.storeHealthy != nil {
		up := 1.0
		if m.storeHealthy() != nil {
			up = 0
		}
		fams = append(fams, promtext.Gauge("ssf_sidecar_store_up",
			"1 while the store is open and writable; 0 while the sidecar proxies authentik unobserved (degraded, see /healthz).", up))
	}
	if m.signingKeys != nil {
		published := promtext.Family{Name: "ssf_sidecar_signing_keys", Help: "Signing keys the JWKS publishes, by kid and state (current, retired).", Type: "gauge"}
		leaves := promtext.Family{Name: "ssf_sidecar_signing_key_leaves_jwks_timestamp_seconds",
			Help: "When a retired generated signing key stops being published (its --key-overlap ends), as a Unix time, by kid.", Type: "gauge"}
		for _, k := range m.signingKeys() {
			state := "retired"
			if k.Current {
				state = "current"
			}
			published.Samples = append(published.Samples, promtext.Sample{Labels: [][2]string{{"kid", k.KID}, {"state", state}}, Value: 1})
			if !k.LeavesJWKSAt.IsZero() {
				leaves.Samples = append(leaves.Samples, promtext.Sample{Labels: [][2]string{{"kid", k.KID}}, Value: float64(k.LeavesJWKSAt.UnixMilli()) / 1000})
			}
		}
		fams = append(fams, published, leaves)
	}
	if m.tapStats != nil {
		s := m.tapStats()
		sig := promtext.Family{Name: "ssf_sidecar_tap_signals_total", Help: "Signals published by the tap, by kind and source (traffic, event_api, reconcile).", Type: "counter"}
		for kind, bySrc := range s.Signals {
			for src, n := range bySrc {
				sig.Samples = append(sig.Samples, promtext.Sample{Labels: [][2]string{{"kind", string(kind)}, {"source", string(src)}}, Value: float64(n)})
			}
		}
		fams = append(fams, sig,
			promtext.Counter("ssf_sidecar_tap_dedup_drops_total", "Signals dropped because the other source already reported the action.", s.DedupDrops),
			promtext.Counter("ssf_sidecar_tap_misses_total", "Tapped requests whose look-up or journal write failed, and intents that could not be confirmed.", s.Misses),
			promtext.Counter("ssf_sidecar_tap_untrusted_total", "Tapped requests whose caller authentik did not confirm.", s.Untrusted),
			promtext.Counter("ssf_sidecar_tap_rate_limited_total", "Tapped requests not looked up because the client exceeded its rate.", s.RateLimited),
			promtext.Counter("ssf_sidecar_tap_queue_drops_total", "Completed observations dropped because the tap's queue was full (recovered from the journal).", s.QueueDrops),
			promtext.Counter("ssf_sidecar_poller_polls_total", "Completed reads of authentik's event API.", s.Polls),
			promtext.Counter("ssf_sidecar_poller_errors_total", "Failed reads of authentik's event API.", s.PollErrors),
			promtext.Gauge("ssf_sidecar_poller_lag_seconds", "Seconds since the event-API poller last had read everything authentik had recorded (0 while another replica holds the poller lease).", s.PollLag.Seconds()))
	}
	if m.outboxStats != nil {
		backlog := promtext.Family{Name: "ssf_sidecar_outbox_backlog", Help: "SETs waiting for delivery, by stream.", Type: "gauge"}
		oldest := promtext.Family{Name: "ssf_sidecar_outbox_oldest_age_seconds", Help: "Age of the oldest SET waiting for delivery, by stream.", Type: "gauge"}
		dead := promtext.Family{Name: "ssf_sidecar_outbox_dead_letter", Help: "SETs in the dead letter, by stream.", Type: "gauge"}
		for _, s := range stats {
			l := [][2]string{{"stream_id", s.StreamID}}
			backlog.Samples = append(backlog.Samples, promtext.Sample{Labels: l, Value: float64(s.Backlog)})
			oldest.Samples = append(oldest.Samples, promtext.Sample{Labels: l, Value: s.OldestAge.Seconds()})
			dead.Samples = append(dead.Samples, promtext.Sample{Labels: l, Value: float64(s.Dead)})
		}
		fams = append(fams, backlog, oldest, dead)
	}
	return fams
}

// followStreams gives every stream its zero series (dead letter, fenced)
// and ends the per-stream series of streams that no longer exist.
func (m *sidecarMetrics) followStreams(stats []outbox.StreamStats) {
	keep := make(map[string]bool, len(stats))
	for _, s := range stats {
		keep[s.StreamID] = true
		m.deadLettered.Add(0, s.StreamID)
		m.fenced.Add(0, s.StreamID)
	}
	for _, c := range []*promtext.CounterVec{m.setsIssued, m.deliveries, m.deadLettered, m.fenced, m.verifications, m.enqueueDropped} {
		c.Retain("stream_id", keep)
	}
	m.deliveryLatency.Retain("stream_id", keep)
}

// ServeHTTP writes the Prometheus text exposition.
func (m *sidecarMetrics) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	fams := m.families(ctx)
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	if err := promtext.WriteFamilies(w, fams); err != nil {
		m.log.DebugContext(ctx, "metrics: write", slog.Any("error", err))
	}
}

// LabelledFamilies are the families counted as things happen, by name,
// with their label names (a histogram's end with le). A labelled family
// shows in /metrics only once it has a sample; this is their declaration.
func LabelledFamilies() map[string][]string {
	m := newSidecarMetrics()
	out := map[string][]string{}
	for _, c := range []*promtext.CounterVec{m.requests, m.observerMisses, m.setsIssued, m.deliveries, m.deadLettered, m.verifications, m.enqueueDropped, m.fenced} {
		name, labels := c.Desc()
		out[name] = labels
	}
	for _, h := range []*promtext.HistogramVec{m.requestDuration, m.deliveryLatency} {
		name, labels := h.Desc()
		out[name] = append(labels, "le")
	}
	return out
}
