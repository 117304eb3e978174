package outboxtest

import (
	"errors"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

func leasesOn(t *testing.T, st *outbox.Store) *outbox.StoreLeases {
	t.Helper()
	l, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testMarkConditions: a mark's IfValue condition is checked with the
// write, and a failed one refuses the whole commit.
func (s Suite) testMarkConditions(t *testing.T) {
	st := store(t, s.New(t))
	k := []byte("cursor")
	put := func(expect, value []byte) error {
		return st.Commit(ctx, []outbox.Mark{
			{Bucket: "c", Key: k, Value: value, IfValue: true, Expect: expect},
			{Bucket: "c", Key: []byte("side"), Value: value},
		})
	}
	if err := put(nil, []byte("1")); err != nil {
		t.Fatalf("write expecting the key absent: %v", err)
	}
	err := put(nil, []byte("2"))
	var ce *outbox.ConditionError
	if !errors.Is(err, outbox.ErrCondition) || !errors.As(err, &ce) || ce.Bucket != "c" {
		t.Fatalf("second write expecting absent = %v, want a *ConditionError", err)
	}
	if err := put([]byte("0"), []byte("2")); !errors.Is(err, outbox.ErrCondition) {
		t.Fatalf("write expecting a wrong value = %v", err)
	}
	if v, _ := st.Get("c", []byte("side")); string(v) != "1" {
		t.Fatalf("a refused commit's other mark landed: side = %q", v)
	}
	if err := put([]byte("1"), []byte("2")); err != nil {
		t.Fatalf("write expecting the current value: %v", err)
	}
	if v, _ := st.Get("c", k); string(v) != "2" {
		t.Fatalf("value = %q, want 2", v)
	}
	// An Enqueue with a failed condition queues nothing.
	ob := newOutbox(t, st, nil)
	if err := ob.SetStream(ctx, pollStream("s")); err != nil {
		t.Fatal(err)
	}
	err = ob.Enqueue(ctx, []outbox.SET{makeSET("s", "j1")}, []outbox.Mark{{Bucket: "c", Key: k, Value: []byte("3"), IfValue: true, Expect: []byte("1")}})
	if !errors.Is(err, outbox.ErrCondition) {
		t.Fatalf("Enqueue with a stale condition = %v", err)
	}
	if stats, _ := ob.Stats(ctx, "s"); stats.Backlog != 0 {
		t.Fatalf("refused Enqueue queued %d SETs", stats.Backlog)
	}
}

// testMarkFences: a mark fenced by a lease lands only while the lease is
// held with that token.
func (s Suite) testMarkFences(t *testing.T) {
	st := store(t, s.New(t))
	leases := leasesOn(t, st)
	a, err := leases.Acquire(ctx, "poller", "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	fenced := func(l outbox.Lease, v string) error {
		return st.Commit(ctx, []outbox.Mark{
			{Fence: outbox.Fence{Lease: l.Name, Token: l.Token}},
			{Bucket: "f", Key: []byte("cursor"), Value: []byte(v)},
		})
	}
	if err := fenced(a, "a1"); err != nil {
		t.Fatalf("holder's fenced write: %v", err)
	}
	if err := leases.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	var fe *outbox.FenceError
	if err := fenced(a, "a2"); !errors.Is(err, outbox.ErrFenced) || !errors.As(err, &fe) {
		t.Fatalf("write fenced by a released lease = %v, want a *FenceError", err)
	}
	b, err := leases.Acquire(ctx, "poller", "B", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b.Token <= a.Token {
		t.Fatalf("new holder's token %d not above %d", b.Token, a.Token)
	}
	if err := fenced(a, "a3"); !errors.Is(err, outbox.ErrFenced) {
		t.Fatalf("old holder's write after a takeover = %v", err)
	}
	if err := fenced(b, "b1"); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Get("f", []byte("cursor")); string(v) != "b1" {
		t.Fatalf("cursor = %q, want b1 (a stale holder's write landed?)", v)
	}
	if err := st.Fence("poller", a.Token); !errors.Is(err, outbox.ErrFenced) {
		t.Fatalf("Fence(stale) = %v", err)
	}
	if err := st.Fence("poller", b.Token); err != nil {
		t.Fatalf("Fence(current) = %v", err)
	}
	if err := st.Fence("never-taken", 1); !errors.Is(err, outbox.ErrFenced) {
		t.Fatalf("Fence of a lease never taken = %v", err)
	}
}

// testLeases: one holder at a time, extension with the same token,
// release, takeover with a higher token, and tokens that survive a reopen.
func (s Suite) testLeases(t *testing.T) {
	open := s.New(t)
	st := outbox.NewStore(open(), outbox.StoreOptions{})
	l := leasesOn(t, st)
	a, err := l.Acquire(ctx, "x", "A", time.Minute)
	if err != nil || a.Token == 0 || a.Holder != "A" || a.Name != "x" || time.Until(a.Expires) < 30*time.Second {
		t.Fatalf("Acquire = %+v, %v", a, err)
	}
	_, err = l.Acquire(ctx, "x", "B", time.Minute)
	var he *outbox.HeldError
	if !errors.Is(err, outbox.ErrLeaseHeld) || !errors.As(err, &he) || he.Holder != "A" {
		t.Fatalf("second holder's Acquire = %v, want held by A", err)
	}
	again, err := l.Acquire(ctx, "x", "A", 2*time.Minute)
	if err != nil || again.Token != a.Token || !again.Expires.After(a.Expires) {
		t.Fatalf("holder's own Acquire = %+v, %v; want the same token, extended", again, err)
	}
	renewed, err := l.Renew(ctx, again, 3*time.Minute)
	if err != nil || renewed.Token != a.Token || !renewed.Expires.After(again.Expires) {
		t.Fatalf("Renew = %+v, %v", renewed, err)
	}
	if _, err := l.Renew(ctx, outbox.Lease{Name: "x", Holder: "B", Token: a.Token}, time.Minute); !errors.Is(err, outbox.ErrLeaseLost) {
		t.Fatalf("Renew by a non-holder = %v", err)
	}
	if err := l.Release(ctx, outbox.Lease{Name: "x", Holder: "B", Token: a.Token}); !errors.Is(err, outbox.ErrLeaseLost) {
		t.Fatalf("Release by a non-holder = %v", err)
	}
	if err := l.Release(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Renew(ctx, renewed, time.Minute); !errors.Is(err, outbox.ErrLeaseLost) {
		t.Fatalf("Renew after Release = %v", err)
	}
	b, err := l.Acquire(ctx, "x", "B", time.Minute)
	if err != nil || b.Token <= a.Token {
		t.Fatalf("Acquire after Release = %+v, %v; want a token above %d", b, err, a.Token)
	}
	y, err := l.Acquire(ctx, "y", "A", time.Minute)
	if err != nil || y.Token <= b.Token {
		t.Fatalf("another lease's token %d, want above %d (tokens grow across names)", y.Token, b.Token)
	}
	if cur, err := l.Current("x"); err != nil || cur.Holder != "B" || cur.Token != b.Token {
		t.Fatalf("Current = %+v, %v", cur, err)
	}
	for _, bad := range []struct{ name, holder string }{{"", "A"}, {"x", ""}, {"a\x00b", "A"}} {
		if _, err := l.Acquire(ctx, bad.name, bad.holder, time.Minute); err == nil {
			t.Errorf("Acquire(%q, %q) accepted", bad.name, bad.holder)
		}
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2 := store(t, open)
	l2 := leasesOn(t, st2)
	if err := st2.Fence("x", b.Token); err != nil {
		t.Fatalf("the last token after reopen: %v", err)
	}
	if !s.Shared {
		// One process at a time: an earlier open's lease has no holder.
		c, err := l2.Acquire(ctx, "x", "C", time.Minute)
		if err != nil || c.Token <= y.Token {
			t.Fatalf("Acquire after reopen = %+v, %v; want free, token above %d", c, err, y.Token)
		}
		return
	}
	if _, err := l2.Acquire(ctx, "x", "C", time.Minute); !errors.Is(err, outbox.ErrLeaseHeld) {
		t.Fatalf("Acquire on a shared store while B holds = %v, want held", err)
	}
}

// testLeaseExpiry: an expired lease goes to the next holder with a higher
// token, and its old holder can no longer renew it.
func (s Suite) testLeaseExpiry(t *testing.T) {
	st := store(t, s.New(t))
	l := leasesOn(t, st)
	const ttl = 300 * time.Millisecond
	a, err := l.Acquire(ctx, "e", "A", ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, "e", "B", ttl); !errors.Is(err, outbox.ErrLeaseHeld) {
		t.Fatalf("Acquire before expiry = %v", err)
	}
	time.Sleep(ttl + 200*time.Millisecond)
	b, err := l.Acquire(ctx, "e", "B", time.Minute)
	if err != nil || b.Token <= a.Token {
		t.Fatalf("Acquire after expiry = %+v, %v", b, err)
	}
	if _, err := l.Renew(ctx, a, time.Minute); !errors.Is(err, outbox.ErrLeaseLost) {
		t.Fatalf("old holder's Renew after a takeover = %v", err)
	}
}
