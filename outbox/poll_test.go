package outbox

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func intp(n int) *int { return &n }

// TestPollConformance covers the poll rows: poll-only, poll-and-ack,
// ack-only, setErrs, moreAvailable, lease expiry; every SET handed out is
// checked with the independent verifier.
func TestPollConformance(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	h.pollStream("p")
	ids := jtis("p", 5)
	for _, id := range ids {
		h.enqueue(makeSET("p", id))
	}
	verifyAll := func(resp PollResponse) []string {
		t.Helper()
		for jti, compact := range resp.Sets {
			if got := verifyJTI(t, compact); got != jti {
				t.Errorf("sets[%q] carries jti %q", jti, got)
			}
		}
		return sortedKeys(resp.Sets)
	}

	// poll-only, with maxEvents: the first two, more available.
	resp, err := h.ob.Poll(ctx, "p", PollRequest{MaxEvents: intp(2), ReturnImmediately: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := verifyAll(resp); !slices.Equal(got, ids[:2]) || !resp.MoreAvailable {
		t.Fatalf("poll 1 = %v more=%v", got, resp.MoreAvailable)
	}
	// Leased SETs are not handed out again before the lease ends.
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{MaxEvents: intp(2), ReturnImmediately: true})
	if got := verifyAll(resp); !slices.Equal(got, ids[2:4]) {
		t.Fatalf("poll 2 = %v", got)
	}
	// poll-and-ack: ack the first two, get the last.
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{Ack: ids[:2], ReturnImmediately: true})
	if got := verifyAll(resp); !slices.Equal(got, ids[4:]) || resp.MoreAvailable {
		t.Fatalf("poll 3 = %v more=%v", got, resp.MoreAvailable)
	}
	// ack-only with maxEvents 0 returns nothing, and setErrs dead-letters.
	resp, err = h.ob.Poll(ctx, "p", PollRequest{MaxEvents: intp(0), Ack: ids[2:3],
		SetErrs: map[string]SetErr{ids[3]: {Err: "invalid_audience", Description: "wrong aud"}}})
	if err != nil || len(resp.Sets) != 0 {
		t.Fatalf("ack-only = %v, %v", resp.Sets, err)
	}
	st, _ := h.ob.Stats(ctx, "p")
	if st.Backlog != 1 || st.Delivered != 3 || st.Dead != 1 {
		t.Errorf("stats backlog=%d delivered=%d dead=%d, want 1 3 1", st.Backlog, st.Delivered, st.Dead)
	}
	dl, _ := h.ob.DeadLetters(ctx, "p", 0)
	if len(dl) != 1 || dl[0].JTI != ids[3] || !strings.Contains(dl[0].Reason, "invalid_audience") {
		t.Errorf("dead letters = %+v", dl)
	}
	// The unacknowledged SET comes back after the lease timeout, same jti.
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if len(resp.Sets) != 0 {
		t.Fatalf("leased SET handed out again early: %v", sortedKeys(resp.Sets))
	}
	clock.Advance(time.Minute)
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if got := verifyAll(resp); !slices.Equal(got, ids[4:]) {
		t.Fatalf("after lease = %v", got)
	}
	// Acks and leases survive a restart: the SET handed out just before
	// it is not handed out again until its lease ends.
	h.reopen(func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if len(resp.Sets) != 0 {
		t.Fatalf("after restart, a leased SET handed out again early: %v", sortedKeys(resp.Sets))
	}
	if st, _ := h.ob.Stats(ctx, "p"); st.Leased != 1 {
		t.Errorf("after restart Leased = %d, want 1", st.Leased)
	}
	clock.Advance(time.Minute)
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if got := verifyAll(resp); !slices.Equal(got, ids[4:]) {
		t.Fatalf("after restart and the lease's end = %v", got)
	}
	// Acking a jti of another stream or an unknown one does nothing.
	h.pollStream("other")
	h.enqueue(makeSET("other", "o1"))
	if _, err := h.ob.Poll(ctx, "p", PollRequest{Ack: []string{"o1", "nope"}, MaxEvents: intp(0)}); err != nil {
		t.Fatal(err)
	}
	if st, _ := h.ob.Stats(ctx, "other"); st.Backlog != 1 {
		t.Error("a stream acknowledged another stream's SET")
	}
	// Errors for unknown and push streams.
	if _, err := h.ob.Poll(ctx, "missing", PollRequest{}); !errors.Is(err, ErrUnknownStream) {
		t.Errorf("unknown stream: %v", err)
	}
}

// TestLongPoll: a poll without returnImmediately is answered as soon as a
// SET arrives, and with nothing when the bound passes.
func TestLongPoll(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep; c.MaxLongPoll = time.Hour })
	h.pollStream("p")
	type result struct {
		resp PollResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := h.ob.Poll(ctx, "p", PollRequest{})
		done <- result{r, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("long poll returned before any SET: %+v", r)
	case <-time.After(50 * time.Millisecond):
	}
	h.enqueue(makeSET("p", "late"))
	select {
	case r := <-done:
		if r.err != nil || !slices.Equal(sortedKeys(r.resp.Sets), []string{"late"}) {
			t.Fatalf("long poll = %v, %v", sortedKeys(r.resp.Sets), r.err)
		}
		verifyJTI(t, r.resp.Sets["late"])
	case <-time.After(10 * time.Second):
		t.Fatal("long poll not woken by the enqueue")
	}

	// The bound: on an injected clock.
	clock := newFakeClock()
	h2 := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.MaxLongPoll = 30 * time.Second })
	h2.pollStream("p")
	go func() {
		r, err := h2.ob.Poll(ctx, "p", PollRequest{})
		done <- result{r, err}
	}()
	eventually(t, 5*time.Second, "the long-poll timer", func() bool {
		d, ok := clock.pendingBelow(noSweep / 2)
		return ok && d == 30*time.Second
	})
	clock.Advance(30 * time.Second)
	r := <-done
	if r.err != nil || r.resp.Sets == nil || len(r.resp.Sets) != 0 {
		t.Fatalf("expired long poll = %+v", r)
	}
}

// TestStreamStatus: paused holds (push and poll) and releases in order;
// disabled discards queued SETs and drops new ones; deleted discards.
func TestStreamStatus(t *testing.T) {
	ctx := context.Background()
	rc := newReceiver(t, nil)
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	set := func(id string, m Method, s Status) {
		t.Helper()
		cfg := StreamConfig{ID: id, Method: m, Status: s}
		if m == MethodPush {
			cfg.EndpointURL = rc.srv.URL
		}
		if err := h.ob.SetStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	// Push, paused: held, then delivered in order.
	set("push", MethodPush, StatusPaused)
	ids := jtis("held", 20)
	for _, id := range ids {
		h.enqueue(makeSET("push", id))
	}
	if st, _ := h.ob.Stats(ctx, "push"); st.Backlog != 20 || len(rc.accepted()) != 0 {
		t.Fatalf("paused stream: backlog %d, delivered %d", st.Backlog, len(rc.accepted()))
	}
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	if len(rc.accepted()) != 0 {
		t.Fatal("paused stream delivered after restart")
	}
	set("push", MethodPush, StatusEnabled)
	rc.waitFor(t, 20, 10*time.Second)
	if got := rc.accepted(); !slices.Equal(got, ids) {
		t.Errorf("released order = %v", got)
	}

	// Poll, paused: empty answers, SETs kept.
	set("poll", MethodPoll, StatusPaused)
	h.enqueue(makeSET("poll", "q1"))
	resp, err := h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true})
	if err != nil || resp.Sets == nil || len(resp.Sets) != 0 {
		t.Fatalf("paused poll = %v, %v", resp.Sets, err)
	}
	set("poll", MethodPoll, StatusEnabled)
	resp, _ = h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true})
	if !slices.Equal(sortedKeys(resp.Sets), []string{"q1"}) {
		t.Fatalf("enabled poll = %v", sortedKeys(resp.Sets))
	}

	// Disabled: queued discarded, new dropped.
	h.enqueue(makeSET("poll", "q2"))
	set("poll", MethodPoll, StatusDisabled)
	h.enqueue(makeSET("poll", "q3"))
	st, _ := h.ob.Stats(ctx, "poll")
	if st.Backlog != 0 || st.Dropped != 3 { // q1 (still unacked), q2 discarded, q3 dropped
		t.Errorf("disabled: backlog %d dropped %d, want 0 3", st.Backlog, st.Dropped)
	}
	set("poll", MethodPoll, StatusEnabled)
	resp, _ = h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true})
	if len(resp.Sets) != 0 {
		t.Errorf("SETs survived disabling: %v", sortedKeys(resp.Sets))
	}

	// Deleted: queue discarded, stream unknown.
	h.enqueue(makeSET("poll", "q4"))
	if err := h.ob.DeleteStream(ctx, "poll"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ob.Stats(ctx, "poll"); !errors.Is(err, ErrUnknownStream) {
		t.Errorf("deleted stream stats: %v", err)
	}
	if hist, _ := h.ob.History(ctx, "poll", 10); len(hist) != 0 {
		t.Errorf("deleted stream keeps %d records", len(hist))
	}
	if _, err := h.ob.Poll(ctx, "poll", PollRequest{}); !errors.Is(err, ErrUnknownStream) {
		t.Errorf("poll on deleted stream: %v", err)
	}
	if _, err := h.ob.Poll(ctx, "push", PollRequest{}); !errors.Is(err, ErrNotPoll) {
		t.Errorf("poll on push stream: %v", err)
	}
}

// TestRetentionAndOperations: undelivered SETs expire into the dead letter,
// replay keeps the jti, purge removes, delivered records go after
// DeliveredRetention, idempotency keys after Retention.
func TestRetentionAndOperations(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) {
		c.SweepInterval = noSweep
		c.Retention = 10 * time.Hour
		c.DeliveredRetention = time.Hour
	})
	h.pollStream("p")
	h.enqueue(makeSET("p", "old1"), makeSET("p", "old2"))
	clock.Advance(5 * time.Hour)
	h.enqueue(makeSET("p", "young"))
	clock.Advance(5 * time.Hour)
	c, err := h.ob.sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c.Expired != 2 {
		t.Fatalf("expired %d, want 2", c.Expired)
	}
	st, _ := h.ob.Stats(ctx, "p")
	if st.Backlog != 1 || st.Dead != 2 || st.OldestAge != 5*time.Hour {
		t.Errorf("stats = %+v", st)
	}
	dl, _ := h.ob.DeadLetters(ctx, "p", 10)
	if len(dl) != 2 || dl[0].Reason != "retention expired" {
		t.Fatalf("dead letters = %+v", dl)
	}
	// Replay one: back in the queue, same jti, after the young one.
	n, err := h.ob.Replay(ctx, "p", []string{"old2", "young", "unknown"})
	if err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	resp, _ := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if !slices.Equal(sortedKeys(resp.Sets), []string{"old2", "young"}) {
		t.Fatalf("after replay = %v", sortedKeys(resp.Sets))
	}
	if jti := verifyJTI(t, resp.Sets["old2"]); jti != "old2" {
		t.Errorf("replayed SET jti = %q", jti)
	}
	if _, err := h.ob.Poll(ctx, "p", PollRequest{Ack: []string{"old2", "young"}, MaxEvents: intp(0)}); err != nil {
		t.Fatal(err)
	}
	// Purge the other dead letter.
	if n, err := h.ob.Purge(ctx, "p", nil); err != nil || n != 1 {
		t.Fatalf("Purge = %d, %v", n, err)
	}
	if dl, _ := h.ob.DeadLetters(ctx, "p", 10); len(dl) != 0 {
		t.Errorf("dead letters after purge: %+v", dl)
	}
	hist, _ := h.ob.History(ctx, "p", 10)
	if len(hist) != 2 || hist[0].State != StateDelivered || len(hist[0].Attempts) == 0 || hist[0].Labels["source"] != "test" {
		t.Fatalf("history = %+v", hist)
	}
	// Delivered records are purged after DeliveredRetention.
	clock.Advance(time.Hour)
	if _, err := h.ob.sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if hist, _ := h.ob.History(ctx, "p", 10); len(hist) != 0 {
		t.Errorf("delivered records kept: %d", len(hist))
	}
	st, _ = h.ob.Stats(ctx, "p")
	if st.Delivered != 2 || st.Dead != 0 || st.Backlog != 0 {
		t.Errorf("counters after purge = %+v", st)
	}
	// Idempotency: remembered within retention, forgotten after.
	h.enqueue(makeSET("p", "young"))
	if st, _ := h.ob.Stats(ctx, "p"); st.Backlog != 0 {
		t.Error("a SET enqueued again within retention")
	}
	clock.Advance(10 * time.Hour)
	if _, err := h.ob.sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if v, _ := h.store.Get(string(bktKeys), []byte(makeSET("p", "young").Key)); v != nil {
		t.Error("idempotency key kept past retention")
	}
}

// TestDiscardLargeBacklog: disabling and deleting a stream with a backlog
// larger than one discard chunk removes all of it.
func TestDiscardLargeBacklog(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	for _, id := range []string{"a", "b"} {
		if err := h.ob.SetStream(ctx, StreamConfig{ID: id, Method: MethodPoll, Status: StatusPaused}); err != nil {
			t.Fatal(err)
		}
	}
	n := discardChunk*2 + 17
	for _, id := range []string{"a", "b"} {
		var batch []SET
		for _, j := range jtis(id, n) {
			batch = append(batch, makeSET(id, j))
		}
		for len(batch) > 0 {
			k := min(len(batch), 1000)
			h.enqueue(batch[:k]...)
			batch = batch[k:]
		}
	}
	if err := h.ob.SetStream(ctx, StreamConfig{ID: "a", Method: MethodPoll, Status: StatusDisabled}); err != nil {
		t.Fatal(err)
	}
	st, _ := h.ob.Stats(ctx, "a")
	if st.Backlog != 0 || st.Dropped != int64(n) {
		t.Errorf("disabled: backlog %d dropped %d, want 0 %d", st.Backlog, st.Dropped, n)
	}
	if err := h.ob.DeleteStream(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	left := 0
	for _, b := range []string{string(bktQueue), string(bktHist), string(bktSets)} {
		_ = h.store.Scan(b, nil, func(k, v []byte) error { left++; return nil })
	}
	if left != 0 {
		t.Errorf("%d entries left after disable and delete", left)
	}
}

// TestPollLeaseBound: a stream never has more than maxLeases SETs under
// an unexpired lease; the rest wait, announced by moreAvailable, until
// acks or lease ends make room.
func TestPollLeaseBound(t *testing.T) {
	defer func(n int) { maxLeases = n }(maxLeases)
	maxLeases = 3
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	h.pollStream("p")
	ids := jtis("p", 5)
	for _, id := range ids {
		h.enqueue(makeSET("p", id))
	}
	resp, err := h.ob.Poll(ctx, "p", PollRequest{MaxEvents: intp(2), ReturnImmediately: true})
	if err != nil || !slices.Equal(resp.Order, ids[:2]) {
		t.Fatalf("poll 1 = %v, %v", resp.Order, err)
	}
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if !slices.Equal(resp.Order, ids[2:3]) || !resp.MoreAvailable {
		t.Fatalf("poll 2 = %v more=%v, want %v and more (the bound of 3)", resp.Order, resp.MoreAvailable, ids[2:3])
	}
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if len(resp.Order) != 0 || !resp.MoreAvailable {
		t.Fatalf("poll at the bound = %v more=%v, want nothing and more", resp.Order, resp.MoreAvailable)
	}
	if st, _ := h.ob.Stats(ctx, "p"); st.Leased != 3 {
		t.Errorf("Leased = %d, want 3", st.Leased)
	}
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{Ack: ids[:1], ReturnImmediately: true})
	if !slices.Equal(resp.Order, ids[3:4]) {
		t.Fatalf("after one ack = %v, want %v", resp.Order, ids[3:4])
	}
	clock.Advance(time.Minute)
	resp, _ = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if want := append(slices.Clone(ids[1:3]), ids[3]); !slices.Equal(resp.Order, want) || !resp.MoreAvailable {
		t.Fatalf("after the leases ended = %v more=%v, want %v and more", resp.Order, resp.MoreAvailable, want)
	}
}

// TestLongPollWakesAtLeaseEnd: a long poll that finds every SET under
// lease waits until the first lease ends (not the whole long-poll bound)
// and then hands that SET out again.
func TestLongPollWakesAtLeaseEnd(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) {
		c.SweepInterval = noSweep
		c.LeaseTimeout = 20 * time.Second
		c.MaxLongPoll = 30 * time.Second
	})
	h.pollStream("p")
	h.enqueue(makeSET("p", "a"))
	if resp, err := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true}); err != nil || len(resp.Sets) != 1 {
		t.Fatalf("first poll = %v, %v", resp.Order, err)
	}
	clock.Advance(5 * time.Second)
	done := make(chan PollResponse, 1)
	go func() {
		r, _ := h.ob.Poll(ctx, "p", PollRequest{})
		done <- r
	}()
	eventually(t, 5*time.Second, "the long poll's timer", func() bool {
		d, ok := clock.pendingBelow(noSweep / 2)
		return ok && d == 15*time.Second
	})
	clock.Advance(15 * time.Second)
	select {
	case r := <-done:
		if !slices.Equal(r.Order, []string{"a"}) {
			t.Fatalf("long poll at the lease's end = %v, want [a]", r.Order)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll did not wake at the lease's end")
	}
}

// TestPollWrites: a poll writes once for its whole batch (acks and
// hand-out together), and a poll that finds nothing to hand out writes
// nothing.
func TestPollWrites(t *testing.T) {
	ctx := context.Background()
	// Not running: no sweep or dispatcher writes meanwhile.
	store := sharedStore(t)
	ob, err := New(Config{Store: store, Signer: newSigner(t), LeaseTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.SetStream(ctx, StreamConfig{ID: "p", Method: MethodPoll, Status: StatusEnabled}); err != nil {
		t.Fatal(err)
	}
	ids := jtis("p", 40)
	for _, id := range ids {
		if err := ob.Enqueue(ctx, []SET{makeSET("p", id)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	writes := func(poll PollRequest) (PollResponse, uint64) {
		t.Helper()
		before := store.stats().Transactions
		resp, err := ob.Poll(ctx, "p", poll)
		if err != nil {
			t.Fatal(err)
		}
		return resp, store.stats().Transactions - before
	}
	resp, n := writes(PollRequest{MaxEvents: intp(20), ReturnImmediately: true})
	if len(resp.Sets) != 20 || n != 1 {
		t.Errorf("hand-out of %d SETs took %d write transactions, want 20 in 1", len(resp.Sets), n)
	}
	resp, n = writes(PollRequest{Ack: resp.Order, ReturnImmediately: true})
	if !slices.Equal(resp.Order, ids[20:]) || n != 1 {
		t.Errorf("ack and hand-out = %v in %d write transactions, want %v in 1", resp.Order, n, ids[20:])
	}
	if resp, n = writes(PollRequest{ReturnImmediately: true}); len(resp.Sets) != 0 || n != 0 {
		t.Errorf("a poll with everything under lease handed out %v and wrote %d times, want nothing and no write", resp.Order, n)
	}
	if st, _ := ob.Stats(ctx, "p"); st.Delivered != 20 || st.Leased != 20 {
		t.Errorf("stats %+v, want 20 delivered and 20 leased", st)
	}
}
