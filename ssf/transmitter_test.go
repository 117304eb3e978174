package ssf

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

const (
	acmeTok   = "acme-manage-token"
	acmeRead  = "acme-read-token"
	globexTok = "globex-token"
	legacyTok = "initech-token"
	acmeAud   = "https://acme.example/"
)

func TestDiscovery(t *testing.T) {
	h := newHarness(t)
	r := h.do("GET", "/.well-known/ssf-configuration/ssf", "", nil)
	if r.status != 200 || !strings.HasPrefix(r.header.Get("Content-Type"), "application/json") {
		t.Fatalf("status %d, content type %q", r.status, r.header.Get("Content-Type"))
	}
	var m map[string]any
	r.json(t, &m)
	want := map[string]string{
		"spec_version": "1_0", "issuer": h.issuer, "jwks_uri": h.issuer + "/jwks.json",
		"configuration_endpoint": h.issuer + "/streams", "status_endpoint": h.issuer + "/status",
		"add_subject_endpoint": h.issuer + "/subjects:add", "remove_subject_endpoint": h.issuer + "/subjects:remove",
		"verification_endpoint": h.issuer + "/verify", "default_subjects": "ALL",
	}
	for k, v := range want {
		if m[k] != v {
			t.Errorf("%s = %v, want %s", k, m[k], v)
		}
	}
	dm, _ := m["delivery_methods_supported"].([]any)
	if len(dm) != 2 || dm[0] != MethodPushURN || dm[1] != MethodPollURN {
		t.Errorf("delivery_methods_supported = %v", dm)
	}
	for k, v := range m {
		if a, ok := v.([]any); ok && len(a) == 0 {
			t.Errorf("%s is an empty array", k)
		}
	}
	if strings.Contains(string(r.body), "6749") {
		t.Error("rfc6749 advertised without an OAuth issuer")
	}
	// Every endpoint named in the document answers (not 404 from routing).
	for _, k := range []string{"configuration_endpoint", "status_endpoint", "verification_endpoint"} {
		u := m[k].(string)
		if got := h.do("GET", u, "", nil); got.status == 404 {
			t.Errorf("%s %s is not routed", k, u)
		}
	}
	jw := h.do("GET", "/ssf/jwks.json", "", nil)
	if jw.status != 200 || !strings.Contains(string(jw.body), h.keys.CurrentKID()) {
		t.Errorf("jwks: %d %s", jw.status, jw.body)
	}
}

func TestDiscoveryURLsFollowIssuer(t *testing.T) {
	cases := []struct {
		issuer, discovery, streams string
	}{
		{"https://tr.example.com/ssf", "/.well-known/ssf-configuration/ssf", "https://tr.example.com/ssf/streams"},
		{"https://tr.example.com/", "/.well-known/ssf-configuration", "https://tr.example.com/ssf/streams"},
		{"https://tr.example.com/a/b/", "/.well-known/ssf-configuration/a/b", "https://tr.example.com/a/b/streams"},
	}
	for _, c := range cases {
		t.Run(c.issuer, func(t *testing.T) {
			cfg := Config{Issuer: c.issuer, KV: newMemKV(), Queue: newFakeQueue(), Keys: testKeys(t)}
			tr, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			rec := serve(tr, "GET", c.discovery, "", "")
			if rec.Code != 200 {
				t.Fatalf("status %d", rec.Code)
			}
			var m map[string]any
			_ = json.Unmarshal(rec.Body.Bytes(), &m)
			if m["configuration_endpoint"] != c.streams || m["issuer"] != c.issuer {
				t.Errorf("got %v / %v", m["configuration_endpoint"], m["issuer"])
			}
			if !slices.Contains(tr.Prefixes(), c.discovery[:len("/.well-known/ssf-configuration")]) {
				t.Errorf("prefixes %v", tr.Prefixes())
			}
		})
	}
}

func TestStreamHappyPath(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{
		"events_requested": []string{EventSessionRevoked, EventCredentialChange, "urn:example:unknown"},
		"description":      "first",
	})
	if w.StreamID == "" || w.Iss != h.issuer || w.Aud != acmeAud {
		t.Fatalf("create: %+v", w)
	}
	if w.Delivery.Method != MethodPollURN || w.Delivery.EndpointURL != h.issuer+"/poll/"+w.StreamID {
		t.Errorf("default delivery = %+v", w.Delivery)
	}
	if !slices.Equal(w.EventsDelivered, []string{EventSessionRevoked, EventCredentialChange}) {
		t.Errorf("events_delivered = %v", w.EventsDelivered)
	}
	if w.MinVerificationInterval != 5 {
		t.Errorf("min_verification_interval = %d", w.MinVerificationInterval)
	}

	r := h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil)
	if r.status != 200 || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("read: %d %v", r.status, r.header)
	}
	var got streamWire
	r.json(t, &got)
	if got.StreamID != w.StreamID || got.Description != "first" {
		t.Errorf("read: %+v", got)
	}
	var list []streamWire
	h.do("GET", "/ssf/streams", acmeRead, nil).json(t, &list)
	if len(list) != 1 || list[0].StreamID != w.StreamID {
		t.Errorf("list: %+v", list)
	}

	// PATCH changes only what it names; transmitter fields with current values are fine.
	r = h.do("PATCH", "/ssf/streams", acmeTok, map[string]any{
		"stream_id": w.StreamID, "iss": h.issuer, "aud": []string{acmeAud},
		"events_delivered": w.EventsDelivered, "description": "patched",
	})
	if r.status != 200 {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	r.json(t, &got)
	if got.Description != "patched" || !slices.Equal(got.EventsDelivered, w.EventsDelivered) {
		t.Errorf("patch result: %+v", got)
	}

	// PUT replaces: description omitted is removed, events shrink.
	r = h.do("PUT", "/ssf/streams", acmeTok, map[string]any{
		"stream_id": w.StreamID, "events_requested": []string{EventSessionRevoked},
		"delivery": map[string]any{"method": MethodPollURN, "endpoint_url": w.Delivery.EndpointURL},
	})
	if r.status != 200 {
		t.Fatalf("put: %d %s", r.status, r.body)
	}
	got = streamWire{}
	r.json(t, &got)
	if got.Description != "" || !slices.Equal(got.EventsDelivered, []string{EventSessionRevoked}) {
		t.Errorf("put result: %+v", got)
	}
	got = streamWire{}
	h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil).json(t, &got)
	if got.Description != "" || len(got.EventsDelivered) != 1 {
		t.Errorf("read after put: %+v", got)
	}

	var st statusWire
	r = h.do("GET", "/ssf/status?stream_id="+w.StreamID, acmeRead, nil)
	r.json(t, &st)
	if r.status != 200 || st.Status != "enabled" || st.StreamID != w.StreamID {
		t.Errorf("status: %d %+v", r.status, st)
	}
	for _, s := range []string{"paused", "disabled", "enabled"} {
		r = h.do("POST", "/ssf/status?stream_id="+w.StreamID, acmeTok,
			map[string]any{"stream_id": w.StreamID, "status": s, "reason": "test " + s})
		r.json(t, &st)
		if r.status != 200 || st.Status != s || st.Reason != "test "+s {
			t.Errorf("status %s: %d %s", s, r.status, r.body)
		}
		h.do("GET", "/ssf/status?stream_id="+w.StreamID, acmeTok, nil).json(t, &st)
		if st.Status != s {
			t.Errorf("status read back %s, want %s", st.Status, s)
		}
	}
	if r := h.do("DELETE", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil); r.status != 204 || len(r.body) != 0 {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil); r.status != 404 {
		t.Errorf("read deleted: %d", r.status)
	}
	if r := h.do("GET", "/ssf/streams", acmeTok, nil); r.status != 200 || strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("empty list: %d %s", r.status, r.body)
	}
}

func TestStreamErrors(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	g := h.create(globexTok, map[string]any{})
	big := `{"description":"` + strings.Repeat("x", 5000) + `"}`
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		challenge                 string
		errContains               string
	}{
		{"broken create body", "POST", "/ssf/streams", acmeTok, `{"delivery":`, 400, "", "JSON object"},
		{"wrong type", "POST", "/ssf/streams", acmeTok, `{"events_requested":"x"}`, 400, "", "events_requested"},
		{"invalid token create", "POST", "/ssf/streams", "nope", `{}`, 401, `error="invalid_token"`, ""},
		{"no token read", "GET", "/ssf/streams", "", nil, 401, "Bearer", ""},
		{"invalid token read", "GET", "/ssf/streams", "nope", nil, 401, `error="invalid_token"`, ""},
		{"invalid token status", "GET", "/ssf/status?stream_id=" + w.StreamID, "nope", nil, 401, `error="invalid_token"`, ""},
		{"invalid token update", "PATCH", "/ssf/streams", "nope", map[string]any{"stream_id": w.StreamID}, 401, "invalid_token", ""},
		{"invalid token replace", "PUT", "/ssf/streams", "nope", map[string]any{"stream_id": w.StreamID}, 401, "invalid_token", ""},
		{"invalid token delete", "DELETE", "/ssf/streams?stream_id=" + w.StreamID, "nope", nil, 401, "invalid_token", ""},
		{"read-only token cannot create", "POST", "/ssf/streams", acmeRead, `{}`, 403, `error="insufficient_scope"`, ""},
		{"read-only token cannot delete", "DELETE", "/ssf/streams?stream_id=" + w.StreamID, acmeRead, nil, 403, "insufficient_scope", ""},
		{"token in query", "GET", "/ssf/streams?access_token=" + acmeTok, "", nil, 401, "Bearer", "query"},
		{"unknown stream read", "GET", "/ssf/streams?stream_id=nope", acmeTok, nil, 404, "", ""},
		{"unknown stream update", "PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": "nope"}, 404, "", ""},
		{"unknown stream replace", "PUT", "/ssf/streams", acmeTok, map[string]any{"stream_id": "nope", "delivery": map[string]string{"method": MethodPollURN}}, 404, "", ""},
		{"unknown stream delete", "DELETE", "/ssf/streams?stream_id=nope", acmeTok, nil, 404, "", ""},
		{"unknown stream status", "GET", "/ssf/status?stream_id=nope", acmeTok, nil, 404, "", ""},
		{"unknown stream status post", "POST", "/ssf/status", acmeTok, map[string]any{"stream_id": "nope", "status": "paused"}, 404, "", ""},
		{"unknown stream verify", "POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": "nope"}, 404, "", ""},
		{"unknown stream subject", "POST", "/ssf/subjects:add", acmeTok, map[string]any{"stream_id": "nope", "subject": map[string]string{"format": "email", "email": "a@b.example"}}, 404, "", ""},
		{"cross receiver read", "GET", "/ssf/streams?stream_id=" + g.StreamID, acmeTok, nil, 404, "", ""},
		{"cross receiver delete", "DELETE", "/ssf/streams?stream_id=" + g.StreamID, acmeTok, nil, 404, "", ""},
		{"cross receiver status", "GET", "/ssf/status?stream_id=" + g.StreamID, acmeTok, nil, 404, "", ""},
		{"cross receiver verify", "POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": g.StreamID}, 404, "", ""},
		{"cross receiver poll", "POST", "/ssf/poll/" + g.StreamID, acmeTok, `{}`, 404, "", ""},
		{"poll without token", "POST", "/ssf/poll/" + w.StreamID, "", `{}`, 401, "Bearer", ""},
		{"bad poll body", "POST", "/ssf/poll/" + w.StreamID, acmeTok, `{"maxEvents":"x"}`, 400, "", ""},
		{"update without stream_id", "PATCH", "/ssf/streams", acmeTok, `{}`, 400, "", "stream_id"},
		{"update invalid body", "PATCH", "/ssf/streams", acmeTok, `[1,2]`, 400, "", ""},
		{"replace invalid body", "PUT", "/ssf/streams", acmeTok, `{"stream_id":`, 400, "", ""},
		{"changing iss", "PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID, "iss": "https://evil.example"}, 400, "", "iss"},
		{"changing aud", "PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID, "aud": "other"}, 400, "", "aud"},
		{"changing events_delivered", "PUT", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID, "events_delivered": []string{EventSessionRevoked}, "delivery": map[string]string{"method": MethodPollURN}}, 400, "", "events_delivered"},
		{"changing poll endpoint", "PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID, "delivery": map[string]string{"method": MethodPollURN, "endpoint_url": "https://x.example/p"}}, 400, "", "endpoint_url"},
		{"unknown delivery method", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": "urn:example:carrier-pigeon"}}, 400, "", "delivery.method"},
		{"RISC push for ssf profile", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": MethodRISCPush, "endpoint_url": "https://rx.example/e"}}, 400, "", "delivery.method"},
		{"push without endpoint", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": MethodPushURN}}, 400, "", "endpoint_url"},
		{"push to loopback", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": "https://127.0.0.1/e"}}, 400, "", "endpoint_url"},
		{"push to CGNAT", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": "https://100.64.1.1/e"}}, 400, "", "endpoint_url"},
		{"push over http", "POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": "http://rx.example/e"}}, 400, "", "endpoint_url"},
		{"status bad value", "POST", "/ssf/status", acmeTok, map[string]any{"stream_id": w.StreamID, "status": "asleep"}, 400, "", "status"},
		{"status ids differ", "POST", "/ssf/status?stream_id=other", acmeTok, map[string]any{"stream_id": w.StreamID, "status": "paused"}, 400, "", "stream_id"},
		{"body too large", "POST", "/ssf/streams", acmeTok, big, 413, "", "larger"},
		{"bad subject", "POST", "/ssf/subjects:add", acmeTok, map[string]any{"stream_id": w.StreamID, "subject": map[string]string{"format": "email", "email": "not an email"}}, 400, "", "email"},
		{"bad verify body", "POST", "/ssf/verify", acmeTok, `{"stream_id":5}`, 400, "", "stream_id"},
		{"verify invalid token", "POST", "/ssf/verify", "nope", map[string]any{"stream_id": w.StreamID}, 401, `error="invalid_token"`, ""},
		{"verify without token", "POST", "/ssf/verify", "", map[string]any{"stream_id": w.StreamID}, 401, "Bearer", ""},
		{"subjects invalid token", "POST", "/ssf/subjects:add", "nope", map[string]any{"stream_id": w.StreamID}, 401, "invalid_token", ""},
		{"poll invalid token", "POST", "/ssf/poll/" + w.StreamID, "nope", `{}`, 401, "invalid_token", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(c.method, c.path, c.token, c.body)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			var e map[string]string
			r.json(t, &e)
			if e["err"] == "" || e["description"] == "" {
				t.Errorf("error JSON lacks err/description: %s", r.body)
			}
			if c.errContains != "" && !strings.Contains(e["description"], c.errContains) {
				t.Errorf("description %q does not mention %q", e["description"], c.errContains)
			}
			if c.challenge != "" && !strings.Contains(r.header.Get("WWW-Authenticate"), c.challenge) {
				t.Errorf("WWW-Authenticate %q lacks %q", r.header.Get("WWW-Authenticate"), c.challenge)
			}
		})
	}
	// Nothing above changed the stream.
	var got streamWire
	h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil).json(t, &got)
	if got.Delivery.Method != MethodPollURN || got.Aud != acmeAud || len(got.EventsDelivered) != len(SupportedEvents) {
		t.Errorf("stream changed by refused requests: %+v", got)
	}
}

// TestDifferentCreatesGiveNewStreams: creates that differ (here only in
// description) make separate streams with their own poll URLs; the
// identical create is TestOIDFErrorCreateStreamWithDuplicateConfig.
func TestDifferentCreatesGiveNewStreams(t *testing.T) {
	h := newHarness(t)
	a := h.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked}, "description": "a"})
	b := h.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked}, "description": "b"})
	if a.StreamID == b.StreamID || a.Delivery.EndpointURL == b.Delivery.EndpointURL {
		t.Fatalf("second create reused id or poll URL: %s %s", a.Delivery.EndpointURL, b.Delivery.EndpointURL)
	}
	var list []streamWire
	h.do("GET", "/ssf/streams", acmeTok, nil).json(t, &list)
	if len(list) != 2 {
		t.Errorf("list has %d streams", len(list))
	}
	var other []streamWire
	h.do("GET", "/ssf/streams", globexTok, nil).json(t, &other)
	if len(other) != 0 {
		t.Errorf("another receiver sees %d streams", len(other))
	}
}

func TestPushStreamSecretNeverShown(t *testing.T) {
	const secret = "Bearer very-secret-header-value"
	h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
	r := h.do("POST", "/ssf/streams", acmeTok, map[string]any{"delivery": map[string]string{
		"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:1/events", "authorization_header": secret}})
	if r.status != 201 || strings.Contains(string(r.body), "very-secret") {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	var w streamWire
	r.json(t, &w)
	for _, path := range []string{"/ssf/streams", "/ssf/streams?stream_id=" + w.StreamID} {
		if b := h.do("GET", path, acmeTok, nil).body; strings.Contains(string(b), "very-secret") {
			t.Errorf("%s returns the authorization header", path)
		}
	}
	// PATCH without authorization_header keeps it, as the admin view shows.
	r = h.do("PATCH", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID,
		"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:2/events"}})
	if r.status != 200 || strings.Contains(string(r.body), "very-secret") {
		t.Fatalf("patch: %d %s", r.status, r.body)
	}
	s, err := h.tr.AdminStream(t.Context(), w.StreamID)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(s)
	if strings.Contains(string(b), "very-secret") || !s.HasAuthorizationHeader || s.EndpointURL != "http://127.0.0.1:2/events" {
		t.Errorf("admin view: %s", b)
	}
	all, _ := h.tr.AdminStreams(t.Context())
	b, _ = json.Marshal(all)
	if strings.Contains(string(b), "very-secret") {
		t.Error("admin list shows the secret")
	}
	// The header survives a restart (it is needed for push) but is still hidden.
	h.reopen(func(c *Config) { c.AllowPrivateEndpoints = true })
	s, _ = h.tr.AdminStream(t.Context(), w.StreamID)
	if !s.HasAuthorizationHeader {
		t.Error("authorization header lost on restart")
	}
	if st := h.tr.streams[w.StreamID]; st.rec.AuthorizationHeader != secret {
		t.Error("stored header differs")
	}
	// PUT without authorization_header removes it (a replace deletes what it omits).
	r = h.do("PUT", "/ssf/streams", acmeTok, map[string]any{"stream_id": w.StreamID,
		"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": "http://127.0.0.1:3/events"}})
	if r.status != 200 {
		t.Fatalf("put: %d %s", r.status, r.body)
	}
	if s, _ := h.tr.AdminStream(t.Context(), w.StreamID); s.HasAuthorizationHeader {
		t.Error("PUT without authorization_header kept it")
	}
}

func TestLegacyProfileAcceptsRISCPush(t *testing.T) {
	h := newHarness(t)
	r := h.do("POST", "/ssf/streams", legacyTok, map[string]any{"delivery": map[string]string{
		"method": MethodRISCPush, "endpoint_url": "https://rx.example/events"}})
	if r.status != 201 {
		t.Fatalf("legacy create: %d %s", r.status, r.body)
	}
	var w streamWire
	r.json(t, &w)
	if w.Delivery.Method != MethodRISCPush || w.Delivery.EndpointURL != "https://rx.example/events" {
		t.Errorf("delivery %+v", w.Delivery)
	}
	// The pre-SSF RISC member names are understood too.
	r = h.do("POST", "/ssf/streams", legacyTok, map[string]any{"delivery": map[string]string{
		"delivery_method": MethodRISCPush, "url": "https://rx.example/old"}})
	if r.status != 201 {
		t.Fatalf("RISC-shaped create: %d %s", r.status, r.body)
	}
	w = streamWire{}
	r.json(t, &w)
	if w.Delivery.Method != MethodRISCPush || w.Delivery.EndpointURL != "https://rx.example/old" {
		t.Errorf("delivery %+v", w.Delivery)
	}
}

func TestDescriptionTruncated(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DescriptionLimit = 10 })
	w := h.create(acmeTok, map[string]any{"description": "ééééééééééééééé"})
	if w.Description != "éééééééééé" {
		t.Errorf("description %q", w.Description)
	}
}

func TestVerification(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	// A poll stream gets no unsolicited verification at creation.
	if sets := h.pollAll(acmeTok, w); len(sets) != 0 {
		t.Fatalf("after create: %d SETs, want none on a poll stream", len(sets))
	}
	r := h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID, "state": "s-123"})
	if r.status != 204 {
		t.Fatalf("verify: %d %s", r.status, r.body)
	}
	sets := h.pollAll(acmeTok, w)
	if len(sets) != 1 {
		t.Fatalf("after verify: %d SETs", len(sets))
	}
	for jti, s := range sets {
		d := h.checkSET(s, acmeAud)
		h.independentVerify(s, acmeAud)
		if d.Type != EventVerification || d.Event["state"] != "s-123" || d.Claims["jti"] != jti {
			t.Errorf("verification %s %v", d.Type, d.Claims)
		}
		sub := d.Claims["sub_id"].(map[string]any)
		if sub["format"] != "opaque" || sub["id"] != w.StreamID {
			t.Errorf("sub_id %v", sub)
		}
	}
	// Too soon (the default interval is 5 s, enforced with 1 s of slack):
	// 429 with Retry-After.
	h.clock.Advance(2 * time.Second)
	r = h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID})
	if r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("rate limit: %d Retry-After %q", r.status, r.header.Get("Retry-After"))
	}
	h.clock.Advance(2 * time.Second)
	if r := h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID}); r.status != 204 {
		t.Fatalf("4 s later (interval less slack): %d %s", r.status, r.body)
	}
	// The limit survives a restart.
	h.reopen()
	if r := h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID}); r.status != 429 {
		t.Errorf("after restart: %d", r.status)
	}
}

func TestSubjectsEndpoints(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	body := map[string]any{"stream_id": w.StreamID, "subject": map[string]string{"format": "email", "email": "example.user@example.com"}, "verified": true}
	if r := h.do("POST", "/ssf/subjects:add", acmeTok, body); r.status != 200 {
		t.Fatalf("add: %d %s", r.status, r.body)
	}
	// Adding again and removing a subject nobody has answer the same.
	if r := h.do("POST", "/ssf/subjects:add", acmeTok, body); r.status != 200 {
		t.Fatalf("add again: %d", r.status)
	}
	if r := h.do("POST", "/ssf/subjects:remove", acmeTok, body); r.status != 204 {
		t.Fatalf("remove: %d %s", r.status, r.body)
	}
	unknown := map[string]any{"stream_id": w.StreamID, "subject": map[string]string{"format": "email", "email": "nobody@example.com"}}
	if r := h.do("POST", "/ssf/subjects:remove", acmeTok, unknown); r.status != 204 {
		t.Fatalf("remove unknown: %d", r.status)
	}
	own := map[string]any{"stream_id": w.StreamID, "subject": map[string]string{"format": "opaque", "id": w.StreamID}}
	if r := h.do("POST", "/ssf/subjects:remove", acmeTok, own); r.status != 400 {
		t.Errorf("removing the stream's own subject: %d", r.status)
	}
	if r := h.do("POST", "/ssf/subjects:add", acmeRead, body); r.status != 403 {
		t.Errorf("read-only add: %d", r.status)
	}
	// Subjects persist across a restart.
	h.reopen()
	st := h.tr.streams[w.StreamID]
	if len(st.added) != 0 || len(st.removed) != 2 {
		t.Errorf("after restart: added %d removed %d", len(st.added), len(st.removed))
	}
}

func TestStreamsSurviveRestart(t *testing.T) {
	h := newHarness(t)
	a := h.create(acmeTok, map[string]any{"description": "kept"})
	g := h.create(globexTok, map[string]any{})
	h.do("POST", "/ssf/status", globexTok, map[string]any{"stream_id": g.StreamID, "status": "paused"})
	h.do("DELETE", "/ssf/streams?stream_id="+g.StreamID, globexTok, nil)
	h.reopen()
	var got streamWire
	r := h.do("GET", "/ssf/streams?stream_id="+a.StreamID, acmeTok, nil)
	r.json(t, &got)
	if r.status != 200 || got.Description != "kept" || got.Delivery.EndpointURL != a.Delivery.EndpointURL {
		t.Errorf("after restart: %d %+v", r.status, got)
	}
	if r := h.do("GET", "/ssf/streams?stream_id="+g.StreamID, globexTok, nil); r.status != 404 {
		t.Errorf("deleted stream back after restart: %d", r.status)
	}
	// The reloaded stream is registered with the queue: polling works.
	if r := h.do("POST", a.Delivery.EndpointURL, acmeTok, `{"returnImmediately":true}`); r.status != 200 {
		t.Errorf("poll after restart: %d %s", r.status, r.body)
	}
}

func TestAdminOperations(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	h.pollAll(acmeTok, w) // nothing queued yet
	if _, err := h.tr.AdminStream(t.Context(), "nope"); err != ErrNotFound {
		t.Errorf("unknown: %v", err)
	}
	s, err := h.tr.AdminSetStatus(t.Context(), w.StreamID, StatusPaused, "maintenance")
	if err != nil || s.Status != StatusPaused || s.Reason != "maintenance" {
		t.Fatalf("pause: %v %+v", err, s)
	}
	if _, err := h.tr.AdminSetStatus(t.Context(), w.StreamID, "bogus", ""); err == nil {
		t.Error("bogus status accepted")
	}
	// Paused: only the announcement of the pause is handed out (SSF 1.0
	// §8.1.5), nothing else.
	sets := h.pollAll(acmeTok, w)
	if len(sets) != 1 {
		t.Errorf("paused stream handed out %d SETs, want only its stream-updated", len(sets))
	}
	for _, s := range sets {
		if d := h.checkSET(s, acmeAud); d.Type != EventStreamUpdated || d.Event["status"] != "paused" {
			t.Errorf("paused stream handed out %s %v", d.Type, d.Event)
		}
	}
	if _, err := h.tr.AdminSetStatus(t.Context(), w.StreamID, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Minute) // the pause announcement's lease ends
	var statuses []string
	for _, s := range h.pollAll(acmeTok, w) {
		d := h.checkSET(s, acmeAud)
		if d.Type == EventStreamUpdated {
			h.independentVerify(s, acmeAud)
			statuses = append(statuses, d.Event["status"].(string))
		}
	}
	slices.Sort(statuses)
	if !slices.Equal(statuses, []string{"enabled", "paused"}) {
		t.Errorf("stream-updated statuses %v, want paused and enabled", statuses)
	}
	if err := h.tr.AdminVerify(t.Context(), w.StreamID, "op"); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range h.pollAll(acmeTok, w) {
		if d := h.checkSET(s, acmeAud); d.Type == EventVerification && d.Event["state"] == "op" {
			found = true
		}
	}
	if !found {
		t.Error("admin verification not queued")
	}
	if err := h.tr.AdminDeleteStream(t.Context(), w.StreamID); err != nil {
		t.Fatal(err)
	}
	if err := h.tr.AdminDeleteStream(t.Context(), w.StreamID); err != ErrNotFound {
		t.Errorf("second delete: %v", err)
	}
	if r := h.do("GET", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil); r.status != http.StatusNotFound {
		t.Errorf("read after admin delete: %d", r.status)
	}
}

func TestStreamFailingPauses(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	since := h.clock.Now().Add(-72 * time.Hour)
	h.tr.StreamFailing(t.Context(), w.StreamID, since, "connection refused")
	var st statusWire
	h.do("GET", "/ssf/status?stream_id="+w.StreamID, acmeTok, nil).json(t, &st)
	if st.Status != "paused" || !strings.Contains(st.Reason, "failing since") {
		t.Fatalf("status %+v", st)
	}
	h.tr.StreamFailing(t.Context(), "unknown", since, "x") // no panic, nothing
	h.do("POST", "/ssf/status", acmeTok, map[string]any{"stream_id": w.StreamID, "status": "enabled"})
	found := false
	for _, s := range h.pollAll(acmeTok, w) {
		d := h.checkSET(s, acmeAud)
		if d.Type == EventStreamUpdated && d.Event["status"] == "paused" && strings.Contains(d.Event["reason"].(string), "failing") {
			found = true
		}
	}
	if !found {
		t.Error("no stream-updated SET explaining the pause")
	}
}

func TestScopes(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
	}{
		{"manage reads", "GET", "/ssf/streams", acmeTok, nil, 200},
		{"read reads", "GET", "/ssf/status?stream_id=" + w.StreamID, acmeRead, nil, 200},
		{"read polls", "POST", w.Delivery.EndpointURL, acmeRead, `{"returnImmediately":true}`, 200},
		{"poll scope polls", "POST", w.Delivery.EndpointURL, "acme-poll-token", `{"returnImmediately":true}`, 200},
		{"poll scope cannot read streams", "GET", "/ssf/streams", "acme-poll-token", nil, 403},
		{"read cannot verify", "POST", "/ssf/verify", acmeRead, map[string]any{"stream_id": w.StreamID}, 403},
		{"read cannot set status", "POST", "/ssf/status", acmeRead, map[string]any{"stream_id": w.StreamID, "status": "paused"}, 403},
		{"other scope cannot poll", "POST", w.Delivery.EndpointURL, "acme-odd-token", `{}`, 403},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := h.do(c.method, c.path, c.token, c.body)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			if c.status == 403 && !strings.Contains(r.header.Get("WWW-Authenticate"), `error="insufficient_scope"`) {
				t.Errorf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		})
	}
}

func TestRoutingErrorsAreSSFJSON(t *testing.T) {
	tr, _ := unitTransmitter(t)
	cases := []struct {
		method, path string
		status       int
	}{
		{"GET", "/ssf/nope", 404},
		{"GET", "/ssf/verify", 405},
		{"DELETE", "/ssf/status", 405},
		{"GET", "/ssf/poll/x", 405},
		{"POST", "/ssf/poll/", 404},
	}
	for _, c := range cases {
		t.Run(c.method+" "+c.path, func(t *testing.T) {
			rec := serve(tr, c.method, c.path, "", "")
			if rec.Code != c.status {
				t.Fatalf("status %d, want %d", rec.Code, c.status)
			}
			var e map[string]string
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil || e["err"] == "" {
				t.Errorf("body %s", rec.Body)
			}
		})
	}
}

// TestPollSetErrs: an RFC 8936 poll that only reports errors (maxEvents 0,
// Content-Language) answers 200 with no SETs, and the rejected SET is not
// handed out again. (Neither version of the OpenID suite sends setErrs;
// its modules are the TestOIDF tests, see oidf_test.go.)
func TestPollSetErrs(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	if r := h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID}); r.status != 204 {
		t.Fatalf("verify: %d %s", r.status, r.body)
	}
	sets := h.pollAll(acmeTok, w)
	if len(sets) != 1 {
		t.Fatalf("%d SETs", len(sets))
	}
	var jti string
	for k := range sets {
		jti = k
	}
	body := `{"maxEvents":0,"returnImmediately":true,"setErrs":{"` + jti + `":{"err":"invalid_state","description":"state mismatch"}}}`
	req, _ := http.NewRequest("POST", h.srv.URL+"/ssf/poll/"+w.StreamID, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+acmeTok)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Language", "en")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var pr struct {
		Sets map[string]string `json:"sets"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&pr); err != nil || resp.StatusCode != 200 || pr.Sets == nil || len(pr.Sets) != 0 {
		t.Fatalf("status %d sets %v err %v", resp.StatusCode, pr.Sets, err)
	}
	h.clock.Advance(2 * time.Minute)
	if again := h.pollAll(acmeTok, w); len(again) != 0 {
		t.Errorf("rejected SET handed out again: %d", len(again))
	}
}

// TestRandomIDShape: ids are 22 base64url characters, unique, and never
// start with a character a command line would read as a flag.
func TestRandomIDShape(t *testing.T) {
	seen := map[string]bool{}
	for range 20000 {
		id := randomID()
		if len(id) != 22 || id[0] == '-' || id[0] == '_' || strings.Trim(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
			t.Fatalf("id %q", id)
		}
		if seen[id] {
			t.Fatalf("id %q twice", id)
		}
		seen[id] = true
	}
}
