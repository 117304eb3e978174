//go:build jaeger

package main

// The real-backend check: the sidecar exports over OTLP to a running
// Jaeger and the test reads the traces back from Jaeger's query API.
// .ci/jaeger-test builds Jaeger from the Go module proxy, starts it and
// runs this test (go test -tags jaeger -run TestJaeger ./cmd/ssf-sidecar/);
// SSF_JAEGER_OTLP (default http://127.0.0.1:4318) and SSF_JAEGER_QUERY
// (default http://127.0.0.1:16686) say where it listens.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// jaegerReceiver fails until told to recover and remembers, per request,
// the jti it carried and the traceparent and authorization it came with.
type jaegerReceiver struct {
	srv     *httptest.Server
	healthy atomic.Bool
	mu      sync.Mutex
	got     []jaegerPush
}

type jaegerPush struct {
	jti, event, traceparent, authorization string
	status                                 int
}

func newJaegerReceiver(t *testing.T) *jaegerReceiver {
	r := &jaegerReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		jti, event := claimsOf(string(body))
		p := jaegerPush{jti: jti, event: event, traceparent: req.Header.Get("Traceparent"),
			authorization: req.Header.Get("Authorization"), status: http.StatusServiceUnavailable}
		if r.healthy.Load() {
			p.status = http.StatusAccepted
		}
		r.mu.Lock()
		r.got = append(r.got, p)
		r.mu.Unlock()
		w.WriteHeader(p.status)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *jaegerReceiver) pushes() []jaegerPush {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

// claimsOf reads the jti and event type of a compact SET without
// verifying it (the other tests verify signatures; here only the identity
// matters).
func claimsOf(compact string) (jti, event string) {
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		return "", ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", ""
	}
	var c struct {
		JTI    string                     `json:"jti"`
		Events map[string]json.RawMessage `json:"events"`
	}
	_ = json.Unmarshal(b, &c)
	for e := range c.Events {
		event = e
	}
	return c.JTI, event
}

// Jaeger's query API (the JSON the UI reads).
type jTrace struct {
	TraceID string  `json:"traceID"`
	Spans   []jSpan `json:"spans"`
}

type jSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		TraceID string `json:"traceID"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []jTag `json:"tags"`
	Logs []struct {
		Fields []jTag `json:"fields"`
	} `json:"logs"`
}

type jTag struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

func (s jSpan) tag(k string) any {
	for _, t := range s.Tags {
		if t.Key == k {
			return t.Value
		}
	}
	return nil
}

func (s jSpan) str(k string) string { v, _ := s.tag(k).(string); return v }

func (s jSpan) num(k string) int {
	switch v := s.tag(k).(type) {
	case float64:
		return int(v)
	case string:
		var n int
		fmt.Sscan(v, &n)
		return n
	}
	return -1
}

func jaegerEnv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// queryJaeger fetches every trace of the service, raw and decoded.
func queryJaeger(t *testing.T, base, service string) ([]byte, []jTrace) {
	t.Helper()
	u := base + "/api/traces?service=" + service + "&limit=2000&lookback=2h"
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, resp.StatusCode, raw)
	}
	var out struct {
		Data []jTrace `json:"data"`
	}
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return raw, out.Data
}

// TestJaeger runs the scenario of the README's walkthrough against a real
// Jaeger: a push receiver that fails and, after a restart of the sidecar,
// recovers; a poll receiver; a verification; a logout. It then asserts on
// what Jaeger holds: each SET's life in one trace, the delivery spans and
// their attributes, links from poll requests, and no secret anywhere.
func TestJaeger(t *testing.T) {
	otlp, query := jaegerEnv("SSF_JAEGER_OTLP", "http://127.0.0.1:4318"), jaegerEnv("SSF_JAEGER_QUERY", "http://127.0.0.1:16686")
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	service := "ssf-sidecar-jaegertest-" + hex.EncodeToString(rnd[:])
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", service)
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
	ctx := context.Background()
	tracing, err := sidecar.SetupTracing(ctx, "jaeger-test")
	if err != nil || tracing.Provider == nil {
		t.Fatalf("tracing: %v", err)
	}
	dataDir := t.TempDir()
	const pushSecret = "Bearer push-secret-SHOULD-NOT-LEAK"
	opts := demoOptions{DataDir: dataDir, TracerProvider: tracing.Provider, Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: func(c *sidecar.Config) { c.MaxBackoff = time.Second }}
	w, err := startDemoWorld(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	rx := newJaegerReceiver(t)
	var pushStream, pollStream struct {
		StreamID string `json:"stream_id"`
	}
	code, body := w.call(t, demoReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": rx.srv.URL + "/events",
			"authorization_header": pushSecret}})
	if code >= 300 {
		t.Fatalf("create push stream: %d %s", code, body)
	}
	_ = json.Unmarshal(body, &pushStream)
	code, body = w.call(t, pollReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery": map[string]any{"method": ssf.MethodPollURN}, "events_requested": []string{ssf.EventSessionRevoked}})
	if code >= 300 {
		t.Fatalf("create poll stream: %d %s", code, body)
	}
	_ = json.Unmarshal(body, &pollStream)
	if code, body := w.call(t, pollReceiverToken, http.MethodPost, "/ssf/verify", map[string]any{
		"stream_id": pollStream.StreamID, "state": "jaeger-state"}); code != http.StatusNoContent {
		t.Fatalf("verify: %d %s", code, body)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw-alice-SECRET"}); err != nil {
		t.Fatal(err)
	}
	w.logInAndOut(t, "alice", "pw-alice-SECRET")
	polled := w.pollAll(t, pollReceiverToken, w.Front+"/ssf/poll/"+pollStream.StreamID)
	var pollLogout string
	for _, p := range polled {
		if p.Event == "session-revoked" {
			pollLogout = p.JTI
		}
	}
	if pollLogout == "" {
		t.Fatalf("poll stream got %v", polled)
	}
	// A few failed attempts, then a restart while the receiver is down.
	for deadline := time.Now().Add(20 * time.Second); len(rx.pushes()) < 3; {
		if time.Now().After(deadline) {
			t.Fatal("the failing receiver was not retried")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	before := len(rx.pushes())
	rx.healthy.Store(true)
	w, err = startDemoWorld(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	var pushLogout, pushVerify string
	for deadline := time.Now().Add(30 * time.Second); pushLogout == ""; {
		for _, p := range rx.pushes() {
			if p.status == http.StatusAccepted && p.event == ssf.EventVerification {
				pushVerify = p.jti
			}
			if p.status == http.StatusAccepted && p.event == ssf.EventSessionRevoked {
				pushLogout = p.jti
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery after the restart: %+v", rx.pushes())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := tracing.Shutdown(sctx); err != nil {
		t.Fatal(err)
	}

	var raw []byte
	var traces []jTrace
	spansOf := func(jti string) map[string][]jSpan { // trace id → spans naming jti
		out := map[string][]jSpan{}
		for _, tr := range traces {
			for _, s := range tr.Spans {
				if s.str("ssf.jti") == jti {
					out[s.TraceID] = append(out[s.TraceID], s)
				}
			}
		}
		return out
	}
	// Jaeger indexes asynchronously: wait for the delivered logout push.
	for deadline := time.Now().Add(20 * time.Second); ; {
		raw, traces = queryJaeger(t, query, service)
		found := false
		for _, ss := range spansOf(pushLogout) {
			for _, s := range ss {
				found = found || (s.OperationName == "ssf.push" && s.str("ssf.outcome") == "delivered")
			}
		}
		if found {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Jaeger holds no delivered push of %s (%d traces)", pushLogout, len(traces))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("Jaeger holds %d traces of %s (%d bytes)", len(traces), service, len(raw))

	// One trace per SET's life.
	for name, jti := range map[string]string{"push logout": pushLogout, "push verification": pushVerify, "poll logout": pollLogout} {
		if by := spansOf(jti); len(by) != 1 {
			t.Errorf("%s SET %s is in %d traces, want 1", name, jti, len(by))
		}
	}
	one := func(jti string) []jSpan {
		for _, ss := range spansOf(jti) {
			return ss
		}
		return nil
	}
	names := func(ss []jSpan) []string {
		var out []string
		for _, s := range ss {
			out = append(out, s.OperationName)
		}
		slices.Sort(out)
		return slices.Compact(out)
	}
	// The push logout: its ssf.set, a wait behind the failing head, its
	// attempts numbered on across the restart, under the tapped request.
	logout := one(pushLogout)
	for _, want := range []string{"ssf.set", "ssf.wait", "ssf.push"} {
		if !slices.Contains(names(logout), want) {
			t.Errorf("push logout trace lacks %s: %v", want, names(logout))
		}
	}
	var root bool
	for _, tr := range traces {
		if tr.TraceID != logout[0].TraceID {
			continue
		}
		for _, s := range tr.Spans {
			root = root || s.OperationName == "GET /api/v3/flows/executor/{slug}/" && s.str("http.route") == "/api/v3/flows/executor/{slug}/"
		}
	}
	if !root {
		for _, tr := range traces {
			if tr.TraceID == logout[0].TraceID {
				t.Errorf("the push logout's trace does not start at the tapped request: %v", names(tr.Spans))
			}
		}
	}
	// The verification SET: every attempt before and after the restart in
	// its trace, numbered 1, 2, … with no restart at 1.
	var attempts []int
	sent := map[string]bool{}
	for _, p := range rx.pushes() {
		sent[p.traceparent] = true
		if !strings.Contains(p.authorization, "SHOULD-NOT-LEAK") {
			t.Errorf("the receiver did not get its authorization header")
		}
	}
	for _, s := range one(pushVerify) {
		if s.OperationName != "ssf.push" {
			continue
		}
		attempts = append(attempts, s.num("ssf.attempt"))
		if s.str("ssf.receiver") != "push-rx" || s.str("server.address") != "127.0.0.1" || s.str("url.full") != rx.srv.URL+"/events" ||
			s.str("ssf.event_type") != ssf.EventVerification || s.str("ssf.stream_id") != pushStream.StreamID {
			t.Errorf("push span tags %v", s.Tags)
		}
		if s.str("ssf.outcome") == "retry" && s.str("error.type") != "503" {
			t.Errorf("failed push error.type %q", s.str("error.type"))
		}
		if !sent[fmt.Sprintf("00-%s-%s-01", s.TraceID, s.SpanID)] {
			t.Errorf("the receiver never got the traceparent of push span %s", s.SpanID)
		}
	}
	slices.Sort(attempts)
	if len(attempts) < before || attempts[0] != 1 {
		t.Errorf("verification attempts %v (receiver saw %d before the restart)", attempts, before)
	}
	for i := range attempts {
		if attempts[i] != i+1 {
			t.Errorf("attempt numbers %v restart or repeat", attempts)
			break
		}
	}
	// The poll logout: hand-out and ack in its trace, each linked from a
	// poll request span (another trace) that lists the jti.
	poll := one(pollLogout)
	for _, step := range []string{"ssf.poll.hand_out", "ssf.poll.ack"} {
		var stepSpan *jSpan
		for i := range poll {
			if poll[i].OperationName == step {
				stepSpan = &poll[i]
			}
		}
		if stepSpan == nil {
			t.Errorf("poll logout trace lacks %s: %v", step, names(poll))
			continue
		}
		linked := false
		for _, tr := range traces {
			for _, s := range tr.Spans {
				if s.OperationName != "ssf.poll" {
					continue
				}
				for _, r := range s.References {
					if r.SpanID == stepSpan.SpanID && r.TraceID == stepSpan.TraceID {
						linked = true
					}
				}
			}
		}
		if !linked {
			t.Errorf("no ssf.poll span links to %s of %s", step, pollLogout)
		}
	}
	// Nothing secret anywhere in what Jaeger holds.
	for _, secret := range []string{demoReceiverToken, pollReceiverToken, "SHOULD-NOT-LEAK", "pw-alice-SECRET", "eyJ",
		"authentik_session", "authentik_csrf", "Bearer", "Cookie", "alice@example.com", w.AK.AdminToken()} {
		if strings.Contains(string(raw), secret) {
			t.Errorf("Jaeger's traces contain %q", secret)
		}
	}
}
