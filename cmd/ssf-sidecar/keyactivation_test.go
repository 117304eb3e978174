package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// TestKeyRotationWaitsForReplicasOnPostgreSQL drives `keys rotate` on a
// sidecar on PostgreSQL: the new key is published at once and signs only
// from its activation, a few seconds on (so every replica has published
// it first), as `keys rotate` and `keys list` say; `keys rotate --now`
// makes the next key sign at once. On bbolt `keys rotate` signs at once
// (TestCLIAgainstRunningSidecar).
func TestKeyRotationWaitsForReplicasOnPostgreSQL(t *testing.T) {
	w := newPostgresSystem(t)
	admin := []string{"--admin-url", w.AdminURL}
	old := w.Sidecar.Keys().CurrentKID()

	code, out, errs := cli(t, append([]string{"keys", "rotate", "--json"}, admin...)...)
	var rot ssf.KeyInfo
	if code != exitOK || json.Unmarshal([]byte(out), &rot) != nil {
		t.Fatalf("keys rotate --json: %d %s %s", code, out, errs)
	}
	if rot.KID == old || rot.Current || rot.ActivatesAt.IsZero() {
		t.Fatalf("keys rotate on PostgreSQL = %+v; want a new key that is published, not current, with its activation", rot)
	}
	if !strings.Contains(string(w.Sidecar.Keys().JWKS()), rot.KID) {
		t.Fatal("the rotated-in key is not published at once")
	}
	if wait := time.Until(rot.ActivatesAt); wait > sidecar.SharedKeyActivation+time.Second {
		t.Fatalf("the new key signs in %s, want at most %s", wait, sidecar.SharedKeyActivation)
	}
	for deadline := time.Now().Add(20 * time.Second); w.Sidecar.Keys().CurrentKID() != rot.KID; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the new key never signs: still %s", w.Sidecar.Keys().CurrentKID())
		}
	}

	code, out, errs = cli(t, append([]string{"keys", "rotate", "--now"}, admin...)...)
	f := strings.Fields(out)
	if code != exitOK || len(f) < 4 || !strings.Contains(out, "is current") {
		t.Fatalf("keys rotate --now: %d %s %s", code, out, errs)
	}
	if got := w.Sidecar.Keys().CurrentKID(); got != f[3] {
		t.Fatalf("after keys rotate --now the sidecar signs with %s, want %s at once", got, f[3])
	}
	code, out, _ = cli(t, append([]string{"keys", "list", "--json"}, admin...)...)
	var list []ssf.KeyInfo
	if code != exitOK || json.Unmarshal([]byte(out), &list) != nil || len(list) != 3 || list[0].KID != f[3] || !list[0].Current {
		t.Fatalf("keys list --json: %d %s; want %s current and both earlier keys still published", code, out, f[3])
	}
}
