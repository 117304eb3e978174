package pgstore_test

import (
	"context"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/outboxtest"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
)

// TestBehaviour runs the outbox storage suite on PostgreSQL, as replicas
// sharing one schema.
func TestBehaviour(t *testing.T) {
	outboxtest.Suite{
		Shared: true,
		New: func(t *testing.T) func() kv.Backend {
			url, schema := pgtest.Schema(t)
			return func() kv.Backend {
				db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
				if err != nil {
					t.Fatal(err)
				}
				return db
			}
		},
		Notifier: func(t *testing.T, b kv.Backend) outbox.Notifier {
			n := pgstore.NewNotifier(b.(*pgstore.DB))
			t.Cleanup(n.Close)
			return n
		},
	}.Run(t)
}
