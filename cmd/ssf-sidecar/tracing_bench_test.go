package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// switchProvider is a global tracer provider whose target the benchmark
// switches between the no-op provider and the SDK: packages ssf and tap
// bind the global provider once per process.
type switchProvider struct {
	embedded.TracerProvider
	cur atomic.Pointer[trace.TracerProvider]
}

func (s *switchProvider) set(tp trace.TracerProvider) { s.cur.Store(&tp) }
func (s *switchProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return &switchTracer{p: s, name: name, opts: opts}
}

type switchTracer struct {
	embedded.Tracer
	p    *switchProvider
	name string
	opts []trace.TracerOption
}

func (t *switchTracer) Start(ctx context.Context, name string, o ...trace.SpanStartOption) (context.Context, trace.Span) {
	return (*t.p.cur.Load()).Tracer(t.name, t.opts...).Start(ctx, name, o...)
}

var (
	benchSwitch     = &switchProvider{}
	benchSwitchOnce sync.Once
)

// BenchmarkProxyTracing measures the proxy on a mix where one request in
// ten is tapped and yields a SET (an admin toggling a user's is_active),
// the rest untapped reads, with tracing off (no OTLP endpoint: nothing
// installed) and on (OTEL_EXPORTER_OTLP_ENDPOINT at a local OTLP/HTTP
// endpoint). Both worlds run in one benchmark, in alternating rounds, and
// the throughput ratio is reported as on/off.
func BenchmarkProxyTracing(b *testing.B) {
	benchSwitchOnce.Do(func() {
		benchSwitch.set(noop.NewTracerProvider())
		otel.SetTracerProvider(benchSwitch)
	})
	sw := benchSwitch
	var exported atomic.Int64
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		exported.Add(n)
		w.Header().Set("Content-Type", "application/x-protobuf")
	}))
	defer sink.Close()
	for _, v := range []string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED", "OTEL_TRACES_EXPORTER"} {
		b.Setenv(v, "")
	}
	b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")

	type world struct {
		w      *demoWorld
		pk     int
		client *http.Client
		i      int
		tp     trace.TracerProvider
		tr     *sidecar.Tracing
	}
	start := func(tracingOn bool) *world {
		var opts demoOptions
		var trc *sidecar.Tracing
		opts.DataDir = b.TempDir()
		var tp trace.TracerProvider = noop.NewTracerProvider()
		if tracingOn {
			b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", sink.URL)
			tr, err := sidecar.SetupTracing(context.Background(), "bench")
			b.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
			if err != nil || tr.Provider == nil {
				b.Fatalf("tracing: %v", err)
			}
			b.Cleanup(func() { _ = tr.Shutdown(context.Background()) })
			opts.TracerProvider, tp, trc = tr.Provider, tr.Provider, tr
		}
		w, err := startDemoWorld(context.Background(), opts)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { w.Close() })
		u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "dave", Email: "dave@example.com", Password: "pw-dave-1"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := w.CreatePushStream(context.Background(), []string{ssf.EventAccountDisabled, ssf.EventAccountEnabled}); err != nil {
			b.Fatal(err)
		}
		return &world{w: w, pk: u.PK, tp: tp, tr: trc, client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}}
	}
	worlds := []*world{start(false), start(true)} // off, on
	do := func(x *world) {
		x.i++
		method, path, body := http.MethodGet, fmt.Sprintf("/api/v3/core/users/%d/", x.pk), ""
		if x.i%10 == 0 {
			method, body = http.MethodPatch, fmt.Sprintf(`{"is_active":%v}`, x.i%20 == 0)
		}
		req, _ := http.NewRequest(method, x.w.Front+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+x.w.AK.AdminToken())
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := x.client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	var spent [2]time.Duration
	const round = 20
	b.ResetTimer()
	for done := 0; done < b.N; done += round {
		n := min(round, b.N-done)
		order := []int{0, 1}
		if (done/round)%2 == 1 {
			order = []int{1, 0} // neither world always goes first
		}
		for _, k := range order {
			x := worlds[k]
			sw.set(x.tp)
			t0 := time.Now()
			for range n {
				do(x)
			}
			spent[k] += time.Since(t0)
		}
	}
	b.StopTimer()
	sw.set(noop.NewTracerProvider())
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(b.N), "off-ns/req")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(b.N), "on-ns/req")
	b.ReportMetric(float64(spent[0])/float64(spent[1]), "on/off-throughput")
	if b.N >= 100 {
		// Tapped requests produced SETs in both worlds (the verification
		// SET is one), and the traced world's spans reached the endpoint.
		ctx := context.Background()
		for k, x := range worlds {
			if err := x.w.Receiver.WaitFor(ctx, 2, 10*time.Second); err != nil {
				b.Fatalf("world %d: %v", k, err)
			}
		}
		if err := worlds[1].tr.Shutdown(ctx); err != nil {
			b.Fatal(err)
		}
		if exported.Load() == 0 {
			b.Fatal("tracing on exported nothing")
		}
	}
}
