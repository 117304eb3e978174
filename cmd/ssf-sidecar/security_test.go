package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// System-level security checks. What the packages already prove on their
// own is not repeated here: token forms (ssf TestOAuthTokens, TestScopes),
// SSRF destination rules (outbox TestDestinationChecks,
// TestCheckEndpointURL), admin guard (ssf/admin TestAdminGuard, cmd
// TestDashboardRefusesCrossSite), forged cookies and per-IP limits (tap
// TestSecretKeyVerification, TestRateLimitPerIP), logs (cmd
// TestLogsHoldNoSecrets).

// adminGet reads an admin API path with the admin token.
func adminGet(t *testing.T, w *demoWorld, token, path string) []byte {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, w.AdminURL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("admin GET %s: %d %s", path, resp.StatusCode, b)
	}
	return b
}

// TestSecretsNeverStoredOrServed plants known secrets (receiver tokens, a
// push authorization_header, the admin token, authentik's token and
// secret key, a password, a session cookie), runs the scripted traffic,
// and scans every place they could leak besides the logs: /metrics, the
// admin API and dashboard JSON, SSF responses, exported spans, and the raw
// bbolt file. The signing key file is 0600 and the data dir 0700.
func TestSecretsNeverStoredOrServed(t *testing.T) {
	const adminToken = "planted-admin-token-5d0c2b9e"
	const authz = "Bearer planted-push-authorization-3e7f11"
	const password = "planted-password-dave-31"
	rec := tracetest.NewSpanRecorder()
	dataDir := filepath.Join(t.TempDir(), "data")
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: dataDir, TracerProvider: testTracerProvider(t, rec),
		Mutate: func(c *sidecar.Config) { c.AdminToken = adminToken }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	if _, err := runDemoScript(ctx, w, io.Discard, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	var st struct {
		StreamID string `json:"stream_id"`
	}
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": []string{ssf.EventSessionRevoked},
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL(), "authorization_header": authz}}, &st); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "dave", Email: "dave@example.com", Password: password}); err != nil {
		t.Fatal(err)
	}
	n := len(w.Receiver.Received())
	cookie := w.logInAndOut(t, "dave", password)
	// verification of the new stream, the logout on both push streams
	if err := w.Receiver.WaitFor(ctx, n+3, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// Everything that answers: SSF, admin API, dashboard, metrics.
	var served bytes.Buffer
	for _, p := range []string{"/ssf/streams", "/ssf/streams?stream_id=" + st.StreamID, "/ssf/status?stream_id=" + st.StreamID} {
		var out json.RawMessage
		if _, err := w.SSFCall(ctx, http.MethodGet, p, nil, &out); err != nil {
			t.Fatal(err)
		}
		served.Write(out)
	}
	for _, p := range []string{"/admin/streams", "/admin/streams/" + st.StreamID, "/admin/keys", "/admin/outbox",
		"/admin/outbox/" + st.StreamID, "/admin/outbox/" + st.StreamID + "/history", "/admin/outbox/" + st.StreamID + "/dlq",
		"/admin/dashboard/api/overview", "/admin/dashboard/api/streams/" + st.StreamID + "/timeline", "/metrics", "/healthz"} {
		served.Write(adminGet(t, w, adminToken, p))
	}
	if !strings.Contains(served.String(), st.StreamID) {
		t.Fatal("the responses do not even name the stream: the scan would prove nothing")
	}
	w.Close()
	// Spans, with every attribute, event and status.
	var spans strings.Builder
	for _, s := range rec.Ended() {
		fmt.Fprintf(&spans, "%s %v %v %v\n", s.Name(), s.Attributes(), s.Events(), s.Status())
	}
	if rec.Ended() == nil {
		t.Fatal("no spans recorded")
	}
	db, err := os.ReadFile(filepath.Join(dataDir, "ssf-sidecar.db"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"receiver token":        demoReceiverToken,
		"admin token":           adminToken,
		"authentik token":       w.AK.AdminToken(),
		"authentik secret key":  w.AK.SecretKey(),
		"authorization_header":  strings.TrimPrefix(authz, "Bearer "),
		"password":              password,
		"script password":       "alice-password-2",
		"session cookie":        cookie,
		"session cookie (part)": cookie[len(cookie)/2:],
	}
	places := map[string][]byte{"responses": served.Bytes(), "spans": []byte(spans.String()), "bbolt file": db}
	for what, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("%s %q is too short: the scan would prove nothing", what, s)
		}
		for where, b := range places {
			if bytes.Contains(b, []byte(s)) {
				t.Errorf("the %s holds the %s", where, what)
			}
		}
	}

	// File modes: the data dir 0700, the generated key 0600.
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if m := fi.Mode().Perm(); m != 0o700 {
		t.Errorf("data dir mode %o, want 700", m)
	}
	if fi, err := os.Stat(filepath.Join(dataDir, "ssf-sidecar.db")); err != nil {
		t.Error(err)
	} else if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("bbolt file mode %o: readable by others", fi.Mode().Perm())
	}
	keys := 0
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		b, _ := os.ReadFile(filepath.Join(dataDir, e.Name()))
		if !bytes.Contains(b, []byte("PRIVATE KEY")) {
			continue
		}
		keys++
		info, _ := e.Info()
		if m := info.Mode().Perm(); m != 0o600 {
			t.Errorf("key file %s mode %o, want 600", e.Name(), m)
		}
		// The private key itself is never in a response, span or the store.
		body := strings.Join(strings.Split(string(b), "\n")[1:3], "")
		for where, p := range places {
			if bytes.Contains(p, []byte(body)) {
				t.Errorf("the %s holds the signing key", where)
			}
		}
	}
	if keys == 0 {
		t.Errorf("no generated key file in the data dir (%d entries)", len(entries))
	}
}

// TestSystemIsolationMatrix: receiver B calls every management and poll
// endpoint on receiver A's stream and gets 404; a read-only token of A
// cannot change anything; afterwards A's stream, its status and its queued
// SET are exactly as before.
func TestSystemIsolationMatrix(t *testing.T) {
	const ownerTok, ownerRead, intruderTok = "owner-manage-token-0123456789ab", "owner-read-token-0123456789abcd", "intruder-token-0123456789abcdef"
	receivers := []ssf.Receiver{
		{Name: "owner", Audience: "owner", SubjectFormat: ssf.SubjectFormatEmail, Profile: ssf.ProfileSSF, Tokens: []ssf.Token{
			{Value: ownerTok, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}, {Value: ownerRead, Scopes: []string{ssf.ScopeRead}}}},
		{Name: "intruder", Audience: "intruder", SubjectFormat: ssf.SubjectFormatEmail, Profile: ssf.ProfileSSF, Tokens: []ssf.Token{
			{Value: intruderTok, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}},
	}
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: receivers})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	code, body := w.call(t, ownerTok, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": []string{ssf.EventSessionRevoked}, "description": "owner's"})
	if code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, body)
	}
	var a struct {
		StreamID string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	_ = json.Unmarshal(body, &a)
	if code, body := w.call(t, intruderTok, http.MethodPost, "/ssf/streams", map[string]any{}); code != http.StatusCreated {
		t.Fatalf("intruder's own stream: %d %s", code, body)
	}
	// A SET waiting in A's queue: a requested verification (a poll stream
	// gets none unsolicited at creation).
	if code, body := w.call(t, ownerTok, http.MethodPost, "/ssf/verify", map[string]any{"stream_id": a.StreamID, "state": "before"}); code != http.StatusNoContent {
		t.Fatalf("verify: %d %s", code, body)
	}
	snapshot := func() string {
		_, s1 := w.call(t, ownerTok, http.MethodGet, "/ssf/streams?stream_id="+a.StreamID, nil)
		_, s2 := w.call(t, ownerTok, http.MethodGet, "/ssf/status?stream_id="+a.StreamID, nil)
		st, err := w.Sidecar.Outbox().AllStats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var backlog string
		for _, s := range st {
			if s.StreamID == a.StreamID {
				backlog = fmt.Sprintf("backlog=%d", s.Backlog)
			}
		}
		return string(s1) + string(s2) + backlog
	}
	before := snapshot()
	if !strings.Contains(before, "backlog=1") {
		t.Fatalf("expected one queued SET: %s", before)
	}
	id := a.StreamID
	poll := strings.TrimPrefix(a.Delivery.EndpointURL, w.Front)
	subject := map[string]string{"format": "email", "email": "x@example.com"}
	calls := []struct {
		name, method, path string
		body               any
	}{
		{"read", http.MethodGet, "/ssf/streams?stream_id=" + id, nil},
		{"update", http.MethodPatch, "/ssf/streams", map[string]any{"stream_id": id, "description": "taken"}},
		{"replace", http.MethodPut, "/ssf/streams", map[string]any{"stream_id": id, "delivery": map[string]string{"method": ssf.MethodPollURN}, "description": "taken"}},
		{"delete", http.MethodDelete, "/ssf/streams?stream_id=" + id, nil},
		{"status read", http.MethodGet, "/ssf/status?stream_id=" + id, nil},
		{"status change", http.MethodPost, "/ssf/status", map[string]any{"stream_id": id, "status": "disabled"}},
		{"subject add", http.MethodPost, "/ssf/subjects:add", map[string]any{"stream_id": id, "subject": subject}},
		{"subject remove", http.MethodPost, "/ssf/subjects:remove", map[string]any{"stream_id": id, "subject": subject}},
		{"verify", http.MethodPost, "/ssf/verify", map[string]any{"stream_id": id}},
		{"poll", http.MethodPost, poll, map[string]any{"returnImmediately": true, "maxEvents": 10}},
	}
	for _, c := range calls {
		if code, body := w.call(t, intruderTok, c.method, c.path, c.body); code != http.StatusNotFound {
			t.Errorf("intruder %s: %d %s, want 404", c.name, code, body)
		}
		if c.method == http.MethodGet || c.name == "poll" {
			continue // reading is what a read-only token is for
		}
		if code, body := w.call(t, ownerRead, c.method, c.path, c.body); code != http.StatusForbidden {
			t.Errorf("read-only token %s: %d %s, want 403", c.name, code, body)
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("the stream changed:\nbefore %s\nafter  %s", before, after)
	}
	// The queued SETs are still there for the owner.
	got := w.pollAll(t, ownerTok, a.Delivery.EndpointURL)
	states := map[any]bool{}
	for _, g := range got {
		if g.Event != "verification" || g.Claims["aud"] != "owner" {
			t.Errorf("owner polled %s for %v", g.Event, g.Claims["aud"])
		}
		ev, _ := g.Claims["events"].(map[string]any)
		for _, b := range ev {
			m, _ := b.(map[string]any)
			states[m["state"]] = true
		}
	}
	if len(got) != 1 || !states["before"] {
		t.Errorf("owner polled %d SETs (states %v) after the intrusion attempts, want the verification", len(got), states)
	}
}
