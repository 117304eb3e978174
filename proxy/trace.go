package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"

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
	tracer    trace.Tracer
	prop      propagation.TextMapPropagator
	all       bool
	propagate bool
	fwd       forwarded
}

func newSpanTracer(cfg Config) *spanTracer {
	if cfg.TracerProvider == nil {
		return nil
	}
	return &spanTracer{tracer: cfg.TracerProvider.Tracer(tracerName), prop: propagation.TraceContext{}, all: cfg.TraceAllRoutes,
		propagate: cfg.PropagateTrace, fwd: forwarded{trusted: cfg.TrustedProxies}}
}

// start returns r with the server span in its context. The span is named
// by the method alone ("{method}", as the HTTP conventions say when no
// route template is known); the handler that knows the template (the tap
// for a tapped route, the SSF handler) renames it and sets http.route. The
// route class has its own attribute.
func (t *spanTracer) start(r *http.Request, class string) (*http.Request, trace.Span) {
	ctx := t.prop.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	peer := peerIP(r.RemoteAddr)
	trusted := t.fwd.isTrusted(peer)
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	if v := r.Header.Get("X-Forwarded-Proto"); trusted && (v == "http" || v == "https") {
		scheme = v
	}
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", r.Method),
		attribute.String("url.path", r.URL.Path),
		attribute.String("url.scheme", scheme),
		attribute.String("ssf_sidecar.route_class", class),
		attribute.String("network.peer.address", peer),
		attribute.String("client.address", t.clientAddress(r, peer, trusted)),
	}
	if h := r.Host; h != "" {
		host, port := splitHostPort(h)
		attrs = append(attrs, attribute.String("server.address", host))
		if n, err := strconv.Atoi(port); err == nil {
			attrs = append(attrs, attribute.Int("server.port", n))
		}
	}
	if ua := r.Header.Get("User-Agent"); ua != "" {
		attrs = append(attrs, attribute.String("user_agent.original", ua))
	}
	if id := requestID(r); id != "" {
		attrs = append(attrs, attribute.String("ssf_sidecar.request_id", id))
	}
	ctx, span := t.tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attrs...))
	return r.WithContext(ctx), span
}

// clientAddress is the original client: the socket peer, unless that is a
// trusted proxy, then the right-most X-Forwarded-For entry that is not a
// trusted proxy itself.
func (t *spanTracer) clientAddress(r *http.Request, peer string, trusted bool) string {
	if !trusted {
		return peer
	}
	xff := strings.Join(r.Header.Values("X-Forwarded-For"), ",")
	for xff != "" {
		var last string
		if i := strings.LastIndexByte(xff, ','); i >= 0 {
			last, xff = xff[i+1:], xff[:i]
		} else {
			last, xff = xff, ""
		}
		ip := strings.TrimSpace(last)
		if a, err := netip.ParseAddr(ip); err != nil || a.Zone() != "" {
			return peer // a malformed chain: believe only the socket
		}
		if !t.fwd.isTrusted(ip) {
			return ip
		}
	}
	return peer
}

// propagateTo sends the server span's traceparent upstream when the
// sidecar started the trace (the client sent none), so an instrumented
// authentik continues it. A client's own traceparent is forwarded as sent.
func (t *spanTracer) propagateTo(out *http.Request, clientSent bool) {
	if !t.propagate || clientSent {
		return
	}
	t.prop.Inject(out.Context(), propagation.HeaderCarrier(out.Header))
}

// splitHostPort splits host[:port], IPv6 literals included.
func splitHostPort(h string) (host, port string) {
	if hh, pp, err := net.SplitHostPort(h); err == nil {
		return hh, pp
	}
	return strings.TrimSuffix(strings.TrimPrefix(h, "["), "]"), ""
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
