package outboxtest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// testReplicasPause: replica A delivers a push stream and has one attempt
// in flight when the stream is paused through replica B. Once A has
// heard of the pause, no SET but that one and the pause's announcement
// reaches the receiver; resumed through B, the stream goes on with the
// resume's announcement and the held SETs, each once, in order, never
// two in flight at once. With a store that is not shared, both replicas
// run on one store.
func (s Suite) testReplicasPause(t *testing.T) {
	a, b, na, nb := s.twoReplicas(t)
	sa := outbox.NewStore(a, outbox.StoreOptions{})
	sb := sa
	if s.Shared {
		sb = outbox.NewStore(b, outbox.StoreOptions{})
	}
	t.Cleanup(func() { _ = sa.Close(); _ = sb.Close() })

	const stuck = "d02" // the attempt in flight when the pause commits
	var mu sync.Mutex
	var got []string
	inflight, overlaps := 0, 0
	arrived, release := make(chan struct{}), make(chan struct{})
	var arrivedOnce, releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	more := make(chan struct{}, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		jti := jtiOf(t, string(body))
		mu.Lock()
		inflight++
		if inflight > 1 {
			overlaps++
		}
		mu.Unlock()
		if jti == stuck {
			arrivedOnce.Do(func() { close(arrived) })
			<-release
		}
		mu.Lock()
		inflight--
		got = append(got, jti)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		more <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(unblock)
	received := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
	wait := func(n int) []string {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			if g := received(); len(g) >= n {
				return g
			}
			select {
			case <-more:
			case <-deadline:
				t.Fatalf("receiver got %v, want %d SETs", received(), n)
			}
		}
	}

	const ttl = 3 * time.Second
	oa := newOutbox(t, sa, func(c *outbox.Config) { c.Notifier, c.HolderID, c.LeaseTTL = na, "A", ttl })
	ob := newOutbox(t, sb, func(c *outbox.Config) { c.Notifier, c.HolderID, c.LeaseTTL = nb, "B", ttl })
	cfg := outbox.StreamConfig{ID: "pause", Method: outbox.MethodPush, Status: outbox.StatusEnabled, EndpointURL: srv.URL}
	for _, o := range []*outbox.Outbox{oa, ob} {
		if err := o.SetStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	var want []string
	for i := range 10 {
		jti := fmt.Sprintf("d%02d", i)
		want = append(want, jti)
		if err := oa.Enqueue(ctx, []outbox.SET{makeSET("pause", jti)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	run(t, oa) // A alone, so it takes the stream's lease
	select {
	case <-arrived:
	case <-time.After(30 * time.Second):
		t.Fatalf("the receiver never saw %s; got %v", stuck, received())
	}
	run(t, ob)

	// Paused through B, announced first as the transmitter does.
	announce := func(o *outbox.Outbox, jti string) {
		t.Helper()
		set := makeSET("pause", jti)
		set.Head, set.Announce = true, true
		if err := o.Enqueue(ctx, []outbox.SET{set}, nil); err != nil {
			t.Fatal(err)
		}
	}
	announce(ob, "paused")
	paused := cfg
	paused.Status = outbox.StatusPaused
	if err := ob.SetStream(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool {
		c, ok := oa.StreamConfig("pause")
		return ok && c.Status == outbox.StatusPaused
	}) {
		t.Fatal("replica A never took the pause made through replica B")
	}
	unblock()
	// The attempt in flight and the announcement are recorded once each...
	if !waitFor(20*time.Second, func() bool {
		st, err := ob.Stats(ctx, "pause")
		return err == nil && st.Delivered == 4
	}) {
		st, _ := ob.Stats(ctx, "pause")
		t.Fatalf("after the pause: %+v, want the 3 SETs and the announcement delivered; receiver got %v", st, received())
	}
	// ... and nothing else goes out while the stream is paused.
	time.Sleep(300 * time.Millisecond)
	if g := received(); fmt.Sprint(g) != "[d00 d01 d02 paused]" {
		t.Fatalf("while paused the receiver got %v, want [d00 d01 d02 paused]", g)
	}
	if st, _ := oa.Stats(ctx, "pause"); st.Backlog != 7 {
		t.Fatalf("backlog while paused = %d, want 7 held", st.Backlog)
	}

	// Resumed through B: announced while still paused, then enabled.
	announce(ob, "resumed")
	if err := ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	wantAll := append([]string{"d00", "d01", "d02", "paused", "resumed"}, want[3:]...)
	if g := wait(len(wantAll)); fmt.Sprint(g) != fmt.Sprint(wantAll) {
		t.Fatalf("after the resume the receiver got %v, want %v", g, wantAll)
	}
	time.Sleep(200 * time.Millisecond) // nothing more may come
	mu.Lock()
	defer mu.Unlock()
	if len(got) != len(wantAll) || overlaps != 0 {
		t.Fatalf("%d deliveries (want %d), %d times two in flight at once", len(got), len(wantAll), overlaps)
	}
}

// waitFor polls cond every 10ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
