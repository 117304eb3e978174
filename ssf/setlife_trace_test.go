package ssf

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// recordSpans points both of the package's tracers at an in-memory
// recorder for the test.
func recordSpans(t *testing.T) *tracetest.SpanRecorder {
	rec := tracetest.NewSpanRecorder()
	prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	oldSpan, oldPub := spanTracer, tracer
	spanTracer, tracer = prov.Tracer("test"), prov.Tracer("test")
	t.Cleanup(func() { spanTracer, tracer = oldSpan, oldPub })
	return rec
}

func spanAttrs(s sdktrace.ReadOnlySpan) map[string]string {
	m := map[string]string{}
	for _, a := range s.Attributes() {
		m[string(a.Key)] = a.Value.Emit()
	}
	return m
}

// TestTransmitterSETsHaveATrace: the verification SET of /ssf/verify and
// the stream-updated SET of a pause the transmitter makes itself each get an ssf.set span whose traceparent they carry, so
// their push attempts join that trace instead of each starting its own.
func TestTransmitterSETsHaveATrace(t *testing.T) {
	rec := recordSpans(t)
	tr, q := unitTransmitter(t, func(c *Config) { c.MinVerificationInterval = 1 })
	id := unitCreate(t, tr, q, acmeTok, `{}`)
	if r := serve(tr, "POST", "/ssf/verify", acmeTok, `{"stream_id":"`+id+`","state":"s1"}`); r.Code != 204 {
		t.Fatalf("verify: %d %s", r.Code, r.Body)
	}
	tr.StreamFailing(context.Background(), id, tr.cfg.Clock(), "503")
	sets := q.take()
	setSpans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		if s.Name() == "ssf.set" {
			setSpans[spanAttrs(s)[attrJTI]] = s
		}
	}
	kinds := map[string]int{}
	for _, set := range sets {
		kinds[set.EventType]++
		sp, ok := setSpans[set.JTI]
		if !ok {
			t.Errorf("%s SET %s has no ssf.set span", set.EventType, set.JTI)
			continue
		}
		want := "00-" + sp.SpanContext().TraceID().String() + "-" + sp.SpanContext().SpanID().String() + "-01"
		if set.TraceParent != want {
			t.Errorf("%s SET traceparent %q, want its span's %q", set.EventType, set.TraceParent, want)
		}
		if a := spanAttrs(sp); a[attrReceiver] != "acme" || a[attrStreamID] != id || a[attrEventType] != set.EventType {
			t.Errorf("%s span attributes %v", set.EventType, a)
		}
		if set.Labels["receiver"] != "acme" {
			t.Errorf("%s labels %v", set.EventType, set.Labels)
		}
	}
	if kinds[EventVerification] != 1 || kinds[EventStreamUpdated] != 1 {
		t.Fatalf("SETs %v", kinds)
	}
}

// TestPublishSaysWhyAStreamGotNothing: the publish span names, per stream,
// why a signal made no SET for it (or why the SET waits), by stream id,
// receiver and a fixed reason, and carries no personal data of the signal.
func TestPublishSaysWhyAStreamGotNothing(t *testing.T) {
	rec := recordSpans(t)
	tr, q := unitTransmitter(t)
	all, onlyCred, disabled, paused, removed := mixedStreams(t, tr, q)
	q.take()
	rec.Reset()
	if err := tr.Publish(context.Background(), tap.Signal{ID: "sig-1", Kind: tap.KindSessionRevoked, Subject: alice}); err != nil {
		t.Fatal(err)
	}
	var publish sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "ssf.publish" {
			publish = s
		}
	}
	if publish == nil {
		t.Fatal("no ssf.publish span")
	}
	got := map[string]string{}
	for _, e := range publish.Events() {
		var stream, reason, receiver string
		for _, a := range e.Attributes {
			switch a.Key {
			case attrStreamID:
				stream = a.Value.AsString()
			case "ssf.reason":
				reason = a.Value.AsString()
			case attrReceiver:
				receiver = a.Value.AsString()
			}
			if v := a.Value.Emit(); v == alice.Email || v == alice.UID || v == alice.Username {
				t.Errorf("event %s carries personal data %q", e.Name, v)
			}
		}
		if receiver != "acme" {
			t.Errorf("event %s for %s names receiver %q", e.Name, stream, receiver)
		}
		got[stream] = e.Name + ": " + reason
	}
	want := map[string]string{
		onlyCred: evSkipped + ": event type not requested",
		disabled: evSkipped + ": stream disabled",
		removed:  evSkipped + ": subject not included",
		paused:   evHeld + ": stream paused: the SET is queued and sent on resume",
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("stream %s: %q, want %q", id, got[id], w)
		}
	}
	if _, ok := got[all]; ok || len(got) != len(want) {
		t.Errorf("events %v", got)
	}
}

// TestSSFServerSpanNames: the proxy's server span of an SSF request is
// renamed by the router's template, with http.route, and names the
// authenticated receiver.
func TestSSFServerSpanNames(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	tr, q := unitTransmitter(t)
	id := unitCreate(t, tr, q, acmeTok, `{}`)
	for path, want := range map[string]string{
		"/ssf/subjects:add": "POST /ssf/subjects:add",
		"/ssf/poll/" + id:   "POST /ssf/poll/{stream_id}",
		"/ssf/streams":      "POST /ssf/streams",
	} {
		ctx, span := prov.Tracer("t").Start(context.Background(), "POST")
		r := httptest.NewRequest("POST", path, strings.NewReader(`{}`)).WithContext(ctx)
		r.Header.Set("Authorization", "Bearer "+acmeTok)
		tr.Handler().ServeHTTP(httptest.NewRecorder(), r)
		span.End()
		ended := rec.Ended()
		got := ended[len(ended)-1]
		if a := spanAttrs(got); got.Name() != want || a["http.route"] != strings.TrimPrefix(want, "POST ") || a[attrReceiver] != "acme" {
			t.Errorf("%s: span %q attributes %v, want %q", path, got.Name(), spanAttrs(got), want)
		}
	}
}
