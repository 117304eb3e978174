// Package taptest is the behaviour suite of the tap's storage contract: the
// KV the tap keeps its intent journal, event-API cursor and
// de-duplication records in, with the fences and value conditions on
// marks that let replicas share it, and the poller lease the cursor's
// writes are fenced with. Every backend the binary can put under the tap
// runs it from its own tests:
//
//	func TestTapStorage(t *testing.T) {
//		taptest.Suite{Shared: true, New: taptest.OnPostgreSQL(view)}.Run(t)
//	}
//
// OnBolt and OnPostgreSQL open the outbox store's two backends; View says
// how the caller adapts a store to the tap.
//
// The suite speaks only the tap's exported contract (tap.KV, tap.Mark,
// tap.PollerLease and the bucket names); it never waits on a clock.
package taptest

import (
	"context"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Replica is one replica's view of a store: what the binary hands a Tap.
type Replica struct {
	KV    tap.KV
	Lease tap.PollerLease
}

// Suite describes a backend to the behaviour tests.
type Suite struct {
	// New makes a fresh, empty store for one test and returns how to open
	// a replica's view of it: every call of open returns a view of the
	// same data. The backend closes what it opened when the test ends.
	New func(t *testing.T) (open func() Replica)
	// Shared says the views are separate connections, as separate
	// processes would have (a shared database); the concurrency tests
	// then run their writers on views of their own.
	Shared bool
}

// Run runs every behaviour test as a subtest.
func (s Suite) Run(t *testing.T) {
	t.Run("Journal", s.testJournal)
	t.Run("JournalClaim", s.testJournalClaim)
	t.Run("CursorFenced", s.testCursorFenced)
	t.Run("FenceOnlyMark", s.testFenceOnlyMark)
	t.Run("DedupCheckAndRecord", s.testDedupCheckAndRecord)
	t.Run("DedupNoLostUpdate", s.testDedupNoLostUpdate)
	t.Run("Prune", s.testPrune)
}

var ctx = context.Background()

// get reads a key, failing the test on error.
func get(t *testing.T, kv tap.KV, bucket, key string) []byte {
	t.Helper()
	v, err := kv.Get(bucket, []byte(key))
	if err != nil {
		t.Fatalf("Get %s/%s: %v", bucket, key, err)
	}
	return v
}

// scan lists key=value of a bucket under prefix, in order.
func scan(t *testing.T, kv tap.KV, bucket, prefix string) []string {
	t.Helper()
	var out []string
	err := kv.Scan(bucket, []byte(prefix), func(k, v []byte) error {
		out = append(out, string(k)+"="+string(v))
		return nil
	})
	if err != nil {
		t.Fatalf("Scan %s/%s: %v", bucket, prefix, err)
	}
	return out
}

func put(bucket, key, value string) tap.Mark {
	return tap.Mark{Bucket: bucket, Key: []byte(key), Value: []byte(value)}
}

// ifValue makes m conditional on the key holding expect (nil: absent).
func ifValue(m tap.Mark, expect []byte) tap.Mark {
	m.IfValue, m.Expect = true, expect
	return m
}
