package tap

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracer is the tap's instrumentation scope; it follows the process's
// global tracer provider (a no-op until one is installed).
var tracer = otel.Tracer("github.com/ssf-sidecar/ssf-sidecar/tap")

// traceParentOf is the W3C traceparent an intent keeps: the proxy's server
// span when the request context carries one, else what the client sent.
// It is not secret, and survives a crash in the journal.
func traceParentOf(ctx context.Context, r *http.Request) string {
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		c := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, c)
		return c["traceparent"]
	}
	return r.Header.Get("Traceparent")
}

// withTraceParent returns ctx under the remote span a traceparent names
// (ctx unchanged when it is empty or malformed).
func withTraceParent(ctx context.Context, tp string) context.Context {
	if tp == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": tp})
}

// startClassifySpan starts the span of turning a completed intent into
// signals, in the trace of the request that caused it.
func startClassifySpan(ctx context.Context, in *intent, source Source) (context.Context, trace.Span) {
	return tracer.Start(withTraceParent(ctx, in.TraceParent), "tap.classify", trace.WithAttributes(
		attribute.String("tap.intent.id", in.ID), attribute.String("tap.op", string(in.Op)),
		attribute.String("tap.source", string(source)), attribute.String("ssf_sidecar.request_id", in.RequestID)))
}

// startEventSpan starts the span of turning one event-API record into
// signals: the root of the trace its SETs' deliveries join, as no request
// of the proxy's caused it.
func startEventSpan(ctx context.Context, pk, action string) (context.Context, trace.Span) {
	return tracer.Start(ctx, "tap.event", trace.WithAttributes(attribute.String("tap.event.pk", pk),
		attribute.String("tap.event.action", action)))
}

// endSpan ends a span, failed when err is set.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "failed")
	}
	span.End()
}
