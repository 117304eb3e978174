// Package kv is the storage contract the outbox is written against: an
// ordered key/value store of named buckets with serialisable read-write
// transactions. The outbox keeps queue semantics (enqueue, dispatch, push,
// poll, sweep, admin) in terms of these operations; a backend only has to
// store bytes in order. outbox/boltstore implements it on bbolt (one
// process), outbox/pgstore on PostgreSQL (several replicas).
//
// The contract's behaviour suite is outbox/outboxtest.
package kv

import (
	"context"
	"errors"
	"time"
)

// Backend is one durable store.
type Backend interface {
	// Update runs fn in one read-write transaction and commits it durably
	// when fn returns nil; an error from fn rolls everything back and is
	// returned. fn may be run more than once (see ErrConflict), so it must
	// have no effect outside the transaction.
	Update(ctx context.Context, fn func(Tx) error) error
	// View runs fn in a read-only transaction that sees one consistent
	// state.
	View(ctx context.Context, fn func(Tx) error) error
	// Epoch tells the opens of a store held by one process at a time
	// apart: it grows with every open, and state (a lease) recorded under
	// another epoch has no live holder. A store that several processes
	// share at once returns 0, and its leases end only by expiry.
	Epoch() uint64
	// Close releases the store.
	Close() error
}

// Tx is one transaction.
type Tx interface {
	// Bucket returns the named bucket, or nil when it does not exist. A
	// backend without real buckets may return an empty one instead.
	Bucket(name []byte) Bucket
	// CreateBucketIfNotExists returns the named bucket, creating it (in a
	// read-write transaction only).
	CreateBucketIfNotExists(name []byte) (Bucket, error)
	// Now is the backend's own clock when it has one that every process
	// sharing the store agrees on (a database server's now()); ok is false
	// when the backend has none and callers use their own clock.
	Now() (t time.Time, ok bool)
}

// Bucket is an ordered set of keys, compared as unsigned bytes.
type Bucket interface {
	// Get returns the value of key, or nil when it is absent (an empty
	// value is a non-nil, empty slice). The slice is valid only during
	// the transaction.
	Get(key []byte) []byte
	// Put sets key to value (nil stores an empty value).
	Put(key, value []byte) error
	// Delete removes key; an absent key is not an error.
	Delete(key []byte) error
	// Cursor iterates the bucket in key order.
	Cursor() Cursor
	// ForEach calls fn for every key in order; an error stops it.
	ForEach(fn func(k, v []byte) error) error
	// NextSequence returns the bucket's next sequence number: it only
	// grows, across transactions and reopens.
	NextSequence() (uint64, error)
}

// Cursor walks a bucket. Each move returns the key and value it lands on,
// or a nil key past either end; both slices are valid only during the
// transaction. Writes made in the transaction are seen by moves made after
// them.
type Cursor interface {
	First() (k, v []byte)
	Last() (k, v []byte)
	// Seek moves to the first key at or after seek.
	Seek(seek []byte) (k, v []byte)
	Next() (k, v []byte)
	Prev() (k, v []byte)
	// Delete removes the key the cursor is on.
	Delete() error
}

// ErrConflict says a transaction could not commit because a concurrent
// one, in another process sharing the store, touched the same data. The
// transaction had no effect; running it again is the remedy.
var ErrConflict = errors.New("kv: transaction conflicts with a concurrent one")

// ErrClosed is returned by transactions on a closed backend.
var ErrClosed = errors.New("kv: store closed")

// BucketKey names one key of one bucket.
type BucketKey struct {
	Bucket, Key []byte
}

// Prefetcher is an optional Tx capability of a backend whose reads are
// round trips: Prefetch reads the named keys at once, so the Gets that
// follow in the transaction are answered without another trip. It is only
// a hint; a backend without it is read key by key.
type Prefetcher interface {
	Prefetch(keys []BucketKey)
}
