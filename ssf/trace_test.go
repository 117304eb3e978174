package ssf

import (
	"context"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// recTracer starts spans with a fixed new span id and records the parent.
type recTracer struct {
	noop.Tracer
	name   string
	parent trace.SpanContext
	sc     trace.SpanContext
}

func (r *recTracer) Start(ctx context.Context, name string, _ ...trace.SpanStartOption) (context.Context, trace.Span) {
	r.name, r.parent = name, trace.SpanContextFromContext(ctx)
	r.sc = trace.NewSpanContext(trace.SpanContextConfig{TraceID: r.parent.TraceID(),
		SpanID: trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8}, TraceFlags: trace.FlagsSampled})
	ctx = trace.ContextWithSpanContext(ctx, r.sc)
	return ctx, trace.SpanFromContext(ctx)
}

const parentTP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestPublishTraceParent(t *testing.T) {
	t.Run("no tracer: the signal's traceparent", func(t *testing.T) {
		tr, q := unitTransmitter(t)
		unitCreate(t, tr, q, acmeTok, `{}`)
		if err := tr.Publish(context.Background(), tap.Signal{ID: "s", Kind: tap.KindSessionRevoked, Subject: alice, TraceParent: parentTP}); err != nil {
			t.Fatal(err)
		}
		sets := q.take()
		if len(sets) != 1 || sets[0].TraceParent != parentTP {
			t.Fatalf("traceparent %q", sets[0].TraceParent)
		}
	})
	t.Run("with a tracer: a child span of the request", func(t *testing.T) {
		rt := &recTracer{}
		old := tracer
		tracer = rt
		defer func() { tracer = old }()
		tr, q := unitTransmitter(t)
		unitCreate(t, tr, q, acmeTok, `{}`)
		if err := tr.Publish(context.Background(), tap.Signal{ID: "s", Kind: tap.KindSessionRevoked, Subject: alice, TraceParent: parentTP}); err != nil {
			t.Fatal(err)
		}
		sets := q.take()
		if rt.name != "ssf.publish" || rt.parent.SpanID().String() != "00f067aa0ba902b7" || rt.parent.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("span %q parent %v", rt.name, rt.parent)
		}
		if want := "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"; sets[0].TraceParent != want {
			t.Errorf("SET traceparent %q, want %q", sets[0].TraceParent, want)
		}
	})
}
