package proxy

import (
	"net"
	"net/http"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName is the instrumentation scope of the proxy's spans.
const tracerName = "github.com/ssf-sidecar/ssf-sidecar/proxy"

// spanTracer starts the server span of a request: a child of the client's
// W3C traceparent when it sent one. A nil *spanTracer traces nothing.
type spanTracer struct {
	tracer trace.Tracer
	prop   propagation.TextMapPropagator
	all    bool
}

func newSpanTracer(cfg Config) *spanTracer {
	if cfg.TracerProvider == nil {
		return nil
	}
	return &spanTracer{tracer: cfg.TracerProvider.Tracer(tracerName), prop: propagation.TraceContext{}, all: cfg.TraceAllRoutes}
}

// start returns r with the server span in its context. The span name
// follows the HTTP conventions ("{method} {route}") with the route class as
// the low-cardinality route.
func (t *spanTracer) start(r *http.Request, class string) (*http.Request, trace.Span) {
	ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", r.Method),
		attribute.String("url.path", r.URL.Path),
		attribute.String("http.route", class),
		attribute.String("ssf_sidecar.route_class", class),
	}
	if h := r.Host; h != "" {
		attrs = append(attrs, attribute.String("server.address", h))
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		attrs = append(attrs, attribute.String("client.address", host))
	}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		attrs = append(attrs, attribute.String("user_agent.original", ua))
	}
	if id := requestID(r); id != "" {
		attrs = append(attrs, attribute.String("ssf_sidecar.request_id", id))
	}
	ctx, span := t.tracer.Start(ctx, r.Method+" "+class, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attrs...))
	return r.WithContext(ctx), span
}

// end records the status sent and ends the span; a 5xx marks it failed
// (server spans leave 4xx unset, as the conventions say).
func endSpan(span trace.Span, class string, status int) {
	span.SetAttributes(attribute.Int("http.response.status_code", status), attribute.String("ssf_sidecar.route_class", class))
	if status >= 500 {
		span.SetStatus(codes.Error, strconv.Itoa(status))
	}
	span.End()
}
