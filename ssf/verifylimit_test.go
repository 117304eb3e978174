package ssf

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
)

// pgReplica is a transmitter on its own pool on a PostgreSQL schema that
// other replicas share, served as a harness (its do and create).
func pgReplica(t *testing.T, url, schema string, clock *fakeClock, ids string) *harness {
	t.Helper()
	db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, clock: clock, store: outbox.NewStore(db, outbox.StoreOptions{})}
	t.Cleanup(func() { _ = h.store.Close() })
	if h.keys, err = NewKeys(context.Background(), KeyConfig{Files: []string{testKeyFile(t)}, Clock: clock.Now}); err != nil {
		t.Fatal(err)
	}
	if h.ob, err = outbox.New(outbox.Config{Store: h.store, Signer: h.keys, Clock: clock.Now, After: clock.After}); err != nil {
		t.Fatal(err)
	}
	rs, err := ParseReceivers([]byte(testReceivers))
	if err != nil {
		t.Fatal(err)
	}
	h.cfg = Config{Issuer: "https://ssf.example/ssf", Receivers: rs, KV: h.store, Queue: h.ob, Keys: h.keys,
		Clock: clock.Now, NewID: seqIDs(ids), MaxBody: 4096}
	if h.tr, err = New(h.cfg); err != nil {
		t.Fatal(err)
	}
	h.srv = httptest.NewServer(h.tr.Handler())
	t.Cleanup(h.srv.Close)
	return h
}

// TestVerificationIntervalSharedByReplicas: two transmitters on one
// PostgreSQL store enforce one min_verification_interval per stream
// between them: a verification accepted on one makes the other answer
// 429 within the interval, and of two asked at once on both exactly one
// is accepted.
func TestVerificationIntervalSharedByReplicas(t *testing.T) {
	url, schema := pgtest.Schema(t)
	clock := newClock()
	a := pgReplica(t, url, schema, clock, "a")
	b := pgReplica(t, url, schema, clock, "b")
	w := a.create(acmeTok, map[string]any{"delivery": map[string]any{"method": MethodPollURN}})
	if err := b.tr.SyncStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	verify := func(h *harness) response {
		return h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID})
	}
	if r := verify(a); r.status != http.StatusNoContent {
		t.Fatalf("verify on a: %d %s", r.status, r.body)
	}
	clock.Advance(2 * time.Second)
	r := verify(b)
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") != "2" {
		t.Fatalf("verify on b 2 s after one on a: %d Retry-After %q; want 429 and 2", r.status, r.header.Get("Retry-After"))
	}
	for round := 0; round < 5; round++ {
		clock.Advance(DefaultMinVerificationInterval)
		codes := make([]int, 2)
		var wg sync.WaitGroup
		for i, h := range []*harness{a, b} {
			wg.Add(1)
			go func() { defer wg.Done(); codes[i] = verify(h).status }()
		}
		wg.Wait()
		ok := 0
		for _, c := range codes {
			if c == http.StatusNoContent {
				ok++
			} else if c != http.StatusTooManyRequests {
				t.Fatalf("round %d: verify answered %d", round, c)
			}
		}
		if ok != 1 {
			t.Fatalf("round %d: asked on both replicas at once, %d accepted (%v); want exactly 1", round, ok, codes)
		}
	}
}
