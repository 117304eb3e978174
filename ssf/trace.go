package ssf

import (
	"context"

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
)

// traceSET records a span for one SET issued and returns the traceparent
// its delivery attempts will hang under: this span's when it records,
// else fallback.
func traceSET(ctx context.Context, set outbox.SET, fallback string) string {
	_, span := spanTracer.Start(ctx, "ssf.set", trace.WithAttributes(
		attribute.String(attrStreamID, set.StreamID), attribute.String(attrJTI, set.JTI),
		attribute.String(attrEventType, set.EventType)))
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

// startPollSpan starts the span of one poll response on a stream.
func startPollSpan(ctx context.Context, streamID string) (context.Context, trace.Span) {
	return spanTracer.Start(ctx, "ssf.poll", trace.WithAttributes(attribute.String(attrStreamID, streamID)))
}
