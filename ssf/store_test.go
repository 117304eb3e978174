package ssf

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// storeBackend opens (or reopens) the same stream store.
type storeBackend struct {
	name string
	// open returns the store and a func that closes it.
	open func(t *testing.T) (StreamStore, func())
}

func backends(t *testing.T) []storeBackend {
	dir := t.TempDir()
	mem := newMemKV()
	return []storeBackend{
		{"memory", func(*testing.T) (StreamStore, func()) { return NewStreamStore(mem), func() {} }},
		{"bbolt", func(t *testing.T) (StreamStore, func()) {
			st, err := outbox.Open(filepath.Join(dir, "db"), outbox.StoreOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			return NewStreamStore(st), func() { _ = st.Close() }
		}},
		{"bbolt, sealed", func(t *testing.T) (StreamStore, func()) {
			st, err := outbox.Open(filepath.Join(dir, "sealed.db"), outbox.StoreOptions{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			key, err := LoadOrCreateSealKey(dir)
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewSealedStreamStore(st, key)
			if err != nil {
				t.Fatal(err)
			}
			return s, func() { _ = st.Close() }
		}},
	}
}

// TestSealedSecretsNotInTheDatabase: the push authorization_header survives
// a reopen, yet the database holds only its sealed form, which another data
// dir's key cannot open.
func TestSealedSecretsNotInTheDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	kv := newMemKV()
	key, err := LoadOrCreateSealKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := LoadOrCreateSealKey(dir); string(again) != string(key) {
		t.Fatal("the key is not reused")
	}
	if fi, _ := os.Stat(filepath.Join(dir, SecretKeyFile)); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v", fi.Mode().Perm())
	}
	s, _ := NewSealedStreamStore(kv, key)
	secret := "Bearer receiver-push-secret-123"
	if err := s.PutStream(ctx, StreamRecord{ID: "a", AuthorizationHeader: secret}); err != nil {
		t.Fatal(err)
	}
	raw, _ := kv.Get(BucketStreams, []byte("a"))
	if strings.Contains(string(raw), "receiver-push-secret") || !strings.Contains(string(raw), sealedPrefixV2) {
		t.Fatalf("stored form: %s", raw)
	}
	r, ok, err := s.GetStream(ctx, "a")
	if !ok || err != nil || r.AuthorizationHeader != secret {
		t.Fatalf("round trip: %v %v %q", ok, err, r.AuthorizationHeader)
	}
	// Moved to another stream id, the sealed value does not open.
	kv.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("b"), Value: []byte(strings.Replace(string(raw), `"a"`, `"b"`, 1))}})
	if _, _, err := s.GetStream(ctx, "b"); err == nil {
		t.Fatal("a sealed value moved to another stream opened")
	}
	other, _ := LoadOrCreateSealKey(t.TempDir())
	s2, _ := NewSealedStreamStore(kv, other)
	if _, _, err := s2.GetStream(ctx, "a"); err == nil || !strings.Contains(err.Error(), SecretKeyFile) {
		t.Fatalf("another key opened it: %v", err)
	}
	// A value stored before sealing is read as it is.
	kv.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte("old"), Value: []byte(`{"id":"old","authorization_header":"Bearer legacy"}`)}})
	if r, _, err := s.GetStream(ctx, "old"); err != nil || r.AuthorizationHeader != "Bearer legacy" {
		t.Fatalf("legacy value: %q %v", r.AuthorizationHeader, err)
	}
}

// TestStreamStoreBehaviour is the behaviour every StreamStore backend must
// show; each step reopens the store, so it also checks durability.
func TestStreamStoreBehaviour(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			step := func(fn func(s StreamStore)) {
				t.Helper()
				s, closeFn := b.open(t)
				defer closeFn()
				fn(s)
			}
			created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
			a := StreamRecord{ID: "a", Receiver: "r1", Audience: "aud", Method: MethodPushURN, EndpointURL: "https://x.example/e",
				AuthorizationHeader: "Bearer s", Status: StatusEnabled, DefaultSubjects: "ALL", Created: created, Updated: created,
				EventsRequested: []string{EventSessionRevoked}}
			ab := a
			ab.ID = "ab" // shares a prefix with "a": deletes must not spill over
			email := EmailSubject("u@example.com")
			phone := Subject{Format: "phone_number", Fields: map[string]string{"phone_number": "+12065550100"}}
			step(func(s StreamStore) {
				if _, ok, err := s.GetStream(ctx, "a"); ok || err != nil {
					t.Fatalf("empty store: %v %v", ok, err)
				}
				if l, err := s.ListStreams(ctx); len(l) != 0 || err != nil {
					t.Fatalf("empty list: %v %v", l, err)
				}
				for _, r := range []StreamRecord{a, ab} {
					if err := s.PutStream(ctx, r); err != nil {
						t.Fatal(err)
					}
				}
				if err := s.SetSubject(ctx, "a", email, true); err != nil {
					t.Fatal(err)
				}
				if err := s.SetSubject(ctx, "a", phone, false); err != nil {
					t.Fatal(err)
				}
				if err := s.SetSubject(ctx, "ab", email, true); err != nil {
					t.Fatal(err)
				}
			})
			step(func(s StreamStore) {
				got, ok, err := s.GetStream(ctx, "a")
				if !ok || err != nil || got.AuthorizationHeader != "Bearer s" || !got.Created.Equal(created) || got.EventsRequested[0] != EventSessionRevoked {
					t.Fatalf("get: %+v %v %v", got, ok, err)
				}
				added, removed, err := s.Subjects(ctx, "a")
				if err != nil || len(added) != 1 || len(removed) != 1 || added[0].key() != email.key() || removed[0].key() != phone.key() {
					t.Fatalf("subjects: %v %v %v", added, removed, err)
				}
				// Removing an added subject moves it.
				if err := s.SetSubject(ctx, "a", email, false); err != nil {
					t.Fatal(err)
				}
				a.Status, a.Reason = StatusPaused, "why"
				if err := s.PutStream(ctx, a); err != nil {
					t.Fatal(err)
				}
			})
			step(func(s StreamStore) {
				added, removed, _ := s.Subjects(ctx, "a")
				if len(added) != 0 || len(removed) != 2 {
					t.Fatalf("after move: %d added %d removed", len(added), len(removed))
				}
				got, _, _ := s.GetStream(ctx, "a")
				if got.Status != StatusPaused || got.Reason != "why" {
					t.Fatalf("update lost: %+v", got)
				}
				if err := s.DeleteStream(ctx, "a"); err != nil {
					t.Fatal(err)
				}
			})
			step(func(s StreamStore) {
				if _, ok, _ := s.GetStream(ctx, "a"); ok {
					t.Fatal("deleted stream still there")
				}
				added, removed, _ := s.Subjects(ctx, "a")
				if len(added)+len(removed) != 0 {
					t.Fatal("subjects of a deleted stream remain")
				}
				l, _ := s.ListStreams(ctx)
				if len(l) != 1 || l[0].ID != "ab" {
					t.Fatalf("list: %+v", l)
				}
				if added, _, _ := s.Subjects(ctx, "ab"); len(added) != 1 {
					t.Fatal("deleting a removed the subjects of ab")
				}
			})
		})
	}
}
