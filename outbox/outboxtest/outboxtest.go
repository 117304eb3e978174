// Package outboxtest is the behaviour suite of the outbox's storage
// contract (outbox/kv) and of what the outbox builds on it: the key/value
// API other packages persist through, marks with their fences and
// conditions, leases, the queue, and the notifier. Every backend runs it
// from its own tests:
//
//	func TestBehaviour(t *testing.T) {
//		outboxtest.Suite{New: newStore}.Run(t)
//	}
//
// Tests use real time only with short lease lifetimes, because a shared
// database measures leases on its own clock.
package outboxtest

import (
	"context"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// Suite describes a backend to the behaviour tests.
type Suite struct {
	// New makes a fresh, empty store for one test and returns how to open
	// it: every call of open returns a backend on the same data. The suite
	// closes every backend it opens (before opening the next one, unless
	// Shared).
	New func(t *testing.T) (open func() kv.Backend)
	// Shared says several backends on the same data may be open at once
	// (replicas sharing a database); the replica tests run only then.
	Shared bool
	// Notifier returns the notifier of a replica on backend b (nil: one
	// in-process notifier that every replica shares).
	Notifier func(t *testing.T, b kv.Backend) outbox.Notifier
}

// Run runs every behaviour test as a subtest.
func (s Suite) Run(t *testing.T) {
	t.Run("KV", s.testKV)
	t.Run("Cursor", s.testCursor)
	t.Run("Rollback", s.testRollback)
	t.Run("Prefetch", s.testPrefetch)
	t.Run("Sequence", s.testSequence)
	t.Run("ConcurrentUpdates", s.testConcurrentUpdates)
	t.Run("MarkConditions", s.testMarkConditions)
	t.Run("MarkFences", s.testMarkFences)
	t.Run("Leases", s.testLeases)
	t.Run("LeaseExpiry", s.testLeaseExpiry)
	t.Run("Queue", s.testQueue)
	t.Run("QueueDeadLetter", s.testQueueDeadLetter)
	t.Run("LastErrorKept", s.testLastErrorKept)
	t.Run("FailingKept", s.testFailingKept)
	t.Run("Notifier", s.testNotifier)
	t.Run("PollLeaseReplicas", s.testPollLeaseReplicas)
	t.Run("PollAckReplicas", s.testPollAckReplicas)
	t.Run("PollLeaseReopen", s.testPollLeaseReopen)
	t.Run("PollLeaseConcurrent", s.testPollLeaseConcurrent)
	t.Run("ReplicasPause", s.testReplicasPause)
	if s.Shared {
		t.Run("ReplicasEnqueue", s.testReplicasEnqueue)
		t.Run("ReplicasLease", s.testReplicasLease)
		t.Run("ReplicasDispatch", s.testReplicasDispatch)
	}
}

// store opens a backend of open as an outbox store, closed at the end of
// the test (or by the caller earlier; Close is idempotent).
func store(t *testing.T, open func() kv.Backend) *outbox.Store {
	t.Helper()
	st := outbox.NewStore(open(), outbox.StoreOptions{})
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// backend opens a raw backend, closed at the end of the test.
func backend(t *testing.T, open func() kv.Backend) kv.Backend {
	t.Helper()
	b := open()
	t.Cleanup(func() { _ = b.Close() })
	return b
}

var ctx = context.Background()
