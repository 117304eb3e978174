package ssftest_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/ssf/ssftest"
)

// boltStore is a bbolt file, one handle at a time: each open closes the
// one before (a restart).
func boltStore(t *testing.T) ssftest.Store {
	path := filepath.Join(t.TempDir(), "ssf.db")
	var mu sync.Mutex
	var cur *outbox.Store
	t.Cleanup(func() {
		if cur != nil {
			_ = cur.Close()
		}
	})
	return ssftest.Store{Open: func() ssf.KV {
		mu.Lock()
		defer mu.Unlock()
		if cur != nil {
			if err := cur.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
		}
		db, err := boltstore.Open(path, boltstore.Options{NoSync: true})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		cur = outbox.NewStore(db, outbox.StoreOptions{})
		return cur
	}}
}

// pgStore is a PostgreSQL schema of its own; every open is another
// process's pool on it.
func pgStore(t *testing.T) ssftest.Store {
	url, schema := pgtest.Schema(t)
	return ssftest.Store{Shared: true, Open: func() ssf.KV {
		db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		st := outbox.NewStore(db, outbox.StoreOptions{})
		t.Cleanup(func() { _ = st.Close() })
		return st
	}}
}

func TestStreamStoreBolt(t *testing.T)     { ssftest.RunStreamStore(t, boltStore) }
func TestStreamStorePostgres(t *testing.T) { ssftest.RunStreamStore(t, pgStore) }
func TestKeyStoreBolt(t *testing.T)        { ssftest.RunKeyStore(t, boltStore) }
func TestKeyStorePostgres(t *testing.T)    { ssftest.RunKeyStore(t, pgStore) }
func TestLimitStoreBolt(t *testing.T)      { ssftest.RunLimitStore(t, boltStore) }
func TestLimitStorePostgres(t *testing.T)  { ssftest.RunLimitStore(t, pgStore) }
