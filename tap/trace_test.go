package tap

import (
	"context"
	"net/http"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func TestTraceParentOf(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("0af7651916cd43dd8448eb211c80319c")
	sid, _ := trace.SpanIDFromHex("b7ad6b7169203331")
	server := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	const client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	cases := []struct {
		name   string
		ctx    context.Context
		header string
		want   string
	}{
		{"server span wins over the client's header", server, client, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		{"client header when no span", context.Background(), client, client},
		{"nothing", context.Background(), "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
			if tc.header != "" {
				r.Header.Set("Traceparent", tc.header)
			}
			if got := traceParentOf(tc.ctx, r); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestClassifySpanJoinsTheIntentsTrace(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	cases := []struct {
		name      string
		tp        string
		wantTrace string
	}{
		{"stored traceparent", tp, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"malformed traceparent is ignored", "00-zz-yy-01", ""},
		{"none", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := withTraceParent(context.Background(), tc.tp)
			sc := trace.SpanContextFromContext(ctx)
			got := ""
			if sc.IsValid() {
				got = sc.TraceID().String()
			}
			if got != tc.wantTrace {
				t.Errorf("trace %q, want %q", got, tc.wantTrace)
			}
		})
	}
}

// FuzzTraceParent feeds client-controlled traceparent values through the
// intent's round trip: never a panic, and a value either yields a valid
// span context that re-encodes to itself or leaves the context untouched.
func FuzzTraceParent(f *testing.F) {
	for _, s := range []string{"", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01", "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra", "garbage", "00--"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, tp string) {
		ctx := withTraceParent(context.Background(), tp)
		sc := trace.SpanContextFromContext(ctx)
		r, _ := http.NewRequest(http.MethodGet, "http://x/", nil)
		got := traceParentOf(ctx, r)
		if !sc.IsValid() {
			if got != "" {
				t.Fatalf("invalid %q still yields %q", tp, got)
			}
			return
		}
		back := trace.SpanContextFromContext(withTraceParent(context.Background(), got))
		if back.TraceID() != sc.TraceID() || back.SpanID() != sc.SpanID() {
			t.Fatalf("%q → %q does not round-trip", tp, got)
		}
	})
}

// TestPollRoundSpan: one read of the event API that finds records is one
// tap.poll span; a record that yields nothing is an event on it, not a
// trace of its own, and a record that yields a signal starts its own
// trace (tap.event) linked to the round.
func TestPollRoundSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prov := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	old := tracer
	tracer = prov.Tracer("test")
	defer func() { tracer = old }()
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	rec.Reset()
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "model_updated", UserPK: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK}); err != nil {
		t.Fatal(err)
	}
	e.poll()
	var rounds, events []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "tap.poll":
			rounds = append(rounds, s)
		case "tap.event":
			events = append(events, s)
		}
	}
	if len(rounds) != 1 || len(events) != 1 {
		t.Fatalf("%d tap.poll and %d tap.event spans, want 1 and 1", len(rounds), len(events))
	}
	var skipped []string
	for _, ev := range rounds[0].Events() {
		for _, a := range ev.Attributes {
			if a.Key == "tap.event.action" {
				skipped = append(skipped, ev.Name+" "+a.Value.AsString())
			}
		}
	}
	if len(skipped) != 1 || skipped[0] != "tap.event.skipped model_updated" {
		t.Errorf("round events %v", skipped)
	}
	ev := events[0]
	if ev.Parent().IsValid() || len(ev.Links()) != 1 || ev.Links()[0].SpanContext.SpanID() != rounds[0].SpanContext().SpanID() {
		t.Errorf("tap.event parent %v links %v", ev.Parent(), ev.Links())
	}
	// An empty round records nothing.
	rec.Reset()
	e.poll()
	if n := len(rec.Ended()); n != 0 {
		t.Errorf("an empty poll round made %d spans", n)
	}
}

// TestRouteTemplates: a tapped request's server span is named by a
// template without ids, slugs or session uuids.
func TestRouteTemplates(t *testing.T) {
	cases := []struct {
		method, path, want string
	}{
		{"DELETE", "/api/v3/core/authenticated_sessions/5f0c7a1e-1111-2222-3333-444455556666/", "DELETE /api/v3/core/authenticated_sessions/{uuid}/"},
		{"DELETE", "/api/v3/core/authenticated_sessions/bulk_delete/", "DELETE /api/v3/core/authenticated_sessions/bulk_delete/"},
		{"POST", "/api/v3/core/users/42/set_password/", "POST /api/v3/core/users/{id}/set_password/"},
		{"PATCH", "/api/v3/core/users/42/", "PATCH /api/v3/core/users/{id}/"},
		{"DELETE", "/api/v3/authenticators/admin/totp/7/", "DELETE /api/v3/authenticators/admin/totp/{id}/"},
		{"DELETE", "/api/v3/authenticators/webauthn/7/", "DELETE /api/v3/authenticators/webauthn/{id}/"},
		{"GET", "/application/o/my-app/end-session/", "GET /application/o/{slug}/end-session/"},
	}
	ta := &Tap{}
	for _, tc := range cases {
		rt, ok := ta.parseRoute(tc.method, tc.path)
		if !ok {
			t.Errorf("%s %s not tapped", tc.method, tc.path)
			continue
		}
		rec := tracetest.NewSpanRecorder()
		_, span := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)).Tracer("t").Start(context.Background(), "GET")
		r, _ := http.NewRequest(tc.method, "http://x"+tc.path, nil)
		nameServerSpan(trace.ContextWithSpan(context.Background(), span), r, rt)
		span.End()
		s := rec.Ended()[0]
		if s.Name() != tc.want {
			t.Errorf("%s %s named %q, want %q", tc.method, tc.path, s.Name(), tc.want)
		}
		for _, a := range s.Attributes() {
			if a.Key == "http.route" && tc.method+" "+a.Value.AsString() != tc.want {
				t.Errorf("http.route %q", a.Value.AsString())
			}
		}
	}
}
