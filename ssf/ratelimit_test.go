package ssf

import (
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestManagementCallLimit: each receiver has its own bucket of management
// calls; beyond it the answer is 429 with Retry-After, nothing changes,
// the poll endpoint and other receivers are unaffected, and the bucket
// refills with time.
func TestManagementCallLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ManagementBurst, c.ManagementInterval = 3, 10*time.Second })
	w := h.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked}}) // call 1
	calls := []struct {
		name, method, path string
		body               any
	}{
		{"read", "GET", "/ssf/streams?stream_id=" + w.StreamID, nil},                                           // 2
		{"status", "GET", "/ssf/status?stream_id=" + w.StreamID, nil},                                          // 3
		{"update", "PATCH", "/ssf/streams", map[string]any{"stream_id": w.StreamID, "description": "changed"}}, // 4: over
	}
	for i, c := range calls {
		r := h.do(c.method, c.path, acmeTok, c.body)
		if i < 2 && r.status != http.StatusOK {
			t.Fatalf("%s within the burst: %d %s", c.name, r.status, r.body)
		}
		if i == 2 {
			if r.status != http.StatusTooManyRequests {
				t.Fatalf("%s beyond the burst: %d %s", c.name, r.status, r.body)
			}
			if got := r.header.Get("Retry-After"); got != "10" {
				t.Errorf("Retry-After %q, want 10", got)
			}
		}
	}
	// The refused update changed nothing (read back after a refill).
	h.clock.Advance(10 * time.Second)
	r := h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil)
	if r.status != http.StatusOK {
		t.Fatalf("after refill: %d %s", r.status, r.body)
	}
	var got streamWire
	r.json(t, &got)
	if got.Description == "changed" {
		t.Error("a refused call changed the stream")
	}
	// Empty again: one token came back and was spent.
	if r := h.do("GET", "/ssf/status?stream_id="+w.StreamID, acmeTok, nil); r.status != http.StatusTooManyRequests {
		t.Errorf("second call after one interval: %d", r.status)
	} else if r.header.Get("Retry-After") != "10" {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Half an interval later: Retry-After says what is left.
	h.clock.Advance(4 * time.Second)
	if r := h.do("GET", "/ssf/status?stream_id="+w.StreamID, acmeTok, nil); r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "6" {
		t.Errorf("partly refilled: %d Retry-After %q, want 429 and 6", r.status, r.header.Get("Retry-After"))
	}
	// Poll is not a management call.
	if r := h.do("POST", w.Delivery.EndpointURL, acmeTok, `{"returnImmediately":true}`); r.status != http.StatusOK {
		t.Errorf("poll while limited: %d %s", r.status, r.body)
	}
	// Another receiver has its own bucket.
	if r := h.do("GET", "/ssf/streams", globexTok, nil); r.status != http.StatusOK {
		t.Errorf("other receiver while acme is limited: %d %s", r.status, r.body)
	}
	// The read-only token of the same receiver shares its bucket.
	if r := h.do("GET", "/ssf/streams", acmeRead, nil); r.status != http.StatusTooManyRequests {
		t.Errorf("same receiver, other token: %d", r.status)
	}
	// Refused callers (bad token) never spend a receiver's calls.
	h.clock.Advance(time.Hour)
	for i := 0; i < 10; i++ {
		if r := h.do("GET", "/ssf/streams", "not-a-token", nil); r.status != http.StatusUnauthorized {
			t.Fatalf("bad token: %d", r.status)
		}
	}
	for i := 0; i < 3; i++ {
		if r := h.do("GET", "/ssf/streams", acmeTok, nil); r.status != http.StatusOK {
			t.Fatalf("full bucket call %d: %d", i, r.status)
		}
	}
}

// TestManagementCallLimitDefaults: the default allows a burst of 60 and
// then one call a second; a negative burst turns the limit off.
func TestManagementCallLimitDefaults(t *testing.T) {
	tests := []struct {
		name  string
		burst int
		ok    int // calls answered 200 before the first 429 (-1: none refused in 200)
	}{
		{"default", 0, DefaultManagementBurst},
		{"off", -1, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.ManagementBurst = tc.burst })
			ok := -1
			for i := 0; i < 200; i++ {
				r := h.do("GET", "/ssf/streams", globexTok, nil)
				if r.status == http.StatusTooManyRequests {
					ok = i
					break
				}
				if r.status != http.StatusOK {
					t.Fatalf("call %d: %d %s", i, r.status, r.body)
				}
			}
			if ok != tc.ok {
				t.Fatalf("first 429 after %d calls, want %d", ok, tc.ok)
			}
			if tc.ok < 0 {
				return
			}
			h.clock.Advance(DefaultManagementInterval)
			if r := h.do("GET", "/ssf/streams", globexTok, nil); r.status != http.StatusOK {
				t.Errorf("after one interval: %d", r.status)
			}
		})
	}
}

func TestCallLimiterValidate(t *testing.T) {
	err := (Config{ManagementInterval: -time.Second}).Validate()
	if err == nil || !strings.Contains(err.Error(), "management interval must not be negative") {
		t.Fatalf("negative interval: %v", err)
	}
}
