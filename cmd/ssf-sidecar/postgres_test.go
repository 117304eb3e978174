package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

const testEncryptionKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// TestSystemOnPostgreSQL serves with --database-url: a receiver creates a
// push stream, a user logs out through the sidecar, and the receiver gets
// the session-revoked SET; the state is in the database schema, not in a
// bbolt file.
func TestSystemOnPostgreSQL(t *testing.T) {
	url, schema := pgtest.Schema(t)
	dir := t.TempDir()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: dir, Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: func(c *sidecar.Config) {
			c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = url, schema, testEncryptionKey
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil { // the verification SET
		t.Fatal(err)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "alice-password-1"}); err != nil {
		t.Fatal(err)
	}
	w.logInAndOut(t, "alice", "alice-password-1")
	if err := w.Receiver.WaitFor(ctx, 2, 20*time.Second); err != nil {
		t.Fatalf("%v: got %v", err, summarize(w.Receiver.Received()))
	}
	w.settle(t)
	// One SET for the logout, whichever source (traffic or event API)
	// came first: the subject then holds the session too, or only the user.
	got := summarize(w.Receiver.Received())
	n := 0
	for _, g := range got {
		if strings.HasPrefix(g, "session-revoked/user/") && strings.HasSuffix(g, "user=alice@example.com") {
			n++
		}
	}
	if n != 1 || len(got) != 1 {
		t.Fatalf("receiver got %v, want one session-revoked SET for alice", got)
	}
	for _, s := range w.Receiver.Received() {
		if s.Event == "session-revoked" {
			w.independentVerify(t, s.Compact, "https://push.rx.example/")
		}
	}
	for _, name := range []string{"ssf-sidecar.db", ssf.SecretKeyFile} {
		if _, err := os.Stat(filepath.Join(dir, name)); !os.IsNotExist(err) {
			t.Errorf("%s was created in the data dir with --database-url: %v", name, err)
		}
	}
	if pems, _ := filepath.Glob(filepath.Join(dir, "*.pem")); len(pems) != 0 {
		t.Errorf("signing key files in the data dir with --database-url: %v", pems)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var sets int
	q := "SELECT count(*) FROM " + pgx.Identifier{schema, "kv"}.Sanitize() + " WHERE bucket = $1"
	if err := conn.QueryRow(ctx, q, []byte("outbox.sets")).Scan(&sets); err != nil || sets < 2 {
		t.Fatalf("%d SET records in the database (%v), want the verification and the logout", sets, err)
	}
	var streams int
	if err := conn.QueryRow(ctx, q, []byte(ssf.BucketStreams)).Scan(&streams); err != nil || streams != 1 {
		t.Fatalf("%d stream records in the database (%v), want 1", streams, err)
	}
	// Nothing secret in clear: the signing key is sealed.
	var clear int
	cq := "SELECT count(*) FROM " + pgx.Identifier{schema, "kv"}.Sanitize() + " WHERE position($1::bytea in value) > 0"
	if err := conn.QueryRow(ctx, cq, []byte("PRIVATE KEY")).Scan(&clear); err != nil || clear != 0 {
		t.Fatalf("%d records hold a private key in clear (%v)", clear, err)
	}
	var sealed int
	if err := conn.QueryRow(ctx, q, []byte(ssf.BucketKeys)).Scan(&sealed); err != nil || sealed != 1 {
		t.Fatalf("%d signing key records (%v), want 1", sealed, err)
	}
}

// TestServeRefusesDatabaseWithoutKey: --database-url without an
// encryption key (or with a short one) is a configuration error that says
// what is missing and never prints the key.
func TestServeRefusesDatabaseWithoutKey(t *testing.T) {
	base := []string{"--upstream", "http://127.0.0.1:1", "--database-url", "postgres://u:pw-secret@127.0.0.1:1/db"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"missing", nil, nil, "needs an encryption key"},
		{"short", map[string]string{"SSF_ENCRYPTION_KEY": "abcdef0123456789"}, nil, "at least 32"},
		{"not a key", map[string]string{"SSF_ENCRYPTION_KEY": "!!not-a-key-at-all-but-long-enough-to-matter!!"}, nil, "neither hex digits nor base64"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var out, errb strings.Builder
			code := run(context.Background(), append([]string{"config", "check"}, append(base, tc.args...)...), &out, &errb)
			if code != exitConfig || !strings.Contains(errb.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d mentioning %q", code, errb.String(), exitConfig, tc.want)
			}
			for _, secret := range []string{"pw-secret", "abcdef0123456789", "not-a-key-at-all"} {
				if strings.Contains(errb.String()+out.String(), secret) {
					t.Errorf("output shows a secret %q: %s", secret, errb.String())
				}
			}
		})
	}
}

func TestParseEncryptionKey(t *testing.T) {
	raw := make([]byte, 32)
	for i := range raw {
		raw[i] = byte(i * 7)
	}
	for _, text := range []string{
		testEncryptionKey,
		"  " + strings.ToUpper(testEncryptionKey[:32]) + "\n" + testEncryptionKey[32:] + "\n",
		"ABEiM0RVZneImaq7zN3u/wARIjNEVWZ3iJmqu8zd7v8=",
		"ABEiM0RVZneImaq7zN3u_wARIjNEVWZ3iJmqu8zd7v8",
	} {
		k, err := parseEncryptionKey(text)
		if err != nil || len(k) != 32 || k[1] != 0x11 {
			t.Errorf("parseEncryptionKey(%q) = %x, %v", text, k, err)
		}
	}
	for _, text := range []string{"", "   ", testEncryptionKey[:62], "zz!" + testEncryptionKey, "AAECAwQFBgcICQoLDA0ODw=="} {
		if k, err := parseEncryptionKey(text); err == nil {
			t.Errorf("parseEncryptionKey(%q) = %x, want an error", text, k)
		}
	}
}

// TestMigrateCommand: migrate applies the schema once and says so, and
// refuses to run without a database.
func TestMigrateCommand(t *testing.T) {
	url, schema := pgtest.Schema(t)
	for i, want := range []string{"migrated from version 0 to", "is up to date"} {
		var out, errb strings.Builder
		code := run(context.Background(), []string{"migrate", "--database-url", url, "--database-schema", schema}, &out, &errb)
		if code != exitOK || !strings.Contains(out.String(), want) {
			t.Fatalf("run %d: exit %d, out %q, err %q; want %q", i, code, out.String(), errb.String(), want)
		}
	}
	var errb strings.Builder
	if code := run(context.Background(), []string{"migrate"}, &strings.Builder{}, &errb); code != exitConfig || !strings.Contains(errb.String(), "--database-url") {
		t.Fatalf("migrate without a database: exit %d, %q", code, errb.String())
	}
}

// TestSystemTwoReplicasOnPostgreSQL: two sidecars on one database schema
// in front of one authentik. A stream created on the first is served by
// the second, both sign with the same key, and a session revoked through
// the second reaches the receiver exactly once, pushed by whichever
// replica holds the stream.
func TestSystemTwoReplicasOnPostgreSQL(t *testing.T) {
	w := newPostgresSystem(t)
	ctx := context.Background()
	var err error

	cfg2 := w.Sidecar.Config()
	cfg2.DataDir = t.TempDir()
	for _, p := range []*string{&cfg2.Listen, &cfg2.AdminListen} {
		if *p, err = freeAddr(); err != nil {
			t.Fatal(err)
		}
	}
	a2, err := sidecar.Build(ctx, cfg2, systemReceivers(), slog.New(slog.DiscardHandler), sidecarOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a2.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })
	select {
	case <-a2.Proxy().Ready():
	case err := <-done:
		t.Fatalf("second replica stopped: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("second replica did not start")
	}
	front2 := "http://" + cfg2.Listen

	if w.Sidecar.Keys().CurrentKID() != a2.Keys().CurrentKID() {
		t.Fatalf("replicas sign with different keys: %s and %s", w.Sidecar.Keys().CurrentKID(), a2.Keys().CurrentKID())
	}
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil { // the verification SET
		t.Fatal(err)
	}
	// The second replica serves the stream once it has synced (every 5 s).
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequest(http.MethodGet, front2+"/ssf/streams?stream_id="+id, nil)
		req.Header.Set("Authorization", "Bearer "+demoReceiverToken)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second replica answers %d for the stream created on the first", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// An admin revokes bob's session through the second replica: only the
	// traffic sees that (authentik logs nothing for it).
	bob, err := w.AK.AddUser(authentiktest.UserSpec{Username: "bob", Email: "bob@example.com", Password: "bob-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	sess, _, err := w.AK.IssueSession(bob.PK)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, front2+"/api/v3/core/authenticated_sessions/"+sess.UUID+"/", nil)
	req.Header.Set("Authorization", "Bearer "+w.AK.AdminToken())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("session delete through the second replica: %d", resp.StatusCode)
	}
	if err := w.Receiver.WaitFor(ctx, 2, 20*time.Second); err != nil {
		t.Fatalf("%v: got %v", err, summarize(w.Receiver.Received()))
	}
	time.Sleep(2 * time.Second) // room for a duplicate from either replica
	got := summarize(w.Receiver.Received())
	want := []string{"session-revoked/admin/session=* user=bob@example.com"} // verification SETs are left out
	if strings.Join(got, "\n") != strings.Join(want, "\n") || len(w.Receiver.Received()) != 2 {
		t.Fatalf("receiver got %v (%d SETs with the verification), want %v once", got, len(w.Receiver.Received()), want)
	}
	for _, s := range w.Receiver.Received() {
		w.independentVerify(t, s.Compact, "https://push.rx.example/")
	}
}

// newPostgresSystem is newSystem on a PostgreSQL schema of its own.
func newPostgresSystem(t *testing.T) *demoWorld {
	t.Helper()
	url, schema := pgtest.Schema(t)
	mutate := func(c *sidecar.Config) {
		c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = url, schema, testEncryptionKey
	}
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: mutate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// forwarder is a TCP relay to the database that a test can cut and
// restore, as a network partition or a database restart would.
type forwarder struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
}

func startForwarder(t *testing.T, target string) *forwarder {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, conns: map[net.Conn]bool{}}
	t.Cleanup(func() { ln.Close(); f.cut(true) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			f.mu.Lock()
			down := f.down
			f.mu.Unlock()
			if down {
				c.Close()
				continue
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			f.mu.Lock()
			f.conns[c], f.conns[u] = true, true
			f.mu.Unlock()
			go func() { _, _ = io.Copy(u, c); u.Close(); c.Close() }()
			go func() { _, _ = io.Copy(c, u); u.Close(); c.Close() }()
		}
	}()
	return f
}

// cut makes the database unreachable (true) or reachable again (false).
func (f *forwarder) cut(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
	if down {
		for c := range f.conns {
			c.Close()
		}
		clear(f.conns)
	}
}

// TestSystemDatabaseOutage: when the database goes away under a running
// sidecar, authentik is still served, the SSF routes answer 503 with
// Retry-After and /healthz names the database; when it is back, the SSF
// routes answer again without a restart.
func TestSystemDatabaseOutage(t *testing.T) {
	dbURL, schema, fwd := forwardedDatabase(t)
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: func(c *sidecar.Config) {
			c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = dbURL, schema, testEncryptionKey
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	streamStatus := func() (int, string) { return ssfStatus(t, w.Front, id) }
	waitFor := func(want int) string {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			code, retry := streamStatus()
			if code == want {
				return retry
			}
			if time.Now().After(deadline) {
				t.Fatalf("SSF route answers %d, want %d", code, want)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor(http.StatusOK)

	fwd.cut(true)
	if retry := waitFor(http.StatusServiceUnavailable); retry == "" {
		t.Error("503 without Retry-After")
	}
	resp, err := http.Get(w.AdminURL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "database unreachable") {
		t.Errorf("/healthz while the database is away: %s", body)
	}
	// authentik is still served through the proxy.
	resp, err = http.Get(w.Front + "/if/flow/" + w.AK.Flows().Authentication + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		t.Fatalf("authentik through the proxy while the database is away: %d", resp.StatusCode)
	}

	fwd.cut(false)
	waitFor(http.StatusOK)
}
