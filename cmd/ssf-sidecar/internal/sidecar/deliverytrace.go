package sidecar

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// deliveryTracer follows each SET's delivery in the SET's own trace: its
// push attempts as client spans, its poll hand-out and acknowledgement, and
// every decision that makes it wait. Each span's parent is the traceparent
// stored with the SET (its ssf.set span, itself under the request that
// caused it), so an attempt hours later, after restarts, still sits in the
// trace of the user's click. A parent rather than a link: tracing backends
// show a link only on the span itself, while the operator's question ("did
// Alice's logout reach Acme?") starts from the request's trace and must
// find the attempts in it. The poll request's own span links to each SET's
// trace, the other way round.
type deliveryTracer struct {
	tracer trace.Tracer // nil: logs only
	log    *slog.Logger
	// propagate sends the push span's traceparent to the receiver.
	propagate bool
}

func newDeliveryTracer(tp trace.TracerProvider, log *slog.Logger, propagate bool) *deliveryTracer {
	d := &deliveryTracer{log: log, propagate: propagate}
	if tp != nil {
		d.tracer = tp.Tracer("github.com/ssf-sidecar/ssf-sidecar/outbox")
	}
	return d
}

// hooks are the outbox callbacks that produce the spans and logs.
func (d *deliveryTracer) hooks() outbox.Hooks {
	return outbox.Hooks{
		Trace: d,
		OnDelivered: func(streamID, jti string, since time.Duration) {
			d.log.Debug("SET delivered", slog.String("stream_id", streamID), slog.String("jti", jti),
				slog.Duration("since_enqueue", since))
		},
		OnDeadLetter: func(streamID, jti, reason string) {
			// The outbox logs the dead letter at WARN; this is its trace side.
			d.log.Debug("SET dead-lettered", slog.String("stream_id", streamID), slog.String("jti", jti),
				slog.String("reason", reason))
		},
	}
}

// setContext is a context whose remote parent is the SET's stored span.
func setContext(traceParent string) context.Context {
	ctx := context.Background()
	if traceParent != "" {
		ctx = propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": traceParent})
	}
	return ctx
}

// setAttrs name a SET and its receiver on every delivery span.
func setAttrs(del outbox.Delivery) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String("ssf.stream_id", del.StreamID), attribute.String("ssf.jti", del.JTI),
		attribute.String("ssf.receiver", del.Labels["receiver"]), attribute.String("ssf.event_type", del.EventType),
	}
}

// StartPush starts the client span of one push attempt and returns its
// traceparent for the request (outbox.DeliveryTracer).
func (d *deliveryTracer) StartPush(del outbox.Delivery) (string, func(outbox.Attempt)) {
	ctx := setContext(del.TraceParent)
	if d.tracer == nil {
		return "", func(a outbox.Attempt) { d.logAttempt(ctx, del, a) }
	}
	attrs := append(setAttrs(del), attribute.Int("ssf.attempt", del.Attempt), attribute.String("http.request.method", "POST"))
	attrs = append(attrs, endpointAttrs(del.Endpoint)...)
	ctx, span := d.tracer.Start(ctx, "ssf.push", trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	header := ""
	if d.propagate {
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
		header = c["traceparent"]
	}
	return header, func(a outbox.Attempt) {
		span.SetAttributes(attribute.String("ssf.outcome", a.Outcome))
		if a.StatusCode != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", a.StatusCode))
		}
		if a.Outcome != "delivered" && a.Outcome != "aborted" {
			span.SetAttributes(attribute.String("error.type", errorType(a)))
			desc := a.Outcome
			if a.Error != "" {
				desc += ": " + a.Error
			} else if a.StatusCode != 0 {
				desc += ": " + strconv.Itoa(a.StatusCode)
			}
			span.SetStatus(codes.Error, desc)
		}
		span.End()
		d.logAttempt(ctx, del, a)
	}
}

// logAttempt logs one push attempt. The context carries the span, so the
// record gets its trace and span ids. The error text is the outbox's
// summary, never a body.
func (d *deliveryTracer) logAttempt(ctx context.Context, del outbox.Delivery, a outbox.Attempt) {
	level := slog.LevelInfo
	if a.Outcome != "delivered" {
		level = slog.LevelWarn
	}
	d.log.Log(ctx, level, "push attempt", slog.String("stream_id", del.StreamID), slog.String("jti", del.JTI),
		slog.String("receiver", del.Labels["receiver"]), slog.Int("attempt", del.Attempt), slog.String("outcome", a.Outcome),
		slog.Int("status", a.StatusCode), slog.Duration("latency", a.Latency), slog.String("error", a.Error))
}

// endpointAttrs are the push destination's server.address, server.port and
// url.full — without user information, query or fragment, which may hold
// a receiver's secrets.
func endpointAttrs(endpoint string) []attribute.KeyValue {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = map[string]string{"http": "80", "https": "443"}[u.Scheme]
	}
	clean := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	attrs := []attribute.KeyValue{attribute.String("server.address", host), attribute.String("url.full", clean.String())}
	if n, err := strconv.Atoi(port); err == nil {
		attrs = append(attrs, attribute.Int("server.port", n))
	}
	return attrs
}

// errorType is a failed attempt's low-cardinality error.type: the status
// code when the receiver answered, else the kind of transport failure.
func errorType(a outbox.Attempt) string {
	if a.StatusCode >= 300 {
		return strconv.Itoa(a.StatusCode)
	}
	e := strings.ToLower(a.Error)
	for _, k := range []struct{ has, kind string }{
		{"sign:", "sign"},
		{"not allowed", "destination_refused"},
		{"connection refused", "connection_refused"},
		{"connection reset", "connection_reset"},
		{"no such host", "dns"},
		{"timeout", "timeout"},
		{"deadline exceeded", "timeout"},
		{"tls", "tls"},
		{"x509", "tls"},
		{"eof", "connection_closed"},
	} {
		if strings.Contains(e, k.has) {
			return k.kind
		}
	}
	if a.StatusCode != 0 {
		return strconv.Itoa(a.StatusCode)
	}
	return "_OTHER"
}

// pollSpanNames name the poll steps in a SET's trace.
var pollSpanNames = map[string]string{"handed_out": "ssf.poll.hand_out", "acked": "ssf.poll.ack", "set_err": "ssf.poll.set_err"}

// Polled records each SET a poll handed out or a receiver acknowledged
// as a span in the SET's trace, linked to the poll request's span, and
// links the poll span to it (outbox.DeliveryTracer).
func (d *deliveryTracer) Polled(ctx context.Context, step string, ds []outbox.Delivery) {
	if d.tracer == nil {
		return
	}
	poll := trace.SpanFromContext(ctx)
	pollSC := poll.SpanContext()
	name := pollSpanNames[step]
	if name == "" {
		name = "ssf.poll." + step
	}
	for _, del := range ds {
		opts := []trace.SpanStartOption{trace.WithAttributes(setAttrs(del)...), trace.WithAttributes(attribute.String("ssf.outcome", step))}
		if pollSC.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: pollSC,
				Attributes: []attribute.KeyValue{attribute.String("ssf.link", "poll request")}}))
		}
		_, span := d.tracer.Start(setContext(del.TraceParent), name, opts...)
		if step == "set_err" {
			span.SetStatus(codes.Error, "rejected by the receiver")
		}
		span.End()
		if pollSC.IsValid() && poll.IsRecording() {
			poll.AddLink(trace.Link{SpanContext: span.SpanContext(), Attributes: []attribute.KeyValue{
				attribute.String("ssf.jti", del.JTI), attribute.String("ssf.outcome", step)}})
		}
	}
}

// Held records, in the trace of each SET that waits, an ssf.wait span
// whose event says why and until when (outbox.DeliveryTracer).
func (d *deliveryTracer) Held(h outbox.Hold) {
	if d.tracer == nil {
		return
	}
	for _, del := range h.Waiting {
		msg := holdMessage(h, del)
		attrs := append(setAttrs(del), attribute.String("ssf.hold.reason", h.Reason), attribute.Int("ssf.queue.ahead", del.Ahead))
		if h.HeadJTI != "" && h.HeadJTI != del.JTI {
			attrs = append(attrs, attribute.String("ssf.queue.head_jti", h.HeadJTI))
		}
		if !h.Until.IsZero() {
			attrs = append(attrs, attribute.String("ssf.hold.until", h.Until.UTC().Format(time.RFC3339)))
		}
		if h.LastError != "" {
			attrs = append(attrs, attribute.String("ssf.hold.last_error", h.LastError))
		}
		_, span := d.tracer.Start(setContext(del.TraceParent), "ssf.wait", trace.WithAttributes(attrs...))
		span.AddEvent("ssf.held", trace.WithAttributes(attribute.String("ssf.hold.message", msg)))
		span.End()
	}
}

// holdMessage says in words why a SET waits: "waiting behind 3 SETs,
// stream backing off until 12:03:41Z".
func holdMessage(h outbox.Hold, del outbox.Delivery) string {
	var why string
	switch h.Reason {
	case outbox.HoldBackoff:
		why = "stream backing off until " + h.Until.UTC().Format("15:04:05Z")
		if h.LastError != "" {
			why += " after " + h.LastError
		}
	case outbox.HoldPaused:
		why = "stream paused"
	default:
		why = h.Reason
	}
	if del.Ahead == 0 {
		return why
	}
	noun := "SETs"
	if del.Ahead == 1 {
		noun = "SET"
	}
	return fmt.Sprintf("waiting behind %d %s, %s", del.Ahead, noun, why)
}
