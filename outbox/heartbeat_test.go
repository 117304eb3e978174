package outbox

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestHeartbeatHoldsLeaseThroughLongAttempt: a push attempt that lasts
// three lease lifetimes keeps its stream's dispatch lease (the heartbeat
// renews it every LeaseTTL/3, with the same token), so a replica standing
// by does not take the stream over, and the attempt's outcome is recorded.
func TestHeartbeatHoldsLeaseThroughLongAttempt(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier()
	release := make(chan struct{})
	posted := make(chan struct{}, 1)
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		if n == 1 {
			posted <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mod := func(c *Config) { c.LeaseTTL, c.PushTimeout = 15*time.Second, time.Hour }
	a := newReplica(t, st, clock, "replica-a", notifier, mod)
	b := newReplica(t, st, clock, "replica-b", notifier, mod)
	ctx := context.Background()
	cfg := StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: rc.srv.URL}
	if err := a.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	want := jtis("l", 2)
	for _, j := range want {
		if err := a.ob.Enqueue(ctx, []SET{makeSET("s", j)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-posted:
	case <-time.After(5 * time.Second):
		t.Fatal("no attempt")
	}
	first, err := a.ob.DispatchLease("s")
	if err != nil || first.Holder != "replica-a" {
		t.Fatalf("lease = %+v, %v", first, err)
	}
	cfg.AuthorizationHeader = "Bearer b" // tells B's posts apart
	if err := b.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	for range 9 { // 45s: three lease lifetimes
		clock.Advance(5 * time.Second)
		eventually(t, 5*time.Second, "the heartbeat's renewal", func() bool {
			l, err := a.ob.DispatchLease("s")
			return err == nil && l.Holder == "replica-a" && l.Token == first.Token && l.Expires.Equal(clock.Now().Add(15*time.Second))
		})
	}
	close(release)
	got := rc.waitFor(t, len(want), 5*time.Second)
	for i, d := range got {
		if d.JTI != want[i] || d.Header.Get("Authorization") != "" {
			t.Errorf("delivery %d: %s by %q, want %s by A", i, d.JTI, d.Header.Get("Authorization"), want[i])
		}
	}
	eventually(t, 5*time.Second, "the outcomes recorded", func() bool {
		s, err := a.ob.Stats(ctx, "s")
		return err == nil && s.Delivered == int64(len(want))
	})
	if n := a.ob.Fenced() + b.ob.Fenced(); n != 0 {
		t.Errorf("%d outcomes refused", n)
	}
}

// failingRenewals refuses every Renew with a store error while cut is set
// (the store cannot be reached), Acquire still works.
type failingRenewals struct {
	Leases
	cut    atomic.Bool
	failed atomic.Int64
}

func (f *failingRenewals) Renew(ctx context.Context, l Lease, ttl time.Duration) (Lease, error) {
	if f.cut.Load() {
		f.failed.Add(1)
		return Lease{}, errors.New("store unreachable")
	}
	return f.Leases.Renew(ctx, l, ttl)
}

// TestHolderThatCannotRenewStops: a holder whose renewals fail for the
// lease's whole lifetime stops its attempt in flight and records nothing;
// the replica standing by takes the stream over once the lease ended and
// delivers the SET, which carries only its own attempt.
func TestHolderThatCannotRenewStops(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier()
	posted := make(chan struct{}, 1)
	aborted := make(chan struct{}, 1)
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		if n == 1 {
			posted <- struct{}{}
			<-r.Context().Done() // until A gives the attempt up
			aborted <- struct{}{}
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	mod := func(c *Config) { c.LeaseTTL, c.PushTimeout = 15*time.Second, time.Hour }
	a := newReplica(t, st, clock, "replica-a", notifier, mod)
	renewals := &failingRenewals{Leases: a.ob.leases}
	a.ob.leases = renewals
	ctx := context.Background()
	cfg := StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: rc.srv.URL}
	if err := a.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := a.ob.Enqueue(ctx, []SET{makeSET("s", "x")}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case <-posted:
	case <-time.After(5 * time.Second):
		t.Fatal("no attempt")
	}
	renewals.cut.Store(true)
	b := newReplica(t, st, clock, "replica-b", notifier, mod)
	cfg.AuthorizationHeader = "Bearer b"
	if err := b.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	start := clock.Now()
	func() {
		deadline := time.After(10 * time.Second)
		for {
			select {
			case <-aborted:
				return
			case <-deadline:
				t.Fatalf("A still attempting %v after its renewals began to fail", clock.Now().Sub(start))
			case <-time.After(5 * time.Millisecond):
				clock.Advance(500 * time.Millisecond)
			}
		}
	}()
	if d := clock.Now().Sub(start); d < 15*time.Second-5*time.Second {
		t.Errorf("A gave up after %v, before its lease could have ended", d)
	}
	if renewals.failed.Load() < 2 {
		t.Errorf("A gave up after %d failed renewals, want it to have tried again", renewals.failed.Load())
	}
	eventually(t, 10*time.Second, "B delivering the stream", func() bool {
		clock.Advance(time.Second)
		s, err := b.ob.Stats(ctx, "s")
		return err == nil && s.Delivered == 1
	})
	got := rc.accepted()
	if len(got) != 1 || got[0] != "x" {
		t.Errorf("accepted %v, want x once (by B)", got)
	}
	hist, err := b.ob.History(ctx, "s", 10)
	if err != nil || len(hist) != 1 || hist[0].AttemptCount != 1 || hist[0].Attempts[0].Outcome != "delivered" {
		t.Fatalf("history %+v, %v; want B's one attempt only", hist, err)
	}
	if l, _ := b.ob.DispatchLease("s"); l.Holder != "replica-b" {
		t.Errorf("lease %+v, want B's", l)
	}
	if n := a.ob.Fenced(); n != 0 {
		t.Errorf("A had %d outcomes refused; it should have written none", n)
	}
}
