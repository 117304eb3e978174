package tap

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// TestCrashBetweenForwardAndOutcome: the intent is journaled, authentik
// completes the action, the sidecar dies before the outcome; the next start
// reconciles against authentik and emits exactly once.
func TestCrashBetweenForwardAndOutcome(t *testing.T) {
	var offset atomic.Int64 // the sidecar stays down for a while
	e := newEnv(t, envOpts{mutate: func(c *Config) {
		c.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	}})
	alice := e.user("alice")
	s, _ := e.session(alice.PK)
	bob := e.user("bob")
	bs, _ := e.session(bob.PK)
	e.proxy.skipAfter = true
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken())
	e.do("PATCH", fmt.Sprintf("/api/v3/core/users/%d/", alice.PK), `{"is_active":false}`, "", e.ak.AdminToken())
	// an intent whose action authentik refused: must not be emitted
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+bs.UUID+"/", "", "", "not-a-token")
	if n := e.kv.count(BucketJournal); n != 2 {
		t.Fatalf("journal holds %d intents before the crash, want 2", n)
	}
	e.proxy.skipAfter = false
	offset.Store(int64(10 * time.Minute))
	e.restart()
	e.waitFor("reconciliation", func() bool { return e.kv.count(BucketJournal) == 0 })
	e.settle()
	// the user update is also in the event log: whichever reports first wins, once
	checkSignals(t, anySource(e.rec.signals()), []want{
		{kind: KindSessionRevoked, source: SourceReconcile, subject: int64(alice.PK), initiator: InitiatorAdmin, sessionUUID: s.UUID},
		{kind: KindAccountDisabled, source: SourceReconcile, subject: int64(alice.PK), initiator: InitiatorAdmin},
	})
	_ = bs
}

// TestPublishFailureRetried: a failing publisher keeps the intent; once it
// recovers the signal goes out once.
func TestPublishFailureRetried(t *testing.T) {
	// no event API: its password_set (which cannot name the admin) would
	// race the retried traffic signal for the one SET
	e := newEnv(t, envOpts{noToken: true})
	alice := e.user("alice")
	e.rec.mu.Lock()
	e.rec.fail = errInjected
	e.rec.mu.Unlock()
	e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", alice.PK), `{"password":"Adm1n-set"}`, "", e.ak.AdminToken())
	e.waitFor("the intent to be completed in the journal", func() bool { return len(e.tap.queue) == 0 && e.kv.count(BucketJournal) == 1 })
	e.rec.mu.Lock()
	e.rec.fail = nil
	e.rec.mu.Unlock()
	e.restart() // the rescan at start retries
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindPasswordChanged, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorAdmin}})
}

// TestOverranBeforeIsReconciled: when the proxy gave up on Before, After
// never comes; the open intent is reconciled once the grace period passed,
// without a restart.
func TestOverranBeforeIsReconciled(t *testing.T) {
	var offset atomic.Int64
	e := newEnv(t, envOpts{mutate: func(c *Config) {
		c.Clock = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	}})
	alice := e.user("alice")
	s, _ := e.session(alice.PK)
	e.proxy.skipAfter = true
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken())
	if err := e.tap.rescan(t.Context()); err != nil {
		t.Fatal(err)
	}
	if n := e.kv.count(BucketJournal); n != 1 {
		t.Fatalf("an in-flight intent was touched: journal holds %d", n)
	}
	offset.Store(int64(2 * openGrace))
	if err := e.tap.rescan(t.Context()); err != nil {
		t.Fatal(err)
	}
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceReconcile, subject: int64(alice.PK),
		initiator: InitiatorAdmin, sessionUUID: s.UUID}})
}
