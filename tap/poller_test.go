package tap

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestPollerRestartNoGapsNoRepeats: events sharing one timestamp, split
// across pages and restarts, are each processed once.
func TestPollerRestartNoGapsNoRepeats(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.PageSize = 2 }})
	var users []authentiktest.User
	for i := range 5 {
		users = append(users, e.user(fmt.Sprintf("u%d", i)))
	}
	at := time.Now().Add(time.Second).UTC().Truncate(time.Microsecond)
	for _, u := range users[:3] {
		if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: u.PK, Created: at}); err != nil {
			t.Fatal(err)
		}
	}
	e.poll()
	if n := len(e.rec.signals()); n != 3 {
		t.Fatalf("after the first poll: %d signals, want 3", n)
	}
	e.restart()
	// two more at the very same instant, one later
	for _, u := range users[3:] {
		if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: u.PK, Created: at}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: users[0].PK, Created: at.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	e.poll()
	e.restart()
	e.poll()
	var wants []want
	for _, u := range users {
		wants = append(wants, want{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(u.PK), initiator: InitiatorUser})
	}
	wants = append(wants, want{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(users[0].PK), initiator: InitiatorUser})
	checkSignals(t, e.rec.signals(), wants)
	if e.rec.calls != len(wants) {
		t.Errorf("published %d times for %d actions", e.rec.calls, len(wants))
	}
}

// TestAuthentikDownAndBack: the poller backs off while authentik fails and
// catches up after, without losing what happened in between.
func TestAuthentikDownAndBack(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.MaxBackoff = 20 * time.Millisecond; c.PollInterval = 10 * time.Millisecond }})
	alice := e.user("alice")
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK}); err != nil {
		t.Fatal(err)
	}
	e.ak.SetFailMode(authentiktest.Fail503)
	before := e.tap.Stats().PollErrors
	e.waitFor("failing polls", func() bool { return e.tap.Stats().PollErrors >= before+2 })
	if n := len(e.rec.signals()); n != 0 {
		t.Fatalf("%d signals while authentik is down", n)
	}
	e.ak.SetFailMode(authentiktest.FailNone)
	e.waitFor("catching up", func() bool { return len(e.rec.signals()) == 1 })
	e.poll()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}})
}

// TestFreshStartAndBackfill: a fresh data dir starts at now; Backfill
// reaches back.
func TestFreshStartAndBackfill(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK, Created: time.Now().Add(-10 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		backfill time.Duration
		want     int
	}{{0, 0}, {time.Hour, 1}} {
		kv := newBoltKV(t)
		rec := &recorder{kv: kv}
		cfg := e.cfg
		cfg.KV, cfg.Publisher, cfg.Backfill = kv, rec, tc.backfill
		tp, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if err := tp.pollOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := len(rec.signals()); n != tc.want {
			t.Errorf("backfill %v: %d signals, want %d", tc.backfill, n, tc.want)
		}
	}
}

// TestPagesShiftingWhilePaging: new events arriving while the poller pages
// back push older ones onto later pages; each is still processed once.
func TestPagesShiftingWhilePaging(t *testing.T) {
	e := newEnv(t, envOpts{})
	var users []authentiktest.User
	for i := range 7 {
		users = append(users, e.user(fmt.Sprintf("p%d", i)))
	}
	start := time.Now().Add(-time.Minute)
	for i, u := range users[:5] {
		if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: u.PK, Created: start.Add(time.Duration(i) * time.Second)}); err != nil {
			t.Fatal(err)
		}
	}
	var injected atomic.Bool
	wrap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v3/events/events/" && r.URL.Query().Get("page") == "2" && injected.CompareAndSwap(false, true) {
			for _, u := range users[5:] {
				if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: u.PK}); err != nil {
					t.Error(err)
				}
			}
		}
		e.ak.Handler().ServeHTTP(w, r)
	}))
	defer wrap.Close()
	kv := newBoltKV(t)
	rec := &recorder{kv: kv}
	cfg := e.cfg
	cfg.Upstream, _ = url.Parse(wrap.URL)
	cfg.KV, cfg.Publisher, cfg.Backfill, cfg.PageSize = kv, rec, time.Hour, 2
	tp, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := tp.pollOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	if !injected.Load() {
		t.Fatal("no events were injected mid-paging")
	}
	if rec.calls != 7 || len(rec.signals()) != 7 {
		t.Errorf("published %d times, %d distinct; want 7 and 7", rec.calls, len(rec.signals()))
	}
}

// TestPoisonEventSkipped: a record whose look-ups keep failing stalls the
// poller only for maxEventAttempts polls.
func TestPoisonEventSkipped(t *testing.T) {
	e := newEnv(t, envOpts{})
	bad, good := e.user("bad"), e.user("good")
	at := time.Now()
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: bad.PK, Created: at}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: good.PK, Created: at.Add(time.Second)}); err != nil {
		t.Fatal(err)
	}
	badPath := fmt.Sprintf("/api/v3/core/users/%d/", bad.PK)
	wrap := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == badPath {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		e.ak.Handler().ServeHTTP(w, r)
	}))
	defer wrap.Close()
	kv := newBoltKV(t)
	rec := &recorder{kv: kv}
	cfg := e.cfg
	cfg.Upstream, _ = url.Parse(wrap.URL)
	cfg.KV, cfg.Publisher, cfg.Backfill = kv, rec, time.Hour
	tp, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < maxEventAttempts; i++ {
		if err := tp.pollOnce(t.Context()); err == nil {
			t.Fatalf("poll %d succeeded past a failing record", i)
		}
		if n := len(rec.signals()); n != 0 {
			t.Fatalf("poll %d: %d signals while stalled", i, n)
		}
	}
	if err := tp.pollOnce(t.Context()); err != nil {
		t.Fatalf("poll %d: %v", maxEventAttempts, err)
	}
	checkSignals(t, rec.signals(), []want{{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(good.PK), initiator: InitiatorUser}})
}

// TestFreshStartWithSkewedClocks: a fresh start takes "now" from
// authentik's newest record, so authentik's clock running behind the
// sidecar's hides nothing.
func TestFreshStartWithSkewedClocks(t *testing.T) {
	behind := func() time.Time { return time.Now().Add(-5 * time.Minute) }
	for _, existing := range []bool{false, true} {
		t.Run(fmt.Sprintf("existing records %v", existing), func(t *testing.T) {
			e := newEnv(t, envOpts{ak: authentiktest.Config{Clock: behind}, noToken: true})
			alice := e.user("alice")
			if existing {
				if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK, Created: behind().Add(-time.Minute)}); err != nil {
					t.Fatal(err)
				}
			}
			e.cfg.Token = e.ak.AdminToken()
			e.restart()
			if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK}); err != nil {
				t.Fatal(err)
			}
			e.poll()
			checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}})
		})
	}
}

// TestPollLagMeasuresCatchingUp: the poller's lag is how long ago it last
// had read everything authentik had recorded. An empty or quiet event log
// is no lag; a poller that cannot read is, and it grows until it reads again.
func TestPollLagMeasuresCatchingUp(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	e := newEnv(t, envOpts{mutate: func(c *Config) {
		c.Clock, c.PollInterval, c.MaxBackoff = clock, time.Hour, time.Hour
	}})
	e.poll() // an empty event log
	if lag := e.tap.Stats().PollLag; lag != 0 {
		t.Fatalf("lag after reading an empty log: %s", lag)
	}
	now.Add(int64(2 * time.Hour)) // authentik stays quiet
	if lag := e.tap.Stats().PollLag; lag != 2*time.Hour {
		t.Fatalf("lag two hours after the last poll: %s", lag)
	}
	e.poll()
	if lag := e.tap.Stats().PollLag; lag != 0 {
		t.Fatalf("lag after a poll of a quiet log: %s", lag)
	}
	e.ak.SetFailMode(authentiktest.Fail503)
	now.Add(int64(time.Hour))
	errs := e.tap.Stats().PollErrors
	e.tap.PollNow()
	e.waitFor("a failed poll", func() bool { return e.tap.Stats().PollErrors > errs })
	if lag := e.tap.Stats().PollLag; lag != time.Hour {
		t.Fatalf("lag while authentik fails: %s, want 1h", lag)
	}
	e.ak.SetFailMode(authentiktest.FailNone)
	e.poll()
	if lag := e.tap.Stats().PollLag; lag != 0 {
		t.Fatalf("lag after catching up: %s", lag)
	}
}
