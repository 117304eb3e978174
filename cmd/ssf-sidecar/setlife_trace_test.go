package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// flakyReceiver answers 503 until told to recover, then 202, and keeps the
// traceparent of every request.
type flakyReceiver struct {
	srv     *httptest.Server
	healthy atomic.Bool
	mu      sync.Mutex
	tps     []string
}

func newFlakyReceiver(t *testing.T) *flakyReceiver {
	f := &flakyReceiver{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.tps = append(f.tps, r.Header.Get("Traceparent"))
		f.mu.Unlock()
		if !f.healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *flakyReceiver) traceparents() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tps)
}

func spansNamed(ss []sdktrace.ReadOnlySpan, name string, attrs map[string]any) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range ss {
		if s.Name() != name {
			continue
		}
		a := attrsOf(s)
		ok := true
		for k, v := range attrs {
			if a[k] != v {
				ok = false
			}
		}
		if ok {
			out = append(out, s)
		}
	}
	return out
}

func tpOf(s sdktrace.ReadOnlySpan) string {
	return "00-" + s.SpanContext().TraceID().String() + "-" + s.SpanContext().SpanID().String() + "-01"
}

// TestSETLifeInOneTrace follows a push stream whose receiver fails and
// recovers and a poll stream through a logout, in spans read from an
// in-memory exporter: the verification SET's attempts hang under its own
// ssf.set span (no orphan traces), each push span names its receiver and
// destination and sends its traceparent, the logout SET queued behind the
// failing head says why it waits, the poll hand-out and ack sit in the
// SET's trace with links from the poll request, and no secret reaches any
// span.
func TestSETLifeInOneTrace(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := testTracerProvider(t, rec)
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), TracerProvider: tp,
		Receivers: systemReceivers(), PollInterval: 100 * time.Millisecond,
		Mutate: func(c *sidecar.Config) { c.MaxBackoff = time.Second }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	flaky := newFlakyReceiver(t)
	var pushStream, pollStream struct {
		StreamID string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	code, body := w.call(t, demoReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": flaky.srv.URL + "/events?k=SECRETQUERY"}})
	if code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("create push stream: %d %s", code, body)
	}
	_ = json.Unmarshal(body, &pushStream)
	code, body = w.call(t, pollReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery": map[string]any{"method": ssf.MethodPollURN}, "events_requested": []string{ssf.EventSessionRevoked}})
	if code != http.StatusCreated && code != http.StatusOK {
		t.Fatalf("create poll stream: %d %s", code, body)
	}
	_ = json.Unmarshal(body, &pollStream)
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw-alice-SECRET"}); err != nil {
		t.Fatal(err)
	}
	// The verification SET heads the push queue and fails; the logout
	// SET queues behind it.
	waitSpans(t, rec, "a failed push", func(ss []sdktrace.ReadOnlySpan) bool {
		return len(spansNamed(ss, "ssf.push", map[string]any{"ssf.outcome": "retry"})) > 0
	})
	w.logInAndOut(t, "alice", "pw-alice-SECRET")
	var logoutPush sdktrace.ReadOnlySpan
	spans := waitSpans(t, rec, "the logout SET held behind the failing head", func(ss []sdktrace.ReadOnlySpan) bool {
		for _, s := range spansNamed(ss, "ssf.set", map[string]any{"ssf.stream_id": pushStream.StreamID, "ssf.event_type": ssf.EventSessionRevoked}) {
			for _, h := range spansNamed(ss, "ssf.wait", map[string]any{"ssf.jti": attrsOf(s)["ssf.jti"]}) {
				if h.SpanContext().TraceID() == s.SpanContext().TraceID() {
					logoutPush = s
					return true
				}
			}
		}
		return false
	})
	logoutJTI := attrsOf(logoutPush)["ssf.jti"]
	// Ahead of the logout SET waits the failing verification SET, and the
	// login's session-established SET when the event API brought it
	// before the logout was tapped: one or two, never none.
	hold := spansNamed(spans, "ssf.wait", map[string]any{"ssf.jti": logoutJTI})[0]
	ha := attrsOf(hold)
	ahead, _ := ha["ssf.queue.ahead"].(int64)
	if ha["ssf.hold.reason"] != "backoff" || ahead < 1 || ahead > 2 || ha["ssf.hold.until"] == nil || ha["ssf.receiver"] != "push-rx" {
		t.Errorf("hold attributes %v", ha)
	}
	wantWait := fmt.Sprintf("waiting behind %d SET, stream backing off until ", ahead)
	if ahead != 1 {
		wantWait = fmt.Sprintf("waiting behind %d SETs, stream backing off until ", ahead)
	}
	if ev := hold.Events(); len(ev) != 1 || !strings.HasPrefix(ev[0].Attributes[0].Value.AsString(), wantWait) {
		t.Errorf("hold events %v", ev)
	}
	flaky.healthy.Store(true)
	polled := w.pollAll(t, pollReceiverToken, w.Front+"/ssf/poll/"+pollStream.StreamID)
	spans = waitSpans(t, rec, "the logout SET delivered", func(ss []sdktrace.ReadOnlySpan) bool {
		return len(spansNamed(ss, "ssf.push", map[string]any{"ssf.jti": logoutJTI, "ssf.outcome": "delivered"})) == 1 &&
			len(spansNamed(ss, "ssf.poll.ack", nil)) > 0
	})
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}

	// Every push span hangs under the ssf.set span of its SET.
	pushes := spansNamed(spans, "ssf.push", nil)
	for _, p := range pushes {
		a := attrsOf(p)
		parent, ok := byID[p.Parent().SpanID()]
		if !ok || parent.Name() != "ssf.set" || attrsOf(parent)["ssf.jti"] != a["ssf.jti"] {
			t.Errorf("push of %v (attempt %v) is not under its ssf.set span (parent %v)", a["ssf.jti"], a["ssf.attempt"], p.Parent().SpanID())
		}
	}
	// The verification SET: attempts numbered in order, each naming its
	// receiver and destination, failures with error.type, and the
	// receiver got each attempt's traceparent.
	verif := spansNamed(spans, "ssf.push", map[string]any{"ssf.event_type": ssf.EventVerification, "ssf.stream_id": pushStream.StreamID})
	if len(verif) < 2 {
		t.Fatalf("%d verification pushes", len(verif))
	}
	sent := flaky.traceparents()
	for i, p := range verif {
		a := attrsOf(p)
		if a["ssf.attempt"] != int64(i+1) || a["ssf.receiver"] != "push-rx" || a["server.address"] != "127.0.0.1" ||
			a["url.full"] != flaky.srv.URL+"/events" || a["server.port"] == nil || p.SpanKind() != trace.SpanKindClient {
			t.Errorf("verification push %d attributes %v", i, a)
		}
		if a["ssf.outcome"] == "retry" && a["error.type"] != "503" {
			t.Errorf("failed push error.type %v", a["error.type"])
		}
		if !slices.Contains(sent, tpOf(p)) {
			t.Errorf("receiver never got the traceparent %s of attempt %d", tpOf(p), i+1)
		}
		if p.SpanContext().TraceID() != verif[0].SpanContext().TraceID() {
			t.Errorf("verification attempt %d in another trace", i+1)
		}
	}

	// The poll stream's logout SET: handed out and acked in its own
	// trace, linked from the poll request's span, which lists the jti.
	var pj string
	for _, p := range polled {
		if p.Event == "session-revoked" {
			pj = p.JTI
		}
	}
	if pj == "" {
		t.Fatalf("polled %v, no session revocation", polled)
	}
	set := spansNamed(spans, "ssf.set", map[string]any{"ssf.jti": pj})
	if len(set) != 1 {
		t.Fatalf("no ssf.set span for polled %s", pj)
	}
	for _, step := range []string{"ssf.poll.hand_out", "ssf.poll.ack"} {
		ss := spansNamed(spans, step, map[string]any{"ssf.jti": pj})
		if len(ss) != 1 || ss[0].Parent().SpanID() != set[0].SpanContext().SpanID() || ss[0].SpanContext().TraceID() != set[0].SpanContext().TraceID() {
			t.Fatalf("%s of %s: %d spans, not under its ssf.set", step, pj, len(ss))
		}
		linked := false
		for _, poll := range spansNamed(spans, "ssf.poll", map[string]any{"ssf.stream_id": pollStream.StreamID}) {
			for _, l := range poll.Links() {
				if l.SpanContext.SpanID() == ss[0].SpanContext().SpanID() {
					linked = true
					if step == "ssf.poll.hand_out" && !slices.Contains(attrsOf(poll)["ssf.poll.jtis"].([]string), pj) {
						t.Errorf("poll span lists %v, not %s", attrsOf(poll)["ssf.poll.jtis"], pj)
					}
				}
			}
		}
		if !linked {
			t.Errorf("no ssf.poll span links to the %s of %s", step, pj)
		}
	}

	// SSF server spans are named by their route template.
	for _, name := range []string{"POST /ssf/streams", "POST /ssf/poll/{stream_id}"} {
		ss := spansNamed(spans, name, map[string]any{"http.route": strings.TrimPrefix(name, "POST ")})
		if len(ss) == 0 || ss[0].SpanKind() != trace.SpanKindServer {
			t.Errorf("no server span %q", name)
		}
	}

	// No secret in any span.
	for _, s := range spans {
		var texts []string
		texts = append(texts, s.Name(), s.Status().Description)
		for _, a := range s.Attributes() {
			texts = append(texts, a.Value.String())
		}
		for _, e := range s.Events() {
			for _, a := range e.Attributes {
				texts = append(texts, a.Value.String())
			}
		}
		for _, txt := range texts {
			for _, secret := range []string{demoReceiverToken, pollReceiverToken, "Bearer", "eyJ", "SECRET", "authentik_session", "alice@example.com"} {
				if strings.Contains(txt, secret) {
					t.Errorf("span %s carries %q: %q", s.Name(), secret, txt)
				}
			}
		}
	}
}
