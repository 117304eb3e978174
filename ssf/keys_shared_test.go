package ssf

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// TestKeysSealedInSharedStore: with a seal key, replicas sharing one
// store generate one first key between them, keep it only sealed in the
// store (no file, no private key in clear), sign with the same key, and a
// rotation on one is picked up by the other's Refresh.
func TestKeysSealedInSharedStore(t *testing.T) {
	dir := t.TempDir()
	st, err := outbox.Open(filepath.Join(dir, "db"), outbox.StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	seal := bytes.Repeat([]byte{7}, 32)
	ctx := context.Background()
	cfg := KeyConfig{KV: st, Seal: seal, Overlap: time.Hour}

	// Replicas starting at once on an empty store.
	replicas := make([]*Keys, 4)
	errs := make([]error, len(replicas))
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Add(1)
		go func() { defer wg.Done(); replicas[i], errs[i] = NewKeys(ctx, cfg) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	first := replicas[0].CurrentKID()
	for i, k := range replicas {
		if k.CurrentKID() != first {
			t.Fatalf("replica %d signs with %s, replica 0 with %s", i, k.CurrentKID(), first)
		}
	}
	for _, k := range replicas {
		_ = k.Refresh(ctx)
		if k.CurrentKID() != first || len(k.List()) != 1 {
			t.Fatalf("after refresh: %s %+v (more than one key was generated)", k.CurrentKID(), k.List())
		}
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "*.pem")); len(files) != 0 {
		t.Errorf("key files written with a seal key: %v", files)
	}
	err = st.Scan(BucketKeys, nil, func(_, v []byte) error {
		if bytes.Contains(v, []byte("PRIVATE KEY")) || !bytes.Contains(v, []byte(`"sealed":"sealed:v2:`)) {
			t.Errorf("key record is not sealed: %.80s", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	a, b := replicas[0], replicas[1]
	rot, err := a.Rotate(ctx)
	if err != nil || rot.KID == first {
		t.Fatalf("Rotate = %+v, %v", rot, err)
	}
	if b.CurrentKID() != first {
		t.Fatal("b changed key before refreshing")
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if b.CurrentKID() != rot.KID || !strings.Contains(string(b.JWKS()), first) {
		t.Fatalf("b after refresh signs with %s (want %s), JWKS %s", b.CurrentKID(), rot.KID, b.JWKS())
	}
	// A stale replica's rotation does not make a second current key.
	c := replicas[2]
	got, err := c.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range replicas {
		_ = k.Refresh(ctx)
		if k.CurrentKID() != got.KID {
			t.Fatalf("after the stale rotation replicas disagree: %s vs %s", k.CurrentKID(), got.KID)
		}
	}

	// Another encryption key cannot open the keys: a clear error, no key.
	_, err = NewKeys(ctx, KeyConfig{KV: st, Seal: bytes.Repeat([]byte{8}, 32), Overlap: time.Hour})
	if err == nil || !strings.Contains(err.Error(), "does not open") {
		t.Fatalf("NewKeys with another seal key = %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, SecretKeyFile)); err == nil {
		t.Error("a seal key file was written")
	}
}
