package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
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
			if code := getWith(t, base+tc.path, "Traceparent", tc.traceparent); code != tc.wantStatus {
				t.Fatalf("status %d, want %d", code, tc.wantStatus)
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
			if s.SpanKind() != trace.SpanKindServer || s.Name() != "GET" || attrsOfSpan(s)["ssf_sidecar.route_class"] != tc.wantClass {
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

func attrsOfSpan(s sdktrace.ReadOnlySpan) map[string]any {
	m := map[string]any{}
	for _, a := range s.Attributes() {
		m[string(a.Key)] = a.Value.AsInterface()
	}
	return m
}

// TestServerSpanConventions: the server span has url.scheme, the host
// without its port in server.address, the original client from a trusted
// proxy's X-Forwarded-For in client.address (the socket peer in
// network.peer.address, and only the peer when it is not trusted), and the
// upstream gets the server span's traceparent when the client sent none,
// the client's own otherwise.
func TestServerSpanConventions(t *testing.T) {
	const clientTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	cases := []struct {
		name        string
		trusted     bool
		propagate   bool
		xff         string
		traceparent string
		wantClient  string
		wantUpTP    string // "span": the server span's; "": none
	}{
		{"untrusted peer: its X-Forwarded-For is ignored", false, true, "203.0.113.7", "", "127.0.0.1", "span"},
		{"trusted peer: the original client", true, true, "203.0.113.7", "", "203.0.113.7", "span"},
		{"trusted peer, chain of trusted proxies skipped", true, true, "198.51.100.9, 127.0.0.2", "", "198.51.100.9", "span"},
		{"client's traceparent forwarded as sent", true, true, "", clientTP, "127.0.0.1", clientTP},
		{"propagation off", false, false, "", "", "127.0.0.1", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			var upTP []string
			var mu sync.Mutex
			up := httptestServer(t, func(r *http.Request) {
				mu.Lock()
				upTP = r.Header.Values("Traceparent")
				mu.Unlock()
			})
			u, _ := url.Parse(up)
			cfg := Config{Upstream: u, Observer: &ctxObserver{}, TracerProvider: prov, PropagateTrace: tc.propagate}
			if tc.trusted {
				cfg.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
			}
			_, base := startProxy(t, cfg)
			getWith(t, base+"/tapped/x", "X-Forwarded-For", tc.xff, "Traceparent", tc.traceparent)
			var spans []sdktrace.ReadOnlySpan
			for deadline := time.Now().Add(5 * time.Second); len(spans) == 0 && time.Now().Before(deadline); {
				time.Sleep(time.Millisecond)
				spans = rec.Ended()
			}
			if len(spans) != 1 {
				t.Fatalf("%d spans", len(spans))
			}
			a := attrsOfSpan(spans[0])
			if a["url.scheme"] != "http" || a["server.address"] != "127.0.0.1" || a["server.port"] == nil ||
				a["client.address"] != tc.wantClient || a["network.peer.address"] != "127.0.0.1" {
				t.Errorf("attributes %v", a)
			}
			want := tc.wantUpTP
			if want == "span" {
				sc := spans[0].SpanContext()
				want = "00-" + sc.TraceID().String() + "-" + sc.SpanID().String() + "-01"
			}
			mu.Lock()
			defer mu.Unlock()
			if got := strings.Join(upTP, ","); got != want {
				t.Errorf("upstream got traceparent %q, want %q", got, want)
			}
		})
	}
}

// getWith sends a GET with the given header fields (name, value pairs;
// empty values left out) and returns the status.
func getWith(t *testing.T, url string, kv ...string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			req.Header.Set(kv[i], kv[i+1])
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// httptestServer is an upstream that calls seen with each request.
func httptestServer(t *testing.T, seen func(*http.Request)) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen(r)
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// FuzzClientAddress: whatever X-Forwarded-For a trusted peer sends, the
// server span's client.address is the peer or an address from the header
// that is not a trusted proxy, and reading it never panics.
func FuzzClientAddress(f *testing.F) {
	f.Add("203.0.113.7", true)
	f.Add("198.51.100.9, 127.0.0.2", true)
	f.Add("fe80::1%eth0, 10.0.0.1", true)
	f.Add(",,, ", false)
	t := &spanTracer{fwd: forwarded{trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}}
	f.Fuzz(func(tt *testing.T, xff string, trusted bool) {
		r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		r.Header.Set("X-Forwarded-For", xff)
		got := t.clientAddress(r, "127.0.0.1", trusted)
		if got == "127.0.0.1" {
			return
		}
		if !trusted {
			tt.Fatalf("untrusted peer: client.address %q from its header", got)
		}
		a, err := netip.ParseAddr(got)
		if err != nil || t.fwd.isTrusted(got) || !strings.Contains(xff, got) || a.Zone() != "" {
			tt.Fatalf("client.address %q from %q", got, xff)
		}
	})
}
