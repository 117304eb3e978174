package outbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// StoreOptions tunes the store. NoSync, Mode and OpenTimeout apply to the
// bbolt file Open opens; the rest to every backend.
type StoreOptions struct {
	// NoSync skips fsync on commit. Only for tests and benchmarks: a crash
	// may then lose committed data.
	NoSync bool
	// Mode is the file mode of a new database file (default 0600).
	Mode os.FileMode
	// OpenTimeout bounds waiting for the file lock held by another process
	// (default 5s).
	OpenTimeout time.Duration
	// MaxBatch caps how many queued writes one transaction takes
	// (default 4096).
	MaxBatch int
	// Logger receives write failures (default: discard).
	Logger *slog.Logger
	// Clock dates write failures for Healthy (default time.Now).
	Clock func() time.Time
}

// failingHold is how long a failed commit keeps Healthy failing although
// later commits succeed: a full disk still takes the small writes that
// reuse freed pages, and must not look healthy because of them.
const failingHold = time.Minute

// ErrStoreClosed is returned by writes after Close.
var ErrStoreClosed = errors.New("outbox: store closed")

// Store is the outbox's handle on its storage backend (outbox/kv: a bbolt
// file, or PostgreSQL shared by several replicas) and its group-commit
// writer. Every write goes through one goroutine that commits whatever is
// queued in one transaction, so concurrent writers share one fsync (or one
// database round of commits).
type Store struct {
	db      kv.Backend
	opts    StoreOptions
	log     *slog.Logger
	reqs    chan *writeReq
	closing chan struct{}
	done    chan struct{}
	once    sync.Once

	mu        sync.Mutex
	lastErr   error
	lastErrAt time.Time

	txns, writes atomic.Uint64 // stats

	// epoch is the backend's: for a bbolt file the count of its opens,
	// this one included, so leases taken under an earlier open have no
	// live holder (see StoreLeases); 0 for a shared database.
	epoch uint64
}

// writeReq is one queued write: fn runs inside the shared transaction.
// fn must only touch the transaction; in-memory effects belong after the
// commit succeeded (fn may run twice when a neighbour in the batch fails).
type writeReq struct {
	fn   func(tx kv.Tx) error
	done chan error
	// prefetch names keys fn will read, fetched for the whole batch at
	// once by backends whose reads are round trips (kv.Prefetcher).
	prefetch []kv.BucketKey
}

// Open opens (creating if needed) the bbolt file at path (outbox/boltstore)
// and starts its writer: the store of a single replica. The caller must
// Close it.
func Open(path string, opts StoreOptions) (*Store, error) {
	db, err := boltstore.Open(path, boltstore.Options{NoSync: opts.NoSync, Mode: opts.Mode, OpenTimeout: opts.OpenTimeout})
	if err != nil {
		return nil, err
	}
	s := NewStore(db, opts)
	if err := db.EpochErr(); err != nil {
		// Not fatal: the store opens as before and its writes report the
		// failure; only a later open may wait out this one's leases.
		s.log.Warn("outbox store: could not record this open", slog.Any("err", err))
	}
	return s, nil
}

// NewStore starts the group-commit writer on an open backend; Close closes
// both.
func NewStore(db kv.Backend, opts StoreOptions) *Store {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = 4096
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{
		epoch:   db.Epoch(),
		db:      db,
		opts:    opts,
		log:     opts.Logger,
		reqs:    make(chan *writeReq, opts.MaxBatch),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
	}
	go s.writer()
	return s
}

// Backend is the storage the store writes to.
func (s *Store) Backend() kv.Backend { return s.db }

// Close stops the writer after the queued writes and closes the file.
func (s *Store) Close() error {
	var err error
	s.once.Do(func() {
		close(s.closing)
		<-s.done
		err = s.db.Close()
	})
	return err
}

// Commit applies marks in one durable transaction (group-committed with
// whatever else is queued). It returns once the transaction is on disk.
func (s *Store) Commit(ctx context.Context, marks []Mark) error {
	if err := validateMarks(marks); err != nil {
		return err
	}
	return s.update(ctx, func(tx kv.Tx) error { return applyMarks(tx, marks) })
}

// Get returns a copy of the value, or (nil, nil) when the bucket or key is
// absent.
func (s *Store) Get(bucket string, key []byte) ([]byte, error) {
	var out []byte
	err := s.view(func(tx kv.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		if v := b.Get(key); v != nil {
			out = append([]byte{}, v...)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: get %s: %w", bucket, err)
	}
	return out, nil
}

// Scan calls fn for each key with the prefix, in key order; k and v are
// valid only during fn. An error from fn stops the scan and is returned.
func (s *Store) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	return s.view(func(tx kv.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && hasPrefix(k, prefix); k, v = c.Next() {
			if err := fn(k, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Healthy reports the last commit failure (for /healthz), until a commit
// succeeds at least failingHold after it; nil when writes work.
func (s *Store) Healthy() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// view runs fn in a read-only transaction.
func (s *Store) view(fn func(tx kv.Tx) error) error {
	return s.db.View(context.Background(), fn)
}

// update queues fn for the writer and waits until its transaction is
// durable. Cancelling ctx abandons the wait, not the write.
func (s *Store) update(ctx context.Context, fn func(tx kv.Tx) error) error {
	return s.updatePrefetch(ctx, nil, fn)
}

// updatePrefetch is update with the keys fn is going to read.
func (s *Store) updatePrefetch(ctx context.Context, prefetch []kv.BucketKey, fn func(tx kv.Tx) error) error {
	req := &writeReq{fn: fn, done: make(chan error, 1), prefetch: prefetch}
	select {
	case <-s.closing:
		return ErrStoreClosed
	default:
	}
	select {
	case s.reqs <- req:
	case <-s.closing:
		return ErrStoreClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// writer is the one goroutine that writes: it takes whatever is queued and
// commits it in one transaction.
func (s *Store) writer() {
	defer close(s.done)
	batch := make([]*writeReq, 0, s.opts.MaxBatch)
	shared := 0 // transactions to go since one held several writes
	for {
		var first *writeReq
		select {
		case first = <-s.reqs:
		case <-s.closing:
			// Finish what was queued before Close.
			for {
				select {
				case r := <-s.reqs:
					s.writes.Add(1)
					s.commit([]*writeReq{r})
				default:
					return
				}
			}
		}
		batch = s.fill(append(batch[:0], first))
		// With several writers about (this batch, or one of the last eight,
		// held more than one write), let the callers the last transaction
		// released run before committing. They are runnable, but queued
		// behind this goroutine; on a busy machine each would otherwise get
		// a transaction, and two fsyncs, of its own. Stop as soon as a yield
		// brings nothing new. A caller that has been writing alone for eight
		// transactions is committed without yielding.
		if len(batch) > 1 {
			shared = sharedMemory
		}
		for round := 0; shared > 0 && round < maxYields && len(batch) < s.opts.MaxBatch; round++ {
			n := len(batch)
			runtime.Gosched()
			if batch = s.fill(batch); len(batch) == n {
				break
			}
		}
		if len(batch) > 1 {
			shared = sharedMemory
		} else if shared > 0 {
			shared--
		}
		s.writes.Add(uint64(len(batch)))
		s.commit(batch)
		clear(batch)
	}
}

// maxYields bounds the yields before one commit; sharedMemory is for how
// many transactions a shared one keeps the writer yielding.
const (
	maxYields    = 4
	sharedMemory = 8
)

// fill adds whatever writes are queued, up to MaxBatch, without waiting.
func (s *Store) fill(batch []*writeReq) []*writeReq {
	for len(batch) < s.opts.MaxBatch {
		select {
		case r := <-s.reqs:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// storeStats counts the store's transactions since it was opened.
type storeStats struct {
	// Transactions is how many write transactions were attempted (a
	// batch with a refused write is retried one write per transaction);
	// Writes how many callers' writes were taken. Writes per transaction
	// shows how well group commit shares the fsyncs.
	Transactions uint64
	Writes       uint64
}

// stats returns the store's counters.
func (s *Store) stats() storeStats {
	return storeStats{Transactions: s.txns.Load(), Writes: s.writes.Load()}
}

// commit runs the batch in one transaction. When one function fails, the
// transaction is rolled back and every function is run alone, so only the
// failing caller sees its error.
func (s *Store) commit(batch []*writeReq) {
	failed := -1
	var err error
	for try := 0; ; try++ {
		s.txns.Add(1)
		failed = -1
		err = s.db.Update(context.Background(), func(tx kv.Tx) error {
			if p, ok := tx.(kv.Prefetcher); ok {
				var keys []kv.BucketKey
				for _, r := range batch {
					keys = append(keys, r.prefetch...)
				}
				p.Prefetch(keys)
			}
			for i, r := range batch {
				if err := r.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		// A conflict with another process sharing the store: the
		// transaction had no effect, run it again.
		if !errors.Is(err, kv.ErrConflict) || try == maxConflictRetries {
			break
		}
		time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond) << min(try, 6))))
	}
	if errors.Is(err, kv.ErrConflict) {
		failed = -1 // not any one caller's fault
	}
	if err == nil {
		s.setErr(nil)
		for _, r := range batch {
			r.done <- nil
		}
		return
	}
	if failed >= 0 && len(batch) == 1 {
		// The caller's own function refused (a stale fencing token, an
		// unknown stream): its error, the store is fine.
		batch[0].done <- err
		return
	}
	if failed < 0 {
		// The commit itself failed (disk full, I/O error): everyone fails.
		s.setErr(err)
		s.log.Error("outbox store commit failed", slog.Any("err", err), slog.Int("batch", len(batch)))
		for _, r := range batch {
			r.done <- fmt.Errorf("outbox: commit: %w", err)
		}
		return
	}
	for _, r := range batch {
		s.commit([]*writeReq{r})
	}
}

// maxConflictRetries bounds how often one batch is run again after
// conflicts with other processes before its callers get the error.
const maxConflictRetries = 12

// setErr records a commit's outcome for Healthy: a failure at once, a
// success only once failingHold has passed since the last failure.
func (s *Store) setErr(err error) {
	now := s.opts.Clock()
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case err != nil:
		s.lastErr, s.lastErrAt = err, now
	case s.lastErr != nil && now.Sub(s.lastErrAt) >= failingHold:
		s.lastErr = nil
	}
}

func validateMarks(marks []Mark) error {
	var errs []error
	for i, m := range marks {
		if m.Fence.Lease != "" && m.Bucket == "" && len(m.Key) == 0 {
			continue // a fence only
		}
		if m.Bucket == "" {
			errs = append(errs, fmt.Errorf("outbox: mark %d: empty bucket", i))
		}
		if len(m.Key) == 0 {
			errs = append(errs, fmt.Errorf("outbox: mark %d: empty key", i))
		}
	}
	return errors.Join(errs...)
}

// ErrCondition: a mark's IfValue condition did not hold (see
// ConditionError).
var ErrCondition = errors.New("outbox: mark condition failed")

// ConditionError is a commit refused because a mark's key no longer held
// the value the writer expected. It matches ErrCondition.
type ConditionError struct {
	Bucket string
	Key    []byte
}

func (e *ConditionError) Error() string {
	return fmt.Sprintf("outbox: mark condition failed: %s/%q changed", e.Bucket, e.Key)
}

// Is makes errors.Is(err, ErrCondition) hold.
func (e *ConditionError) Is(target error) bool { return target == ErrCondition }

// checkMarks checks every mark's conditions before any is applied.
func checkMarks(tx kv.Tx, marks []Mark) error {
	for _, m := range marks {
		if m.Fence.Lease != "" {
			if err := checkFence(tx, m.Fence.Lease, m.Fence.Token); err != nil {
				return err
			}
		}
		if !m.IfValue {
			continue
		}
		var cur []byte
		if b := tx.Bucket([]byte(m.Bucket)); b != nil {
			cur = b.Get(m.Key)
		}
		if (cur == nil) != (m.Expect == nil) || string(cur) != string(m.Expect) {
			return &ConditionError{Bucket: m.Bucket, Key: bytes.Clone(m.Key)}
		}
	}
	return nil
}

// applyMarks checks the marks' conditions, then applies them.
func applyMarks(tx kv.Tx, marks []Mark) error {
	if err := checkMarks(tx, marks); err != nil {
		return err
	}
	for _, m := range marks {
		if m.Bucket == "" && len(m.Key) == 0 {
			continue // a fence only
		}
		if m.Delete {
			b := tx.Bucket([]byte(m.Bucket))
			if b == nil {
				continue
			}
			if err := b.Delete(m.Key); err != nil {
				return fmt.Errorf("outbox: mark delete %s: %w", m.Bucket, err)
			}
			continue
		}
		b, err := tx.CreateBucketIfNotExists([]byte(m.Bucket))
		if err != nil {
			return fmt.Errorf("outbox: mark bucket %s: %w", m.Bucket, err)
		}
		v := m.Value
		if v == nil {
			v = []byte{}
		}
		if err := b.Put(m.Key, v); err != nil {
			return fmt.Errorf("outbox: mark put %s: %w", m.Bucket, err)
		}
	}
	return nil
}

func hasPrefix(k, p []byte) bool {
	return len(k) >= len(p) && string(k[:len(p)]) == string(p)
}
