package outboxtest

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// testKV: Commit, Get and Scan as other packages use them, and that they
// survive a reopen.
func (s Suite) testKV(t *testing.T) {
	open := s.New(t)
	st := outbox.NewStore(open(), outbox.StoreOptions{})
	if v, err := st.Get("b", []byte("nope")); v != nil || err != nil {
		t.Fatalf("Get of a key never written = %q, %v; want nil, nil", v, err)
	}
	marks := []outbox.Mark{
		{Bucket: "b", Key: []byte("k1"), Value: []byte("v1")},
		{Bucket: "b", Key: []byte("k2"), Value: []byte{}},
		{Bucket: "b", Key: []byte("k3"), Value: []byte("gone")},
		{Bucket: "b", Key: []byte{0xff, 0x01}, Value: []byte("high")},
		{Bucket: "b", Key: []byte{0x01, 0xff}, Value: []byte("low")},
		{Bucket: "other", Key: []byte("k1"), Value: []byte("elsewhere")},
	}
	if err := st.Commit(ctx, marks); err != nil {
		t.Fatal(err)
	}
	if err := st.Commit(ctx, []outbox.Mark{{Bucket: "b", Key: []byte("k3"), Delete: true}, {Bucket: "never", Key: []byte("x"), Delete: true}}); err != nil {
		t.Fatalf("delete (also in a bucket never written): %v", err)
	}
	if err := st.Commit(ctx, []outbox.Mark{{Key: []byte("x")}, {Bucket: "b"}}); err == nil {
		t.Fatal("marks without bucket or key were accepted")
	}
	check := func(t *testing.T, st *outbox.Store) {
		t.Helper()
		v, err := st.Get("b", []byte("k1"))
		if err != nil || string(v) != "v1" {
			t.Errorf("Get k1 = %q, %v", v, err)
		}
		v[0] = 'X' // a copy: must not change the store
		if v, _ := st.Get("b", []byte("k1")); string(v) != "v1" {
			t.Errorf("Get returned the store's own bytes: now %q", v)
		}
		if v, err := st.Get("b", []byte("k2")); err != nil || v == nil || len(v) != 0 {
			t.Errorf("Get of an empty value = %#v, %v; want empty, not nil", v, err)
		}
		if v, err := st.Get("b", []byte("k3")); err != nil || v != nil {
			t.Errorf("Get of a deleted key = %q, %v", v, err)
		}
		if v, _ := st.Get("other", []byte("k1")); string(v) != "elsewhere" {
			t.Errorf("buckets are not separate: %q", v)
		}
		var keys []string
		err = st.Scan("b", nil, func(k, v []byte) error {
			keys = append(keys, fmt.Sprintf("%x=%s", k, v))
			return nil
		})
		want := "[01ff=low 6b31=v1 6b32= ff01=high]"
		if err != nil || fmt.Sprint(keys) != want {
			t.Errorf("Scan = %v, %v; want %s (unsigned byte order)", keys, err, want)
		}
		keys = nil
		_ = st.Scan("b", []byte("k"), func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
		if fmt.Sprint(keys) != "[k1 k2]" {
			t.Errorf("Scan with prefix k = %v", keys)
		}
		stop := errors.New("stop")
		n := 0
		if err := st.Scan("b", nil, func(k, _ []byte) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
			t.Errorf("Scan stopped by fn = %v after %d keys", err, n)
		}
		if err := st.Scan("never", nil, func(k, _ []byte) error { return errors.New("called") }); err != nil {
			t.Errorf("Scan of an empty bucket: %v", err)
		}
	}
	check(t, st)
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("after reopen", func(t *testing.T) { check(t, store(t, open)) })
}

// testCursor walks a bucket every way the outbox does.
func (s Suite) testCursor(t *testing.T) {
	b := backend(t, s.New(t))
	keys := [][]byte{{0x00}, {0x01}, []byte("a"), []byte("a\x00\x01"), []byte("ab"), []byte("b"), {0x7f}, {0x80}, {0xff}, {0xff, 0xff}}
	err := b.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("c"))
		if err != nil {
			return err
		}
		for i := len(keys) - 1; i >= 0; i-- { // written out of order
			if err := bk.Put(keys[i], []byte{byte(i)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = b.View(ctx, func(tx kv.Tx) error {
		c := tx.Bucket([]byte("c")).Cursor()
		i := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if i >= len(keys) || !bytes.Equal(k, keys[i]) || !bytes.Equal(v, []byte{byte(i)}) {
				t.Fatalf("forward walk step %d: %x=%x", i, k, v)
			}
			i++
		}
		if i != len(keys) {
			t.Errorf("forward walk saw %d keys, want %d", i, len(keys))
		}
		i = len(keys) - 1
		for k, _ := c.Last(); k != nil; k, _ = c.Prev() {
			if i < 0 || !bytes.Equal(k, keys[i]) {
				t.Fatalf("backward walk at %d: %x", i, k)
			}
			i--
		}
		if i != -1 {
			t.Errorf("backward walk stopped at %d", i)
		}
		if k, _ := c.Seek([]byte("a\x00")); !bytes.Equal(k, []byte("a\x00\x01")) {
			t.Errorf("Seek(a NUL) = %q", k)
		}
		if k, _ := c.Next(); string(k) != "ab" {
			t.Errorf("Next after Seek = %q", k)
		}
		if k, _ := c.Prev(); !bytes.Equal(k, []byte("a\x00\x01")) {
			t.Errorf("Prev after Next = %q", k)
		}
		if k, _ := c.Seek([]byte("ab")); string(k) != "ab" {
			t.Errorf("Seek of an existing key = %q", k)
		}
		if k, _ := c.Seek([]byte{0xff, 0xff, 0x00}); k != nil {
			t.Errorf("Seek past the end = %x, want nil", k)
		}
		if k, _ := c.Last(); !bytes.Equal(k, []byte{0xff, 0xff}) {
			t.Errorf("Last = %x", k)
		}
		if k, _ := c.Next(); k != nil {
			t.Errorf("Next past Last = %x", k)
		}
		if k, _ := c.First(); !bytes.Equal(k, []byte{0}) {
			t.Errorf("First = %x", k)
		}
		if k, _ := c.Prev(); k != nil {
			t.Errorf("Prev before First = %x", k)
		}
		var seen int
		if err := tx.Bucket([]byte("c")).ForEach(func(k, v []byte) error { seen++; return nil }); err != nil || seen != len(keys) {
			t.Errorf("ForEach saw %d, %v", seen, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Deleting while walking, and writes seen by later moves.
	err = b.Update(ctx, func(tx kv.Tx) error {
		bk := tx.Bucket([]byte("c"))
		c := bk.Cursor()
		n := 0
		for k, _ := c.Seek([]byte("a")); k != nil && k[0] == 'a'; k, _ = c.Seek([]byte("a")) {
			if err := c.Delete(); err != nil {
				return err
			}
			n++
		}
		if n != 3 {
			t.Errorf("deleted %d keys with prefix a, want 3", n)
		}
		if err := bk.Put([]byte("aa"), []byte("new")); err != nil {
			return err
		}
		if k, v := c.Seek([]byte("a")); string(k) != "aa" || string(v) != "new" {
			t.Errorf("Seek after a Put in the same transaction = %q=%q", k, v)
		}
		if v := bk.Get([]byte("aa")); string(v) != "new" {
			t.Errorf("Get after a Put in the same transaction = %q", v)
		}
		if err := bk.Delete([]byte("aa")); err != nil {
			return err
		}
		if v := bk.Get([]byte("aa")); v != nil {
			t.Errorf("Get after Delete in the same transaction = %q", v)
		}
		if k, _ := c.Seek([]byte("a")); string(k) != "b" {
			t.Errorf("Seek after Delete in the same transaction = %q, want b", k)
		}
		for k, _ := c.First(); k != nil; k, _ = c.First() { // sweep style
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = b.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket([]byte("c")); bk != nil {
			if k, _ := bk.Cursor().First(); k != nil {
				t.Errorf("bucket not empty after deleting everything: %x", k)
			}
		}
		return nil
	})
}

// testRollback: a transaction whose function fails leaves nothing, and
// neither does a refused write in a group commit of the outbox store.
func (s Suite) testRollback(t *testing.T) {
	open := s.New(t)
	b := backend(t, open)
	boom := errors.New("boom")
	err := b.Update(ctx, func(tx kv.Tx) error {
		bk, err := tx.CreateBucketIfNotExists([]byte("r"))
		if err != nil {
			return err
		}
		if err := bk.Put([]byte("k"), []byte("v")); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update = %v, want the function's error", err)
	}
	_ = b.View(ctx, func(tx kv.Tx) error {
		if bk := tx.Bucket([]byte("r")); bk != nil && bk.Get([]byte("k")) != nil {
			t.Error("a failed transaction's write landed")
		}
		return nil
	})
}

// testSequence: NextSequence only grows, also across reopens.
func (s Suite) testSequence(t *testing.T) {
	open := s.New(t)
	var last uint64
	for round := range 2 {
		b := open()
		for range 3 {
			err := b.Update(ctx, func(tx kv.Tx) error {
				bk, err := tx.CreateBucketIfNotExists([]byte("seq"))
				if err != nil {
					return err
				}
				n, err := bk.NextSequence()
				if err != nil {
					return err
				}
				if n <= last {
					t.Errorf("round %d: NextSequence = %d after %d", round, n, last)
				}
				last = n
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
		_ = b.Close()
	}
}

// testConcurrentUpdates: read-modify-write transactions from many
// goroutines (on two backends when the store is shared) lose no update. A
// conflict (kv.ErrConflict) is retried, as the outbox store's writer does.
func (s Suite) testConcurrentUpdates(t *testing.T) {
	open := s.New(t)
	backends := []kv.Backend{backend(t, open)}
	if s.Shared {
		backends = append(backends, backend(t, open))
	}
	const workers, each = 8, 10
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := backends[w%len(backends)]
			for range each {
				for try := 0; ; try++ {
					err := b.Update(ctx, func(tx kv.Tx) error {
						bk, err := tx.CreateBucketIfNotExists([]byte("n"))
						if err != nil {
							return err
						}
						n := 0
						if v := bk.Get([]byte("count")); v != nil {
							fmt.Sscan(string(v), &n)
						}
						return bk.Put([]byte("count"), fmt.Append(nil, n+1))
					})
					if err == nil {
						break
					}
					if !errors.Is(err, kv.ErrConflict) || try > 50 {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	_ = backends[0].View(ctx, func(tx kv.Tx) error {
		v := tx.Bucket([]byte("n")).Get([]byte("count"))
		if string(v) != fmt.Sprint(workers*each) {
			t.Errorf("count = %s, want %d: updates were lost", v, workers*each)
		}
		return nil
	})
}

// testPrefetch: a backend's prefetch hint never changes what Gets see,
// before or after writes in the same transaction.
func (s Suite) testPrefetch(t *testing.T) {
	b := backend(t, s.New(t))
	err := b.Update(ctx, func(tx kv.Tx) error {
		bk, _ := tx.CreateBucketIfNotExists([]byte("p"))
		_ = bk.Put([]byte("a"), []byte("1"))
		return bk.Put([]byte("e"), nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Update(ctx, func(tx kv.Tx) error {
		p, ok := tx.(kv.Prefetcher)
		if !ok {
			t.Skip("the backend does not prefetch")
		}
		bk := tx.Bucket([]byte("p"))
		name := []byte("p")
		p.Prefetch([]kv.BucketKey{{Bucket: name, Key: []byte("a")}, {Bucket: name, Key: []byte("b")}, {Bucket: name, Key: []byte("e")}, {Bucket: []byte("q"), Key: []byte("a")}})
		if v := bk.Get([]byte("a")); string(v) != "1" {
			t.Errorf("prefetched a = %q", v)
		}
		if v := bk.Get([]byte("b")); v != nil {
			t.Errorf("prefetched absent b = %q", v)
		}
		if v := bk.Get([]byte("e")); v == nil || len(v) != 0 {
			t.Errorf("prefetched empty e = %#v", v)
		}
		if v := tx.Bucket([]byte("q")).Get([]byte("a")); v != nil {
			t.Errorf("another bucket's a = %q", v)
		}
		_ = bk.Put([]byte("b"), []byte("2"))
		_ = bk.Delete([]byte("a"))
		if k, _ := bk.Cursor().First(); string(k) != "b" { // flushes the writes
			t.Errorf("First = %q", k)
		}
		p.Prefetch([]kv.BucketKey{{Bucket: name, Key: []byte("a")}, {Bucket: name, Key: []byte("b")}})
		if v := bk.Get([]byte("b")); string(v) != "2" {
			t.Errorf("b after Put = %q", v)
		}
		if v := bk.Get([]byte("a")); v != nil {
			t.Errorf("a after Delete = %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
