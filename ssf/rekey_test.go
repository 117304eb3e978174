package ssf

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// TestRekey: every push secret and signing key is sealed again under the
// current keys in one commit (values in clear too); a second run writes
// nothing; a value that opens with neither key stops it before anything is
// written, named by kind and id; and a record changed between the read and
// the commit fails the whole commit.
func TestRekey(t *testing.T) {
	ctx := context.Background()
	st, err := outbox.Open(filepath.Join(t.TempDir(), "db"), outbox.StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	oldS, oldK := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	newS, newK := bytes.Repeat([]byte{3}, 32), bytes.Repeat([]byte{4}, 32)
	streams, _ := NewSealedStreamStore(st, oldS)
	for _, r := range []StreamRecord{
		{ID: "p1", Method: MethodPushURN, AuthorizationHeader: "Bearer one-secret"},
		{ID: "p2", Method: MethodPushURN, AuthorizationHeader: "Bearer two-secret"},
		{ID: "poll", Method: MethodPollURN},
	} {
		if err := streams.PutStream(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// A value from before sealing existed.
	if err := st.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("legacy"),
		Value: []byte(`{"id":"legacy","method":"urn:ietf:rfc:8935","authorization_header":"Bearer legacy-secret","extra":"kept"}`)}}); err != nil {
		t.Fatal(err)
	}
	keys, err := NewKeys(ctx, KeyConfig{KV: st, Seal: oldK, Overlap: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	kid := keys.CurrentKID()
	before := snapshotBuckets(t, st)

	// Keys that open nothing: refused, nothing written.
	s1, _ := NewSealer(bytes.Repeat([]byte{9}, 32), bytes.Repeat([]byte{8}, 32))
	_, err = Rekey(ctx, st, s1, s1)
	var ue *UnopenedError
	if !errors.As(err, &ue) || len(ue.Values) != 3 || !strings.Contains(err.Error(), "stream p1") ||
		!strings.Contains(err.Error(), "signing key "+kid) || strings.Contains(err.Error(), "Bearer") {
		t.Fatalf("Rekey with unknown keys = %v", err)
	}
	if after := snapshotBuckets(t, st); after != before {
		t.Fatal("a refused Rekey wrote something")
	}

	ss, _ := NewSealer(newS, oldS)
	ks, _ := NewSealer(newK, oldK)
	// A record changed between the read and the commit: nothing lands.
	hook := &changingKV{KV: st, onCommit: func() {
		_ = st.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("poll"), Value: []byte(`{"id":"poll","method":"urn:ietf:rfc:8936","description":"changed"}`)}})
		_ = st.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("p2"), Value: []byte(`{"id":"p2","method":"urn:ietf:rfc:8936"}`)}})
	}}
	if _, err := Rekey(ctx, hook, ss, ks); !errors.Is(err, outbox.ErrCondition) {
		t.Fatalf("Rekey over a concurrent change = %v, want ErrCondition", err)
	}
	if v, _ := st.Get(BucketStreams, []byte("p1")); !bytes.Contains(v, []byte(KeyID(oldS))) {
		t.Fatal("a failed Rekey re-sealed p1")
	}
	_ = st.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("p2"), Value: mustGetRaw(t, before, "p2")}})

	rep, err := Rekey(ctx, st, ss, ks)
	if err != nil {
		t.Fatal(err)
	}
	if rep.PushSecrets != 3 || rep.PushSecretsResealed != 3 || rep.SigningKeys != 1 || rep.SigningKeysResealed != 1 ||
		rep.StreamKeyID != KeyID(newS) || rep.SigningKeyID != KeyID(newK) {
		t.Fatalf("report %+v", rep)
	}
	again, err := Rekey(ctx, st, ss, ks)
	if err != nil || again.Resealed() != 0 || again.PushSecrets != 3 {
		t.Fatalf("second Rekey = %+v, %v; want nothing re-sealed", again, err)
	}
	// The new keys alone open everything; the old ones nothing.
	fresh, _ := NewSealedStreamStore(st, newS)
	for id, want := range map[string]string{"p1": "Bearer one-secret", "p2": "Bearer two-secret", "legacy": "Bearer legacy-secret"} {
		r, _, err := fresh.GetStream(ctx, id)
		if err != nil || r.AuthorizationHeader != want {
			t.Fatalf("%s under the new key: %v (%d bytes)", id, err, len(r.AuthorizationHeader))
		}
	}
	if v, _ := st.Get(BucketStreams, []byte("legacy")); !bytes.Contains(v, []byte(`"extra":"kept"`)) || bytes.Contains(v, []byte("legacy-secret")) {
		t.Fatalf("legacy record after Rekey: %s", v)
	}
	if k, err := NewKeys(ctx, KeyConfig{KV: st, Seal: newK, Overlap: time.Hour}); err != nil || k.CurrentKID() != kid {
		t.Fatalf("keys under the new key alone: %v", err)
	}
	if _, _, err := (kvStreamStore{kv: st, seal: mustSealer(t, oldS)}).GetStream(ctx, "p1"); err == nil {
		t.Fatal("the old key still opens a re-sealed secret")
	}
}

func mustSealer(t *testing.T, key []byte) *Sealer {
	t.Helper()
	s, err := NewSealer(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// changingKV runs onCommit just before each commit (a concurrent writer).
type changingKV struct {
	KV
	onCommit func()
}

func (c *changingKV) Commit(ctx context.Context, marks []outbox.Mark) error {
	c.onCommit()
	return c.KV.Commit(ctx, marks)
}

func snapshotBuckets(t *testing.T, kv KV) string {
	t.Helper()
	var b strings.Builder
	for _, bucket := range []string{BucketStreams, BucketKeys, BucketKeyCurrent} {
		if err := kv.Scan(bucket, nil, func(k, v []byte) error {
			b.WriteString(bucket + "/" + string(k) + "=" + string(v) + "\n")
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}

func mustGetRaw(t *testing.T, snapshot, id string) []byte {
	t.Helper()
	for _, line := range strings.Split(snapshot, "\n") {
		if v, ok := strings.CutPrefix(line, BucketStreams+"/"+id+"="); ok {
			return []byte(v)
		}
	}
	t.Fatalf("no %s in the snapshot", id)
	return nil
}

// TestSealerKeys: values name their key and open under it, older values
// that name none open under any key given, and the errors name key ids,
// never the value.
func TestSealerKeys(t *testing.T) {
	a, b := bytes.Repeat([]byte{0xa}, 32), bytes.Repeat([]byte{0xb}, 32)
	sa := mustSealer(t, a)
	v, err := sa.Seal("Bearer x-secret", "s1")
	if err != nil || !strings.HasPrefix(v, "sealed:v2:"+KeyID(a)+":") || SealedWith(v) != KeyID(a) || !IsSealed(v) {
		t.Fatalf("Seal = %q, %v", v, err)
	}
	if again, _ := sa.Seal(v, "s1"); again != v {
		t.Fatal("an already sealed value was sealed twice")
	}
	rotated, _ := NewSealer(b, a)
	if p, err := rotated.Open(v, "s1"); err != nil || p != "Bearer x-secret" {
		t.Fatalf("previous key: %q, %v", p, err)
	}
	if _, err := rotated.Open(v, "s2"); err == nil {
		t.Fatal("a value moved to another place opened")
	}
	_, err = mustSealer(t, b).Open(v, "s1")
	if err == nil || !strings.Contains(err.Error(), KeyID(a)) || !strings.Contains(err.Error(), KeyID(b)) || strings.Contains(err.Error(), "x-secret") {
		t.Fatalf("wrong key: %v", err)
	}
	// A v1 value (no key id), sealed under a: opens with a as previous.
	aead := sa.keys[0].aead
	nonce := make([]byte, aead.NonceSize())
	v1 := sealedPrefix + b64std(aead.Seal(nonce, nonce, []byte("Bearer old-format"), []byte("s1")))
	if p, err := rotated.Open(v1, "s1"); err != nil || p != "Bearer old-format" || SealedWith(v1) != "" || !IsSealed(v1) {
		t.Fatalf("v1 value: %q, %v", p, err)
	}
	if _, err := mustSealer(t, b).Open(v1, "s1"); err == nil {
		t.Fatal("a v1 value opened under another key")
	}
	for _, bad := range []string{"sealed:v2:", "sealed:v2:" + KeyID(a), "sealed:v2:" + KeyID(a) + ":!!", "sealed:v1:AAAA"} {
		if _, err := sa.Open(bad, "s1"); err == nil {
			t.Errorf("Open(%q) succeeded", bad)
		}
	}
	if p, err := sa.Open("Bearer plain", "s1"); err != nil || p != "Bearer plain" {
		t.Fatalf("a value stored in clear: %q, %v", p, err)
	}
	if _, err := NewSealer(a, []byte("short")); err == nil {
		t.Fatal("a short previous key was accepted")
	}
	if KeyID(a) == KeyID(b) || len(KeyID(a)) != 8 {
		t.Fatalf("key ids %s %s", KeyID(a), KeyID(b))
	}
}

// FuzzSealerOpen: a stored value of any shape is refused with an error or
// returned, never a panic.
func FuzzSealerOpen(f *testing.F) {
	key := bytes.Repeat([]byte{0xc}, 32)
	s, _ := NewSealer(key, bytes.Repeat([]byte{0xd}, 32))
	v, _ := s.Seal("Bearer seed", "id")
	for _, seed := range []string{v, "sealed:v1:AAAA", "sealed:v2:", "sealed:v2:" + KeyID(key) + ":", "plain", ""} {
		f.Add(seed, "id")
	}
	f.Fuzz(func(t *testing.T, stored, aad string) {
		p, err := s.Open(stored, aad)
		if err != nil && p != "" {
			t.Fatal("an error came with a value")
		}
		if err == nil && !IsSealed(stored) && p != stored {
			t.Fatal("a value in clear was changed")
		}
	})
}

func b64std(b []byte) string { return base64.RawStdEncoding.EncodeToString(b) }
