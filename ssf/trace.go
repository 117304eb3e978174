package ssf

import (
	"context"
	"slices"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// spanTracer starts the spans of each SET, each enqueue and each poll
// response, following the process's global tracer provider.
var spanTracer = otel.Tracer("github.com/ssf-sidecar/ssf-sidecar/ssf")

// Span attribute keys shared with the delivery spans cmd builds.
const (
	attrStreamID  = "ssf.stream_id"
	attrJTI       = "ssf.jti"
	attrEventType = "ssf.event_type"
	attrReceiver  = "ssf.receiver"
)

// Events on the publish span about a stream that got no SET (skipped) or
// one that waits (held).
const (
	evSkipped = "ssf.stream.skipped"
	evHeld    = "ssf.stream.held"
)

// traceSET records a span for one SET issued and returns the traceparent
// its delivery attempts will hang under: this span's when it records,
// else fallback.
func traceSET(ctx context.Context, set outbox.SET, fallback string) string {
	_, span := spanTracer.Start(ctx, "ssf.set", trace.WithAttributes(
		attribute.String(attrStreamID, set.StreamID), attribute.String(attrJTI, set.JTI),
		attribute.String(attrEventType, set.EventType), attribute.String(attrReceiver, set.Labels["receiver"])))
	defer span.End()
	if !span.IsRecording() {
		return fallback
	}
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(trace.ContextWithSpan(ctx, span), c)
	if tp := c["traceparent"]; tp != "" {
		return tp
	}
	return fallback
}

// enqueueTraced commits SETs and marks under a span of the durable enqueue.
func (t *Transmitter) enqueueTraced(ctx context.Context, sets []outbox.SET, marks []outbox.Mark) error {
	ctx, span := spanTracer.Start(ctx, "outbox.enqueue", trace.WithAttributes(attribute.Int("ssf.sets", len(sets)),
		attribute.Int("ssf.marks", len(marks))))
	defer span.End()
	if span.IsRecording() && len(sets) > 0 && len(sets) <= maxJTIsOnSpan {
		jtis := make([]string, len(sets))
		for i, s := range sets {
			jtis[i] = s.JTI
		}
		span.SetAttributes(attribute.StringSlice("ssf.jtis", jtis))
	}
	err := t.cfg.Queue.Enqueue(ctx, sets, marks)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "enqueue failed")
		return err
	}
	if h := t.cfg.OnSETIssued; h != nil {
		for _, s := range sets {
			h(s.StreamID, s.EventType)
		}
	}
	return nil
}

// nameServerSpan names the proxy's server span of an SSF request by its
// route template ("POST /ssf/streams", "POST /ssf/poll/{stream_id}") and
// sets http.route, which only the router knows.
func nameServerSpan(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if span := trace.SpanFromContext(c.Request().Context()); span.IsRecording() {
			if route := routeTemplate(c.Path()); route != "" && route != "/*" {
				span.SetName(c.Request().Method + " " + route)
				span.SetAttributes(attribute.String("http.route", route))
			}
		}
		return next(c)
	}
}

// tagServerSpan names the authenticated receiver on the request's server
// span (the name from the receivers file, not a secret).
func tagServerSpan(c echo.Context, receiver string) {
	if span := trace.SpanFromContext(c.Request().Context()); span.IsRecording() {
		span.SetAttributes(attribute.String(attrReceiver, receiver))
	}
}

// routeTemplate turns an echo path ("/ssf/poll/:id", `/ssf/subjects\:add`)
// into the template the HTTP conventions use ("/ssf/poll/{stream_id}",
// "/ssf/subjects:add").
func routeTemplate(p string) string {
	p = strings.ReplaceAll(p, `\:`, "\x00")
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if name, ok := strings.CutPrefix(s, ":"); ok {
			if name == "id" {
				name = "stream_id"
			}
			parts[i] = "{" + name + "}"
		}
	}
	return strings.ReplaceAll(strings.Join(parts, "/"), "\x00", ":")
}

// maxJTIsOnSpan bounds the jtis listed on one enqueue or poll span.
const maxJTIsOnSpan = 256

// startPollSpan starts the span of one poll response on a stream. The
// outbox's delivery tracer links it to each SET handed out or acked.
func startPollSpan(ctx context.Context, streamID, receiver string) (context.Context, trace.Span) {
	return spanTracer.Start(ctx, "ssf.poll", trace.WithAttributes(attribute.String(attrStreamID, streamID),
		attribute.String(attrReceiver, receiver)))
}

// endPollSpan records what one poll did: the jtis handed out and acked.
func endPollSpan(span trace.Span, req outbox.PollRequest, resp outbox.PollResponse) {
	span.SetAttributes(attribute.Int("ssf.poll.sets", len(resp.Sets)), attribute.Int("ssf.poll.acks", len(req.Ack)),
		attribute.Bool("ssf.poll.return_immediately", req.ReturnImmediately))
	if !span.IsRecording() {
		return
	}
	if n := len(resp.Sets); n > 0 {
		jtis := make([]string, 0, n)
		for jti := range resp.Sets {
			jtis = append(jtis, jti)
		}
		slices.Sort(jtis)
		span.SetAttributes(attribute.StringSlice("ssf.poll.jtis", jtis[:min(n, maxJTIsOnSpan)]))
	}
	if n := len(req.Ack); n > 0 {
		span.SetAttributes(attribute.StringSlice("ssf.poll.acked_jtis", req.Ack[:min(n, maxJTIsOnSpan)]))
	}
}
