// Package boltstore is the outbox's storage contract (outbox/kv) on one
// bbolt file: the embedded default for a single replica. The file is held
// by one process at a time.
package boltstore

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// Options tunes how the file is opened.
type Options struct {
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash
	// may then lose committed data.
	NoSync bool
	// Mode is the file mode of a new database file (default 0600).
	Mode os.FileMode
	// OpenTimeout bounds waiting for the file lock held by another process
	// (default 5s).
	OpenTimeout time.Duration
}

// DB is an open bbolt file; it implements kv.Backend.
type DB struct {
	db       *bolt.DB
	epoch    uint64
	epochErr error
}

var _ kv.Backend = (*DB)(nil)

// Open opens (creating if needed) the bbolt file at path, creating its
// directory, and counts this open (Epoch).
func Open(path string, opts Options) (*DB, error) {
	if opts.Mode == 0 {
		opts.Mode = 0o600
	}
	if opts.OpenTimeout <= 0 {
		opts.OpenTimeout = 5 * time.Second
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("outbox: create data dir: %w", err)
		}
	}
	db, err := bolt.Open(path, opts.Mode, &bolt.Options{
		Timeout:        opts.OpenTimeout,
		NoSync:         opts.NoSync,
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: open %s: %w", path, err)
	}
	d := &DB{db: db}
	d.epoch, d.epochErr = bumpEpoch(db)
	return d, nil
}

// EpochErr is the failure to record this open (a full disk), or nil. The
// store still works; only a later open may have to wait out this one's
// leases.
func (d *DB) EpochErr() error { return d.epochErr }

// Epoch implements kv.Backend: the count of opens of the file.
func (d *DB) Epoch() uint64 { return d.epoch }

// Close implements kv.Backend.
func (d *DB) Close() error { return d.db.Close() }

// Bolt is the underlying database, for tests that inspect the file.
func (d *DB) Bolt() *bolt.DB { return d.db }

// Update implements kv.Backend.
func (d *DB) Update(_ context.Context, fn func(kv.Tx) error) error {
	return d.db.Update(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

// View implements kv.Backend.
func (d *DB) View(_ context.Context, fn func(kv.Tx) error) error {
	return d.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Bucket(name []byte) kv.Bucket {
	b := t.tx.Bucket(name)
	if b == nil {
		return nil // an untyped nil, so callers' nil checks hold
	}
	return boltBucket{b}
}

func (t boltTx) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	b, err := t.tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return boltBucket{b}, nil
}

func (boltTx) Now() (time.Time, bool) { return time.Time{}, false }

type boltBucket struct{ b *bolt.Bucket }

func (b boltBucket) Get(key []byte) []byte                    { return b.b.Get(key) }
func (b boltBucket) Put(key, value []byte) error              { return b.b.Put(key, value) }
func (b boltBucket) Delete(key []byte) error                  { return b.b.Delete(key) }
func (b boltBucket) Cursor() kv.Cursor                        { return b.b.Cursor() }
func (b boltBucket) ForEach(fn func(k, v []byte) error) error { return b.b.ForEach(fn) }
func (b boltBucket) NextSequence() (uint64, error)            { return b.b.NextSequence() }

// Where this open is counted. Earlier versions kept the count among the
// outbox's leases; it is carried over from there once.
var (
	bktMeta       = []byte("boltstore.meta")
	epochKey      = []byte("epoch")
	legacyBucket  = []byte("outbox.leases")
	legacyEpochAt = []byte("\x00epoch")
)

// bumpEpoch counts this open of the file and returns the new count. When
// the count cannot be written (a full disk), it still returns one more
// than the stored count, with the error: this open's leases are then told
// from the earlier ones all the same.
func bumpEpoch(db *bolt.DB) (uint64, error) {
	var epoch uint64
	_ = db.View(func(tx *bolt.Tx) error {
		for _, at := range [][2][]byte{{bktMeta, epochKey}, {legacyBucket, legacyEpochAt}} {
			if b := tx.Bucket(at[0]); b != nil {
				if v := b.Get(at[1]); len(v) == 8 {
					epoch = max(epoch, binary.BigEndian.Uint64(v))
				}
			}
		}
		return nil
	})
	epoch++
	err := db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bktMeta)
		if err != nil {
			return err
		}
		return b.Put(epochKey, binary.BigEndian.AppendUint64(nil, epoch))
	})
	if err != nil {
		return epoch, fmt.Errorf("outbox: count store open: %w", err)
	}
	return epoch, nil
}

// BucketInfo names one top-level bucket and its NextSequence counter.
type BucketInfo struct {
	Name     []byte
	Sequence uint64
}

// Buckets lists the file's top-level buckets in name order (for copying a
// store to another backend).
func (d *DB) Buckets() ([]BucketInfo, error) {
	var out []BucketInfo
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			out = append(out, BucketInfo{Name: append([]byte(nil), name...), Sequence: b.Sequence()})
			return nil
		})
	})
	return out, err
}
