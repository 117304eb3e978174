package ssf

import (
	"context"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// TestSETSpansAndHooks publishes one signal with a recording tracer: one
// ssf.set span per SET (stream, event type, jti) whose traceparent the SET
// carries, an outbox.enqueue span, and OnSETIssued/OnVerificationRequest
// called with the right values.
func TestSETSpansAndHooks(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	old := spanTracer
	spanTracer = prov.Tracer("test")
	defer func() { spanTracer = old }()

	var mu sync.Mutex
	issued := map[string]int{}
	verify := map[bool]int{}
	tr, q := unitTransmitter(t, func(c *Config) {
		c.OnSETIssued = func(streamID, eventType string) {
			mu.Lock()
			issued[streamID+" "+eventType]++
			mu.Unlock()
		}
		c.OnVerificationRequest = func(_ string, ok bool) {
			mu.Lock()
			verify[ok]++
			mu.Unlock()
		}
		c.MinVerificationInterval = 1 << 40
	})
	id := unitCreate(t, tr, q, acmeTok, `{}`)
	rec.Reset()
	if err := tr.Publish(context.Background(), tap.Signal{ID: "s1", Kind: tap.KindSessionRevoked, Subject: alice, TraceParent: parentTP}); err != nil {
		t.Fatal(err)
	}
	sets := q.take()
	if len(sets) != 1 {
		t.Fatalf("%d SETs", len(sets))
	}
	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = append(byName[s.Name()], s)
	}
	if len(byName["ssf.set"]) != 1 || len(byName["outbox.enqueue"]) != 1 {
		t.Fatalf("spans %v", byName)
	}
	setSpan := byName["ssf.set"][0]
	attrs := map[string]string{}
	for _, a := range setSpan.Attributes() {
		attrs[string(a.Key)] = a.Value.Emit()
	}
	if attrs[attrStreamID] != id || attrs[attrJTI] != sets[0].JTI || attrs[attrEventType] != EventSessionRevoked {
		t.Errorf("ssf.set attributes %v", attrs)
	}
	if got := setSpan.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("ssf.set trace %s is not the request's", got)
	}
	want := "00-" + setSpan.SpanContext().TraceID().String() + "-" + setSpan.SpanContext().SpanID().String() + "-01"
	if sets[0].TraceParent != want {
		t.Errorf("SET traceparent %q, want the ssf.set span's %q", sets[0].TraceParent, want)
	}

	for i, code := range []int{204, 429} {
		if r := serve(tr, "POST", "/ssf/verify", acmeTok, `{"stream_id":"`+id+`"}`); r.Code != code {
			t.Fatalf("verify %d: %d %s", i, r.Code, r.Body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	// the revocation and the accepted verification (a poll stream gets no
	// verification at creation)
	if issued[id+" "+EventVerification] != 1 || issued[id+" "+EventSessionRevoked] != 1 {
		t.Errorf("issued %v", issued)
	}
	if verify[true] != 1 || verify[false] != 1 {
		t.Errorf("verification requests %v", verify)
	}
}
