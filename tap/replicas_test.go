package tap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// Replicas sharing one store: two (or three) Taps on one outbox store, on
// bbolt (one store in one process, shared) and on PostgreSQL (a store per
// replica on one schema, as separate processes would have). The
// interleavings that matter are forced with the Tap's hooks.

// OutboxKV is the tap's KV over the outbox store, mark for mark as the
// binary adapts it (cmd/ssf-sidecar storeKV). It is exported for the
// storage suite's run in package tap_test.
type OutboxKV struct{ S *outbox.Store }

func (k OutboxKV) Commit(ctx context.Context, marks []Mark) error {
	out := make([]outbox.Mark, len(marks))
	for i, m := range marks {
		out[i] = outbox.Mark{Bucket: m.Bucket, Key: m.Key, Value: m.Value, Delete: m.Delete,
			Fence: outbox.Fence(m.Fence), IfValue: m.IfValue, Expect: m.Expect}
	}
	return k.S.Commit(ctx, out)
}

func (k OutboxKV) Get(bucket string, key []byte) ([]byte, error) { return k.S.Get(bucket, key) }

func (k OutboxKV) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	return k.S.Scan(bucket, prefix, fn)
}

// StoreLease is the poller lease over the store's leases, as the binary
// wires it (exported, like OutboxKV).
type StoreLease struct{ L outbox.Leases }

func (p StoreLease) Acquire(ctx context.Context, name, holder string, ttl time.Duration) (uint64, bool, error) {
	l, err := p.L.Acquire(ctx, name, holder, ttl)
	if errors.Is(err, outbox.ErrLeaseHeld) {
		return 0, false, nil
	}
	return l.Token, err == nil, err
}

func (p StoreLease) Release(ctx context.Context, name, holder string, token uint64) error {
	return p.L.Release(ctx, outbox.Lease{Name: name, Holder: holder, Token: token})
}

// bucketSETs is where setPublisher records the SETs, one per signal id as
// the outbox's idempotent enqueue keeps them.
const bucketSETs = "test_sets"

// setPublisher commits a signal's marks and its "SET" in one commit, so a
// refused condition or fence leaves no SET, as with the outbox.
type setPublisher struct{ kv KV }

func (p setPublisher) Publish(ctx context.Context, s Signal) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return p.kv.Commit(ctx, append(s.Marks, Mark{Bucket: bucketSETs, Key: []byte(s.ID), Value: b}))
}

// replica is one replica's view of the shared store.
type replica struct {
	kv    KV
	lease PollerLease
}

// sharedBackend opens replica views of one store (a fresh one for each
// forBackends).
type sharedBackend struct {
	name string
	// open returns a new replica's view.
	open func(t *testing.T) replica
	// expire ends every lease held now (a holder paused past its TTL):
	// on bbolt by moving the leases' clock, on PostgreSQL by waiting for
	// its clock to pass ttl.
	expire func(t *testing.T, ttl time.Duration)
	// ttl is the poller lease lifetime the replicas use.
	ttl time.Duration
}

// forBackends runs f on bbolt and on PostgreSQL.
func forBackends(t *testing.T, f func(t *testing.T, b sharedBackend)) {
	t.Run("bbolt", func(t *testing.T) {
		var offset atomic.Int64
		db, err := boltstore.Open(filepath.Join(t.TempDir(), "shared.db"), boltstore.Options{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		st := outbox.NewStore(db, outbox.StoreOptions{})
		t.Cleanup(func() { _ = st.Close() })
		leases, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: st,
			Clock: func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }})
		if err != nil {
			t.Fatal(err)
		}
		f(t, sharedBackend{name: "bbolt", ttl: DefaultPollerLeaseTTL,
			open: func(*testing.T) replica { return replica{kv: OutboxKV{st}, lease: StoreLease{leases}} },
			expire: func(_ *testing.T, ttl time.Duration) {
				offset.Add(int64(ttl + time.Second))
			},
		})
	})
	t.Run("postgres", func(t *testing.T) {
		url, schema := pgtest.Schema(t)
		f(t, sharedBackend{name: "postgres", ttl: time.Second,
			open: func(t *testing.T) replica {
				db, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
				if err != nil {
					t.Fatal(err)
				}
				st := outbox.NewStore(db, outbox.StoreOptions{})
				t.Cleanup(func() { _ = st.Close() })
				leases, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: st})
				if err != nil {
					t.Fatal(err)
				}
				return replica{kv: OutboxKV{st}, lease: StoreLease{leases}}
			},
			expire: func(*testing.T, time.Duration) {}, // the database's clock runs on
		})
	})
}

// sets reads every SET committed to the shared store.
func sets(t *testing.T, kv KV) []Signal {
	t.Helper()
	var out []Signal
	err := kv.Scan(bucketSETs, nil, func(_, v []byte) error {
		var s Signal
		if err := json.Unmarshal(v, &s); err != nil {
			return err
		}
		out = append(out, s)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// onReplica points an env's tap at a replica's view of the shared store.
func onReplica(r replica, holder string, lease bool) func(*Config) {
	return func(c *Config) {
		c.KV, c.Publisher = r.kv, setPublisher{r.kv}
		if lease {
			*c = replicaConfig(*c, r.lease, holder)
		} else {
			c.LeaseHolder = holder
		}
	}
}

// another builds one more replica on r, like e's tap, not running.
func another(t *testing.T, e *env, r replica, holder string, lease bool, mutate func(*Config)) *Tap {
	t.Helper()
	cfg := e.cfg
	onReplica(r, holder, lease)(&cfg)
	if mutate != nil {
		mutate(&cfg)
	}
	tp, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

// run runs tp until the test ends.
func run(t *testing.T, tp *Tap) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tp.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// gate holds a goroutine at a hook until the test opens it.
type gate struct {
	once    sync.Once
	reached chan struct{}
	open    chan struct{}
}

func newGate() *gate { return &gate{reached: make(chan struct{}), open: make(chan struct{})} }

// hold blocks the first caller until release; later callers pass.
func (g *gate) hold() {
	first := false
	g.once.Do(func() { first = true; close(g.reached) })
	if first {
		<-g.open
	}
}

func (g *gate) wait(t *testing.T, what string) {
	t.Helper()
	select {
	case <-g.reached:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func (g *gate) release() { close(g.open) }

func journalLen(t *testing.T, kv KV) int {
	t.Helper()
	n := 0
	if err := kv.Scan(BucketJournal, nil, func(_, _ []byte) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestReplicasOneSETForTrafficAndEventAPI: a logout seen in the traffic
// by replica A and in the event API by replica B, both checking for the
// other's record before either commits, gives one SET — whichever
// checked first. The one whose commit is refused checks again and finds
// the other's record.
func TestReplicasOneSETForTrafficAndEventAPI(t *testing.T) {
	for _, eventAPIWins := range []bool{true, false} {
		t.Run(fmt.Sprintf("event API commits first %v", eventAPIWins), func(t *testing.T) {
			forBackends(t, func(t *testing.T, sb sharedBackend) {
				ra, rb := sb.open(t), sb.open(t)
				e := newEnv(t, envOpts{mutate: onReplica(ra, "A", false)})
				b := another(t, e, rb, "B", false, nil)
				alice := e.user("alice")
				s, cookie := e.session(alice.PK)

				gA, gB := newGate(), newGate()
				var racer *Tap
				if eventAPIWins {
					// A has checked (nothing there) and waits; B polls,
					// checks and publishes; then A commits.
					e.tap.hooks.Store(&hooks{dedupChecked: func(s Signal, _ bool) {
						if s.Source == SourceTraffic {
							gA.hold()
						}
					}})
					e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", cookie, "")
					gA.wait(t, "A's check")
					if err := b.pollOnce(t.Context()); err != nil {
						t.Fatal(err)
					}
					gA.release()
					racer = e.tap
				} else {
					// Both have checked; A commits first, then B.
					e.tap.hooks.Store(&hooks{dedupChecked: func(Signal, bool) { gA.hold() }})
					b.hooks.Store(&hooks{dedupChecked: func(Signal, bool) { gB.hold() }})
					e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", cookie, "")
					gA.wait(t, "A's check") // A's worker holds until B has checked too
					polled := make(chan error, 1)
					go func() { polled <- b.pollOnce(context.Background()) }()
					gB.wait(t, "B's check")
					gA.release()
					e.waitFor("A's SET", func() bool { return journalLen(t, ra.kv) == 0 })
					gB.release()
					if err := <-polled; err != nil {
						t.Fatal(err)
					}
					racer = b
				}
				e.waitFor("the journal to drain", func() bool { return journalLen(t, ra.kv) == 0 })
				winner := SourceTraffic
				if eventAPIWins {
					winner = SourceEventAPI
				}
				got := sets(t, ra.kv)
				if len(got) != 1 || got[0].Kind != KindSessionRevoked || got[0].Subject.PK != int64(alice.PK) || got[0].Source != winner {
					t.Fatalf("SETs %+v; want one session_revoked for alice from the %s (it committed first)", got, winner)
				}
				if n := racer.Stats().DedupRaces; n != 1 {
					t.Errorf("the replica that lost the race checked again %d times, want 1", n)
				}
				if n := racer.Stats().DedupDrops; n != 1 {
					t.Errorf("the replica that lost the race dropped %d duplicates, want 1", n)
				}
				if winner == SourceTraffic && got[0].SessionHash != HashSessionID(s.SID) {
					t.Errorf("session hash %q, want the logged-out session's", got[0].SessionHash)
				}
			})
		})
	}
}

// TestReplicasOneSETForOneTrafficActionSeenTwice: two replicas that both
// report one action from the traffic (the same session ended, seen by
// each) and check at the same moment publish it once.
func TestReplicasOneSETForOneTrafficActionSeenTwice(t *testing.T) {
	forBackends(t, func(t *testing.T, sb sharedBackend) {
		ra, rb := sb.open(t), sb.open(t)
		cfg := func(r replica, holder string) Config {
			return Config{KV: r.kv, Publisher: setPublisher{r.kv}, DedupWindow: 2 * time.Minute, LeaseHolder: holder, Clock: time.Now}
		}
		a := &Tap{cfg: cfg(ra, "A"), dir: newDirectory(16)}
		b := &Tap{cfg: cfg(rb, "B"), dir: newDirectory(16)}
		a.log, b.log = slog.New(slog.DiscardHandler), slog.New(slog.DiscardHandler)
		now := time.Now().UTC()
		sig := func(id string) Signal {
			return Signal{ID: id, Kind: KindSessionRevoked, Source: SourceTraffic, Time: now, Subject: User{PK: 9, UID: "u9"},
				SessionHash: "h1", Initiator: InitiatorAdmin}
		}
		g := newGate()
		a.hooks.Store(&hooks{dedupChecked: func(Signal, bool) { g.hold() }})
		done := make(chan error, 1)
		go func() { done <- a.emit(context.Background(), sig("t:a"), nil) }()
		g.wait(t, "A's check")
		if err := b.emit(t.Context(), sig("t:b"), nil); err != nil {
			t.Fatal(err)
		}
		g.release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if got := sets(t, ra.kv); len(got) != 1 || got[0].ID != "t:b" {
			t.Errorf("SETs %v, want B's only", got)
		}
		if n := a.Stats().DedupRaces; n != 1 {
			t.Errorf("A checked again %d times, want 1", n)
		}
	})
}

// TestReplicasPollerPausedPastTTL: poller A holds the lease and is paused
// in the middle of a poll past the lease's lifetime; B takes over from the
// shared cursor and publishes every event once. When A wakes, its commit
// is refused by the fence: it publishes nothing, leaves the cursor, and
// stops polling.
func TestReplicasPollerPausedPastTTL(t *testing.T) {
	forBackends(t, func(t *testing.T, sb sharedBackend) {
		ra, rb := sb.open(t), sb.open(t)
		e := newEnv(t, envOpts{mutate: func(c *Config) {
			onReplica(ra, "A", true)(c)
			c.PollerLeaseTTL = sb.ttl
		}})
		b := another(t, e, rb, "B", true, func(c *Config) { c.PollerLeaseTTL = sb.ttl })
		run(t, b)
		users := []authentiktest.User{e.user("p1"), e.user("p2"), e.user("p3")}
		for _, u := range users {
			logoutEvent(t, e, u)
		}
		g := newGate()
		e.tap.hooks.Store(&hooks{eventSignals: func(string) { g.hold() }})
		e.tap.PollNow()
		g.wait(t, "A to hold its first event")

		// A sleeps past its lease; B takes over and catches up.
		sb.expire(t, sb.ttl)
		e.waitFor("B to take over and poll", func() bool {
			b.PollNow()
			return b.Stats().Polls >= 1 && len(sets(t, rb.kv)) == len(users)
		})
		late := e.user("p4")
		logoutEvent(t, e, late)
		users = append(users, late)
		// Once B has published it, the cursor is past the newest event
		// and no poll of B's moves it again.
		e.waitFor("B to publish an event recorded after the takeover", func() bool {
			b.PollNow()
			return len(sets(t, rb.kv)) == len(users)
		})
		cur, err := rb.kv.Get(BucketCursor, cursorKey)
		if err != nil {
			t.Fatal(err)
		}

		g.release() // A wakes and commits its first event
		e.waitFor("A's commit to be refused", func() bool { return e.tap.Stats().PollerFenced >= 1 })
		if after, _ := ra.kv.Get(BucketCursor, cursorKey); string(after) != string(cur) {
			t.Errorf("A moved the cursor after losing its lease: %s → %s", cur, after)
		}
		var wants []want
		for _, u := range users {
			wants = append(wants, want{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(u.PK), initiator: InitiatorUser})
		}
		checkSignals(t, sets(t, ra.kv), wants)
		if n := e.tap.Stats().Signals[KindSessionRevoked][SourceEventAPI]; n != 0 {
			t.Errorf("A published %d signals after losing its lease", n)
		}
		if n := e.tap.Stats().Polls; n != 1 {
			t.Errorf("A completed %d polls, want only its first (before the pause)", n)
		}
	})
}

// dieMidRequest has e's replica journal an admin's deletion of alice's
// session, which authentik carries out, and die before the outcome.
func dieMidRequest(e *env) (authentiktest.User, authentiktest.Session) {
	e.t.Helper()
	alice := e.user("alice")
	s, _ := e.session(alice.PK)
	e.proxy.skipAfter = true
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken())
	e.stop()
	e.stop = nil
	return alice, s
}

// TestReplicasSurvivorReconciles: replica A journals an intent and dies
// before the outcome. Once the grace period has passed, survivors B and C
// both rescan the journal at once; exactly one of them claims and
// reconciles the intent, and one SET is made.
func TestReplicasSurvivorReconciles(t *testing.T) {
	forBackends(t, func(t *testing.T, sb sharedBackend) {
		var offset atomic.Int64
		clock := func(c *Config) {
			c.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		}
		ra, rb, rc := sb.open(t), sb.open(t), sb.open(t)
		e := newEnv(t, envOpts{mutate: func(c *Config) { onReplica(ra, "A", false)(c); clock(c) }})
		b := another(t, e, rb, "B", false, clock)
		c := another(t, e, rc, "C", false, clock)
		alice, s := dieMidRequest(e)
		if n := journalLen(t, rb.kv); n != 1 {
			t.Fatalf("journal holds %d intents, want A's one", n)
		}
		// Within the grace period a survivor leaves it alone: A may only
		// be slow.
		if err := b.rescan(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := journalLen(t, rb.kv); n != 1 || len(sets(t, rb.kv)) != 0 {
			t.Fatalf("a survivor acted on a fresh intent: journal %d, SETs %d", n, len(sets(t, rb.kv)))
		}

		offset.Store(int64(2 * takeoverGrace))
		g := newGate()
		b.hooks.Store(&hooks{journalRead: func(string) { g.hold() }})
		done := make(chan error, 1)
		go func() { done <- b.rescan(context.Background()) }()
		g.wait(t, "B to read the intent")
		if err := c.rescan(t.Context()); err != nil {
			t.Fatal(err)
		}
		g.release()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if n := journalLen(t, rb.kv); n != 0 {
			t.Errorf("journal holds %d intents after the survivors' rescans", n)
		}
		checkSignals(t, sets(t, rb.kv), []want{{kind: KindSessionRevoked, source: SourceReconcile, subject: int64(alice.PK),
			initiator: InitiatorAdmin, sessionUUID: s.UUID}})
		if nb, nc := b.Stats().TakenOver, c.Stats().TakenOver; nb != 0 || nc != 1 {
			t.Errorf("taken over by B %d, by C %d; want C's one only", nb, nc)
		}
	})
}

// TestReplicasLateOutcomeAfterTakeover: replica A is paused between
// authentik's answer and its outcome, past the grace period; survivor B
// claims and reconciles the intent. When A goes on, its outcome is refused
// and it publishes nothing: one SET.
func TestReplicasLateOutcomeAfterTakeover(t *testing.T) {
	forBackends(t, func(t *testing.T, sb sharedBackend) {
		var offset atomic.Int64
		clock := func(c *Config) {
			c.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
		}
		ra, rb := sb.open(t), sb.open(t)
		e := newEnv(t, envOpts{mutate: func(c *Config) { onReplica(ra, "A", false)(c); clock(c) }})
		b := another(t, e, rb, "B", false, clock)
		alice := e.user("alice")
		s, _ := e.session(alice.PK)
		g := newGate()
		e.proxy.beforeAfter = g.hold
		answered := make(chan struct{})
		go func() {
			defer close(answered)
			e.do("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken())
		}()
		g.wait(t, "A to be paused before its outcome")
		offset.Store(int64(2 * takeoverGrace))
		if err := b.rescan(t.Context()); err != nil {
			t.Fatal(err)
		}
		g.release()
		<-answered
		e.waitFor("A's worker to be idle", func() bool { return len(e.tap.queue) == 0 })
		if n := journalLen(t, ra.kv); n != 0 {
			t.Errorf("journal holds %d intents", n)
		}
		checkSignals(t, sets(t, ra.kv), []want{{kind: KindSessionRevoked, source: SourceReconcile, subject: int64(alice.PK),
			initiator: InitiatorAdmin, sessionUUID: s.UUID}})
		if n := b.Stats().TakenOver; n != 1 {
			t.Errorf("B took over %d intents, want 1", n)
		}
		if got := e.tap.Stats().Signals[KindSessionRevoked]; len(got) != 0 {
			t.Errorf("A published after its intent was taken over: %v", got)
		}
		if n := e.tap.Stats().DedupDrops; n != 0 {
			t.Errorf("A went on to classify the intent after it was taken over (%d duplicates dropped)", n)
		}
	})
}

// TestReplicasSurvivorTakesOverOnceTheHolderIsGone: with leases, a
// survivor does not wait out the grace period for the intent of a replica
// whose liveness lease has run out: it reconciles at its next rescan. While
// the dead replica's lease still runs, the intent is left alone.
func TestReplicasSurvivorTakesOverOnceTheHolderIsGone(t *testing.T) {
	forBackends(t, func(t *testing.T, sb sharedBackend) {
		ra, rb := sb.open(t), sb.open(t)
		ttl := func(c *Config) { c.PollerLeaseTTL = sb.ttl }
		e := newEnv(t, envOpts{mutate: func(c *Config) { onReplica(ra, "A", true)(c); ttl(c) }})
		b := another(t, e, rb, "B", true, ttl)
		alice, s := dieMidRequest(e)
		if sb.name == "bbolt" {
			// A's liveness lease still runs (the leases' clock stands):
			// its intent is left alone.
			if err := b.rescan(t.Context()); err != nil {
				t.Fatal(err)
			}
			if n := journalLen(t, rb.kv); n != 1 {
				t.Fatalf("a survivor acted while the holder's lease ran: journal %d", n)
			}
		}
		sb.expire(t, sb.ttl)
		e.waitFor("a survivor's rescan to reconcile the dead replica's intent", func() bool {
			if err := b.rescan(t.Context()); err != nil {
				t.Fatal(err)
			}
			return journalLen(t, rb.kv) == 0
		})
		checkSignals(t, sets(t, rb.kv), []want{{kind: KindSessionRevoked, source: SourceReconcile, subject: int64(alice.PK),
			initiator: InitiatorAdmin, sessionUUID: s.UUID}})
		if n := b.Stats().TakenOver; n != 1 {
			t.Errorf("B took over %d intents, want 1", n)
		}
	})
}
