package boltstore_test

import (
	"path/filepath"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/outboxtest"
)

// TestBehaviour runs the outbox storage suite on a bbolt file.
func TestBehaviour(t *testing.T) {
	outboxtest.Suite{New: func(t *testing.T) func() kv.Backend {
		path := filepath.Join(t.TempDir(), "suite.db")
		return func() kv.Backend {
			db, err := boltstore.Open(path, boltstore.Options{NoSync: true})
			if err != nil {
				t.Fatal(err)
			}
			return db
		}
	}}.Run(t)
}
