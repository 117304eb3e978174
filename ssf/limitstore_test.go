package ssf

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// limitBackend opens a LimitStore over persistence that outlives it:
// reopen drops the LimitStore (and for a real store, closes and opens the
// file again) and returns a new one over the same data.
type limitBackend struct {
	name string
	open func(t *testing.T) (first LimitStore, reopen func() LimitStore)
}

func limitBackends() []limitBackend {
	return []limitBackend{
		{"bbolt store", func(t *testing.T) (LimitStore, func() LimitStore) {
			path := filepath.Join(t.TempDir(), "limits.db")
			var st *outbox.Store
			openStore := func() LimitStore {
				var err error
				st, err = outbox.Open(path, outbox.StoreOptions{NoSync: true})
				if err != nil {
					t.Fatalf("open store: %v", err)
				}
				return NewKVLimitStore(st)
			}
			t.Cleanup(func() { st.Close() })
			first := openStore()
			return first, func() LimitStore {
				if err := st.Close(); err != nil {
					t.Fatalf("close store: %v", err)
				}
				return openStore()
			}
		}},
		{"memory KV", func(t *testing.T) (LimitStore, func() LimitStore) {
			kv := newMemKV()
			return NewKVLimitStore(kv), func() LimitStore { return NewKVLimitStore(kv) }
		}},
	}
}

// TestLimitStoreBehaviour is the behaviour every LimitStore backend passes:
// a bucket spends and refills with the injected clock, reports how long
// until the next token, is still spent after a restart, never holds more
// than the burst, survives the clock being set back, and receivers are
// independent.
func TestLimitStoreBehaviour(t *testing.T) {
	const interval = 10 * time.Second
	b := LimitBucket{Burst: 3, Interval: interval}
	ctx := context.Background()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, be := range limitBackends() {
		t.Run(be.name, func(t *testing.T) {
			s, reopen := be.open(t)
			now := t0
			take := func(receiver string) (bool, time.Duration) {
				t.Helper()
				ok, wait, err := s.Take(ctx, receiver, now, b)
				if err != nil {
					t.Fatalf("take %s: %v", receiver, err)
				}
				return ok, wait
			}
			steps := []struct {
				name     string
				advance  time.Duration
				restart  bool
				receiver string
				ok       bool
				wait     time.Duration
			}{
				{"full bucket 1", 0, false, "acme", true, 0},
				{"full bucket 2", 0, false, "acme", true, 0},
				{"full bucket 3", 0, false, "acme", true, 0},
				{"empty", 0, false, "acme", false, interval},
				{"still empty after a restart", 0, true, "acme", false, interval},
				{"other receiver has its own", 0, false, "globex", true, 0},
				{"partly refilled", 4 * time.Second, false, "acme", false, 6 * time.Second},
				{"partly refilled after a restart", 0, true, "acme", false, 6 * time.Second},
				{"one token back", 6 * time.Second, false, "acme", true, 0},
				{"spent again", 0, false, "acme", false, interval},
				{"spent again after a restart", 0, true, "acme", false, interval},
				{"long idle: full, never more 1", time.Hour, true, "acme", true, 0},
				{"long idle: full, never more 2", 0, false, "acme", true, 0},
				{"long idle: full, never more 3", 0, false, "acme", true, 0},
				{"long idle: full, never more 4", 0, false, "acme", false, interval},
				{"clock set back: no refill", -time.Hour, true, "acme", false, interval},
				{"clock set back: refills from then on", interval, false, "acme", true, 0},
				// globex took one at t0 and has refilled since: full again.
				{"other receiver refilled 1", 0, false, "globex", true, 0},
				{"other receiver refilled 2", 0, true, "globex", true, 0},
				{"other receiver refilled 3", 0, false, "globex", true, 0},
				{"other receiver now empty", 0, false, "globex", false, interval},
				{"and acme untouched by it", 0, false, "acme", false, interval},
			}
			for _, st := range steps {
				now = now.Add(st.advance)
				if st.restart {
					s = reopen()
				}
				ok, wait := take(st.receiver)
				if d := wait - st.wait; ok != st.ok || d > time.Millisecond || d < -time.Millisecond {
					t.Fatalf("%s: take = %v, wait %s; want %v, wait %s", st.name, ok, wait, st.ok, st.wait)
				}
			}
		})
	}
}

// TestLimitStoreBurstLowered: a bucket written under a larger burst holds
// no more than the new burst.
func TestLimitStoreBurstLowered(t *testing.T) {
	for _, be := range limitBackends() {
		t.Run(be.name, func(t *testing.T) {
			s, reopen := be.open(t)
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			ctx := context.Background()
			if ok, _, err := s.Take(ctx, "acme", now, LimitBucket{Burst: 60, Interval: time.Second}); !ok || err != nil {
				t.Fatalf("first take: %v %v", ok, err)
			}
			s = reopen()
			small := LimitBucket{Burst: 2, Interval: time.Minute}
			for i := 0; i < 2; i++ {
				if ok, _, err := s.Take(ctx, "acme", now, small); !ok || err != nil {
					t.Fatalf("take %d under the new burst: %v %v", i, ok, err)
				}
			}
			if ok, wait, _ := s.Take(ctx, "acme", now, small); ok || wait != time.Minute {
				t.Fatalf("beyond the new burst: %v %s", ok, wait)
			}
		})
	}
}

// TestLimitStoreConcurrentTakes: takes racing on one receiver hand out
// exactly the burst.
func TestLimitStoreConcurrentTakes(t *testing.T) {
	for _, be := range limitBackends() {
		t.Run(be.name, func(t *testing.T) {
			s, _ := be.open(t)
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			b := LimitBucket{Burst: 20, Interval: time.Hour}
			var granted atomic.Int64
			var wg sync.WaitGroup
			for i := 0; i < 50; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ok, _, err := s.Take(context.Background(), "acme", now, b)
					if err != nil {
						t.Error(err)
					}
					if ok {
						granted.Add(1)
					}
				}()
			}
			wg.Wait()
			if g := granted.Load(); g != int64(b.Burst) {
				t.Fatalf("%d takes granted, want %d", g, b.Burst)
			}
		})
	}
}

// TestLimitStoreUnreadableEntry: an entry that does not decode is a full
// bucket, not an error on every call; the next take overwrites it.
func TestLimitStoreUnreadableEntry(t *testing.T) {
	kv := newMemKV()
	ctx := context.Background()
	for _, v := range []string{"not json", `{"tokens":1e999,"at":"2026-03-01T12:00:00Z"}`, `{"tokens":1}`, `[]`} {
		if err := kv.Commit(ctx, []outbox.Mark{{Bucket: BucketRateLimits, Key: []byte("acme"), Value: []byte(v)}}); err != nil {
			t.Fatal(err)
		}
		s := NewKVLimitStore(kv)
		now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
		ok, _, err := s.Take(ctx, "acme", now, LimitBucket{Burst: 2, Interval: time.Second})
		if !ok || err != nil {
			t.Fatalf("entry %q: take %v %v, want a full bucket", v, ok, err)
		}
		got, _ := kv.Get(BucketRateLimits, []byte("acme"))
		if st, err := decodeBucketState(got); err != nil || st.Tokens != 1 {
			t.Fatalf("entry %q: rewritten as %q (%v)", v, got, err)
		}
	}
}

// flakyKV fails writes and/or reads on demand, like a full disk.
type flakyKV struct {
	*memKV
	failWrites, failReads atomic.Bool
	writes                atomic.Int64
}

var errDiskFull = errors.New("write: no space left on device")

func (k *flakyKV) Commit(ctx context.Context, m []outbox.Mark) error {
	k.writes.Add(1)
	if k.failWrites.Load() {
		return errDiskFull
	}
	return k.memKV.Commit(ctx, m)
}

func (k *flakyKV) Get(b string, key []byte) ([]byte, error) {
	if k.failReads.Load() {
		return nil, errDiskFull
	}
	return k.memKV.Get(b, key)
}

// TestCallLimiterFailsOpen: when the store cannot keep a bucket, the call
// is served, counted, and logged once for the whole run of failures; the
// limit still holds in memory meanwhile (nobody gets unlimited calls, and
// nobody is locked out); once writes work again, the bucket is stored.
func TestCallLimiterFailsOpen(t *testing.T) {
	kv := &flakyKV{memKV: newMemKV()}
	var logs bytes.Buffer
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := newCallLimiter(2, time.Minute, func() time.Time { return now }, NewKVLimitStore(kv),
		slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	kv.failWrites.Store(true)
	for i := 0; i < 2; i++ {
		if ok, _ := l.allow("acme"); !ok {
			t.Fatalf("call %d with a full disk was refused", i)
		}
	}
	if ok, wait := l.allow("acme"); ok || wait != time.Minute {
		t.Errorf("beyond the burst with a full disk: %v %s, want the limit to hold in memory", ok, wait)
	}
	if got := l.failures.Load(); got != 2 {
		t.Errorf("failures counted %d, want 2", got)
	}
	if n := strings.Count(logs.String(), "could not be kept"); n != 1 {
		t.Errorf("the failure was logged %d times, want once:\n%s", n, logs.String())
	}
	if strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "receiver=acme") || !strings.Contains(logs.String(), "no space left") {
		t.Errorf("the log line does not say whose bucket and why:\n%s", logs.String())
	}
	if v, _ := kv.memKV.Get(BucketRateLimits, []byte("acme")); v != nil {
		t.Fatalf("a failed write left an entry: %s", v)
	}

	// The disk has room again: the next take is written, and said so.
	kv.failWrites.Store(false)
	now = now.Add(time.Minute)
	if ok, _ := l.allow("acme"); !ok {
		t.Fatal("after a refill with a working store: refused")
	}
	if !strings.Contains(logs.String(), "keeps the buckets again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
	v, _ := kv.memKV.Get(BucketRateLimits, []byte("acme"))
	if st, err := decodeBucketState(v); err != nil || st.Tokens != 0 || !st.At.Equal(now) {
		t.Fatalf("stored bucket after recovery: %s (%v)", v, err)
	}
	// Refusals write nothing.
	writes := kv.writes.Load()
	for i := 0; i < 5; i++ {
		if ok, _ := l.allow("acme"); ok {
			t.Fatal("empty bucket served")
		}
	}
	if kv.writes.Load() != writes {
		t.Errorf("refused calls wrote to the store %d times", kv.writes.Load()-writes)
	}

	// An unreadable store on a receiver's first call: served from a full
	// bucket, counted; read again on the next call.
	kv.failReads.Store(true)
	if ok, _ := l.allow("globex"); !ok {
		t.Error("first call of a receiver with an unreadable store was refused")
	}
	if got := l.failures.Load(); got != 3 {
		t.Errorf("failures counted %d, want 3", got)
	}
}

// TestManagementCallLimitSurvivesRestart: a receiver that spent its calls
// is still answered 429 with Retry-After by a restarted transmitter over the
// same store, until the bucket refills.
func TestManagementCallLimitSurvivesRestart(t *testing.T) {
	opt := func(c *Config) { c.ManagementBurst, c.ManagementInterval = 2, 30*time.Second }
	h := newHarness(t, opt)
	for i := 0; i < 2; i++ {
		if r := h.do("GET", "/ssf/streams", globexTok, nil); r.status != 200 {
			t.Fatalf("call %d: %d %s", i, r.status, r.body)
		}
	}
	h.clock.Advance(10 * time.Second)
	h.reopen(opt)
	r := h.do("GET", "/ssf/streams", globexTok, nil)
	if r.status != 429 || r.header.Get("Retry-After") != "20" {
		t.Fatalf("after a restart: %d Retry-After %q, want 429 and 20", r.status, r.header.Get("Retry-After"))
	}
	if r := h.do("GET", "/ssf/streams", acmeTok, nil); r.status != 200 {
		t.Errorf("another receiver after the restart: %d", r.status)
	}
	h.clock.Advance(20 * time.Second)
	h.reopen(opt)
	if r := h.do("GET", "/ssf/streams", globexTok, nil); r.status != 200 {
		t.Errorf("after the refill and another restart: %d %s", r.status, r.body)
	}
	if h.tr.ManagementLimitFailures() != 0 {
		t.Errorf("failures counted with a working store: %d", h.tr.ManagementLimitFailures())
	}
}

// FuzzDecodeBucketState: a stored bucket entry never panics the decoder,
// and what decodes refills to a state within the bucket's bounds.
func FuzzDecodeBucketState(f *testing.F) {
	f.Add([]byte(`{"tokens":2.5,"at":"2026-03-01T12:00:00Z"}`))
	f.Add([]byte(`{"tokens":-1e308,"at":"0001-01-01T00:00:01Z"}`))
	f.Add([]byte(`{"tokens":1e999}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, v []byte) {
		st, err := decodeBucketState(v)
		if err != nil {
			return
		}
		next, ok, wait := refill(st, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC), LimitBucket{Burst: 5, Interval: time.Second})
		if next.Tokens < 0 || next.Tokens > 5 || (ok && wait != 0) || (!ok && (wait <= 0 || wait > time.Second)) {
			t.Fatalf("state %+v refilled to %+v ok=%v wait=%s", st, next, ok, wait)
		}
	})
}

// BenchmarkLimitTake: one management call's take, with the bucket in
// memory only, in the bbolt store without and with fsync; and a refused
// take (an empty bucket), which writes nothing.
func BenchmarkLimitTake(b *testing.B) {
	open := func(b *testing.B, noSync bool) KV {
		st, err := outbox.Open(filepath.Join(b.TempDir(), "bench.db"), outbox.StoreOptions{NoSync: noSync})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { st.Close() })
		return st
	}
	cases := []struct {
		name  string
		kv    func(b *testing.B) KV
		burst int
	}{
		{"memory", func(*testing.B) KV { return nil }, 1 << 30},
		{"bbolt-nosync", func(b *testing.B) KV { return open(b, true) }, 1 << 30},
		{"bbolt-fsync", func(b *testing.B) KV { return open(b, false) }, 1 << 30},
		{"bbolt-fsync-refused", func(b *testing.B) KV { return open(b, false) }, 1},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			s := NewKVLimitStore(c.kv(b))
			now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
			bucket := LimitBucket{Burst: c.burst, Interval: time.Hour}
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, err := s.Take(ctx, "acme", now, bucket); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
