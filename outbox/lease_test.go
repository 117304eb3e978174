package outbox

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// leaseBackend is what the lease behaviour suite needs of a backend: its
// Leases opened afresh on durable state, the fencing check its writes
// make, and a way to close it.
type leaseBackend struct {
	leases Leases
	fence  func(name string, token uint64) error
	close  func() error
}

// testLeasesBehaviour is the lease behaviour suite every backend passes.
// Each step reopens the backend, so only what is durable counts; the clock
// is shared across steps. Holders are not assumed to outlive a reopen (a
// bbolt file is held by one process), so every cross-step check waits out
// the leases first.
func testLeasesBehaviour(t *testing.T, clock *fakeClock, open func(t *testing.T) leaseBackend) {
	ctx := context.Background()
	const ttl = 10 * time.Second
	step := func(name string, fn func(t *testing.T, b leaseBackend)) {
		t.Run(name, func(t *testing.T) {
			b := open(t)
			defer func() {
				if err := b.close(); err != nil {
					t.Error(err)
				}
			}()
			fn(t, b)
		})
	}
	var first, takeover, released, last Lease

	step("one holder at a time", func(t *testing.T, b leaseBackend) {
		a, err := b.leases.Acquire(ctx, "x", "A", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if a.Token == 0 || a.Holder != "A" || a.Name != "x" || !a.Expires.Equal(clock.Now().Add(ttl)) {
			t.Fatalf("Acquire = %+v", a)
		}
		first = a
		_, err = b.leases.Acquire(ctx, "x", "B", ttl)
		var he *HeldError
		if !errors.Is(err, ErrLeaseHeld) || !errors.As(err, &he) || he.Holder != "A" || !he.Expires.Equal(a.Expires) {
			t.Fatalf("second holder's Acquire = %v, want held by A until %v", err, a.Expires)
		}
		clock.Advance(ttl / 2)
		again, err := b.leases.Acquire(ctx, "x", "A", ttl)
		if err != nil || again.Token != a.Token || !again.Expires.Equal(clock.Now().Add(ttl)) {
			t.Fatalf("holder's own Acquire = %+v, %v; want the same token, extended", again, err)
		}
		first = again
		if err := b.fence("x", a.Token); err != nil {
			t.Errorf("fence with the holder's token: %v", err)
		}
		refused := []struct {
			name string
			l    Lease
		}{
			{"another holder", Lease{Name: "x", Holder: "B", Token: a.Token}},
			{"the holder with a wrong token", Lease{Name: "x", Holder: "A", Token: a.Token + 7}},
			{"an unknown lease", Lease{Name: "nothing", Holder: "A", Token: a.Token}},
		}
		for _, tc := range refused {
			if _, err := b.leases.Renew(ctx, tc.l, ttl); !errors.Is(err, ErrLeaseLost) {
				t.Errorf("Renew by %s = %v, want ErrLeaseLost", tc.name, err)
			}
			if err := b.leases.Release(ctx, tc.l); !errors.Is(err, ErrLeaseLost) {
				t.Errorf("Release by %s = %v, want ErrLeaseLost", tc.name, err)
			}
		}
		_, err = b.leases.Acquire(ctx, "", "", 0)
		if joined, ok := errors.Unwrap(err).(interface{ Unwrap() []error }); !ok || len(joined.Unwrap()) != 3 {
			t.Errorf("invalid Acquire = %v, want its 3 problems at once", err)
		}
	})

	step("an expired lease is taken over with a higher token", func(t *testing.T, b leaseBackend) {
		clock.Advance(ttl + time.Second)
		l, err := b.leases.Acquire(ctx, "x", "B", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if l.Token <= first.Token {
			t.Fatalf("takeover token %d, want above %d", l.Token, first.Token)
		}
		takeover = l
		if _, err := b.leases.Renew(ctx, first, ttl); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("old holder's Renew = %v, want ErrLeaseLost", err)
		}
		if err := b.leases.Release(ctx, first); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("old holder's Release = %v, want ErrLeaseLost", err)
		}
		var fe *FenceError
		if err := b.fence("x", first.Token); !errors.As(err, &fe) || !errors.Is(err, ErrFenced) || fe.Current != l.Token {
			t.Errorf("fence with the old token = %v, want refused with current %d", err, l.Token)
		}
		if err := b.fence("x", l.Token); err != nil {
			t.Errorf("fence with the new token: %v", err)
		}
		// Renewal really extends: past the first expiry, A is still kept out.
		clock.Advance(ttl / 2)
		r, err := b.leases.Renew(ctx, l, ttl)
		if err != nil || r.Token != l.Token || !r.Expires.Equal(clock.Now().Add(ttl)) {
			t.Fatalf("Renew = %+v, %v", r, err)
		}
		clock.Advance(ttl * 3 / 4)
		if _, err := b.leases.Acquire(ctx, "x", "A", ttl); !errors.Is(err, ErrLeaseHeld) {
			t.Errorf("Acquire before the renewed expiry = %v, want ErrLeaseHeld", err)
		}
	})

	step("release frees at once and fences the releaser", func(t *testing.T, b leaseBackend) {
		clock.Advance(ttl + time.Second)
		c, err := b.leases.Acquire(ctx, "x", "C", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if c.Token <= takeover.Token {
			t.Fatalf("token %d after reopen, want above %d", c.Token, takeover.Token)
		}
		if err := b.leases.Release(ctx, c); err != nil {
			t.Fatal(err)
		}
		if err := b.fence("x", c.Token); !errors.Is(err, ErrFenced) {
			t.Errorf("fence after release = %v, want refused", err)
		}
		if err := b.leases.Release(ctx, c); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("second Release = %v, want ErrLeaseLost", err)
		}
		if _, err := b.leases.Renew(ctx, c, ttl); !errors.Is(err, ErrLeaseLost) {
			t.Errorf("Renew after Release = %v, want ErrLeaseLost", err)
		}
		d, err := b.leases.Acquire(ctx, "x", "D", ttl)
		if err != nil {
			t.Fatalf("Acquire right after a release: %v", err)
		}
		if d.Token <= c.Token {
			t.Errorf("token %d after release, want above %d", d.Token, c.Token)
		}
		released = d
	})

	step("tokens never go backwards and one racer wins", func(t *testing.T, b leaseBackend) {
		clock.Advance(ttl + time.Second)
		e, err := b.leases.Acquire(ctx, "x", "E", ttl)
		if err != nil {
			t.Fatal(err)
		}
		if e.Token <= released.Token {
			t.Errorf("token %d after reopen, want above %d", e.Token, released.Token)
		}
		if err := b.fence("x", released.Token); !errors.Is(err, ErrFenced) {
			t.Errorf("fence with the pre-reopen token = %v, want refused", err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins, held := 0, 0
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := b.leases.Acquire(ctx, "race", string(rune('a'+i)), ttl)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case errors.Is(err, ErrLeaseHeld):
					held++
				default:
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 || held != 15 {
			t.Errorf("16 racers: %d won, %d held off; want 1 and 15", wins, held)
		}
		last = e
	})

	step("the last token stands after reopen", func(t *testing.T, b leaseBackend) {
		if err := b.fence("x", last.Token); err != nil {
			t.Errorf("fence with the last token after reopen = %v, want accepted", err)
		}
		clock.Advance(ttl + time.Second)
		f, err := b.leases.Acquire(ctx, "x", "F", ttl)
		if err != nil || f.Token <= last.Token {
			t.Errorf("Acquire = %+v, %v; want a token above %d", f, err, last.Token)
		}
	})
}

// TestStoreLeasesBehaviour runs the lease suite on the bbolt store.
func TestStoreLeasesBehaviour(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	clock := newFakeClock()
	testLeasesBehaviour(t, clock, func(t *testing.T) leaseBackend {
		s, err := Open(path, StoreOptions{})
		if err != nil {
			t.Fatal(err)
		}
		l, err := NewStoreLeases(LeaseConfig{Store: s, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return leaseBackend{leases: l, fence: s.Fence, close: s.Close}
	})
}

// TestStoreLeasesEarlierOpen: a bbolt file is held by one process at a
// time, so a lease taken under an earlier open has no live holder: the next
// process takes it at once, with a higher token, and the old holder can
// neither renew it nor write with its token.
func TestStoreLeasesEarlierOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	clock := newFakeClock()
	ctx := context.Background()
	open := func() (*Store, *StoreLeases) {
		s, err := Open(path, StoreOptions{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		l, err := NewStoreLeases(LeaseConfig{Store: s, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return s, l
	}
	s, l := open()
	old, err := l.Acquire(ctx, "poller", "crashed", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, l = open()
	defer s.Close()
	if cur, err := l.Current("poller"); err != nil || cur.Holder != "crashed" || cur.Token != old.Token {
		t.Fatalf("Current after reopen = %+v, %v", cur, err)
	}
	// The same holder name does not carry over either: it is a new process.
	for _, holder := range []string{"next", "crashed"} {
		n, err := l.Acquire(ctx, "poller", holder, time.Hour)
		if err != nil {
			t.Fatalf("%s: Acquire after reopen: %v", holder, err)
		}
		if n.Token <= old.Token {
			t.Errorf("%s: token %d, want above %d", holder, n.Token, old.Token)
		}
		if err := l.Release(ctx, n); err != nil {
			t.Fatal(err)
		}
		old = n
	}
	if _, err := l.Renew(ctx, Lease{Name: "poller", Holder: "crashed", Token: 1}, time.Hour); !errors.Is(err, ErrLeaseLost) {
		t.Errorf("Renew of the earlier open's lease = %v, want ErrLeaseLost", err)
	}
	if err := s.Fence("poller", 1); !errors.Is(err, ErrFenced) {
		t.Errorf("fence with the earlier open's token = %v, want refused", err)
	}
}

// TestLeaseConfigValidate: a missing store is reported; names with NUL are
// refused (they could not be told from the store's own keys).
func TestLeaseConfigValidate(t *testing.T) {
	if _, err := NewStoreLeases(LeaseConfig{}); err == nil {
		t.Error("LeaseConfig without a Store accepted")
	}
	s, err := Open(filepath.Join(t.TempDir(), "l.db"), StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	l, err := NewStoreLeases(LeaseConfig{Store: s})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(context.Background(), "\x00epoch", "A", time.Second); err == nil {
		t.Error("lease name with NUL accepted")
	}
}
