package outbox

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestServePoll drives the poll endpoint body over HTTP.
func TestServePoll(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	h.pollStream("p")
	h.enqueue(makeSET("p", "j1"), makeSET("p", "j2"))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ob.ServePoll(w, r, strings.TrimPrefix(r.URL.Path, "/poll/"), 1024)
	}))
	defer srv.Close()
	post := func(path, body string) (*http.Response, map[string]json.RawMessage) {
		t.Helper()
		resp, err := http.Post(srv.URL+path, "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]json.RawMessage
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp, m
	}
	tests := []struct {
		name, path, body string
		status           int
	}{
		{"malformed", "/poll/p", `{"maxEvents":"x"}`, 400},
		{"not an object", "/poll/p", `[]`, 400},
		{"too large", "/poll/p", `{"ack":["` + strings.Repeat("a", 2000) + `"]}`, 400},
		{"unknown stream", "/poll/nope", `{"returnImmediately":true}`, 404},
	}
	for _, tc := range tests {
		resp, _ := post(tc.path, tc.body)
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.name, resp.StatusCode, tc.status)
		}
	}
	if resp, err := http.Get(srv.URL + "/poll/p"); err != nil || resp.StatusCode != 405 {
		t.Errorf("GET: %v %v", resp, err)
	}
	resp, m := post("/poll/p", `{"maxEvents":1,"returnImmediately":true}`)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("poll: %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var sets map[string]string
	if err := json.Unmarshal(m["sets"], &sets); err != nil || len(sets) != 1 {
		t.Fatalf("sets = %s (%v)", m["sets"], err)
	}
	for jti, compact := range sets {
		if verifyJTI(t, compact) != jti || jti != "j1" {
			t.Errorf("sets keyed %q", jti)
		}
	}
	if string(m["moreAvailable"]) != "true" {
		t.Errorf("moreAvailable = %s", m["moreAvailable"])
	}
	resp, m = post("/poll/p", `{"ack":["j1"],"maxEvents":0}`)
	if resp.StatusCode != 200 || string(m["sets"]) != "{}" {
		t.Errorf("ack-only: %d sets=%s", resp.StatusCode, m["sets"])
	}
}
