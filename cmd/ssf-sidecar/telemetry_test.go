package main

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// swapProcessor forwards to whichever span processor the running test
// installed. Packages ssf and tap take their tracer from the global
// provider once, at the first otel.SetTracerProvider; the tests install one
// SDK provider for the whole binary and swap what it feeds.
type swapProcessor struct {
	mu sync.Mutex
	p  sdktrace.SpanProcessor
}

func (s *swapProcessor) get() sdktrace.SpanProcessor {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.p
}
func (s *swapProcessor) set(p sdktrace.SpanProcessor) { s.mu.Lock(); s.p = p; s.mu.Unlock() }
func (s *swapProcessor) OnStart(ctx context.Context, sp sdktrace.ReadWriteSpan) {
	if p := s.get(); p != nil {
		p.OnStart(ctx, sp)
	}
}
func (s *swapProcessor) OnEnd(sp sdktrace.ReadOnlySpan) {
	if p := s.get(); p != nil {
		p.OnEnd(sp)
	}
}
func (s *swapProcessor) Shutdown(context.Context) error   { return nil }
func (s *swapProcessor) ForceFlush(context.Context) error { return nil }

var (
	globalOnce sync.Once
	globalSwap = &swapProcessor{}
	globalTP   *sdktrace.TracerProvider
)

// testTracerProvider is the binary's one global SDK provider; spans go to
// rec until the test ends.
func testTracerProvider(t *testing.T, rec sdktrace.SpanProcessor) *sdktrace.TracerProvider {
	globalOnce.Do(func() {
		globalTP = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(globalSwap))
		otel.SetTracerProvider(globalTP)
	})
	globalSwap.set(rec)
	t.Cleanup(func() { globalSwap.set(nil) })
	return globalTP
}

func attrsOf(s sdktrace.ReadOnlySpan) map[string]any {
	m := map[string]any{}
	for _, a := range s.Attributes() {
		m[string(a.Key)] = a.Value.AsInterface()
	}
	return m
}

// waitSpans polls the recorder until cond holds for the ended spans.
func waitSpans(t *testing.T, rec *tracetest.SpanRecorder, what string, cond func([]sdktrace.ReadOnlySpan) bool) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		spans := rec.Ended()
		if cond(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			names := []string{}
			for _, s := range spans {
				names = append(names, s.Name())
			}
			t.Fatalf("timed out waiting for %s; spans: %v", what, names)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestLogoutTrace: one logout through the proxy yields, in one trace, the
// server span of the request, the classification, the publication, the
// SET, the durable enqueue and the push attempt, each the child of the one
// before.
func TestLogoutTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := testTracerProvider(t, rec)
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw-alice-1"}); err != nil {
		t.Fatal(err)
	}
	w.logInAndOut(t, "alice", "pw-alice-1")
	if err := w.Receiver.WaitFor(ctx, 2, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	got := w.Receiver.Received()
	revoked := got[len(got)-1]
	if revoked.Event != "session-revoked" {
		t.Fatalf("last SET is %s", revoked.Event)
	}

	// Find the push of the revocation's jti, then walk up its parents.
	var spans []sdktrace.ReadOnlySpan
	var push sdktrace.ReadOnlySpan
	spans = waitSpans(t, rec, "the push span of "+revoked.JTI, func(ss []sdktrace.ReadOnlySpan) bool {
		for _, s := range ss {
			if s.Name() == "ssf.push" && attrsOf(s)["ssf.jti"] == revoked.JTI {
				push = s
				return true
			}
		}
		return false
	})
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	pa := attrsOf(push)
	if push.SpanKind() != trace.SpanKindClient || pa["ssf.attempt"] != int64(1) || pa["ssf.outcome"] != "delivered" ||
		pa["http.response.status_code"] != int64(http.StatusAccepted) || pa["ssf.stream_id"] == "" {
		t.Errorf("push span kind %v attributes %v", push.SpanKind(), pa)
	}
	if !push.EndTime().After(push.StartTime()) {
		t.Errorf("push span has no duration: %v → %v", push.StartTime(), push.EndTime())
	}
	// The chain from the push up to the request, names in order.
	want := []string{"ssf.push", "ssf.set", "ssf.publish", "tap.classify", "GET /api/v3/flows/executor/{slug}/"}
	var chain []string
	s := push
	for s != nil {
		chain = append(chain, s.Name())
		if s.SpanContext().TraceID() != push.SpanContext().TraceID() {
			t.Errorf("%s is in trace %s, not the request's %s", s.Name(), s.SpanContext().TraceID(), push.SpanContext().TraceID())
		}
		s = byID[s.Parent().SpanID()]
	}
	if strings.Join(chain, " → ") != strings.Join(want, " → ") {
		t.Fatalf("chain %v, want %v", chain, want)
	}
	root := byID[push.Parent().SpanID()]
	for root.Parent().IsValid() {
		root = byID[root.Parent().SpanID()]
	}
	if ra := attrsOf(root); root.SpanKind() != trace.SpanKindServer || ra["ssf_sidecar.route_class"] != "observed" ||
		ra["http.route"] != "/api/v3/flows/executor/{slug}/" || ra["tap.op"] != "logout" || ra["url.scheme"] != "http" ||
		ra["server.address"] != "127.0.0.1" {
		t.Errorf("root %q kind %v attributes %v", root.Name(), root.SpanKind(), attrsOf(root))
	}
	set := byID[push.Parent().SpanID()]
	if sa := attrsOf(set); sa["ssf.jti"] != revoked.JTI || sa["ssf.event_type"] != ssf.EventSessionRevoked || sa["ssf.stream_id"] != pa["ssf.stream_id"] {
		t.Errorf("ssf.set attributes %v", sa)
	}
	// The durable enqueue sits under the publication, in the same trace.
	publish := byID[set.Parent().SpanID()]
	var enqueue bool
	for _, s := range spans {
		if s.Name() == "outbox.enqueue" && s.Parent().SpanID() == publish.SpanContext().SpanID() {
			enqueue = true
		}
	}
	if !enqueue {
		t.Error("no outbox.enqueue span under ssf.publish")
	}
}
