package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

type nopObserver struct{}

func (nopObserver) Match(_, _, path string) bool { return path == "/tapped" }
func (nopObserver) Before(ctx context.Context, r *http.Request, body []byte) any {
	return trace.SpanContextFromContext(ctx).IsValid()
}
func (nopObserver) After(context.Context, any, *http.Request, int, http.Header, []byte) {}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkForwarderTracing runs the proxy handler in process (no network,
// so the span cost is as large a share as it can be) on a mix of one
// tapped request in ten, with no tracer provider (tracing off) and with the
// SDK sampling every request into a batch processor. The off and sdk
// sub-benchmarks run one after the other; ratio runs both in alternating
// rounds and reports the on/off throughput, which load on the machine
// affects alike.
func BenchmarkForwarderTracing(b *testing.B) {
	sdk := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discardExporter{}))
	defer sdk.Shutdown(context.Background())
	for _, tc := range []struct {
		name string
		tp   trace.TracerProvider
	}{
		{"off", nil},
		{"sdk", sdk},
	} {
		b.Run(tc.name, func(b *testing.B) {
			serve := benchForwarder(b, tc.tp)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				serve(i)
				i++
			}
		})
	}
	b.Run("ratio", func(b *testing.B) {
		worlds := []func(int){benchForwarder(b, nil), benchForwarder(b, sdk)}
		var spent [2]time.Duration
		const round = 500
		for done := 0; done < b.N; done += round {
			n := min(round, b.N-done)
			for w, serve := range worlds {
				start := time.Now()
				for i := range n {
					serve(done + i)
				}
				spent[w] += time.Since(start)
			}
		}
		b.ReportMetric(float64(spent[0])/float64(spent[1]), "on/off-throughput")
	})
}

// benchForwarder returns a function serving the i-th request of the mix
// through a proxy traced by tp (nil: off).
func benchForwarder(b *testing.B, tp trace.TracerProvider) func(int) {
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: mustURL(&testing.T{}, "http://authentik:9000"),
		Observer: nopObserver{}, TracerProvider: tp})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	s.fwd.fast = false
	plain := httptest.NewRequest("GET", "/api/v3/core/users/me/", nil)
	tapped := httptest.NewRequest("GET", "/tapped", nil)
	tapped.Header.Set("Traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	return func(i int) {
		req := plain
		if i%10 == 0 {
			req = tapped
		}
		r := req.Clone(req.Context())
		rt := fixedTransport{body: make([]byte, 512)}
		s.fwd.roundTrip = rt.RoundTrip
		w := discardWriter{h: http.Header{}}
		h.ServeHTTP(&w, r)
	}
}
