package sidecar

import (
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap/taptest"
)

// binaryView is what the binary hands the tap: storeKV and pollerLease.
func binaryView(st *outbox.Store, leases outbox.Leases) taptest.Replica {
	return taptest.Replica{KV: storeKV{st}, Lease: pollerLease{leases}}
}

// TestTapStorageOnTheBinarysAdapters runs the tap's storage suite through
// the binary's own adapters (so fences and conditions reach the outbox),
// on bbolt and on PostgreSQL.
func TestTapStorageOnTheBinarysAdapters(t *testing.T) {
	t.Run("bbolt", taptest.Suite{New: taptest.OnBolt(binaryView)}.Run)
	t.Run("PostgreSQL", taptest.Suite{Shared: true, New: taptest.OnPostgreSQL(binaryView)}.Run)
}
