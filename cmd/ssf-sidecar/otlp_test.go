package main

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// otlpSink is an OTLP/HTTP trace endpoint: it decodes each protobuf export
// request and keeps the spans with their resource's service.name.
type otlpSink struct {
	mu      sync.Mutex
	spans   []*tracepb.Span
	service []string
	ident   []string // service.instance.id and host.name of each span's resource
	headers []string // value of X-Test-Header per request
	bad     int
}

func (s *otlpSink) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost || r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		s.mu.Lock()
		s.bad++
		s.mu.Unlock()
		http.Error(w, "not an OTLP/HTTP protobuf trace export", http.StatusBadRequest)
		return
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	b, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(b, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.headers = append(s.headers, r.Header.Get("X-Test-Header"))
	for _, rs := range req.ResourceSpans {
		svc, inst, host := "", "", ""
		for _, a := range rs.GetResource().GetAttributes() {
			switch a.Key {
			case "service.name":
				svc = a.GetValue().GetStringValue()
			case "service.instance.id":
				inst = a.GetValue().GetStringValue()
			case "host.name":
				host = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				s.spans = append(s.spans, sp)
				s.service = append(s.service, svc)
				s.ident = append(s.ident, inst+" "+host)
			}
		}
	}
	s.mu.Unlock()
	out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

// pushes returns the ssf.push spans received, by jti.
func (s *otlpSink) pushes() map[string]*tracepb.Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]*tracepb.Span{}
	for _, sp := range s.spans {
		if sp.Name != "ssf.push" {
			continue
		}
		for _, a := range sp.Attributes {
			if a.Key == "ssf.jti" {
				out[a.GetValue().GetStringValue()] = sp
			}
		}
	}
	return out
}

// TestOTLPExportOverTheWire points OTEL_EXPORTER_OTLP_ENDPOINT at a real
// OTLP/HTTP endpoint and sees the delivery spans of the SETs the receiver
// got arrive, decoded from protobuf, with the configured service name and
// headers.
func TestOTLPExportOverTheWire(t *testing.T) {
	// ssf and tap bind the global provider once per binary; this test only
	// needs the spans the sidecar's own provider makes (proxy, delivery).
	testTracerProvider(t, tracetest.NewSpanRecorder())
	sink := &otlpSink{}
	srv := httptest.NewServer(sink)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-test-header=planted-otlp-header")
	t.Setenv("OTEL_SERVICE_NAME", "ssf-sidecar-under-test")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
	t.Setenv("OTEL_SDK_DISABLED", "")
	t.Setenv("OTEL_TRACES_EXPORTER", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")

	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if w.Sidecar.TracerProvider() == nil {
		t.Fatal("tracing is off with OTEL_EXPORTER_OTLP_ENDPOINT set")
	}
	ctx := context.Background()
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "bob", Email: "bob@example.com", Password: "pw-bob-1"}); err != nil {
		t.Fatal(err)
	}
	w.logInAndOut(t, "bob", "pw-bob-1")
	if err := w.Receiver.WaitFor(ctx, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	got := w.Receiver.Received()
	deadline := time.Now().Add(15 * time.Second)
	for {
		p := sink.pushes()
		all := true
		for _, r := range got {
			if p[r.JTI] == nil {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("push spans for %d SETs did not arrive; got %d", len(got), len(p))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p := sink.pushes()
	revoked := p[got[len(got)-1].JTI]
	if revoked.Kind != tracepb.Span_SPAN_KIND_CLIENT || len(revoked.ParentSpanId) != 8 {
		t.Errorf("push span kind %v parent %x", revoked.Kind, revoked.ParentSpanId)
	}
	// The logout's server span came over the wire too, in the same trace.
	sink.mu.Lock()
	defer sink.mu.Unlock()
	var server bool
	for _, sp := range sink.spans {
		if sp.Kind == tracepb.Span_SPAN_KIND_SERVER && string(sp.TraceId) == string(revoked.TraceId) {
			server = true
		}
	}
	if !server {
		t.Error("the logout's server span is not in the push span's trace")
	}
	for i, svc := range sink.service {
		if svc != "ssf-sidecar-under-test" {
			t.Fatalf("span %d service.name %q", i, svc)
		}
		if inst, host, _ := strings.Cut(sink.ident[i], " "); len(inst) != 32 || host == "" {
			t.Fatalf("span %d resource lacks service.instance.id or host.name: %q", i, sink.ident[i])
		}
	}
	for _, h := range sink.headers {
		if h != "planted-otlp-header" {
			t.Fatalf("export without OTEL_EXPORTER_OTLP_HEADERS: %q", h)
		}
	}
	if sink.bad != 0 {
		t.Errorf("%d requests were not OTLP/HTTP protobuf", sink.bad)
	}
}

func TestSetupTracingFromEnv(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		on      bool
		proto   string
		wantErr bool
	}{
		{"no endpoint: off", map[string]string{}, false, "", false},
		{"endpoint: http/protobuf by default", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"}, true, "http/protobuf", false},
		{"traces endpoint alone", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"}, true, "http/protobuf", false},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, true, "grpc", false},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, true, "http/protobuf", false},
		{"sdk disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_SDK_DISABLED": "true"}, false, "", false},
		{"exporter none", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "none"}, false, "", false},
		{"unsupported exporter", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_TRACES_EXPORTER": "zipkin"}, false, "", true},
		{"unsupported protocol", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, false, "", true},
	}
	vars := []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"}
	testTracerProvider(t, nil)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range vars {
				t.Setenv(v, tc.env[v])
			}
			tr, err := sidecar.SetupTracing(context.Background(), "test")
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			defer tr.Shutdown(context.Background())
			if (tr.Provider != nil) != tc.on || tr.Protocol != tc.proto {
				t.Errorf("on %v protocol %q, want %v %q", tr.Provider != nil, tr.Protocol, tc.on, tc.proto)
			}
		})
	}
}
