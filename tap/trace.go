package tap

import (
	"context"
	"net/http"
	"strings"
	"time"

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

// nameServerSpan names the proxy's server span of a tapped request by its
// route template ("DELETE /api/v3/core/authenticated_sessions/{uuid}/")
// and sets http.route and tap.op: the proxy knows no authentik routes.
func nameServerSpan(ctx context.Context, r *http.Request, rt route) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	tmpl := rt.template(r.URL.Path)
	span.SetName(r.Method + " " + tmpl)
	span.SetAttributes(attribute.String("http.route", tmpl), attribute.String("tap.op", string(rt.op)))
}

// template is the route's path template, ids and slugs replaced by names.
func (rt route) template(path string) string {
	switch rt.op {
	case opLogout, opFlowStage, opFlowFollow:
		return apiPrefix + "flows/executor/{slug}/"
	case opSessionDelete:
		return apiPrefix + "core/authenticated_sessions/{uuid}/"
	case opSessionBulk:
		return apiPrefix + "core/authenticated_sessions/bulk_delete/"
	case opUserUpdate, opUserDelete:
		return apiPrefix + "core/users/{id}/"
	case opSetPassword:
		return apiPrefix + "core/users/{id}/set_password/"
	case opDeviceDelete:
		if rt.admin {
			return apiPrefix + "authenticators/admin/" + rt.dtype + "/{id}/"
		}
		return apiPrefix + "authenticators/" + rt.dtype + "/{id}/"
	case opImpersonate:
		return apiPrefix + "core/users/{id}/impersonate/"
	case opImpersonEnd:
		return apiPrefix + "core/users/impersonate_end/"
	case opLogoutHint:
		switch {
		case strings.HasPrefix(path, "/flows/-/default/invalidation"):
			return "/flows/-/default/invalidation/"
		case strings.HasPrefix(path, "/outpost.goauthentik.io/sign_out"):
			return "/outpost.goauthentik.io/sign_out"
		default:
			return "/application/o/{slug}/end-session/"
		}
	}
	return "/" // not reached: every tapped op is above
}

// startClassifySpan starts the span of turning a completed intent into
// signals, in the trace of the request that caused it.
func startClassifySpan(ctx context.Context, in *intent, source Source) (context.Context, trace.Span) {
	return tracer.Start(withTraceParent(ctx, in.TraceParent), "tap.classify", trace.WithAttributes(
		attribute.String("tap.intent.id", in.ID), attribute.String("tap.op", string(in.Op)),
		attribute.String("tap.source", string(source))), trace.WithAttributes(requestIDAttr(in.RequestID)...))
}

// requestIDAttr is the request id attribute, none when there is none.
func requestIDAttr(id string) []attribute.KeyValue {
	if id == "" {
		return nil
	}
	return []attribute.KeyValue{attribute.String("ssf_sidecar.request_id", id)}
}

// startEventSpan starts the span of turning one event-API record into
// signals: the root of the trace its SETs' deliveries join, as no request
// of the proxy's caused it, linked to the poll round that read it.
func startEventSpan(ctx context.Context, pk, action string, began time.Time, round trace.Span) (context.Context, trace.Span) {
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithTimestamp(began), trace.WithAttributes(
		attribute.String("tap.event.pk", pk), attribute.String("tap.event.action", action))}
	if sc := round.SpanContext(); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	return tracer.Start(ctx, "tap.event", opts...)
}

// pollRound is the span of one read of authentik's event API that found
// records: the records that produced nothing are events on it, not traces
// of their own.
type pollRound struct{ span trace.Span }

func startPollRoundSpan(ctx context.Context, records int) pollRound {
	if records == 0 {
		return pollRound{span: trace.SpanFromContext(context.Background())} // a no-op span
	}
	_, span := tracer.Start(ctx, "tap.poll", trace.WithAttributes(attribute.Int("tap.poll.records", records)))
	return pollRound{span: span}
}

func (p pollRound) skipped(e akEvent, why string) {
	if p.span.IsRecording() {
		p.span.AddEvent("tap.event.skipped", trace.WithAttributes(attribute.String("tap.event.pk", e.PK),
			attribute.String("tap.event.action", e.Action), attribute.String("tap.reason", why)))
	}
}

func (p pollRound) fail(e akEvent, err error) {
	p.span.RecordError(err, trace.WithAttributes(attribute.String("tap.event.pk", e.PK)))
	p.span.SetStatus(codes.Error, "event-API record failed")
}

func (p pollRound) end() { p.span.End() }

// endSpan ends a span, failed when err is set.
func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "failed")
	}
	span.End()
}
