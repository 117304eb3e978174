package ssftest

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// RunLimitStore runs the behaviour of the management-call limit store
// (ssf.NewLimitStore) on the stores newStore makes: a receiver's bucket
// spends and refills by the time given, says how long until the next
// token, is still spent after a restart, never holds more than the burst,
// and receivers are independent. Takes from several goroutines never hand
// out more than the bucket holds; on a shared store, neither do takes from
// two handles, which share one bucket per receiver.
func RunLimitStore(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("SpendAndRefill", func(t *testing.T) { testLimitSpendRefill(t, newStore(t)) })
	t.Run("BurstLowered", func(t *testing.T) { testLimitBurstLowered(t, newStore(t)) })
	t.Run("ConcurrentTakes", func(t *testing.T) { testLimitConcurrent(t, newStore(t), false) })
	t.Run("SharedByTwoHandles", func(t *testing.T) {
		st := newStore(t)
		if !st.Shared {
			t.Skip("one handle at a time on this store: nothing to share")
		}
		testLimitShared(t, st)
		testLimitConcurrent(t, st, true)
	})
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func take(t *testing.T, s ssf.LimitStore, receiver string, now time.Time, b ssf.LimitBucket) (bool, time.Duration) {
	t.Helper()
	ok, wait, err := s.Take(ctx, receiver, now, b)
	if err != nil {
		t.Fatalf("Take(%s): %v", receiver, err)
	}
	return ok, wait
}

func near(a, b time.Duration) bool { d := a - b; return d < time.Millisecond && d > -time.Millisecond }

func testLimitSpendRefill(t *testing.T, st Store) {
	b := ssf.LimitBucket{Burst: 2, Interval: 30 * time.Second}
	s := ssf.NewLimitStore(st.Open())
	now := t0
	expect := func(what, receiver string, ok bool, wait time.Duration) {
		t.Helper()
		gotOK, gotWait := take(t, s, receiver, now, b)
		if gotOK != ok || !near(gotWait, wait) {
			t.Fatalf("%s: Take = %v, wait %s; want %v, wait %s", what, gotOK, gotWait, ok, wait)
		}
	}
	restart := func() { s = ssf.NewLimitStore(st.Open()) }
	expect("a new bucket is full (1)", "acme", true, 0)
	expect("a new bucket is full (2)", "acme", true, 0)
	expect("then empty", "acme", false, 30*time.Second)
	restart()
	expect("still empty after a restart", "acme", false, 30*time.Second)
	expect("another receiver has a bucket of its own", "globex", true, 0)
	now = now.Add(20 * time.Second)
	expect("two thirds refilled", "acme", false, 10*time.Second)
	restart()
	expect("two thirds refilled, after a restart", "acme", false, 10*time.Second)
	now = now.Add(10 * time.Second)
	expect("one token back", "acme", true, 0)
	expect("and spent", "acme", false, 30*time.Second)
	now = now.Add(24 * time.Hour)
	restart()
	expect("long idle: full (1)", "acme", true, 0)
	expect("long idle: full (2)", "acme", true, 0)
	expect("long idle: never more than the burst", "acme", false, 30*time.Second)
	now = now.Add(-time.Hour)
	restart()
	expect("clock set back: no refill", "acme", false, 30*time.Second)
	now = now.Add(30 * time.Second)
	expect("clock set back: refills from then on", "acme", true, 0)
	expect("globex untouched by acme (1)", "globex", true, 0)
	expect("globex untouched by acme (2)", "globex", true, 0)
	expect("globex now empty", "globex", false, 30*time.Second)
}

func testLimitBurstLowered(t *testing.T, st Store) {
	s := ssf.NewLimitStore(st.Open())
	big := ssf.LimitBucket{Burst: 50, Interval: time.Second}
	take(t, s, "acme", t0, big) // 49 left
	s = ssf.NewLimitStore(st.Open())
	small := ssf.LimitBucket{Burst: 3, Interval: time.Minute}
	n := 0
	for range 10 {
		if ok, _ := take(t, s, "acme", t0.Add(time.Second), small); ok {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d takes served under a burst lowered to 3", n)
	}
}

// testLimitConcurrent: takes from several goroutines (spread over two
// handles when shared) hand out exactly the burst.
func testLimitConcurrent(t *testing.T, st Store, shared bool) {
	const burst, workers, each = 7, 4, 5
	b := ssf.LimitBucket{Burst: burst, Interval: time.Hour}
	a, c := st.pair()
	if !shared {
		c = a
	}
	stores := []ssf.LimitStore{ssf.NewLimitStore(a), ssf.NewLimitStore(c)}
	if !shared {
		stores[1] = stores[0] // one process: one limit store
	}
	var served atomic.Int32
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := stores[w%2]
			for range each {
				ok, _, err := s.Take(ctx, "busy", t0, b)
				if err != nil {
					t.Errorf("Take: %v", err)
					return
				}
				if ok {
					served.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if served.Load() != burst {
		t.Fatalf("%d of %d concurrent takes served, want exactly the burst %d", served.Load(), workers*each, burst)
	}
}

// testLimitShared: two handles spend one bucket, and a refill seen by one
// is seen by the other.
func testLimitShared(t *testing.T, st Store) {
	b := ssf.LimitBucket{Burst: 3, Interval: 10 * time.Second}
	a, c := st.pair()
	sa, sc := ssf.NewLimitStore(a), ssf.NewLimitStore(c)
	for i, s := range []ssf.LimitStore{sa, sc, sa} {
		if ok, _ := take(t, s, "acme", t0, b); !ok {
			t.Fatalf("take %d of a burst of 3 refused", i+1)
		}
	}
	if ok, wait := take(t, sc, "acme", t0, b); ok || !near(wait, 10*time.Second) {
		t.Fatalf("a fourth take on the other handle = %v, wait %s; want refused, 10s (the bucket is shared)", ok, wait)
	}
	if ok, _ := take(t, sa, "acme", t0.Add(10*time.Second), b); !ok {
		t.Fatal("the refilled token was refused")
	}
	if ok, wait := take(t, sc, "acme", t0.Add(10*time.Second), b); ok || !near(wait, 10*time.Second) {
		t.Fatalf("the other handle took the token again: %v, wait %s", ok, wait)
	}
}
