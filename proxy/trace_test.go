package proxy

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// ctxObserver taps /tapped and remembers the span context Before saw.
type ctxObserver struct {
	mu   sync.Mutex
	seen []trace.SpanContext
}

func (o *ctxObserver) Match(_, _, path string) bool { return strings.HasPrefix(path, "/tapped") }
func (o *ctxObserver) Before(ctx context.Context, r *http.Request, body []byte) any {
	o.mu.Lock()
	o.seen = append(o.seen, trace.SpanContextFromContext(ctx))
	o.mu.Unlock()
	return nil
}
func (o *ctxObserver) After(context.Context, any, *http.Request, int, http.Header, []byte) {}

func TestServerSpans(t *testing.T) {
	const clientTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	const clientParent = "00f067aa0ba902b7"
	tp := "00-" + clientTrace + "-" + clientParent + "-01"
	ssfH := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !trace.SpanContextFromContext(r.Context()).IsValid() {
			http.Error(w, "no span in context", 500)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	cases := []struct {
		name        string
		all         bool
		path        string
		traceparent string
		wantSpans   int
		wantClass   string
		wantStatus  int
	}{
		{"untapped route is not traced by default", false, "/plain", "", 0, "", 200},
		{"untapped route traced when all routes are", true, "/plain", "", 1, "proxy", 200},
		{"tapped route gets a server span", false, "/tapped/x", "", 1, "observed", 200},
		{"tapped route honours the client's traceparent", false, "/tapped/x", tp, 1, "observed", 200},
		{"ssf route gets a server span in the handler's context", false, "/ssf/poll", tp, 1, "ssf", 202},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			up := reflectUpstream(t)
			u, _ := url.Parse(up.URL)
			obs := &ctxObserver{}
			_, base := startProxy(t, Config{Upstream: u, Observer: obs, SSF: ssfH, SSFPrefixes: []string{"/ssf/"},
				TracerProvider: prov, TraceAllRoutes: tc.all})
			req, _ := http.NewRequest(http.MethodGet, base+tc.path, nil)
			if tc.traceparent != "" {
				req.Header.Set("Traceparent", tc.traceparent)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			// The span ends just after the response is written: poll for it.
			spans := rec.Ended()
			for deadline := time.Now().Add(5 * time.Second); len(spans) < tc.wantSpans && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
				spans = rec.Ended()
			}
			if len(spans) != tc.wantSpans {
				t.Fatalf("%d spans, want %d", len(spans), tc.wantSpans)
			}
			if tc.wantSpans == 0 {
				return
			}
			s := spans[0]
			if s.SpanKind() != trace.SpanKindServer || s.Name() != "GET "+tc.wantClass {
				t.Errorf("span %q kind %v", s.Name(), s.SpanKind())
			}
			attrs := map[string]any{}
			for _, a := range s.Attributes() {
				attrs[string(a.Key)] = a.Value.AsInterface()
			}
			if attrs["http.response.status_code"] != int64(tc.wantStatus) || attrs["http.request.method"] != "GET" {
				t.Errorf("attributes %v", attrs)
			}
			if tc.traceparent != "" {
				if got := s.SpanContext().TraceID().String(); got != clientTrace {
					t.Errorf("trace id %s, want the client's %s", got, clientTrace)
				}
				if got := s.Parent().SpanID().String(); got != clientParent {
					t.Errorf("parent %s, want the client's span %s", got, clientParent)
				}
			}
			if tc.wantClass == "observed" {
				obs.mu.Lock()
				defer obs.mu.Unlock()
				if len(obs.seen) != 1 || obs.seen[0].SpanID() != s.SpanContext().SpanID() {
					t.Errorf("observer saw %v, want the server span %v", obs.seen, s.SpanContext().SpanID())
				}
			}
		})
	}
}
