package tap_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
	"github.com/ssf-sidecar/ssf-sidecar/tap/taptest"
)

func replicaOn(t *testing.T, st *outbox.Store) taptest.Replica {
	t.Helper()
	l, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return taptest.Replica{KV: tap.OutboxKV{S: st}, Lease: tap.StoreLease{L: l}}
}

// TestStorageBehaviourBolt runs the tap's storage suite on bbolt: one
// store in one process, which every replica view shares.
func TestStorageBehaviourBolt(t *testing.T) {
	taptest.Suite{New: func(t *testing.T) func() taptest.Replica {
		db, err := boltstore.Open(filepath.Join(t.TempDir(), "tap.db"), boltstore.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		st := outbox.NewStore(db, outbox.StoreOptions{})
		t.Cleanup(func() { _ = st.Close() })
		r := replicaOn(t, st)
		return func() taptest.Replica { return r }
	}}.Run(t)
}

// TestStorageBehaviourPostgreSQL runs the tap's storage suite on
// PostgreSQL, each replica view a store (and pool) of its own on one schema.
func TestStorageBehaviourPostgreSQL(t *testing.T) {
	taptest.Suite{Shared: true, New: func(t *testing.T) func() taptest.Replica {
		url, schema := pgtest.Schema(t)
		return func() taptest.Replica {
			db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
			if err != nil {
				t.Fatal(err)
			}
			st := outbox.NewStore(db, outbox.StoreOptions{})
			t.Cleanup(func() { _ = st.Close() })
			return replicaOn(t, st)
		}
	}}.Run(t)
}
