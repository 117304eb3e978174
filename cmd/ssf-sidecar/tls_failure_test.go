package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestSystemReceiverTLSErrorThenFixed: a push endpoint whose certificate
// does not verify is never sent a SET — the stream backs off, says why, and
// keeps everything — until the receiver points the stream at a good
// endpoint; then every SET arrives once, in order.
func TestSystemReceiverTLSErrorThenFixed(t *testing.T) {
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: func(c *sidecar.Config) { c.MaxBackoff = time.Second }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	var got atomic.Int64
	bad := httptest.NewTLSServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		got.Add(1) // only reached if the certificate were trusted
		rw.WriteHeader(http.StatusAccepted)
	}))
	defer bad.Close()
	var st struct {
		StreamID string `json:"stream_id"`
	}
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": []string{ssf.EventSessionRevoked},
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": bad.URL + "/events"}}, &st); err != nil {
		t.Fatal(err)
	}
	u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "frank", Email: "frank@example.com", Password: "frank-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := 0; i < 5; i++ {
		id, code := revokeThroughProxy(t, w, u.PK)
		if code != http.StatusNoContent {
			t.Fatalf("delete %d: %d", i, code)
		}
		want = append(want, id)
	}
	// The stream fails on the certificate and says so.
	deadline := time.Now().Add(15 * time.Second)
	for {
		stats, err := w.Sidecar.Outbox().Stats(ctx, st.StreamID)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(stats.LastError, "certificate") && stats.Backlog >= 6 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no certificate error recorded: %+v", stats)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got.Load() != 0 {
		t.Fatalf("a SET reached an endpoint whose certificate does not verify")
	}
	// The receiver fixes its endpoint.
	code, body := w.call(t, demoReceiverToken, http.MethodPatch, "/ssf/streams", map[string]any{"stream_id": st.StreamID,
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL()}})
	if code != http.StatusOK {
		t.Fatalf("patch: %d %s", code, body)
	}
	deadline = time.Now().Add(20 * time.Second)
	for len(sessionOrder(w.Receiver.Received())) < len(want) {
		if time.Now().After(deadline) {
			t.Fatalf("after the fix the receiver got %d of %d", len(sessionOrder(w.Receiver.Received())), len(want))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g := sessionOrder(w.Receiver.Received()); !slices.Equal(g, want) {
		t.Errorf("order after recovery\n got %v\nwant %v", g, want)
	}
	seen := map[string]bool{}
	for _, s := range w.Receiver.Received() {
		if seen[s.JTI] {
			t.Errorf("jti %s delivered twice", s.JTI)
		}
		seen[s.JTI] = true
	}
}
