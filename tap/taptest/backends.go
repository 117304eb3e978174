package taptest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
)

// View adapts an outbox store and its leases to what a Tap is handed.
type View func(st *outbox.Store, leases outbox.Leases) Replica

// OnBolt is a Suite.New over a fresh bbolt file: one store in one process,
// which every replica view shares (Shared false).
func OnBolt(view View) func(t *testing.T) func() Replica {
	return func(t *testing.T) func() Replica {
		db, err := boltstore.Open(filepath.Join(t.TempDir(), "tap.db"), boltstore.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		r := viewOf(t, db, view)
		return func() Replica { return r }
	}
}

// OnPostgreSQL is a Suite.New over a fresh schema on the test server
// (pgtest): each replica view is a store and pool of its own, as separate
// processes have (Shared true).
func OnPostgreSQL(view View) func(t *testing.T) func() Replica {
	return func(t *testing.T) func() Replica {
		url, schema := pgtest.Schema(t)
		return func() Replica {
			db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			return viewOf(t, db, view)
		}
	}
}

func viewOf(t *testing.T, db kv.Backend, view View) Replica {
	t.Helper()
	st := outbox.NewStore(db, outbox.StoreOptions{})
	t.Cleanup(func() { _ = st.Close() })
	leases, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return view(st, leases)
}
