package ssf

import (
	"bytes"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

// TestRestartWithPrivateEndpointsOff: a push stream accepted while private
// endpoints were allowed does not stop a transmitter started without them:
// it starts, says so in the log (stream id, not the endpoint's secrets), and
// the stream is still there for its receiver to move; moving it to an
// allowed endpoint works, another private one is refused.
func TestRestartWithPrivateEndpointsOff(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
	w := h.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked},
		"delivery": map[string]any{"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:9/events", "authorization_header": "Bearer private-secret-123"}})
	var logs bytes.Buffer
	h.reopen(func(c *Config) {
		c.AllowPrivateEndpoints = false
		c.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	})
	if !strings.Contains(logs.String(), "stream_id="+w.StreamID) || !strings.Contains(logs.String(), "not allowed") {
		t.Errorf("the start does not say which stream's endpoint is refused:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "private-secret-123") {
		t.Error("the log holds the stream's authorization header")
	}
	r := h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil)
	if r.status != http.StatusOK {
		t.Fatalf("the stream is gone after the restart: %d %s", r.status, r.body)
	}
	patch := func(endpoint string) response {
		return h.do("PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID,
			"delivery": map[string]any{"method": MethodPushURN, "endpoint_url": endpoint}})
	}
	if r := patch("https://10.1.2.3/events"); r.status != http.StatusBadRequest {
		t.Errorf("moving to another private endpoint: %d %s, want 400", r.status, r.body)
	}
	if r := patch("https://receiver.example.com/events"); r.status != http.StatusOK {
		t.Fatalf("moving to an allowed endpoint: %d %s", r.status, r.body)
	}
}
