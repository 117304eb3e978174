package main

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// maxTrackedJTIs bounds the per-jti attempt counters: a receiver failing
// for days must not grow them without end. Past it the counters restart
// (attempt numbers are then counted from the restart).
const maxTrackedJTIs = 1 << 16

// deliveryTracer turns the outbox's attempt reports into client spans and
// log records. Each span's parent is the traceparent stored with the SET
// (its ssf.set span, itself under the request that caused it), so an
// attempt hours later, after restarts, still sits in the trace of the
// user's click. A parent rather than a link: tracing backends show a link
// only on the span itself, while the operator's question ("did Alice's
// logout reach Acme?") starts from the request's trace and must find the
// attempts in it. Start and end are the attempt's own times, reported
// after the fact.
type deliveryTracer struct {
	tracer trace.Tracer // nil: logs only
	log    *slog.Logger

	mu       sync.Mutex
	attempts map[string]int // jti → attempts seen
}

func newDeliveryTracer(tp trace.TracerProvider, log *slog.Logger) *deliveryTracer {
	d := &deliveryTracer{log: log, attempts: map[string]int{}}
	if tp != nil {
		d.tracer = tp.Tracer("github.com/ssf-sidecar/ssf-sidecar/outbox")
	}
	return d
}

// hooks are the outbox callbacks that produce the spans and logs.
func (d *deliveryTracer) hooks() outbox.Hooks {
	return outbox.Hooks{
		OnAttempt: d.onAttempt,
		OnDelivered: func(streamID, jti string, since time.Duration) {
			d.forget(jti)
			d.log.Debug("SET delivered", slog.String("stream_id", streamID), slog.String("jti", jti),
				slog.Duration("since_enqueue", since))
		},
		OnDeadLetter: func(streamID, jti, reason string) {
			d.forget(jti)
			// The outbox logs the dead letter at WARN; this is its trace side.
			d.log.Debug("SET dead-lettered", slog.String("stream_id", streamID), slog.String("jti", jti),
				slog.String("reason", reason))
		},
	}
}

func (d *deliveryTracer) next(jti string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.attempts) >= maxTrackedJTIs {
		clear(d.attempts)
	}
	d.attempts[jti]++
	return d.attempts[jti]
}

func (d *deliveryTracer) forget(jti string) {
	d.mu.Lock()
	delete(d.attempts, jti)
	d.mu.Unlock()
}

func (d *deliveryTracer) onAttempt(streamID, jti, traceParent string, a outbox.Attempt) {
	n := d.next(jti)
	if a.Outcome == "delivered" || a.Outcome == "dead" {
		d.forget(jti)
	}
	ctx := context.Background()
	if traceParent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": traceParent})
	}
	start := a.Time
	if start.IsZero() {
		start = time.Now().Add(-a.Latency)
	}
	if d.tracer != nil {
		var span trace.Span
		ctx, span = d.tracer.Start(ctx, "ssf.push", trace.WithSpanKind(trace.SpanKindClient), trace.WithTimestamp(start),
			trace.WithAttributes(
				attribute.String("ssf.stream_id", streamID), attribute.String("ssf.jti", jti),
				attribute.Int("ssf.attempt", n), attribute.String("ssf.outcome", a.Outcome),
				attribute.String("http.request.method", "POST")))
		if a.StatusCode != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", a.StatusCode))
		}
		if a.Outcome != "delivered" {
			desc := a.Outcome
			if a.Error != "" {
				desc += ": " + a.Error
			} else if a.StatusCode != 0 {
				desc += ": " + strconv.Itoa(a.StatusCode)
			}
			span.SetStatus(codes.Error, desc)
		}
		span.End(trace.WithTimestamp(start.Add(a.Latency)))
	}
	level := slog.LevelInfo
	if a.Outcome != "delivered" {
		level = slog.LevelWarn
	}
	// The context carries the span, so the log record gets its trace and
	// span ids. The error text is the outbox's summary, never a body.
	d.log.Log(ctx, level, "push attempt", slog.String("stream_id", streamID), slog.String("jti", jti),
		slog.Int("attempt", n), slog.String("outcome", a.Outcome), slog.Int("status", a.StatusCode),
		slog.Duration("latency", a.Latency), slog.String("error", a.Error))
}
