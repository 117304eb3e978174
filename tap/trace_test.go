package tap

import (
	"context"
	"net/http"
	"testing"

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
