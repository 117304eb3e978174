package ssf

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestOIDFErrorModules is the suite's negative modules
// (AbstractStreamControlErrorTest), each with the invalid token of HEAD
// ("Bearer invalid:<uuid>") and of 5.1.39 ("Bearer invalid"). The token is
// checked before the stream is looked up and before a missing stream_id is
// refused, so a bad token on a deleted stream, or with no stream_id at
// all, is 401 and never 404 or 400.
func TestOIDFErrorModules(t *testing.T) {
	const auth = "bearer " + acmeTok
	h := newHarness(t)
	h.suiteCleanUp(auth)
	create := jsonBody(createBody(suiteEventsHEAD, suiteDescription, pollDelivery))
	// The modules that need an unknown stream create one and delete it.
	var gone map[string]any
	h.suite("POST", "/ssf/streams", auth, create).requireJSON(t, "create", &gone)
	deleted := gone["stream_id"].(string)
	h.suite("DELETE", "/ssf/streams?stream_id="+deleted, auth, "").expect(t, "delete", 204)
	full := func(id string) string {
		b := createBody(suiteEventsHEAD, "Updated Stream for Receiver OIDF Conformance Test-Suite", pollDelivery)
		b["stream_id"] = id
		return jsonBody(b)
	}
	for _, invalid := range []string{suiteInvalidHEAD, suiteInvalid5139} {
		cases := []struct {
			module, method, path, auth, body string
			want                             int
		}{
			{"error-create-stream-with-broken-input", "POST", "/ssf/streams", auth, ";{ broken", 400},
			{"error-create-stream-with-invalid-token", "POST", "/ssf/streams", invalid, create, 401},
			{"error-read-stream-with-invalid-token (deleted id)", "GET", "/ssf/streams?stream_id=" + deleted, invalid, "", 401},
			{"error-read-stream-with-invalid-token (no id)", "GET", "/ssf/streams", invalid, "", 401},
			{"error-read-unknown-stream", "GET", "/ssf/streams?stream_id=" + deleted, auth, "", 404},
			{"error-update-stream-with-invalid-token", "PATCH", "/ssf/streams", invalid, full(deleted), 401},
			{"error-update-stream-with-invalid-body", "PATCH", "/ssf/streams", auth, ";{ broken", 400},
			{"error-update-unknown-stream", "PATCH", "/ssf/streams", auth, full(deleted), 404},
			{"error-replace-stream-with-invalid-body", "PUT", "/ssf/streams", auth, ";{ broken", 400},
			{"error-replace-stream-with-invalid-token", "PUT", "/ssf/streams", invalid, full(deleted), 401},
			{"error-replace-unknown-stream", "PUT", "/ssf/streams", auth, full(deleted), 404},
			{"error-delete-stream-with-invalid-token (HEAD: deleted id)", "DELETE", "/ssf/streams?stream_id=" + deleted, invalid, "", 401},
			{"error-delete-stream-with-invalid-token (5.1.39: no id)", "DELETE", "/ssf/streams", invalid, "", 401},
			{"error-delete-unknown-stream", "DELETE", "/ssf/streams?stream_id=" + deleted, auth, "", 404},
			// Beyond the modules: the other endpoints keep the same order.
			{"status with invalid token (deleted id)", "GET", "/ssf/status?stream_id=" + deleted, invalid, "", 401},
			{"verify with invalid token (deleted id)", "POST", "/ssf/verify", invalid, `{"stream_id":"` + deleted + `"}`, 401},
			{"poll with invalid token (deleted id)", "POST", "/ssf/poll/" + deleted, invalid, `{"returnImmediately":true}`, 401},
		}
		for _, c := range cases {
			t.Run(invalid+"/"+c.module, func(t *testing.T) {
				r := h.suite(c.method, c.path, c.auth, c.body)
				r.expect(t, c.module, c.want)
				var e map[string]string
				if err := json.Unmarshal(r.body, &e); err != nil || e["err"] == "" {
					t.Errorf("error body %s", r.body)
				}
				if c.want == 401 && !strings.Contains(r.header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("401 without a Bearer challenge: %q", r.header.Get("WWW-Authenticate"))
				}
			})
		}
	}
}

// TestOIDFErrorCreateStreamWithDuplicateConfig is
// openid-ssf-transmitter-error-create-stream-with-duplicate-config: the
// first create is 201, the same create again is 409 (5.1.39 requires it,
// HEAD takes 201 or 409) naming the existing stream, whatever the order of
// events_requested. A create that differs in delivery, events or
// description is a new stream. The next module's clean up, which deletes
// only the first stream listed, leaves the receiver with none.
func TestOIDFErrorCreateStreamWithDuplicateConfig(t *testing.T) {
	const auth = "Bearer " + acmeTok
	h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
	h.suiteCleanUp(auth)
	body := createBody(suiteEventsHEAD, suiteDescription, pollDelivery)
	var first map[string]any
	r := h.suite("POST", "/ssf/streams", auth, jsonBody(body))
	r.expect(t, "first create", 201)
	r.requireJSON(t, "first create", &first)
	id := first["stream_id"].(string)
	for _, events := range [][]string{suiteEventsHEAD, {EventSessionRevoked, eventDeviceCompliance, EventCredentialChange}} {
		r = h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(events, suiteDescription, pollDelivery)))
		r.expect(t, "duplicate create", 409)
		var e map[string]string
		if err := json.Unmarshal(r.body, &e); err != nil || !strings.Contains(e["description"], id) {
			t.Errorf("409 does not name the existing stream %s: %s", id, r.body)
		}
	}
	// Not identical: another description, other events, push delivery.
	for _, other := range []map[string]any{
		createBody(suiteEventsHEAD, "another description", pollDelivery),
		createBody(suiteEvents5139, suiteDescription, pollDelivery),
		createBody(suiteEventsHEAD, suiteDescription, map[string]string{"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:1/push"}),
	} {
		h.suite("POST", "/ssf/streams", auth, jsonBody(other)).expect(t, "different create", 201)
	}
	// The same push create again is a duplicate too (same endpoint).
	h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(suiteEventsHEAD, suiteDescription,
		map[string]string{"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:1/push"}))).expect(t, "duplicate push", 409)
	// Another receiver's identical stream is its own.
	h.suite("POST", "/ssf/streams", "Bearer "+globexTok, jsonBody(body)).expect(t, "other receiver", 201)

	// The duplicate left one stream: the next module's clean up empties
	// the receiver.
	h2 := newHarness(t)
	h2.suite("POST", "/ssf/streams", auth, jsonBody(body)).expect(t, "create", 201)
	h2.suite("POST", "/ssf/streams", auth, jsonBody(body)).expect(t, "duplicate", 409)
	h2.suiteCleanUp(auth)
	var list []any
	h2.suite("GET", "/ssf/streams", auth, "").requireJSON(t, "list", &list)
	if len(list) != 0 {
		t.Errorf("clean up left %d streams", len(list))
	}
}

// TestReceiverMaxStreams: max_streams in the receivers file caps that
// receiver's streams (the transmitter's cap is the default); 1 gives one
// stream per receiver, and a second create, identical or not, is 409
// naming the stream it has.
func TestReceiverMaxStreams(t *testing.T) {
	rs, err := ParseReceivers([]byte(`
receivers:
  - name: single
    tokens: ["single-token"]
    max_streams: 1
  - name: pair
    tokens: ["pair-token"]
    max_streams: 2
  - name: plain
    tokens: ["plain-token"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if rs[0].MaxStreams != 1 || rs[1].MaxStreams != 2 || rs[2].MaxStreams != 0 {
		t.Fatalf("max_streams parsed as %d %d %d", rs[0].MaxStreams, rs[1].MaxStreams, rs[2].MaxStreams)
	}
	h := newHarness(t, func(c *Config) { c.Receivers = rs; c.MaxStreamsPerReceiver = 3 })
	one := h.create("single-token", map[string]any{"description": "a"})
	for _, d := range []string{"a", "b"} {
		r := h.do("POST", "/ssf/streams", "single-token", map[string]any{"description": d})
		var e map[string]string
		r.json(t, &e)
		if r.status != 409 || !strings.Contains(e["description"], one.StreamID) {
			t.Errorf("second stream %q of a one-stream receiver: %d %s", d, r.status, r.body)
		}
	}
	for i, want := range []int{201, 201, 409} {
		if r := h.do("POST", "/ssf/streams", "pair-token", map[string]any{"description": string(rune('a' + i))}); r.status != want {
			t.Errorf("pair stream %d: %d, want %d", i+1, r.status, want)
		}
	}
	for i, want := range []int{201, 201, 201, 409} {
		if r := h.do("POST", "/ssf/streams", "plain-token", map[string]any{"description": string(rune('a' + i))}); r.status != want {
			t.Errorf("plain stream %d: %d, want %d (the transmitter's cap)", i+1, r.status, want)
		}
	}
	// Deleting the one stream makes room again.
	if r := h.do("DELETE", "/ssf/streams?stream_id="+one.StreamID, "single-token", nil); r.status != 204 {
		t.Fatalf("delete: %d", r.status)
	}
	h.create("single-token", map[string]any{"description": "b"})

	// The parser refuses a cap below one, naming the receiver.
	for _, bad := range []string{"0", "-2"} {
		_, err := ParseReceivers([]byte("receivers:\n  - name: x\n    tokens: [t]\n    max_streams: " + bad + "\n"))
		if err == nil || !strings.Contains(err.Error(), `receiver "x": max_streams`) {
			t.Errorf("max_streams %s: %v", bad, err)
		}
	}
	if _, err := ParseReceivers([]byte("receivers:\n  - name: x\n    tokens: [t]\n    max_streams: many\n")); err == nil {
		t.Error("max_streams: many accepted")
	}
}
