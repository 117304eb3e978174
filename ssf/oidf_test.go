package ssf

// The OpenID Foundation's SSF transmitter conformance suite, module by
// module, in the versions that matter: master ("HEAD") and release 5.1.39
// (the one behind published certifications). Each test replays what its
// module sends (headers, bodies, order and the spacing that matters) and
// checks what the module checks. Test names follow the module names:
//
//	openid-ssf-transmitter-metadata                 TestOIDFMetadata (oidf_test.go)
//	openid-ssf-stream-control-happy-path            TestOIDFStreamControlHappyPath
//	openid-ssf-transmitter-error-*                  TestOIDFErrorModules (oidf_errors_test.go)
//	…-error-create-stream-with-duplicate-config     TestOIDFErrorCreateStreamWithDuplicateConfig
//	openid-ssf-stream-subject-control               TestOIDFStreamSubjectControl
//	…-transmitter-stream-verification-push          TestOIDFVerificationPush (oidf_verification_test.go)
//	…-verification-error-push-no-auth               TestOIDFVerificationPushNoAuth
//	…-transmitter-stream-verification-poll-only     TestOIDFVerificationPollOnly
//	…-transmitter-stream-verification-poll-and-ack  TestOIDFVerificationPollAndAck
//	…-transmitter-stream-verification-ack-only      TestOIDFVerificationAckOnly
//	openid-ssf-transmitter-events (5.1.39), poll    TestOIDF5139EventsPoll
//	openid-ssf-transmitter-events (5.1.39), push    TestOIDF5139EventsPush
//	openid-ssf-transmitter-push-no-auth (5.1.39)    TestOIDF5139EventsPush (no-auth case)
//	openid-ssf-transmitter-stream-caep-interop      TestOIDFStreamCaepInterop (oidf_events_test.go)
//
// The suite's TLS checks (TLS 1.2 or later, 1.3 preferred) and the https
// endpoints behind a TLS terminator are served by cmd and proxy:
// cmd TestOIDFTLSVersions and cmd TestOIDFHTTPSBehindTerminator.

import (
	"bytes"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// The suite's request bodies.
const (
	suiteDescription = "Stream for OIDF Conformance Test-Suite"
	suiteInvalidHEAD = "Bearer invalid:6a0d3bb5-8a6b-4c8e-9d3e-6f1f1b2c3d4e"
	suiteInvalid5139 = "Bearer invalid"
)

// eventDeviceCompliance is a CAEP type HEAD asks for that the sidecar
// does not produce.
const eventDeviceCompliance = caepBase + "device-compliance-change"

// suiteEventsHEAD and suiteEvents5139 are the events_requested of each
// version (HEAD sends a Java Set, so the order varies: here reversed).
var (
	suiteEventsHEAD = []string{eventDeviceCompliance, EventCredentialChange, EventSessionRevoked}
	suiteEvents5139 = []string{EventSessionRevoked, EventCredentialChange}
)

// suiteResponse is one answer as the suite's endpoint call sees it.
type suiteResponse struct {
	status int
	header http.Header
	body   []byte
}

// suite sends a request the way AbstractOIDSSFTransmitterEndpointCall
// does: Accept: application/json, Content-Type: application/json on POST,
// PUT and PATCH, and the Authorization header verbatim (the token endpoint's
// token_type as returned, e.g. lower-case "bearer"). body is sent as is.
func (h *harness) suite(method, path, authorization, body string) suiteResponse {
	h.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	req.Header.Set("Accept", "application/json")
	if method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch {
		req.Header.Set("Content-Type", "application/json")
	}
	if authorization != "" {
		req.Header.Set("Authorization", authorization)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := suiteResponse{status: resp.StatusCode, header: resp.Header, body: b}
	// An error body that declares JSON must parse (the suite's JsonParser
	// throws otherwise).
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); resp.StatusCode >= 400 &&
		(mt == "application/json" || strings.HasSuffix(mt, "+json")) && !json.Valid(b) {
		h.t.Errorf("%s %s: %d declares %s but the body is not JSON: %s", method, path, resp.StatusCode, mt, b)
	}
	return r
}

// requireJSON is the suite's requireJsonResponseBody: a 2xx answer must
// carry a non-empty JSON object or array, decoded into into (if not nil).
func (r suiteResponse) requireJSON(t *testing.T, what string, into any) {
	t.Helper()
	if r.status/100 != 2 {
		t.Fatalf("%s: status %d: %s", what, r.status, r.body)
	}
	b := bytes.TrimSpace(r.body)
	if len(b) == 0 || (b[0] != '{' && b[0] != '[') || !json.Valid(b) {
		t.Fatalf("%s: empty or non-JSON 2xx body: %q", what, r.body)
	}
	if into != nil {
		if err := json.Unmarshal(b, into); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
}

func (r suiteResponse) expect(t *testing.T, what string, status ...int) {
	t.Helper()
	if !slices.Contains(status, r.status) {
		t.Fatalf("%s: status %d, want %v: %s", what, r.status, status, r.body)
	}
}

// createBody is OIDSSFCreateStreamConditionSequence's body. delivery is
// the delivery object (poll: {"method":"urn:ietf:rfc:8936"}).
func createBody(events []string, description string, delivery map[string]string) map[string]any {
	return map[string]any{"description": description, "events_requested": events, "delivery": delivery}
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

var pollDelivery = map[string]string{"method": MethodPollURN}

// suiteCleanUp is cleanUpStreamConfigurationIfNecessary: read without a
// stream_id (200 or 404), and when the answer is a non-empty array delete
// its first element (204 or 404).
func (h *harness) suiteCleanUp(auth string) {
	h.t.Helper()
	r := h.suite("GET", "/ssf/streams", auth, "")
	r.expect(h.t, "clean up read", 200, 404)
	var list []map[string]any
	if json.Unmarshal(r.body, &list) == nil && len(list) > 0 {
		id, _ := list[0]["stream_id"].(string)
		h.suite("DELETE", "/ssf/streams?stream_id="+id, auth, "").expect(h.t, "clean up delete", 204, 404)
	}
}

// checkStreamConfig runs the create/read checks: required fields, iss,
// aud, a standard delivery method, min_verification_interval advertised
// and events_supported present with only standard types, and at least one
// CAEP interoperability event.
func (h *harness) checkStreamConfig(what string, m map[string]any) {
	t := h.t
	t.Helper()
	for _, f := range []string{"stream_id", "iss", "aud", "events_delivered", "delivery"} {
		if _, ok := m[f]; !ok {
			t.Errorf("%s: required %s missing: %v", what, f, m)
		}
	}
	if strings.TrimSuffix(m["iss"].(string), "/") != strings.TrimSuffix(h.issuer, "/") {
		t.Errorf("%s: iss %v, want %s", what, m["iss"], h.issuer)
	}
	d, _ := m["delivery"].(map[string]any)
	if d["method"] != MethodPushURN && d["method"] != MethodPollURN {
		t.Errorf("%s: delivery.method %v", what, d["method"])
	}
	if v, ok := m["min_verification_interval"].(float64); !ok || v <= 0 || v > 120 {
		t.Errorf("%s: min_verification_interval %v, want advertised, at most 120", what, m["min_verification_interval"])
	}
	sup, ok := m["events_supported"].([]any)
	if !ok || len(sup) == 0 {
		t.Fatalf("%s: events_supported missing: %v", what, m)
	}
	caep := false
	for _, e := range sup {
		s, _ := e.(string)
		if !strings.HasPrefix(s, "https://schemas.openid.net/secevent/") {
			t.Errorf("%s: non-standard event type %q", what, s)
		}
		caep = caep || s == EventSessionRevoked || s == EventCredentialChange || s == eventDeviceCompliance
	}
	if !caep {
		t.Errorf("%s: no CAEP interoperability event in events_supported", what)
	}
}

// TestOIDFMetadata is openid-ssf-transmitter-metadata (caep_interop): the
// document at the RFC 8615 location (HEAD) and, with issuer https://h and
// suffix /ssf, the one 5.1.39 builds; issuer, https endpoints, required
// fields, spec_version, default_subjects, authorization_schemes with
// urn:ietf:rfc:6749, delivery methods, no empty array, and a JWKS with
// public keys only.
func TestOIDFMetadata(t *testing.T) {
	tr, _ := unitTransmitter(t, func(c *Config) { c.OAuthIssuer = "https://auth.example/application/o/ssf/" })
	rec := serve(tr, "GET", "/.well-known/ssf-configuration/ssf", "", "")
	if rec.Code != 200 {
		t.Fatalf("discovery: %d", rec.Code)
	}
	if mt, _, _ := mime.ParseMediaType(rec.Header().Get("Content-Type")); mt != "application/json" {
		t.Errorf("content type %q", rec.Header().Get("Content-Type"))
	}
	var m map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &m); err != nil {
		t.Fatal(err)
	}
	if m["issuer"] != "https://tr.example/ssf" {
		t.Errorf("issuer %v", m["issuer"])
	}
	for _, f := range []string{"jwks_uri", "configuration_endpoint", "status_endpoint", "add_subject_endpoint",
		"remove_subject_endpoint", "verification_endpoint"} {
		if s, _ := m[f].(string); !strings.HasPrefix(s, "https://") {
			t.Errorf("%s %q is not https", f, m[f])
		}
	}
	if m["spec_version"] != "1_0" || (m["default_subjects"] != "ALL" && m["default_subjects"] != "NONE") {
		t.Errorf("spec_version %v default_subjects %v", m["spec_version"], m["default_subjects"])
	}
	schemes, _ := m["authorization_schemes"].([]any)
	found := false
	for _, s := range schemes {
		urn, _ := s.(map[string]any)["spec_urn"].(string)
		if !strings.HasPrefix(urn, "urn:") {
			t.Errorf("spec_urn %q", urn)
		}
		found = found || urn == "urn:ietf:rfc:6749"
	}
	if !found {
		t.Errorf("authorization_schemes lack urn:ietf:rfc:6749: %v", schemes)
	}
	if dm, _ := m["delivery_methods_supported"].([]any); !slices.Contains(dm, any(MethodPushURN)) || !slices.Contains(dm, any(MethodPollURN)) {
		t.Errorf("delivery_methods_supported %v", dm)
	}
	for k, v := range m {
		if a, ok := v.([]any); ok && len(a) == 0 {
			t.Errorf("%s is an empty array", k)
		}
	}
	jw := serve(tr, "GET", "/ssf/jwks.json", "", "")
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(jw.Body.Bytes(), &set); err != nil || jw.Code != 200 || len(set.Keys) == 0 {
		t.Fatalf("jwks: %d %s", jw.Code, jw.Body)
	}
	for _, k := range set.Keys {
		for _, private := range []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"} {
			if _, ok := k[private]; ok {
				t.Errorf("JWKS key carries %q", private)
			}
		}
	}
	// 5.1.39 appends /.well-known/ssf-configuration to the issuer it is
	// given: with issuer https://tr.example and suffix /ssf it reads the
	// same RFC 8615 location, and the issuer it compares is the one above.
	if rec := serve(tr, "GET", "/.well-known/ssf-configuration"+"/ssf", "", ""); rec.Code != 200 {
		t.Errorf("5.1.39 location: %d", rec.Code)
	}
}

// TestOIDFStreamControlHappyPath is openid-ssf-stream-control-happy-path
// for push and poll, HEAD and 5.1.39: create, read, full-body PATCH and
// PUT without a query string (a poll delivery has no endpoint_url), read
// status, status updates enabled (a no-op), paused, disabled with
// ?stream_id= in the query, delete of the disabled stream, and the second
// delete of the clean-up. The token comes back from the token endpoint as
// "bearer", in lower case.
func TestOIDFStreamControlHappyPath(t *testing.T) {
	const auth = "bearer " + acmeTok
	for _, c := range []struct {
		name     string
		events   []string
		delivery map[string]string
	}{
		{"HEAD poll", suiteEventsHEAD, pollDelivery},
		{"HEAD push", suiteEventsHEAD, map[string]string{"method": MethodPushURN, "endpoint_url": "https://suite.example/test/a/x/ssf-push",
			"authorization_header": "Bearer push_token_8d6e2f4a-3c1b-4e8f-9a7d-2b5c6e1f0a9b"}},
		{"5.1.39 poll", suiteEvents5139, pollDelivery},
		{"5.1.39 push", suiteEvents5139, map[string]string{"method": MethodPushURN, "endpoint_url": "https://suite.example/test/a/x/ssf-push"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t)
			h.suiteCleanUp(auth)
			var created map[string]any
			r := h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(c.events, suiteDescription, c.delivery)))
			r.expect(t, "create", 201)
			r.requireJSON(t, "create", &created)
			h.checkStreamConfig("create", created)
			id := created["stream_id"].(string)

			var read map[string]any
			h.suite("GET", "/ssf/streams?stream_id="+id, auth, "").requireJSON(t, "read", &read)
			h.checkStreamConfig("read", read)
			// The clean up's read without stream_id lists the same.
			var list []map[string]any
			h.suite("GET", "/ssf/streams", auth, "").requireJSON(t, "list", &list)
			if len(list) != 1 {
				t.Fatalf("list has %d streams", len(list))
			}
			h.checkStreamConfig("list", list[0])

			for _, m := range []struct{ method, description string }{
				{"PATCH", "Updated Stream for Receiver OIDF Conformance Test-Suite"},
				{"PUT", "Replaced Stream for Receiver OIDF Conformance Test-Suite"},
			} {
				body := createBody(c.events, m.description, c.delivery)
				body["stream_id"] = id
				var got map[string]any
				r := h.suite(m.method, "/ssf/streams", auth, jsonBody(body))
				r.expect(t, m.method, 200)
				r.requireJSON(t, m.method, &got)
				if got["iss"] != h.issuer || got["description"] != m.description {
					t.Errorf("%s: %v", m.method, got)
				}
				h.checkStreamConfig(m.method, got)
			}

			r = h.suite("GET", "/ssf/status?stream_id="+id, auth, "")
			r.expect(t, "read status", 200)
			for _, s := range []string{StatusEnabled, StatusPaused, StatusDisabled} {
				var got map[string]any
				r := h.suite("POST", "/ssf/status?stream_id="+id, auth,
					jsonBody(map[string]string{"stream_id": id, "status": s, "reason": "Updated Stream status for OIDF test to " + s}))
				r.expect(t, "status "+s, 200)
				r.requireJSON(t, "status "+s, &got)
				if got["status"] != s {
					t.Errorf("status %s echoed %v", s, got["status"])
				}
			}
			h.suite("DELETE", "/ssf/streams?stream_id="+id, auth, "").expect(t, "delete disabled stream", 204)
			h.suite("DELETE", "/ssf/streams?stream_id="+id, auth, "").expect(t, "second delete", 404)
		})
	}
}

// TestOIDFStreamSubjectControl is openid-ssf-stream-subject-control: add
// an email subject (200) and remove it (204), nothing else accepted.
func TestOIDFStreamSubjectControl(t *testing.T) {
	const auth = "Bearer " + acmeTok
	h := newHarness(t)
	h.suiteCleanUp(auth)
	var created map[string]any
	h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(suiteEventsHEAD, suiteDescription, pollDelivery))).requireJSON(t, "create", &created)
	id := created["stream_id"].(string)
	subject := map[string]any{"stream_id": id, "subject": map[string]string{"format": "email", "email": "example.user@example.com"}}
	add := map[string]any{"stream_id": id, "subject": subject["subject"], "verified": true}
	h.suite("POST", "/ssf/subjects:add", auth, jsonBody(add)).expect(t, "add subject", 200)
	h.suite("POST", "/ssf/subjects:remove", auth, jsonBody(subject)).expect(t, "remove subject", 204)
	h.suite("DELETE", "/ssf/streams?stream_id="+id, auth, "").expect(t, "delete", 204)
}
