package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	storekv "github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// BucketRateLimits holds one management-call token bucket per receiver
// (key: the receiver's name).
const BucketRateLimits = "ssf_ratelimit"

// LimitBucket is the shape of a token bucket: Burst tokens when full, one
// more every Interval.
type LimitBucket struct {
	Burst    int
	Interval time.Duration
}

// LimitStore keeps the management-call token buckets, one per receiver.
// Take is one atomic step: refill the receiver's bucket for the time since
// its last take (a bucket never seen is full; one whose last take lies after
// now is not refilled), take a token if there is a whole one, and keep the
// result. It reports whether a token was taken and, if not, how long until
// one will be. A refused take needs no write.
//
// An error means the outcome could not be kept (or the state not read);
// the caller serves the call then. A backend shared by several replicas
// must make Take atomic across them (a row lock, a compare-and-swap).
type LimitStore interface {
	Take(ctx context.Context, receiver string, now time.Time, b LimitBucket) (ok bool, wait time.Duration, err error)
}

// kvLimitStore is the LimitStore on a KV: each receiver's bucket is one
// entry of BucketRateLimits, written through the KV (for the outbox store,
// its group-committing writer) before a call is served. A per-receiver
// mutex makes each take atomic within the process and a cache of what was
// last written spares a read per call; the persisted entry is what the
// next process starts from. A KV shared between processes needs a
// different LimitStore: this cache would not see the others' takes.
type kvLimitStore struct {
	kv KV // nil: memory only

	mu      sync.Mutex
	buckets map[string]*limitEntry
}

type limitEntry struct {
	mu     sync.Mutex
	loaded bool // state is what the KV holds (or memory-only)
	state  bucketState
}

// bucketState is the persisted form of one bucket.
type bucketState struct {
	Tokens float64   `json:"tokens"`
	At     time.Time `json:"at"`
}

// NewKVLimitStore returns a LimitStore keeping its buckets in kv. With a nil
// kv the buckets live in memory only and a restart refills them.
func NewKVLimitStore(kv KV) LimitStore {
	return &kvLimitStore{kv: kv, buckets: map[string]*limitEntry{}}
}

func (s *kvLimitStore) entry(receiver string) *limitEntry {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.buckets[receiver]
	if e == nil {
		e = &limitEntry{loaded: s.kv == nil}
		s.buckets[receiver] = e
	}
	return e
}

func (s *kvLimitStore) Take(ctx context.Context, receiver string, now time.Time, b LimitBucket) (bool, time.Duration, error) {
	e := s.entry(receiver)
	e.mu.Lock()
	defer e.mu.Unlock()
	var readErr error
	if !e.loaded {
		st, found, err := s.load(receiver)
		switch {
		case err != nil:
			// Serve from a full bucket; the next take reads again.
			readErr = err
			e.state = bucketState{Tokens: float64(b.Burst), At: now}
		case !found:
			e.state = bucketState{Tokens: float64(b.Burst), At: now}
			e.loaded = true
		default:
			e.state, e.loaded = st, true
		}
	}
	fromFuture := e.state.At.After(now)
	next, ok, wait := refill(e.state, now, b)
	if !ok && !fromFuture {
		// Nothing to write: the refill follows from the stored state.
		return false, wait, readErr
	}
	if ok {
		next.Tokens--
	}
	// Memory follows even when the write fails, so the limit still holds
	// in this process while the store cannot keep it.
	e.state = next
	if s.kv != nil {
		// A take, or (rarely) a bucket dated after now because the clock
		// was set back: its new reference time is kept, or it would not
		// refill until the clock caught up.
		if err := s.save(ctx, receiver, next); err != nil {
			return ok, wait, err
		}
	}
	return ok, wait, readErr
}

func (s *kvLimitStore) save(ctx context.Context, receiver string, st bucketState) error {
	val, err := json.Marshal(st)
	if err == nil {
		err = s.kv.Commit(ctx, []outbox.Mark{{Bucket: BucketRateLimits, Key: []byte(receiver), Value: val}})
	}
	if err != nil {
		return fmt.Errorf("ssf: keep the call bucket of %q: %w", receiver, err)
	}
	return nil
}

// load reads a receiver's bucket; an entry that does not decode counts as
// absent (a full bucket) rather than as an error that would repeat on
// every call.
func (s *kvLimitStore) load(receiver string) (bucketState, bool, error) {
	v, err := s.kv.Get(BucketRateLimits, []byte(receiver))
	if err != nil {
		return bucketState{}, false, fmt.Errorf("ssf: read the call bucket of %q: %w", receiver, err)
	}
	if v == nil {
		return bucketState{}, false, nil
	}
	st, err := decodeBucketState(v)
	if err != nil {
		return bucketState{}, false, nil
	}
	return st, true, nil
}

func decodeBucketState(v []byte) (bucketState, error) {
	var st bucketState
	if err := json.Unmarshal(v, &st); err != nil {
		return bucketState{}, err
	}
	if math.IsNaN(st.Tokens) || math.IsInf(st.Tokens, 0) || st.At.IsZero() {
		return bucketState{}, errors.New("ssf: call bucket entry out of range")
	}
	return st, nil
}

// refill brings st up to now and reports whether a whole token is there
// and, if not, how long until one is. Tokens stay between zero and the
// burst (which may have been lowered since the state was written); a state
// from the future (the clock was set back) is treated as written now.
func refill(st bucketState, now time.Time, b LimitBucket) (bucketState, bool, time.Duration) {
	burst := float64(b.Burst)
	if st.At.After(now) {
		st.At = now
	}
	if el := now.Sub(st.At); el > 0 && b.Interval > 0 {
		st.Tokens += float64(el) / float64(b.Interval)
		st.At = now
	}
	if b.Interval <= 0 {
		st.Tokens, st.At = burst, now
	}
	st.Tokens = math.Max(0, math.Min(burst, st.Tokens))
	if st.Tokens >= 1 {
		return st, true, 0
	}
	return st, false, time.Duration((1 - st.Tokens) * float64(b.Interval))
}

// sharedLimitStore is the LimitStore on a KV that several processes share
// (replicas on one database): every take reads the receiver's entry and
// writes the new one on condition that it is still what was read, trying
// again when another process took meanwhile. Nothing is cached.
type sharedLimitStore struct{ kv KV }

// NewSharedLimitStore returns a LimitStore keeping its buckets in kv, which
// other processes may use at once: each take is a compare-and-swap on the
// receiver's entry, so replicas share one bucket per receiver.
func NewSharedLimitStore(kv KV) LimitStore { return sharedLimitStore{kv: kv} }

// sharedTakeTries bounds the compare-and-swap loop of one take.
const sharedTakeTries = 50

func (s sharedLimitStore) Take(ctx context.Context, receiver string, now time.Time, b LimitBucket) (bool, time.Duration, error) {
	for try := 0; ; try++ {
		old, err := s.kv.Get(BucketRateLimits, []byte(receiver))
		if err != nil {
			return true, 0, fmt.Errorf("ssf: read the call bucket of %q: %w", receiver, err)
		}
		st := bucketState{Tokens: float64(b.Burst), At: now}
		if old != nil {
			if got, err := decodeBucketState(old); err == nil {
				st = got
			}
		}
		fromFuture := st.At.After(now)
		next, ok, wait := refill(st, now, b)
		if !ok && !fromFuture {
			return false, wait, nil
		}
		if ok {
			next.Tokens--
		}
		val, err := json.Marshal(next)
		if err != nil {
			return ok, wait, err
		}
		err = s.kv.Commit(ctx, []outbox.Mark{{Bucket: BucketRateLimits, Key: []byte(receiver), Value: val, IfValue: true, Expect: old}})
		if err == nil {
			return ok, wait, nil
		}
		if !errors.Is(err, outbox.ErrCondition) || try >= sharedTakeTries || ctx.Err() != nil {
			return ok, wait, fmt.Errorf("ssf: keep the call bucket of %q: %w", receiver, err)
		}
	}
}

// NewLimitStore returns the LimitStore for kv: NewSharedLimitStore when
// other processes share kv at once (an outbox store on a database), else
// NewKVLimitStore.
func NewLimitStore(kv KV) LimitStore {
	if sharedKV(kv) {
		return NewSharedLimitStore(kv)
	}
	return NewKVLimitStore(kv)
}

// sharedKV reports whether kv is a store that other processes share at
// once (an outbox store whose backend has no epoch: a database).
func sharedKV(kv KV) bool {
	s, ok := kv.(interface{ Backend() storekv.Backend })
	return ok && s.Backend().Epoch() == 0
}
