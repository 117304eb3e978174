package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestStoreBehaviour is the store's behaviour suite: each step reopens the
// database so only what is durable counts.
func TestStoreBehaviour(t *testing.T) {
	path := filepath.Join(t.TempDir(), "store.db")
	ctx := context.Background()
	step := func(name string, fn func(t *testing.T, s *Store)) {
		t.Run(name, func(t *testing.T) {
			s, err := Open(path, StoreOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := s.Close(); err != nil {
					t.Error(err)
				}
			}()
			fn(t, s)
		})
	}
	step("commit marks", func(t *testing.T, s *Store) {
		err := s.Commit(ctx, []Mark{
			{Bucket: "journal", Key: []byte("b"), Value: []byte("2")},
			{Bucket: "journal", Key: []byte("a"), Value: []byte("1")},
			{Bucket: "journal", Key: []byte("c"), Value: nil},
			{Bucket: "cursor", Key: []byte("pos"), Value: []byte("42")},
			{Bucket: "other", Key: []byte("a1"), Value: []byte("x")},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Healthy(); err != nil {
			t.Fatalf("Healthy = %v", err)
		}
	})
	step("read back after reopen", func(t *testing.T, s *Store) {
		tests := []struct {
			bucket, key string
			want        []byte
		}{
			{"journal", "a", []byte("1")},
			{"journal", "c", []byte{}},
			{"cursor", "pos", []byte("42")},
			{"cursor", "missing", nil},
			{"no-such-bucket", "a", nil},
		}
		for _, tc := range tests {
			got, err := s.Get(tc.bucket, []byte(tc.key))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) || (got == nil) != (tc.want == nil) {
				t.Errorf("Get(%s,%s) = %q, want %q", tc.bucket, tc.key, got, tc.want)
			}
		}
		var keys []string
		if err := s.Scan("journal", nil, func(k, v []byte) error {
			keys = append(keys, string(k)+"="+string(v))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(keys) != "[a=1 b=2 c=]" {
			t.Errorf("Scan = %v", keys)
		}
		keys = nil
		if err := s.Scan("other", []byte("a"), func(k, v []byte) error {
			keys = append(keys, string(k))
			return nil
		}); err != nil || fmt.Sprint(keys) != "[a1]" {
			t.Errorf("prefix Scan = %v, %v", keys, err)
		}
		stop := errors.New("stop")
		if err := s.Scan("journal", nil, func(k, v []byte) error { return stop }); !errors.Is(err, stop) {
			t.Errorf("Scan error = %v, want stop", err)
		}
	})
	step("delete and invalid marks", func(t *testing.T, s *Store) {
		if err := s.Commit(ctx, []Mark{{Bucket: "journal", Key: []byte("a"), Delete: true},
			{Bucket: "absent", Key: []byte("x"), Delete: true}}); err != nil {
			t.Fatal(err)
		}
		err := s.Commit(ctx, []Mark{{Bucket: "", Key: []byte("k")}, {Bucket: "b", Key: nil}})
		if err == nil {
			t.Fatal("invalid marks accepted")
		}
		joined, ok := err.(interface{ Unwrap() []error })
		if !ok || len(joined.Unwrap()) != 2 {
			t.Errorf("want both problems reported at once, got %v", err)
		}
	})
	step("deleted key gone", func(t *testing.T, s *Store) {
		if v, _ := s.Get("journal", []byte("a")); v != nil {
			t.Errorf("deleted key still present: %q", v)
		}
		if v, _ := s.Get("b", []byte("k")); v != nil {
			t.Error("invalid batch partly committed")
		}
	})
	step("concurrent commits group", func(t *testing.T, s *Store) {
		var wg sync.WaitGroup
		errs := make(chan error, 256)
		for i := range 256 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs <- s.Commit(ctx, []Mark{{Bucket: "many", Key: fmt.Appendf(nil, "k%03d", i), Value: []byte("v")}})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
	})
	step("all concurrent commits durable", func(t *testing.T, s *Store) {
		n := 0
		_ = s.Scan("many", nil, func(k, v []byte) error { n++; return nil })
		if n != 256 {
			t.Errorf("found %d keys, want 256", n)
		}
	})
	step("closed store refuses writes", func(t *testing.T, s *Store) {
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Commit(ctx, []Mark{{Bucket: "x", Key: []byte("k")}}); !errors.Is(err, ErrStoreClosed) {
			t.Errorf("Commit after Close = %v", err)
		}
	})
}

// TestEnqueueAtomicIdempotent checks that marks commit with the SETs, that
// a replayed Enqueue commits its marks but no second SET, and that SETs for
// unknown streams are dropped while their marks still commit.
func TestEnqueueAtomicIdempotent(t *testing.T) {
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = 1000 * 3600e9 })
	ctx := context.Background()
	if err := h.ob.SetStream(ctx, StreamConfig{ID: "s1", Method: MethodPoll, Status: StatusPaused}); err != nil {
		t.Fatal(err)
	}
	sets := []SET{makeSET("s1", "j1"), makeSET("s1", "j2"), makeSET("unknown", "j3")}
	marks := []Mark{{Bucket: "journal", Key: []byte("intent-1"), Value: []byte("done")}}
	if err := h.ob.Enqueue(ctx, sets, marks); err != nil {
		t.Fatal(err)
	}
	h.reopen(func(c *Config) { c.SweepInterval = 1000 * 3600e9 })
	if v, _ := h.store.Get("journal", []byte("intent-1")); string(v) != "done" {
		t.Fatalf("mark not committed with the SETs: %q", v)
	}
	st, err := h.ob.Stats(ctx, "s1")
	if err != nil || st.Backlog != 2 {
		t.Fatalf("backlog = %d (%v), want 2", st.Backlog, err)
	}
	// Replay: same SETs (same keys), new mark.
	if err := h.ob.Enqueue(ctx, sets, []Mark{{Bucket: "cursor", Key: []byte("c"), Value: []byte("7")}}); err != nil {
		t.Fatal(err)
	}
	h.reopen(func(c *Config) { c.SweepInterval = 1000 * 3600e9 })
	st, _ = h.ob.Stats(ctx, "s1")
	if st.Backlog != 2 {
		t.Errorf("replayed enqueue doubled: backlog %d", st.Backlog)
	}
	if v, _ := h.store.Get("cursor", []byte("c")); string(v) != "7" {
		t.Errorf("replayed enqueue's marks not committed: %q", v)
	}
	// Same key, different jti: still one SET.
	again := makeSET("s1", "j1-other")
	again.Key = sets[0].Key
	h.enqueue(again)
	if st, _ = h.ob.Stats(ctx, "s1"); st.Backlog != 2 {
		t.Errorf("same key enqueued twice: backlog %d", st.Backlog)
	}
	// An invalid batch commits nothing, marks included.
	bad := makeSET("s1", "")
	err = h.ob.Enqueue(ctx, []SET{bad}, []Mark{{Bucket: "journal", Key: []byte("intent-2"), Value: []byte("x")}})
	if err == nil {
		t.Fatal("SET without jti accepted")
	}
	if v, _ := h.store.Get("journal", []byte("intent-2")); v != nil {
		t.Error("marks of a refused batch committed")
	}
	h.enqueue(makeSET("nobody", "j9"))
	if n := h.ob.droppedUnknown.Load(); n != 1 {
		t.Errorf("dropped unknown = %d, want 1", n)
	}
	// Head SETs sort before everything queued.
	head := makeSET("s1", "head")
	head.Head = true
	h.enqueue(head)
	hist, err := h.ob.History(ctx, "s1", 10)
	if err != nil || len(hist) != 3 {
		t.Fatalf("History = %d records, %v", len(hist), err)
	}
	order := []string{hist[2].JTI, hist[1].JTI, hist[0].JTI} // History is newest (highest seq) first
	if fmt.Sprint(order) != "[head j1 j2]" {
		t.Errorf("queue order = %v, want [head j1 j2]", order)
	}
}

// TestStoreHealthHoldsFailure: a failed commit keeps the store failing
// while later commits succeed, for failingHold (a full disk still takes
// writes that reuse freed pages); a success after that clears it.
func TestStoreHealthHoldsFailure(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	s, err := Open(filepath.Join(t.TempDir(), "h.db"), StoreOptions{NoSync: true, Clock: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	commit := func() {
		t.Helper()
		if err := s.Commit(context.Background(), []Mark{{Bucket: "b", Key: []byte("k"), Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
	}
	full := errors.New("write h.db: file too large")
	s.setErr(full)
	now = now.Add(10 * time.Second)
	commit()
	if err := s.Healthy(); !errors.Is(err, full) {
		t.Fatalf("a success 10 s after a failure: Healthy = %v, want the failure", err)
	}
	now = now.Add(failingHold)
	commit()
	if err := s.Healthy(); err != nil {
		t.Fatalf("a success past the hold: Healthy = %v", err)
	}
}

// TestGroupCommitUnderLoad checks that concurrent writers share
// transactions when the processor is busy: with one P, the writers a commit
// releases are queued behind the writer goroutine, and without yielding to
// them it would commit each arrival on its own. A lone caller gets a
// transaction per write.
func TestGroupCommitUnderLoad(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	s, err := Open(filepath.Join(t.TempDir(), "g.db"), StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	write := func(w, i int) {
		key := []byte(fmt.Sprintf("w%03d-%04d", w, i))
		if err := s.Commit(context.Background(), []Mark{{Bucket: "g", Key: key, Value: key}}); err != nil {
			t.Error(err)
		}
	}
	const lone = 20
	before := s.stats()
	for i := range lone {
		write(0, i)
	}
	after := s.stats()
	if txns, writes := after.Transactions-before.Transactions, after.Writes-before.Writes; txns != lone || writes != lone {
		t.Fatalf("a lone caller: %d writes in %d transactions, want %d in %d", writes, txns, lone, lone)
	}

	const writers, each = 32, 40
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				write(w+1, i)
			}
		}()
	}
	wg.Wait()
	st := s.stats()
	txns, writes := st.Transactions-after.Transactions, st.Writes-after.Writes
	if writes != writers*each {
		t.Fatalf("Writes counted %d, want %d", writes, writers*each)
	}
	t.Logf("%.1f writes per transaction", float64(writes)/float64(txns))
	if per := float64(writes) / float64(txns); per < writers/4 {
		t.Fatalf("%d concurrent writers on one P: %.1f writes per transaction (%d transactions), want at least %d", writers, per, txns, writers/4)
	}
	n := 0
	if err := s.Scan("g", nil, func(k, v []byte) error { n++; return nil }); err != nil || n != lone+writers*each {
		t.Fatalf("scan: %d keys, err %v; want %d", n, err, lone+writers*each)
	}
}
