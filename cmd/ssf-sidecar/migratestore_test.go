package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// migrationReceiver is a push endpoint that refuses for good the first
// SET it sees, answers 503 while down, and records what it accepted.
type migrationReceiver struct {
	mu       sync.Mutex
	down     bool
	refused  string            // jti of the dead-lettered SET
	seen     map[string]bool   // every jti offered
	accepted map[string]string // jti → Authorization header
}

func (m *migrationReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	jti := jtiOf(string(body))
	m.mu.Lock()
	defer m.mu.Unlock()
	m.seen[jti] = true
	switch {
	case m.refused == "" || m.refused == jti:
		m.refused = jti
		w.WriteHeader(http.StatusBadRequest)
		io.WriteString(w, `{"err":"invalid_request","description":"refused for the test"}`)
	case m.down:
		w.WriteHeader(http.StatusServiceUnavailable)
	default:
		m.accepted[jti] = r.Header.Get("Authorization")
		w.WriteHeader(http.StatusAccepted)
	}
}

func jtiOf(compact string) string {
	parts := strings.Split(strings.TrimSpace(compact), ".")
	if len(parts) != 3 {
		return ""
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c struct {
		JTI string `json:"jti"`
	}
	_ = json.Unmarshal(b, &c)
	return c.JTI
}

func (m *migrationReceiver) snapshot() (seen map[string]bool, accepted map[string]string, refused string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen, accepted = map[string]bool{}, map[string]string{}
	for k, v := range m.seen {
		seen[k] = v
	}
	for k, v := range m.accepted {
		accepted[k] = v
	}
	return seen, accepted, m.refused
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func currentKID(t *testing.T, w *demoWorld) string {
	t.Helper()
	code, body := w.call(t, "", http.MethodGet, "/ssf/jwks.json", nil)
	var set struct {
		Keys []struct {
			KID string `json:"kid"`
		} `json:"keys"`
	}
	if code != 200 || json.Unmarshal(body, &set) != nil || len(set.Keys) == 0 {
		t.Fatalf("jwks: %d %s", code, body)
	}
	return set.Keys[0].KID
}

// TestMigrateStoreToPostgreSQL runs a sidecar on bbolt with a push stream
// (holding an authorization_header) and a poll stream, leaves SETs
// undelivered and one in the dead letter, stops it, copies the data dir
// with migrate-store, and serves on PostgreSQL: the same streams answer,
// the JWKS has the same key, the backlog is delivered with its original
// jtis and the original authorization_header, and the dead letter is there.
func TestMigrateStoreToPostgreSQL(t *testing.T) {
	url, schema := pgtest.Schema(t)
	ctx := context.Background()
	const secret = "Bearer push-secret-kept-across-the-move-0001"
	rx := &migrationReceiver{down: true, seen: map[string]bool{}, accepted: map[string]string{}}
	rxSrv := httptest.NewServer(rx)
	defer rxSrv.Close()
	noLimit := func(c *sidecar.Config) { c.MinVerification = time.Second }

	dir := t.TempDir()
	w1, err := startDemoWorld(ctx, demoOptions{DataDir: dir, Receivers: systemReceivers(), Mutate: noLimit})
	if err != nil {
		t.Fatal(err)
	}
	var push, poll struct {
		StreamID string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	if _, err := w1.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": rxSrv.URL, "authorization_header": secret},
		"events_requested": []string{ssf.EventSessionRevoked},
	}, &push); err != nil || push.StreamID == "" {
		t.Fatalf("create push stream: %v", err)
	}
	code, body := w1.call(t, pollReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPollURN},
		"events_requested": []string{ssf.EventSessionRevoked},
	})
	if code != http.StatusOK && code != http.StatusCreated || json.Unmarshal(body, &poll) != nil || poll.StreamID == "" {
		t.Fatalf("create poll stream: %d %s", code, body)
	}
	// The creation-time verification is refused for good (dead letter);
	// two logouts wait while the receiver is down.
	waitUntil(t, "the dead-lettered SET", func() bool { _, _, r := rx.snapshot(); return r != "" })
	if _, err := w1.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "alice-password-1"}); err != nil {
		t.Fatal(err)
	}
	w1.logInAndOut(t, "alice", "alice-password-1")
	w1.logInAndOut(t, "alice", "alice-password-1")
	// In order: the first of them is offered and retried, the other waits
	// behind it.
	waitUntil(t, "an undelivered SET offered", func() bool { s, _, _ := rx.snapshot(); return len(s) >= 2 })
	kid := currentKID(t, w1)
	keyFile := filepath.Join(t.TempDir(), "enc.key")
	if err := os.WriteFile(keyFile, []byte(testEncryptionKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	args := []string{"migrate-store", "--from-data-dir", dir, "--to-database-url", url, "--database-schema", schema, "--encryption-key-file", keyFile, "--json"}
	// While the sidecar runs, its data dir is refused.
	if c := run(ctx, args, &out, &errb); c == 0 || !strings.Contains(errb.String(), "refusing to copy a live data dir") ||
		!strings.Contains(errb.String(), "is locked by") {
		t.Fatalf("migrate-store on a live data dir: exit %d, %s", c, errb.String())
	}
	out.Reset()
	errb.Reset()
	w1.Close()
	seen, _, refused := rx.snapshot()

	if c := run(ctx, args, &out, &errb); c != 0 {
		t.Fatalf("migrate-store exit %d: %s", c, errb.String())
	}
	var rep migrateStoreReport
	if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
		t.Fatalf("report %q: %v", out.String(), err)
	}
	if rep.Streams != 2 || rep.SigningKeys != 1 || rep.CurrentKID != kid || rep.DeadLetter != 1 || rep.Queued < 2 || rep.SETs < 3 {
		t.Fatalf("report %+v: want 2 streams, key %s current, 1 dead, ≥2 queued", rep, kid)
	}
	if strings.Contains(out.String()+errb.String(), secret) || strings.Contains(out.String()+errb.String(), "push-secret") {
		t.Fatal("migrate-store printed the push secret")
	}
	// A second run refuses: the schema holds streams now.
	out.Reset()
	errb.Reset()
	if c := run(ctx, args, &out, &errb); c == 0 || !strings.Contains(errb.String(), "already holds streams") {
		t.Fatalf("second migrate-store: exit %d, %s", c, errb.String())
	}

	rx.mu.Lock()
	rx.down = false
	rx.mu.Unlock()
	w2, err := startDemoWorld(ctx, demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(), Mutate: func(c *sidecar.Config) {
		noLimit(c)
		c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = url, schema, testEncryptionKey
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer w2.Close()
	if got := currentKID(t, w2); got != kid {
		t.Fatalf("JWKS on PostgreSQL leads with %s, want the migrated %s", got, kid)
	}
	for _, s := range []struct{ token, id string }{{demoReceiverToken, push.StreamID}, {pollReceiverToken, poll.StreamID}} {
		if code, body := w2.call(t, s.token, http.MethodGet, "/ssf/streams?stream_id="+s.id, nil); code != 200 || !strings.Contains(string(body), s.id) {
			t.Fatalf("stream %s on PostgreSQL: %d %s", s.id, code, body)
		}
	}
	waitUntil(t, "the backlog delivered", func() bool { _, acc, _ := rx.snapshot(); return len(acc) >= 2 })
	w2.settle(t)
	_, acc, _ := rx.snapshot()
	if len(acc) != 2 {
		t.Fatalf("receiver accepted %d SETs after the move, want the 2 queued logouts", len(acc))
	}
	for jti := range seen {
		if jti != refused && acc[jti] == "" {
			t.Fatalf("SET %s, offered before the move, was not delivered after it with its jti (got %v)", jti, acc)
		}
	}
	for jti, h := range acc {
		if h != secret {
			t.Fatalf("SET %s delivered with another Authorization header than the original", jti)
		}
	}
	if _, ok := acc[refused]; ok {
		t.Fatalf("the dead-lettered SET %s was delivered", refused)
	}
	// The poll stream's backlog: signed with the migrated key. (The
	// demo's issuer follows its port, so the SETs are read here rather
	// than by the demo receiver of the second world.)
	code, body = w2.call(t, pollReceiverToken, http.MethodPost, "/ssf/poll/"+poll.StreamID, map[string]any{"returnImmediately": true, "maxEvents": 10})
	var pr struct {
		Sets map[string]string `json:"sets"`
	}
	if code != 200 || json.Unmarshal(body, &pr) != nil {
		t.Fatalf("poll: %d %s", code, body)
	}
	events := ""
	for jti, compact := range pr.Sets {
		if jtiOf(compact) != jti {
			t.Fatalf("polled SET keyed %s holds jti %s", jti, jtiOf(compact))
		}
		parts := strings.Split(compact, ".")
		h, _ := base64.RawURLEncoding.DecodeString(parts[0])
		p, _ := base64.RawURLEncoding.DecodeString(parts[1])
		if !strings.Contains(string(h), `"kid":"`+kid+`"`) {
			t.Fatalf("polled SET signed with another key: %s", h)
		}
		events += string(p)
	}
	if len(pr.Sets) != 2 || strings.Count(events, ssf.EventSessionRevoked) != 2 {
		t.Fatalf("polled %d SETs from the migrated poll stream, want the 2 logouts: %s", len(pr.Sets), events)
	}
	req, _ := http.NewRequest(http.MethodGet, w2.AdminURL+"/admin/outbox/"+push.StreamID+"/dlq", nil)
	req.Header.Set("Authorization", "Bearer "+w2.Sidecar.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	dl, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(dl), refused) {
		t.Fatalf("dead letter on PostgreSQL: %d %s, want %s", resp.StatusCode, dl, refused)
	}
}
