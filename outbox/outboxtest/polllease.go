package outboxtest

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// pollLease is the hand-out lease of the poll lease tests: long enough
// for a few polls, short enough to wait out.
const pollLease = 2 * time.Second

// pollReplicas returns two outboxes on one store that both know the poll
// stream "p": on a shared backend each on a backend of its own (two
// replicas), else both on one (two instances in one process). reopenA
// closes the first one's store and returns a fresh outbox in its place.
func (s Suite) pollReplicas(t *testing.T) (a, b *outbox.Outbox, reopenA func() *outbox.Outbox) {
	t.Helper()
	open := s.New(t)
	mod := func(c *outbox.Config) { c.LeaseTimeout = pollLease; c.MaxLongPoll = 20 * time.Second }
	sa := outbox.NewStore(open(), outbox.StoreOptions{})
	t.Cleanup(func() { _ = sa.Close() })
	sb := sa
	if s.Shared {
		sb = store(t, open)
	}
	na, nb := s.notifiers(t, sa.Backend(), sb.Backend())
	a = newOutbox(t, sa, func(c *outbox.Config) { mod(c); c.Notifier = na })
	b = newOutbox(t, sb, func(c *outbox.Config) { mod(c); c.Notifier = nb })
	for _, o := range []*outbox.Outbox{a, b} {
		if err := o.SetStream(ctx, pollStream("p")); err != nil {
			t.Fatal(err)
		}
	}
	reopenA = func() *outbox.Outbox {
		t.Helper()
		if err := sa.Close(); err != nil {
			t.Fatal(err)
		}
		sa = store(t, open)
		return newOutbox(t, sa, mod)
	}
	return a, b, reopenA
}

func enqueueAll(t *testing.T, o *outbox.Outbox, jtis ...string) {
	t.Helper()
	sets := make([]outbox.SET, len(jtis))
	for i, j := range jtis {
		sets[i] = makeSET("p", j)
	}
	if err := o.Enqueue(ctx, sets, nil); err != nil {
		t.Fatal(err)
	}
}

// within runs check when less than the poll lease has passed since start,
// so a check that holds only while a lease lasts cannot fail because a
// loaded machine was slow; it reports whether it ran.
func within(t *testing.T, start time.Time, what string, check func()) bool {
	t.Helper()
	check()
	if time.Since(start) >= pollLease {
		t.Logf("%s: took longer than the lease, not judged", what)
		return false
	}
	return true
}

// testPollLeaseReplicas: a SET handed out through one outbox is not handed
// out through another on the same store while its lease lasts; once it
// ends, a long poll on the other wakes and hands it out again (RFC 8936
// redelivery).
func (s Suite) testPollLeaseReplicas(t *testing.T) {
	a, b, _ := s.pollReplicas(t)
	enqueueAll(t, a, "j1", "j2", "j3", "j4")
	two := 2
	start := time.Now()
	first := poll(t, a, "p", outbox.PollRequest{MaxEvents: &two, ReturnImmediately: true})
	if fmt.Sprint(first) != "[j1 j2]" {
		t.Fatalf("first poll = %v, want [j1 j2]", first)
	}
	var second, third []string
	judged := within(t, start, "hand-out on the other outbox", func() {
		second = poll(t, b, "p", outbox.PollRequest{ReturnImmediately: true})
		third = poll(t, a, "p", outbox.PollRequest{ReturnImmediately: true})
	})
	if judged && (fmt.Sprint(second) != "[j3 j4]" || len(third) != 0) {
		t.Fatalf("while the leases last: the other outbox handed out %v (want [j3 j4]), the first %v (want nothing)", second, third)
	}
	if stats, err := b.Stats(ctx, "p"); judged && (err != nil || stats.Leased != 4) {
		t.Errorf("the other outbox's Stats = %+v, %v; want 4 leased", stats, err)
	}
	// A long poll (no returnImmediately) on the other outbox is answered
	// when the leases end, with the SETs again.
	again := poll(t, b, "p", outbox.PollRequest{})
	if len(again) == 2 {
		// The two leases may end a moment apart.
		again = append(again, poll(t, b, "p", outbox.PollRequest{})...)
		slices.Sort(again)
	}
	if fmt.Sprint(again) != "[j1 j2 j3 j4]" {
		t.Fatalf("after the leases ended the other outbox handed out %v, want [j1 j2 j3 j4]", again)
	}
	if time.Since(start) < pollLease {
		t.Fatalf("SETs handed out again %v after the first hand-out, before the %v lease ended", time.Since(start), pollLease)
	}
}

// testPollAckReplicas: an ack or a setErr through one outbox removes the
// SET for every outbox on the store, also one that handed it out: after
// the leases end only the unacknowledged SET comes back.
func (s Suite) testPollAckReplicas(t *testing.T) {
	a, b, _ := s.pollReplicas(t)
	enqueueAll(t, a, "k1", "k2", "k3")
	start := time.Now()
	if got := poll(t, a, "p", outbox.PollRequest{ReturnImmediately: true}); fmt.Sprint(got) != "[k1 k2 k3]" {
		t.Fatalf("poll = %v", got)
	}
	zero := 0
	poll(t, b, "p", outbox.PollRequest{Ack: []string{"k1"}, MaxEvents: &zero,
		SetErrs: map[string]outbox.SetErr{"k2": {Err: "invalid_audience", Description: "not ours"}}})
	for name, o := range map[string]*outbox.Outbox{"first": a, "other": b} {
		var stats outbox.StreamStats
		var err error
		judged := within(t, start, name+" outbox's Stats", func() { stats, err = o.Stats(ctx, "p") })
		if err != nil || stats.Backlog != 1 || stats.Delivered != 1 || stats.Dead != 1 || judged && stats.Leased != 1 {
			t.Errorf("%s outbox's Stats after ack and setErr on the other = %+v, %v; want backlog 1, delivered 1, dead 1, 1 leased", name, stats, err)
		}
	}
	if got := poll(t, a, "p", outbox.PollRequest{}); fmt.Sprint(got) != "[k3]" {
		t.Fatalf("after the lease ended = %v, want [k3] only", got)
	}
	poll(t, a, "p", outbox.PollRequest{Ack: []string{"k3"}, MaxEvents: &zero})
	if got := poll(t, b, "p", outbox.PollRequest{ReturnImmediately: true}); len(got) != 0 {
		t.Fatalf("the other outbox handed out %v after everything was acknowledged", got)
	}
}

// testPollLeaseReopen: hand-out leases are kept in the store, so a
// reopened store (a restarted process) does not hand out again, before
// their lease ends, the SETs a receiver got just before the restart.
func (s Suite) testPollLeaseReopen(t *testing.T) {
	a, _, reopenA := s.pollReplicas(t)
	enqueueAll(t, a, "r1", "r2", "r3")
	two := 2
	start := time.Now()
	if got := poll(t, a, "p", outbox.PollRequest{MaxEvents: &two, ReturnImmediately: true}); fmt.Sprint(got) != "[r1 r2]" {
		t.Fatalf("poll = %v", got)
	}
	a = reopenA()
	var got []string
	var stats outbox.StreamStats
	judged := within(t, start, "poll after reopen", func() {
		got = poll(t, a, "p", outbox.PollRequest{ReturnImmediately: true})
		stats, _ = a.Stats(ctx, "p")
	})
	if judged && (fmt.Sprint(got) != "[r3]" || stats.Leased != 3) {
		t.Fatalf("after reopen: handed out %v (want [r3]), %d leased (want 3)", got, stats.Leased)
	}
	// r3's lease, taken a moment later, may have ended too.
	again := poll(t, a, "p", outbox.PollRequest{})
	if len(again) < 2 || again[0] != "r1" || again[1] != "r2" {
		t.Fatalf("after the leases ended = %v, want r1 and r2 again", again)
	}
}

// testPollLeaseConcurrent: polls racing on two outboxes of one store hand
// every SET out once while the leases last.
func (s Suite) testPollLeaseConcurrent(t *testing.T) {
	a, b, _ := s.pollReplicas(t)
	const n = 60
	jtis := make([]string, n)
	for i := range jtis {
		jtis[i] = fmt.Sprintf("c%02d", i)
	}
	enqueueAll(t, a, jtis...)
	five := 5
	start := time.Now()
	var mu sync.Mutex
	var got []string
	var wg sync.WaitGroup
	for _, o := range []*outbox.Outbox{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Since(start) < pollLease {
				resp, err := o.Poll(ctx, "p", outbox.PollRequest{MaxEvents: &five, ReturnImmediately: true})
				if err != nil {
					t.Error(err)
					return
				}
				if len(resp.Sets) == 0 {
					return
				}
				mu.Lock()
				for jti := range resp.Sets {
					got = append(got, jti)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(got)
	if time.Since(start) >= pollLease {
		t.Logf("the polls took longer than the lease (%d handed out), not judged", len(got))
		return
	}
	if fmt.Sprint(got) != fmt.Sprint(jtis) {
		t.Fatalf("racing polls handed out %d SETs (%d distinct), want each of %d once", len(got), len(slices.Compact(slices.Clone(got))), n)
	}
}
