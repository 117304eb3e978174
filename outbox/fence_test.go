package outbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// replica is one Outbox on a store shared with others, as several sidecar
// replicas on one database would be.
type replica struct {
	ob   *Outbox
	stop func()
}

// sharedStore opens one store for several replicas; it closes after them.
func sharedStore(t *testing.T) *Store {
	t.Helper()
	st, err := Open(filepath.Join(t.TempDir(), "shared.db"), StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

func newReplica(t *testing.T, st *Store, clock *fakeClock, holder string, n Notifier, mod func(*Config)) *replica {
	t.Helper()
	cfg := Config{Store: st, Signer: newSigner(t), Notifier: n, HolderID: holder, AllowPrivateEndpoints: true,
		Clock: clock.Now, After: clock.After, Jitter: func() float64 { return 0.5 },
		PushTimeout: 30 * time.Second, LeaseTTL: 30 * time.Second, SweepInterval: noSweep}
	if mod != nil {
		mod(&cfg)
	}
	ob, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ob.heartbeatAfter = clock.afterQuiet
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx) }()
	var once sync.Once
	r := &replica{ob: ob, stop: func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s: Run: %v", holder, err)
			}
		})
	}}
	t.Cleanup(r.stop)
	return r
}

// TestDispatchLeaseFencing: replica A takes stream s's dispatch lease and
// stalls mid-push, its lease heartbeat with it (a GC pause, a partition),
// past the lease's end; replica
// B takes the lease over with a higher token and delivers the stream in
// order. A's late outcome is refused — counted, and B's records stand —
// and A stays off the stream while B holds it, also for SETs queued later.
func TestDispatchLeaseFencing(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier() // shared, as a database backend would wake every replica
	release := make(chan struct{})
	aPosted := make(chan string, 16)
	byReplica := map[string][]string{}
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		// Each replica registers the stream with its own credentials, so
		// the receiver can tell who posted.
		who := r.Header.Get("Authorization")
		if who == "Bearer a" {
			aPosted <- "posted"
			<-release
		}
		w.WriteHeader(http.StatusAccepted)
	})
	record := func() {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		clear(byReplica)
		for _, d := range rc.got {
			who := d.Header.Get("Authorization")
			byReplica[who] = append(byReplica[who], d.JTI)
		}
	}
	a := newReplica(t, st, clock, "replica-a", notifier, nil)
	b := newReplica(t, st, clock, "replica-b", notifier, nil)
	// A stalls as a whole: its lease heartbeat does not get through either.
	renewals := make(chan struct{})
	t.Cleanup(func() { close(renewals) })
	a.ob.leases = &gatedLeases{Leases: a.ob.leases, gate: renewals}
	ctx := context.Background()
	stream := func(r *replica, auth string) {
		t.Helper()
		if err := r.ob.SetStream(ctx, StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled,
			EndpointURL: rc.srv.URL, AuthorizationHeader: auth}); err != nil {
			t.Fatal(err)
		}
	}
	stream(a, "Bearer a")
	want := jtis("f", 5)
	for _, j := range want {
		if err := a.ob.Enqueue(ctx, []SET{makeSET("s", j)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-aPosted:
	case <-time.After(5 * time.Second):
		t.Fatal("replica A never posted")
	}
	leaseA, err := a.ob.DispatchLease("s")
	if err != nil || leaseA.Holder != "replica-a" || leaseA.Token == 0 {
		t.Fatalf("lease while A delivers = %+v, %v", leaseA, err)
	}
	// B joins while A holds the lease: it waits. A stalls past the lease.
	stream(b, "Bearer b")
	eventually(t, 5*time.Second, "B standing by", func() bool {
		d, ok := clock.pendingBelow(time.Hour)
		return ok && d > 0
	})
	clock.Advance(31 * time.Second)
	rc.waitFor(t, len(want), 5*time.Second) // B's five; A's post is still stalled
	eventually(t, 5*time.Second, "B's outcomes recorded", func() bool {
		s, err := b.ob.Stats(ctx, "s")
		return err == nil && s.Delivered == int64(len(want)) && s.Backlog == 0
	})
	leaseB, err := b.ob.DispatchLease("s")
	if err != nil || leaseB.Holder != "replica-b" || leaseB.Token <= leaseA.Token {
		t.Fatalf("lease after takeover = %+v (A had token %d), %v", leaseB, leaseA.Token, err)
	}
	// A wakes up and reports its attempt: refused.
	close(release)
	rc.waitFor(t, 1, 5*time.Second)
	eventually(t, 5*time.Second, "A's stale outcome refused", func() bool { return a.ob.Fenced() == 1 })
	if n := b.ob.Fenced(); n != 0 {
		t.Errorf("B had %d writes refused", n)
	}
	hist, err := b.ob.History(ctx, "s", 10)
	if err != nil || len(hist) != len(want) {
		t.Fatalf("History = %d records, %v", len(hist), err)
	}
	for _, r := range hist {
		if r.State != StateDelivered || r.AttemptCount != 1 {
			t.Errorf("%s: state %s after %d attempts; want delivered once (B's attempt only)", r.JTI, r.State, r.AttemptCount)
		}
	}
	record()
	if a := byReplica["Bearer a"]; !slices.Equal(a, want[:1]) {
		t.Errorf("A posted %v, want only its stalled %v", a, want[:1])
	}
	if b := byReplica["Bearer b"]; !slices.Equal(b, want) {
		t.Errorf("B delivered %v, want %v in order", b, want)
	}

	// More SETs, queued through A (any replica enqueues): B delivers them,
	// A stays off the stream while B's lease runs.
	more := jtis("g", 3)
	for _, j := range more {
		if err := a.ob.Enqueue(ctx, []SET{makeSET("s", j)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	rc.waitFor(t, len(more), 5*time.Second)
	record()
	if b := byReplica["Bearer b"]; !slices.Equal(b, append(slices.Clone(want), more...)) {
		t.Errorf("B delivered %v", b)
	}
	if a := byReplica["Bearer a"]; len(a) != 1 {
		t.Errorf("A posted %v after losing the lease", a)
	}
	eventually(t, 5*time.Second, "the later SETs recorded", func() bool {
		s, err := b.ob.Stats(ctx, "s")
		return err == nil && s.Delivered == int64(len(want)+len(more))
	})

	// B stops and releases: A takes the stream over at once, with a
	// higher token, and delivers what B left.
	b.stop()
	last := jtis("h", 2)
	for _, j := range last {
		if err := a.ob.Enqueue(ctx, []SET{makeSET("s", j)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// A may be waiting for B's lease to end on the fake clock: let it.
	eventually(t, 5*time.Second, "A back on the stream", func() bool {
		clock.Advance(time.Second)
		l, _ := a.ob.DispatchLease("s")
		return l.Holder == "replica-a" && l.Token > leaseB.Token
	})
	rc.waitFor(t, len(last), 5*time.Second)
	record()
	if a := byReplica["Bearer a"]; !slices.Equal(a, append(want[:1:1], last...)) {
		t.Errorf("A posted %v, want %v", a, append(want[:1:1], last...))
	}
}

// TestCommitFencedByToken: a delivery outcome is recorded only with the
// current token of the stream's dispatch lease; a stale, future, missing
// or released one is refused with a FenceError and records nothing.
func TestCommitFencedByToken(t *testing.T) {
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
	ctx := context.Background()
	// A poll stream: no dispatcher competes for its lease.
	h.pollStream("s")
	h.enqueue(makeSET("s", "j1"))
	leases := h.ob.leases
	l1, err := leases.Acquire(ctx, dispatchLeaseName("s"), "old", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second)
	l2, err := leases.Acquire(ctx, dispatchLeaseName("s"), "new", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	st := h.ob.stream("s")
	load := func() []*pending {
		batch, _, err := h.ob.loadAfter("s", nil, 1)
		if err != nil || len(batch) != 1 {
			t.Fatalf("loadAfter = %d, %v", len(batch), err)
		}
		batch[0].res = pushResult{out: outRetry, status: 500, err: "500", at: clock.Now()}
		return batch
	}
	tests := []struct {
		name    string
		token   uint64
		release bool // release the current lease first
		ok      bool
	}{
		{"no token", 0, false, false},
		{"stale token", l1.Token, false, false},
		{"future token", l2.Token + 1, false, false},
		{"current token", l2.Token, false, true},
		{"released lease", l2.Token, true, false},
	}
	attempts := 0
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.release {
				if err := leases.Release(ctx, l2); err != nil {
					t.Fatal(err)
				}
			}
			err := h.ob.commitBatch(st, tc.token, load())
			var fe *FenceError
			switch {
			case tc.ok && err != nil:
				t.Fatalf("commit with %s: %v", tc.name, err)
			case !tc.ok && (!errors.Is(err, ErrFenced) || !errors.As(err, &fe) || fe.Token != tc.token):
				t.Fatalf("commit with %s = %v, want a FenceError for token %d", tc.name, err, tc.token)
			}
			if tc.ok {
				attempts++
			}
			if r := load()[0].rec; r.AttemptCount != attempts {
				t.Errorf("after %s: %d attempts recorded, want %d", tc.name, r.AttemptCount, attempts)
			}
			if err := h.store.Healthy(); err != nil {
				t.Errorf("a refused write marked the store unhealthy: %v", err)
			}
		})
	}
}

// TestPauseReportFenced: only the holder of a stream's dispatch lease
// reports the stream as failing; a dispatcher whose token went stale is
// refused (counted) and says nothing.
func TestPauseReportFenced(t *testing.T) {
	clock := newFakeClock()
	reports := make(chan string, 4)
	h := newHarness(t, clock, func(c *Config) {
		c.SweepInterval = noSweep
		c.PauseAfter = time.Second
		c.Reporter = reporterFunc(func(_ context.Context, id string, _ time.Time, _ string) { reports <- id })
	})
	ctx := context.Background()
	h.pollStream("s") // no dispatcher competes for the lease
	st := h.ob.stream("s")
	stale, err := h.ob.leases.Acquire(ctx, dispatchLeaseName("s"), "old", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second)
	cur, err := h.ob.leases.Acquire(ctx, dispatchLeaseName("s"), "new", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		token  uint64
		report bool
	}{{stale.Token, false}, {cur.Token, true}} {
		t.Run(fmt.Sprintf("token %d", tc.token), func(t *testing.T) {
			st.mu.Lock()
			st.failingSince, st.reported = time.Time{}, false
			st.mu.Unlock()
			st.token.Store(tc.token)
			h.ob.fail(st, pushResult{out: outRetry, err: "500", at: clock.Now()})
			clock.Advance(2 * time.Second)
			h.ob.fail(st, pushResult{out: outRetry, err: "500", at: clock.Now()})
			if tc.report {
				select {
				case id := <-reports:
					if id != "s" {
						t.Errorf("reported %q", id)
					}
				case <-time.After(5 * time.Second):
					t.Fatal("the lease holder's report never came")
				}
				return
			}
			eventually(t, 5*time.Second, "the stale report refused", func() bool { return h.ob.Fenced() == int64(i+1) })
			select {
			case id := <-reports:
				t.Errorf("stale dispatcher reported %q", id)
			default:
			}
		})
	}
}

// countingLeases counts lease writes.
type countingLeases struct {
	Leases
	acquires, renews atomic.Int64
}

func (c *countingLeases) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (Lease, error) {
	c.acquires.Add(1)
	return c.Leases.Acquire(ctx, name, holder, ttl)
}

func (c *countingLeases) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	c.renews.Add(1)
	return c.Leases.Renew(ctx, l, ttl)
}

// TestLeaseWritesPerTTL: a working dispatcher writes its lease once when it
// starts and then once per LeaseTTL/3 of (injected) time, however many
// SETs it delivers; the single replica keeps one token throughout.
func TestLeaseWritesPerTTL(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	rc := newReceiver(t, nil)
	cfg := Config{Store: st, Signer: newSigner(t), AllowPrivateEndpoints: true, Clock: clock.Now, After: clock.After,
		LeaseTTL: 30 * time.Second, SweepInterval: noSweep}
	ob, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingLeases{Leases: ob.leases}
	ob.leases = counting
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx) }()
	defer func() { cancel(); <-done }()
	if err := ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: rc.srv.URL}); err != nil {
		t.Fatal(err)
	}
	const rounds, perRound = 4, 25
	var first Lease
	for round := range rounds {
		for i := range perRound {
			if err := ob.Enqueue(context.Background(), []SET{makeSET("s", fmt.Sprintf("r%d-%02d", round, i))}, nil); err != nil {
				t.Fatal(err)
			}
		}
		rc.waitFor(t, perRound, 5*time.Second)
		var l Lease
		eventually(t, 5*time.Second, fmt.Sprintf("round %d: the lease renewed to %v while working", round, clock.Now().Add(30*time.Second)), func() bool {
			var err error
			l, err = ob.DispatchLease("s")
			return err == nil && l.Holder == ob.cfg.HolderID && l.Expires.Equal(clock.Now().Add(30*time.Second))
		})
		if round == 0 {
			first = l
		} else if l.Token != first.Token {
			t.Errorf("round %d: token %d, want %d kept", round, l.Token, first.Token)
		}
		clock.Advance(11 * time.Second) // past LeaseTTL/3: renewed once
	}
	// One take and one renewal per period (the last one included).
	eventually(t, 5*time.Second, "the last renewal", func() bool {
		return counting.acquires.Load()+counting.renews.Load() >= rounds+1
	})
	time.Sleep(50 * time.Millisecond) // no more may come
	if writes := counting.acquires.Load() + counting.renews.Load(); writes != rounds+1 {
		t.Errorf("%d lease writes for %d SETs over %d renewal periods; want %d", writes, rounds*perRound, rounds, rounds+1)
	}
	if got := rc.accepted(); len(got) != rounds*perRound {
		t.Errorf("%d delivered", len(got))
	}
}

// TestRestartTakesLeaseAtOnce: with one replica on bbolt the lease is
// always ours — a restarted outbox (a new holder id) delivers at once
// instead of waiting out the lease a crashed process left, and takes a
// higher token.
func TestRestartTakesLeaseAtOnce(t *testing.T) {
	clock := newFakeClock()
	rc := newReceiver(t, nil)
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, "")
	h.enqueue(makeSET("s", "before"))
	rc.waitFor(t, 1, 5*time.Second)
	eventually(t, 5*time.Second, "the delivery recorded", func() bool {
		s, err := h.ob.Stats(context.Background(), "s")
		return err == nil && s.Delivered == 1
	})
	before, err := h.ob.DispatchLease("s")
	if err != nil || before.Token == 0 || !before.Expires.After(clock.Now()) {
		t.Fatalf("lease before restart = %+v, %v", before, err)
	}
	// A process takes the lease and dies holding it (no release).
	h.close()
	crashed, err := Open(h.path, StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	dead, err := (&StoreLeases{store: crashed, now: clock.Now}).Acquire(context.Background(), dispatchLeaseName("s"), "crashed", time.Hour)
	if err != nil || dead.Token <= before.Token {
		t.Fatalf("crashed process's lease = %+v, %v", dead, err)
	}
	if err := crashed.Close(); err != nil {
		t.Fatal(err)
	}
	before = dead
	h.open(func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, "")
	h.enqueue(makeSET("s", "after"))
	if got := rc.waitFor(t, 1, 5*time.Second); got[0].JTI != "after" {
		t.Errorf("delivered %q after restart", got[0].JTI)
	}
	after, err := h.ob.DispatchLease("s")
	if err != nil || after.Token <= before.Token || after.Holder == before.Holder {
		t.Errorf("lease after restart = %+v (before %+v), %v", after, before, err)
	}
}

// gatedLeases holds every Renew until gate is closed (or its context
// ends): a holder whose heartbeat does not reach the store.
type gatedLeases struct {
	Leases
	gate <-chan struct{}
}

func (g *gatedLeases) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	select {
	case <-g.gate:
	case <-ctx.Done():
		return Lease{}, ctx.Err()
	}
	return g.Leases.Renew(ctx, l, ttl)
}
