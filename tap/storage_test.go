package tap_test

import (
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
	"github.com/ssf-sidecar/ssf-sidecar/tap/taptest"
)

func outboxView(st *outbox.Store, leases outbox.Leases) taptest.Replica {
	return taptest.Replica{KV: tap.OutboxKV{S: st}, Lease: tap.StoreLease{L: leases}}
}

// TestStorageBehaviour runs the tap's storage suite over the outbox store
// on bbolt (one store in one process) and on PostgreSQL (a store per
// replica on one schema). cmd runs it again through the binary's own
// adapters.
func TestStorageBehaviour(t *testing.T) {
	t.Run("bbolt", taptest.Suite{New: taptest.OnBolt(outboxView)}.Run)
	t.Run("PostgreSQL", taptest.Suite{Shared: true, New: taptest.OnPostgreSQL(outboxView)}.Run)
}
