// Package ssftest is the behaviour suite of the ssf package's storage
// contracts: the stream store (streams, their subjects, push secrets
// sealed), the signing-key store (generated keys sealed in a shared store)
// and the management-call limit store. Every backend runs it from its own
// tests, one Run function a contract:
//
//	func TestStreamStore(t *testing.T) { ssftest.RunStreamStore(t, newStore) }
//	func TestKeyStore(t *testing.T)    { ssftest.RunKeyStore(t, newStore) }
//	func TestLimitStore(t *testing.T)  { ssftest.RunLimitStore(t, newStore) }
//
// where newStore makes a fresh, empty store for one test.
package ssftest

import (
	"bytes"
	"context"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// Store is a fresh, empty store made for one test.
type Store struct {
	// Open returns a handle on the store's data. With Shared, every call
	// returns another handle open at the same time (another process on
	// one database). Without it, a call closes the handle returned before
	// and opens the data again (a restart), so one handle is open at a
	// time. The store closes its handles when the test ends.
	Open func() ssf.KV
	// Shared says several handles may be open at once.
	Shared bool
}

// pair returns two handles on the store: two processes at once when it is
// shared, else two users of one process's handle.
func (s Store) pair() (a, b ssf.KV) {
	a = s.Open()
	if s.Shared {
		return a, s.Open()
	}
	return a, a
}

var ctx = context.Background()

// seal keys used throughout (any 32 bytes).
var (
	sealA = bytes.Repeat([]byte{0xa1}, 32)
	sealB = bytes.Repeat([]byte{0xb2}, 32)
)

// rawValues returns every value of the buckets in kv, as stored.
func rawValues(t *testing.T, kv ssf.KV, buckets ...string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, b := range buckets {
		err := kv.Scan(b, nil, func(k, v []byte) error {
			out[b+"/"+string(k)] = append([]byte(nil), v...)
			return nil
		})
		if err != nil {
			t.Fatalf("scan %s: %v", b, err)
		}
	}
	return out
}
