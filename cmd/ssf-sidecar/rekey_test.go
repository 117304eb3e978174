package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// headerReceiver accepts every push and records each one's Authorization
// header and signing kid.
type headerReceiver struct {
	mu    sync.Mutex
	heads []string
	kids  []string
}

func (h *headerReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body bytes.Buffer
	_, _ = body.ReadFrom(r.Body)
	kid := ""
	if parts := strings.Split(body.String(), "."); len(parts) == 3 {
		hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
		var jh struct {
			KID string `json:"kid"`
		}
		_ = json.Unmarshal(hdr, &jh)
		kid = jh.KID
	}
	h.mu.Lock()
	h.heads = append(h.heads, r.Header.Get("Authorization"))
	h.kids = append(h.kids, kid)
	h.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (h *headerReceiver) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.heads)
}

// last returns the newest push's Authorization header and kid.
func (h *headerReceiver) last() (string, string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.heads[len(h.heads)-1], h.kids[len(h.kids)-1]
}

// TestRekeyEncryptionKeyOnPostgreSQL rotates the encryption key as the
// README says: a sidecar on PostgreSQL with a push stream holding an
// authorization_header and a generated signing key; then serve with the
// new key as current and the old as previous (the header still goes out);
// rekey (and again, which changes nothing); then serve with the new key
// alone: the same kid in the JWKS, the push still carries the header. The
// old key alone now fails clearly, rekey with keys that open nothing
// refuses and names what, and neither the secret nor a key is ever in an
// output or a log.
func TestRekeyEncryptionKeyOnPostgreSQL(t *testing.T) {
	url, schema := pgtest.Schema(t)
	ctx := context.Background()
	// Two push streams: a is verified (so written again) while both keys
	// are given, b is left as it was sealed under the old key.
	secrets := map[string]string{"a": "Bearer push-secret-through-the-rekey-a7f3", "b": "Bearer push-secret-through-the-rekey-b9e1"}
	const oldKey = testEncryptionKey
	newKey := strings.Repeat("5a", 32)
	dir := t.TempDir()
	oldFile, newFile := filepath.Join(dir, "old.key"), filepath.Join(dir, "new.key")
	for f, k := range map[string]string{oldFile: oldKey, newFile: newKey} {
		if err := os.WriteFile(f, []byte(k+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	rx := &headerReceiver{}
	rxSrv := httptest.NewServer(rx)
	defer rxSrv.Close()
	logs := &syncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	serve := func(current, previous string) (*demoWorld, error) {
		return startDemoWorld(ctx, demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(), Logger: logger,
			Mutate: func(c *sidecar.Config) {
				c.MinVerification = time.Second
				c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey, c.PreviousEncryptionKey = url, schema, current, previous
			}})
	}
	// pushed asks for a verification and waits for its push: it must carry
	// the stream's authorization_header and be signed with kid.
	pushed := func(w *demoWorld, streamID, secret, kid string) {
		t.Helper()
		n := rx.count()
		waitUntil(t, "a verification accepted", func() bool {
			code, _ := w.SSFCall(ctx, http.MethodPost, "/ssf/verify", map[string]any{"stream_id": streamID}, nil)
			return code == http.StatusNoContent || code == http.StatusOK || code == http.StatusAccepted
		})
		waitUntil(t, "the verification pushed", func() bool { return rx.count() > n })
		if h, k := rx.last(); h != secret || k != kid {
			t.Fatalf("push carries another Authorization header (%d bytes) or kid %s, want the stream's and %s", len(h), k, kid)
		}
	}

	w1, err := serve(oldKey, "")
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, name := range []string{"a", "b"} {
		var st struct {
			StreamID string `json:"stream_id"`
		}
		if _, err := w1.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
			"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": rxSrv.URL + "/" + name, "authorization_header": secrets[name]},
			"events_requested": []string{ssf.EventSessionRevoked},
		}, &st); err != nil || st.StreamID == "" {
			t.Fatalf("create push stream: %v", err)
		}
		ids[name] = st.StreamID
	}
	kid := currentKID(t, w1)
	waitUntil(t, "the creation-time verifications", func() bool { return rx.count() >= 2 })
	w1.Close()

	// Step 2: the new key current, the old one previous.
	w2, err := serve(newKey, oldKey)
	if err != nil {
		t.Fatalf("serve with the previous key: %v", err)
	}
	if got := currentKID(t, w2); got != kid {
		t.Fatalf("JWKS leads with %s, want %s", got, kid)
	}
	pushed(w2, ids["a"], secrets["a"], kid)
	w2.Close()

	// Step 3: rekey, twice.
	var outputs strings.Builder
	rekeyRun := func(args ...string) (int, rekeyReport, string) {
		t.Helper()
		var out, errb strings.Builder
		code := run(ctx, append([]string{"rekey", "--database-url", url, "--database-schema", schema}, args...), &out, &errb)
		outputs.WriteString(out.String() + errb.String())
		var rep rekeyReport
		if code == 0 && strings.Contains(strings.Join(args, " "), "--json") {
			if err := json.Unmarshal([]byte(out.String()), &rep); err != nil {
				t.Fatalf("rekey report %q: %v", out.String(), err)
			}
		}
		return code, rep, errb.String()
	}
	code, rep, errs := rekeyRun("--encryption-key-file", newFile, "--previous-encryption-key-file", oldFile, "--json")
	if code != 0 {
		t.Fatalf("rekey: exit %d: %s", code, errs)
	}
	// a's secret was sealed under the new key when a was written again.
	if rep.PushSecrets != 2 || rep.PushSecretsResealed != 1 || rep.SigningKeys != 1 || rep.SigningKeysResealed != 1 {
		t.Fatalf("rekey report %+v: want 1 of 2 push secrets and 1 signing key re-sealed", rep)
	}
	newStreams, newSigning := sealKeys(mustKey(t, newKey))
	if rep.StreamKeyID != ssf.KeyID(newStreams) || rep.SigningKeyID != ssf.KeyID(newSigning) {
		t.Fatalf("rekey report names keys %s / %s, want the new key's", rep.StreamKeyID, rep.SigningKeyID)
	}
	code, rep, errs = rekeyRun("--encryption-key-file", newFile, "--previous-encryption-key-file", oldFile, "--json")
	if code != 0 || rep.Resealed() != 0 || rep.PushSecrets != 2 || rep.SigningKeys != 1 {
		t.Fatalf("second rekey: exit %d, %+v, %s; want nothing re-sealed", code, rep, errs)
	}
	if code, _, errs = rekeyRun("--encryption-key-file", newFile, "--previous-encryption-key-file", oldFile); code != 0 {
		t.Fatalf("rekey (text): exit %d: %s", code, errs)
	}
	checkSealedUnder(t, url, schema, ssf.KeyID(newStreams), ssf.KeyID(newSigning))

	// Step 4: the new key alone.
	w3, err := serve(newKey, "")
	if err != nil {
		t.Fatalf("serve with the new key alone: %v", err)
	}
	if got := currentKID(t, w3); got != kid {
		t.Fatalf("after rekey the JWKS leads with %s, want the same %s", got, kid)
	}
	pushed(w3, ids["a"], secrets["a"], kid)
	pushed(w3, ids["b"], secrets["b"], kid)
	w3.Close()

	// The old key alone opens nothing now, and says so.
	if w, err := serve(oldKey, ""); err == nil {
		w.Close()
		t.Fatal("serve with the old key alone started after the rekey")
	} else if !strings.Contains(err.Error(), "does not open") || !strings.Contains(err.Error(), ssf.KeyID(newSigning)) {
		t.Fatalf("serve with the old key alone: %v; want a clear refusal naming the key the values are sealed under", err)
	} else {
		outputs.WriteString(err.Error())
	}

	// Keys that open nothing: refused, naming what by kind and id.
	other, third := filepath.Join(dir, "other.key"), filepath.Join(dir, "third.key")
	_ = os.WriteFile(other, []byte(strings.Repeat("c3", 32)), 0o600)
	_ = os.WriteFile(third, []byte(strings.Repeat("d4", 32)), 0o600)
	code, _, errs = rekeyRun("--encryption-key-file", other, "--previous-encryption-key-file", third)
	if code != exitFailure || !strings.Contains(errs, "stream "+ids["a"]) || !strings.Contains(errs, "stream "+ids["b"]) || !strings.Contains(errs, "signing key "+kid) ||
		!strings.Contains(errs, "nothing was re-sealed") {
		t.Fatalf("rekey with keys that open nothing: exit %d, %s", code, errs)
	}
	checkSealedUnder(t, url, schema, ssf.KeyID(newStreams), ssf.KeyID(newSigning))
	// The same key twice, or a missing previous key: configuration errors.
	if code, _, errs = rekeyRun("--encryption-key-file", newFile, "--previous-encryption-key-file", newFile); code != exitConfig || !strings.Contains(errs, "holds the current encryption key") {
		t.Fatalf("rekey with the same key twice: exit %d, %s", code, errs)
	}
	if code, _, errs = rekeyRun("--encryption-key-file", newFile); code != exitConfig || !strings.Contains(errs, "previous") {
		t.Fatalf("rekey without the previous key: exit %d, %s", code, errs)
	}

	// Help never shows the database URL from the environment.
	t.Setenv("SSF_DATABASE_URL", "postgres://ssf:db-password-in-env@db.example/ak")
	var help strings.Builder
	if code := run(ctx, []string{"rekey", "--help"}, &help, &help); code != 0 || !strings.Contains(help.String(), "--previous-encryption-key-file") ||
		strings.Contains(help.String(), "db-password-in-env") {
		t.Fatalf("rekey --help: exit %d\n%s", code, help.String())
	}
	all := outputs.String() + logs.String()
	for _, s := range []string{"push-secret-through-the-rekey", oldKey, newKey, strings.Repeat("c3", 32),
		hex.EncodeToString(newStreams), hex.EncodeToString(newSigning), "PRIVATE KEY"} {
		if strings.Contains(all, s) {
			t.Fatalf("a secret is in the output or the logs (%.12s…)", s)
		}
	}
}

func mustKey(t *testing.T, text string) []byte {
	t.Helper()
	k, err := parseEncryptionKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// checkSealedUnder reads the schema's stream and signing-key records as
// stored: each secret must be sealed under the named key, none in clear.
func checkSealedUnder(t *testing.T, url, schema, streamKey, signingKey string) {
	t.Helper()
	db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema, NoMigrate: true})
	if err != nil {
		t.Fatal(err)
	}
	st := outbox.NewStore(db, outbox.StoreOptions{})
	defer st.Close()
	for bucket, want := range map[string]string{ssf.BucketStreams: streamKey, ssf.BucketKeys: signingKey} {
		n := 0
		err := st.Scan(bucket, nil, func(k, v []byte) error {
			var rec map[string]any
			if err := json.Unmarshal(v, &rec); err != nil {
				return err
			}
			for _, field := range []string{"authorization_header", "sealed"} {
				if s, ok := rec[field].(string); ok && s != "" {
					n++
					if ssf.SealedWith(s) != want {
						t.Errorf("%s %s: %s sealed under key %q, want %s", bucket, k, field, ssf.SealedWith(s), want)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			t.Errorf("%s: no sealed value", bucket)
		}
	}
}

// TestPreviousEncryptionKeyConfig: config check takes the previous key
// from the environment or a file, shows the text only as hidden, and
// refuses a previous key that is malformed, the current one, or given
// without a database.
func TestPreviousEncryptionKeyConfig(t *testing.T) {
	prev := strings.Repeat("7e", 32)
	base := []string{"config", "check", "--upstream", "http://ak:9000", "--data-dir", t.TempDir()}
	db := append(append([]string(nil), base...), "--database-url", "postgres://ssf@db.example/authentik")
	check := func(env map[string]string, args []string) (int, string) {
		t.Helper()
		for k, v := range env {
			t.Setenv(k, v)
		}
		var out, errb bytes.Buffer
		code := run(context.Background(), args, &out, &errb)
		for k := range env {
			t.Setenv(k, "")
		}
		return code, out.String() + errb.String()
	}
	code, out := check(map[string]string{"SSF_ENCRYPTION_KEY": testEncryptionKey, "SSF_PREVIOUS_ENCRYPTION_KEY": prev}, db)
	if code != exitOK || !strings.Contains(out, "previous-encryption-key") || !strings.Contains(out, "(set, hidden)") {
		t.Fatalf("config check with a previous key: exit %d\n%s", code, out)
	}
	if strings.Contains(out, prev) || strings.Contains(out, testEncryptionKey) {
		t.Fatal("config check printed an encryption key")
	}
	file := filepath.Join(t.TempDir(), "prev.key")
	if err := os.WriteFile(file, []byte(prev+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out = check(map[string]string{"SSF_ENCRYPTION_KEY": testEncryptionKey}, append(db, "--previous-encryption-key-file", file)); code != exitOK {
		t.Fatalf("config check with --previous-encryption-key-file: exit %d\n%s", code, out)
	}
	for _, c := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"short", map[string]string{"SSF_ENCRYPTION_KEY": testEncryptionKey, "SSF_PREVIOUS_ENCRYPTION_KEY": "abcdef0123"}, db, "SSF_PREVIOUS_ENCRYPTION_KEY: the encryption key holds 5 bytes"},
		{"same as current", map[string]string{"SSF_ENCRYPTION_KEY": testEncryptionKey, "SSF_PREVIOUS_ENCRYPTION_KEY": testEncryptionKey}, db, "holds the current encryption key"},
		{"both forms", map[string]string{"SSF_ENCRYPTION_KEY": testEncryptionKey, "SSF_PREVIOUS_ENCRYPTION_KEY": prev}, append(db, "--previous-encryption-key-file", file), "not both"},
		{"without a database", map[string]string{"SSF_PREVIOUS_ENCRYPTION_KEY": prev}, base, "only used with --database-url"},
	} {
		code, out := check(c.env, c.args)
		if code != exitConfig || !strings.Contains(out, c.want) {
			t.Errorf("%s: exit %d, want %d and %q in\n%s", c.name, code, exitConfig, c.want, out)
		}
		if strings.Contains(out, prev) || strings.Contains(out, testEncryptionKey) {
			t.Errorf("%s: an encryption key is in the output", c.name)
		}
	}
}
