package outboxtest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// signer makes an unsigned compact form whose middle part is the claims,
// so tests can read the jti back.
type signer struct{}

func (signer) Sign(_ context.Context, claims []byte) (string, error) {
	return "e30." + base64.RawURLEncoding.EncodeToString(claims) + ".sig", nil
}

// jtiOf reads the jti out of a compact form signer made.
func jtiOf(t *testing.T, compact string) string {
	t.Helper()
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact SET: %q", compact)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		JTI string `json:"jti"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c.JTI
}

func makeSET(stream, jti string) outbox.SET {
	claims, _ := json.Marshal(map[string]any{"jti": jti, "iss": "https://issuer.test/", "aud": stream,
		"events": map[string]any{"urn:test": map[string]any{}}})
	return outbox.SET{StreamID: stream, JTI: jti, Key: "src-" + jti + "/" + stream, EventType: "urn:test", Claims: claims}
}

func pollStream(id string) outbox.StreamConfig {
	return outbox.StreamConfig{ID: id, Method: outbox.MethodPoll, Status: outbox.StatusEnabled}
}

// newOutbox builds an outbox on st (not running); mod adjusts the config.
func newOutbox(t *testing.T, st *outbox.Store, mod func(*outbox.Config)) *outbox.Outbox {
	t.Helper()
	cfg := outbox.Config{Store: st, Signer: signer{}, AllowPrivateEndpoints: true,
		PushTimeout: 5 * time.Second, MaxLongPoll: 10 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	ob, err := outbox.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ob
}

// run runs ob until the test ends.
func run(t *testing.T, ob *outbox.Outbox) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ob.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func poll(t *testing.T, ob *outbox.Outbox, stream string, req outbox.PollRequest) []string {
	t.Helper()
	resp, err := ob.Poll(ctx, stream, req)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	var jtis []string
	for jti, compact := range resp.Sets {
		if got := jtiOf(t, compact); got != jti {
			t.Fatalf("SET keyed %q carries jti %q", jti, got)
		}
		jtis = append(jtis, jti)
	}
	slices.Sort(jtis)
	return jtis
}

// testQueue: enqueue is idempotent on the SET's key, poll hands each SET
// out once until it is acknowledged, acknowledgements and leases are
// durable, and a disabled stream drops.
func (s Suite) testQueue(t *testing.T) {
	open := s.New(t)
	st := outbox.NewStore(open(), outbox.StoreOptions{})
	ob := newOutbox(t, st, nil)
	if err := ob.SetStream(ctx, pollStream("p")); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, []outbox.SET{makeSET("p", "j1"), makeSET("p", "j2"), makeSET("p", "j3")}, nil); err != nil {
		t.Fatal(err)
	}
	replay := makeSET("p", "j2-again")
	replay.Key = makeSET("p", "j2").Key
	if err := ob.Enqueue(ctx, []outbox.SET{replay, makeSET("p", "j1")}, []outbox.Mark{{Bucket: "t", Key: []byte("done"), Value: []byte("1")}}); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Get("t", []byte("done")); string(v) != "1" {
		t.Fatal("the marks of a replayed Enqueue did not commit")
	}
	now := true
	if got := poll(t, ob, "p", outbox.PollRequest{ReturnImmediately: now}); fmt.Sprint(got) != "[j1 j2 j3]" {
		t.Fatalf("first poll = %v, want [j1 j2 j3] (replays skipped)", got)
	}
	if got := poll(t, ob, "p", outbox.PollRequest{ReturnImmediately: now}); len(got) != 0 {
		t.Fatalf("second poll = %v, want nothing (all under lease)", got)
	}
	zero := 0
	if got := poll(t, ob, "p", outbox.PollRequest{Ack: []string{"j1", "j2", "unknown"}, MaxEvents: &zero}); len(got) != 0 {
		t.Fatalf("ack-only poll handed out %v", got)
	}
	stats, err := ob.Stats(ctx, "p")
	if err != nil || stats.Backlog != 1 || stats.Delivered != 2 {
		t.Fatalf("Stats = %+v, %v; want backlog 1, delivered 2", stats, err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	st = store(t, open)
	ob = newOutbox(t, st, nil)
	// j3's hand-out lease outlives the reopen (see PollLeaseReopen).
	if got := poll(t, ob, "p", outbox.PollRequest{ReturnImmediately: now}); len(got) != 0 {
		t.Fatalf("poll after reopen = %v, want nothing (j3 still under lease)", got)
	}
	if err := ob.Enqueue(ctx, []outbox.SET{makeSET("p", "j1")}, nil); err != nil {
		t.Fatal(err)
	}
	poll(t, ob, "p", outbox.PollRequest{Ack: []string{"j3"}, MaxEvents: &zero})
	if stats, _ := ob.Stats(ctx, "p"); stats.Backlog != 0 || stats.Delivered != 3 {
		t.Fatalf("Stats after reopen = %+v; want backlog 0, delivered 3 (a replay after reopen was queued?)", stats)
	}
	cfg := pollStream("p")
	cfg.Status = outbox.StatusDisabled
	if err := ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, []outbox.SET{makeSET("p", "j9")}, nil); err != nil {
		t.Fatal(err)
	}
	if stats, _ := ob.Stats(ctx, "p"); stats.Backlog != 0 || stats.Dropped != 1 {
		t.Fatalf("disabled stream Stats = %+v, want the SET dropped", stats)
	}
}

// receiver is a push endpoint that records jtis in arrival order and
// refuses those reject says to.
type receiver struct {
	mu     sync.Mutex
	got    []string
	reject map[string]bool
	srv    *httptest.Server
	more   chan struct{}
}

func newReceiver(t *testing.T) *receiver {
	r := &receiver{reject: map[string]bool{}, more: make(chan struct{}, 1000)}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		b, _ := io.ReadAll(req.Body)
		jti := jtiOf(t, string(b))
		r.mu.Lock()
		bad := r.reject[jti]
		if !bad {
			r.got = append(r.got, jti)
		}
		r.mu.Unlock()
		if bad {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"err":"invalid_audience","description":"no"}`))
			return
		}
		w.WriteHeader(http.StatusAccepted)
		r.more <- struct{}{}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// wait waits until n SETs were accepted and returns them.
func (r *receiver) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		got := slices.Clone(r.got)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-r.more:
		case <-deadline:
			t.Fatalf("receiver got %d SETs, want %d: %v", len(got), n, got)
		}
	}
}

// testQueueDeadLetter: push delivers in order; a permanent refusal goes
// to the dead letter without holding the stream; a replay delivers it.
func (s Suite) testQueueDeadLetter(t *testing.T) {
	st := store(t, s.New(t))
	ob := newOutbox(t, st, nil)
	rcv := newReceiver(t)
	rcv.reject["bad"] = true
	run(t, ob)
	if err := ob.SetStream(ctx, outbox.StreamConfig{ID: "push", Method: outbox.MethodPush, Status: outbox.StatusEnabled, EndpointURL: rcv.srv.URL}); err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 12 {
		jti := fmt.Sprintf("p%02d", i)
		if i == 5 {
			jti = "bad"
		} else {
			want = append(want, jti)
		}
		if err := ob.Enqueue(ctx, []outbox.SET{makeSET("push", jti)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if got := rcv.wait(t, len(want)); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v in order", got, want)
	}
	var dl []outbox.DeadLetter
	for range 100 { // the dead letter commits after the attempt
		if dl, _ = ob.DeadLetters(ctx, "push", 0); len(dl) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(dl) != 1 || dl[0].JTI != "bad" || !strings.Contains(dl[0].Reason, "invalid_audience") {
		t.Fatalf("dead letters = %+v", dl)
	}
	rcv.mu.Lock()
	rcv.reject = map[string]bool{}
	rcv.mu.Unlock()
	if n, err := ob.Replay(ctx, "push", nil); err != nil || n != 1 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	if got := rcv.wait(t, len(want)+1); got[len(got)-1] != "bad" {
		t.Fatalf("after replay got %v", got)
	}
}

// notifiers returns the notifiers of two replicas (the same one when the
// store is not shared).
func (s Suite) notifiers(t *testing.T, a, b kv.Backend) (outbox.Notifier, outbox.Notifier) {
	if s.Notifier == nil {
		n := outbox.NewLocalNotifier()
		return n, n
	}
	return s.Notifier(t, a), s.Notifier(t, b)
}

// twoReplicas opens the backends of two replicas on one fresh store (one
// backend for both when the store is not shared) and their notifiers.
func (s Suite) twoReplicas(t *testing.T) (a, b kv.Backend, na, nb outbox.Notifier) {
	open := s.New(t)
	a = backend(t, open)
	b = a
	if s.Shared {
		b = backend(t, open)
	}
	na, nb = s.notifiers(t, a, b)
	return a, b, na, nb
}

// testNotifier: a Notify wakes the waiters of its stream (on another
// replica, for a shared store), and only those.
func (s Suite) testNotifier(t *testing.T) {
	_, _, na, nb := s.twoReplicas(t)
	for round := range 3 {
		w, other := nb.Wait("s"), nb.Wait("other")
		na.Notify("s")
		select {
		case <-w:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Notify did not wake the waiter", round)
		}
		select {
		case <-other:
			t.Fatalf("round %d: a Notify woke another stream's waiter", round)
		default:
		}
	}
}

// testReplicasEnqueue: replicas enqueueing at once on one stream, with
// overlapping keys, queue each SET exactly once; a long poll on one wakes
// for a SET another enqueues; an ack on one holds on the other.
func (s Suite) testReplicasEnqueue(t *testing.T) {
	open := s.New(t)
	a, b := backend(t, open), backend(t, open)
	na, nb := s.notifiers(t, a, b)
	sa, sb := outbox.NewStore(a, outbox.StoreOptions{}), outbox.NewStore(b, outbox.StoreOptions{})
	t.Cleanup(func() { _ = sa.Close(); _ = sb.Close() })
	oa := newOutbox(t, sa, func(c *outbox.Config) { c.Notifier = na })
	ob := newOutbox(t, sb, func(c *outbox.Config) { c.Notifier = nb })
	for _, o := range []*outbox.Outbox{oa, ob} {
		if err := o.SetStream(ctx, pollStream("s")); err != nil {
			t.Fatal(err)
		}
	}
	const n = 40
	var wg sync.WaitGroup
	for w, o := range []*outbox.Outbox{oa, ob, oa, ob} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				// Every SET is enqueued by two workers on different
				// replicas, as when traffic and the event API see one
				// action.
				if err := o.Enqueue(ctx, []outbox.SET{makeSET("s", fmt.Sprintf("j%03d", i+n*(w/2)))}, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := poll(t, ob, "s", outbox.PollRequest{ReturnImmediately: true})
	if len(got) != 2*n || len(slices.Compact(slices.Clone(got))) != 2*n {
		t.Fatalf("polled %d SETs (%d distinct), want %d once each", len(got), len(slices.Compact(slices.Clone(got))), 2*n)
	}
	zero := 0
	poll(t, oa, "s", outbox.PollRequest{Ack: got, MaxEvents: &zero})
	if stats, _ := ob.Stats(ctx, "s"); stats.Backlog != 0 || stats.Delivered != 2*n {
		t.Fatalf("the other replica's Stats after acks = %+v", stats)
	}

	res := make(chan []string, 1)
	go func() { res <- poll(t, ob, "s", outbox.PollRequest{}) }()
	time.Sleep(200 * time.Millisecond) // let the long poll start waiting
	if err := oa.Enqueue(ctx, []outbox.SET{makeSET("s", "late")}, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-res:
		if fmt.Sprint(got) != "[late]" {
			t.Fatalf("long poll on the other replica = %v, want [late]", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("long poll did not return")
	}
}

// testReplicasLease: a lease held through one replica is held for the
// other, and a fence taken on one refuses the other's stale writes.
func (s Suite) testReplicasLease(t *testing.T) {
	open := s.New(t)
	sa, sb := store(t, open), store(t, open)
	la, lb := leasesOn(t, sa), leasesOn(t, sb)
	a, err := la.Acquire(ctx, "dispatch/s", "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lb.Acquire(ctx, "dispatch/s", "B", time.Minute); err == nil {
		t.Fatal("two replicas hold one lease")
	}
	if err := la.Release(ctx, a); err != nil {
		t.Fatal(err)
	}
	b, err := lb.Acquire(ctx, "dispatch/s", "B", time.Minute)
	if err != nil || b.Token <= a.Token {
		t.Fatalf("Acquire on the other replica after release = %+v, %v", b, err)
	}
	err = sa.Commit(ctx, []outbox.Mark{{Fence: outbox.Fence{Lease: a.Name, Token: a.Token}}, {Bucket: "x", Key: []byte("k"), Value: []byte("stale")}})
	if err == nil {
		t.Fatal("a stale holder's fenced write landed through another replica")
	}
}

// testReplicasDispatch: replicas that both know a push stream deliver it
// one at a time — never two attempts in flight, each SET once, in order —
// the stream waits out the lease of a holder that died and goes on with
// whichever replica takes it, and a replica that stops hands it over.
func (s Suite) testReplicasDispatch(t *testing.T) {
	open := s.New(t)
	a, b := backend(t, open), backend(t, open)
	na, nb := s.notifiers(t, a, b)
	sa, sb := outbox.NewStore(a, outbox.StoreOptions{}), outbox.NewStore(b, outbox.StoreOptions{})
	t.Cleanup(func() { _ = sa.Close(); _ = sb.Close() })

	var mu sync.Mutex
	inflight, overlaps := 0, 0
	var got []string
	more := make(chan struct{}, 1000)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		inflight++
		if inflight > 1 {
			overlaps++
		}
		mu.Unlock()
		time.Sleep(2 * time.Millisecond)
		mu.Lock()
		inflight--
		got = append(got, jtiOf(t, string(body)))
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
		more <- struct{}{}
	}))
	t.Cleanup(srv.Close)
	wait := func(n int) []string {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			mu.Lock()
			g := slices.Clone(got)
			mu.Unlock()
			if len(g) >= n {
				return g
			}
			select {
			case <-more:
			case <-deadline:
				t.Fatalf("receiver got %d SETs, want %d", len(g), n)
			}
		}
	}

	// A replica that died holding the stream's lease.
	ghost, err := leasesOn(t, sa).Acquire(ctx, "dispatch/push", "ghost", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = time.Second
	oa := newOutbox(t, sa, func(c *outbox.Config) { c.Notifier, c.HolderID, c.LeaseTTL = na, "A", ttl })
	ob := newOutbox(t, sb, func(c *outbox.Config) { c.Notifier, c.HolderID, c.LeaseTTL = nb, "B", ttl })
	cfg := outbox.StreamConfig{ID: "push", Method: outbox.MethodPush, Status: outbox.StatusEnabled, EndpointURL: srv.URL}
	for _, o := range []*outbox.Outbox{oa, ob} {
		if err := o.SetStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	actx, stopA := context.WithCancel(context.Background())
	aDone := make(chan struct{})
	go func() { defer close(aDone); _ = oa.Run(actx) }()
	t.Cleanup(func() { stopA(); <-aDone })
	run(t, ob)

	var want []string
	enqueue := func(from, to int) {
		for i := from; i < to; i++ {
			jti := fmt.Sprintf("d%03d", i)
			want = append(want, jti)
			o := oa
			if i%2 == 1 {
				o = ob
			}
			if err := o.Enqueue(ctx, []outbox.SET{makeSET("push", jti)}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	enqueue(0, 20)
	if g := wait(20); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("delivered %v, want %v once each in order", g, want)
	}
	if cur, _ := leasesOn(t, sa).Current("dispatch/push"); cur.Token <= ghost.Token || cur.Holder == "ghost" {
		t.Fatalf("lease after delivery = %+v, want taken over from the dead holder", cur)
	}
	// The replica that holds the stream stops; the other goes on.
	stopA()
	<-aDone
	enqueue(20, 30)
	if g := wait(30); fmt.Sprint(g) != fmt.Sprint(want) {
		t.Fatalf("after one replica stopped: delivered %v, want %v", g, want)
	}
	time.Sleep(100 * time.Millisecond) // nothing more may come
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 30 || overlaps != 0 {
		t.Fatalf("%d deliveries, %d times two in flight at once", len(got), overlaps)
	}
}

// failThenReopen runs push stream "s", its one SET answered by handler,
// until failed says of its Stats that the failure is there, then stops,
// reopens the store, and returns the Stats before the reopen and the
// reopened outbox (not running).
func failThenReopen(t *testing.T, open func() kv.Backend, handler http.HandlerFunc, failed func(outbox.StreamStats) bool) (outbox.StreamStats, *outbox.Outbox) {
	t.Helper()
	srv := httptest.NewServer(handler)
	t.Cleanup(srv.Close)
	st := outbox.NewStore(open(), outbox.StoreOptions{})
	ob := newOutbox(t, st, nil)
	if err := ob.SetStream(ctx, outbox.StreamConfig{ID: "s", Method: outbox.MethodPush,
		Status: outbox.StatusEnabled, EndpointURL: srv.URL}); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, []outbox.SET{makeSET("s", "j1")}, nil); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ob.Run(rctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if stats, _ := ob.Stats(ctx, "s"); failed(stats) {
			break
		}
		if time.Now().After(deadline) {
			cancel()
			<-done
			t.Fatal("no failed attempt recorded")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done // every outcome is committed when Run returns
	before, err := ob.Stats(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	return before, newOutbox(t, store(t, open), nil)
}

// testLastErrorKept: a push stream's last error and its time are stored
// with its delivery state, so they are the same after a reopen.
func (s Suite) testLastErrorKept(t *testing.T) {
	before, ob := failThenReopen(t, s.New(t), func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusInternalServerError)
	}, func(st outbox.StreamStats) bool { return st.LastError != "" })
	after, err := ob.Stats(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(before.LastError, "500") || after.LastError != before.LastError ||
		!after.LastErrorAt.Equal(before.LastErrorAt) {
		t.Errorf("after reopen: last error %q at %v, want %q at %v",
			after.LastError, after.LastErrorAt, before.LastError, before.LastErrorAt)
	}
}

// testFailingKept: a failing push stream's backoff deadline and the time
// it began to fail are stored with the failed attempt's outcome, so a
// reopened store shows them and waits out the backoff before it tries
// the stream again.
func (s Suite) testFailingKept(t *testing.T) {
	var hits atomic.Int64
	before, ob := failThenReopen(t, s.New(t), func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.Header().Set("Retry-After", "3600") // backs off for MaxBackoff
		w.WriteHeader(http.StatusServiceUnavailable)
	}, func(st outbox.StreamStats) bool { return !st.BackingOffUntil.IsZero() })
	tried := hits.Load()
	after, err := ob.Stats(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	if before.FailingSince.IsZero() || !after.FailingSince.Equal(before.FailingSince) ||
		!after.BackingOffUntil.Equal(before.BackingOffUntil) || time.Until(after.BackingOffUntil) < 5*time.Minute {
		t.Fatalf("after reopen: failing since %v, backing off until %v; want %v and %v (minutes away)",
			after.FailingSince, after.BackingOffUntil, before.FailingSince, before.BackingOffUntil)
	}
	run(t, ob)
	time.Sleep(300 * time.Millisecond) // a dispatcher that forgot the backoff would try at once
	if n := hits.Load(); n != tried {
		t.Errorf("%d attempts after reopen, during the backoff", n-tried)
	}
}
