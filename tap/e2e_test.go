package tap

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// want describes one expected signal.
type want struct {
	kind        Kind
	source      Source
	subject     int64
	initiator   Initiator
	sessionHash string
	sessionUUID string
	device      string // device type
	oldEmail    string
	newEmail    string
}

func (w want) String() string {
	return fmt.Sprintf("%s/%s subject=%d init=%s sh=%q su=%q dev=%q email=%q→%q", w.kind, w.source, w.subject,
		w.initiator, w.sessionHash, w.sessionUUID, w.device, w.oldEmail, w.newEmail)
}

func got(s Signal) want {
	w := want{kind: s.Kind, source: s.Source, subject: s.Subject.PK, initiator: s.Initiator,
		sessionHash: s.SessionHash, sessionUUID: s.SessionUUID, oldEmail: s.OldEmail, newEmail: s.NewEmail}
	if s.Device != nil {
		w.device = s.Device.Type
	}
	return w
}

func checkSignals(t *testing.T, sigs []Signal, wants []want) {
	t.Helper()
	var g, x []string
	for _, s := range sigs {
		g = append(g, got(s).String())
		if s.Subject.PK != 0 && (s.Subject.UID == "" || s.Subject.Email == "" && s.Kind != KindAccountDeleted) {
			t.Errorf("signal %s: subject incomplete: %+v", s.ID, s.Subject)
		}
		if s.ID == "" || s.Time.IsZero() {
			t.Errorf("signal without id or time: %+v", s)
		}
	}
	for _, w := range wants {
		x = append(x, w.String())
	}
	sort.Strings(g)
	sort.Strings(x)
	if strings.Join(g, "\n") != strings.Join(x, "\n") {
		t.Errorf("signals:\n got:\n  %s\n want:\n  %s", strings.Join(g, "\n  "), strings.Join(x, "\n  "))
	}
}

// TestTrafficActions drives each action through the proxy and checks the
// exact signals, after the event API has been polled too (so actions both
// sources see must still come out once).
func TestTrafficActions(t *testing.T) {
	type world struct {
		e            *env
		alice, admin authentiktest.User
		cookie       string
		sess         authentiktest.Session
	}
	cases := []struct {
		name string
		ak   authentiktest.Config
		act  func(w *world) []want
	}{
		{"logout", authentiktest.Config{}, func(w *world) []want {
			w.e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", w.cookie, "")
			return []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK),
				initiator: InitiatorUser, sessionHash: HashSessionID(w.sess.SID)}}
		}},
		{"logout with renamed flow slugs", authentiktest.Config{Flows: authentiktest.FlowSlugs{Invalidation: "bye-now", PasswordChange: "pw-here"}}, func(w *world) []want {
			w.e.do("GET", "/api/v3/flows/executor/bye-now/", "", w.cookie, "")
			w.e.do("POST", "/api/v3/flows/executor/pw-here/", `{"component":"ak-stage-prompt","password":"n3w","password_repeat":"n3w"}`, w.cookie, "")
			return []want{
				{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser, sessionHash: HashSessionID(w.sess.SID)},
				// the password change came first in authentik, but the cookie is gone after logout: only the logout is seen
			}
		}},
		{"password change flow", authentiktest.Config{}, func(w *world) []want {
			w.e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, w.cookie, "")
			return []want{{kind: KindPasswordChanged, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser}}
		}},
		{"password change flow rejected", authentiktest.Config{}, func(w *world) []want {
			w.e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"a","password_repeat":"b"}`, w.cookie, "")
			return nil
		}},
		{"admin set_password", authentiktest.Config{}, func(w *world) []want {
			w.e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", w.alice.PK), `{"password":"Adm1n-set"}`, "", w.e.ak.AdminToken())
			return []want{{kind: KindPasswordChanged, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin}}
		}},
		{"admin revokes a session", authentiktest.Config{}, func(w *world) []want {
			w.e.do("DELETE", "/api/v3/core/authenticated_sessions/"+w.sess.UUID+"/", "", "", w.e.ak.AdminToken())
			return []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin, sessionUUID: w.sess.UUID}}
		}},
		{"user revokes own session after its cookie was seen", authentiktest.Config{}, func(w *world) []want {
			// a tapped request with the cookie first teaches the tap the uuid↔sid link
			// (a rejected password change: tapped, authenticated, nothing completed)
			w.e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"x","password_repeat":"y"}`, w.cookie, "")
			w.e.waitFor("the session link", func() bool { return w.e.tap.hashForSession(w.sess.UUID) != "" })
			w.e.do("DELETE", "/api/v3/core/authenticated_sessions/"+w.sess.UUID+"/", "", w.cookie, "")
			return []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser,
				sessionUUID: w.sess.UUID, sessionHash: HashSessionID(w.sess.SID)}}
		}},
		{"bulk delete: one signal per session", authentiktest.Config{}, func(w *world) []want {
			s2, _ := w.e.session(w.alice.PK)
			bob := w.e.user("bob")
			w.e.session(bob.PK)        // bob's session must survive and not be reported
			w.e.session(w.admin.PK)    // nor the admin's
			carol := w.e.user("carol") // no sessions: nothing to report
			w.e.do("DELETE", fmt.Sprintf("/api/v3/core/authenticated_sessions/bulk_delete/?user_pks=%d&user_pks=%d", w.alice.PK, carol.PK), "", "", w.e.ak.AdminToken())
			return []want{
				{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin, sessionUUID: w.sess.UUID},
				{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin, sessionUUID: s2.UUID},
			}
		}},
		{"user removes own TOTP device", authentiktest.Config{}, func(w *world) []want {
			d, _ := w.e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: w.alice.PK})
			w.e.do("DELETE", fmt.Sprintf("/api/v3/authenticators/totp/%d/", d.PK), "", w.cookie, "")
			return []want{{kind: KindMFARemoved, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser, device: "totp"}}
		}},
		{"admin removes a WebAuthn device", authentiktest.Config{}, func(w *world) []want {
			d, _ := w.e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceWebAuthn, UserPK: w.alice.PK})
			w.e.do("DELETE", fmt.Sprintf("/api/v3/authenticators/admin/webauthn/%d/", d.PK), "", "", w.e.ak.AdminToken())
			return []want{{kind: KindMFARemoved, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin, device: "webauthn"}}
		}},
		{"admin creates a static device", authentiktest.Config{}, func(w *world) []want {
			w.e.do("POST", "/api/v3/authenticators/admin/static/", fmt.Sprintf(`{"name":"codes","user":%d,"confirmed":true}`, w.alice.PK), "", w.e.ak.AdminToken())
			return []want{{kind: KindMFAAdded, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorAdmin, device: "static"}}
		}},
		{"TOTP enrolment, once when confirmed", authentiktest.Config{Version: authentiktest.Version2026_8}, func(w *world) []want {
			w.e.do("GET", "/api/v3/flows/executor/default-authenticator-totp-setup/", "", w.cookie, "")
			w.e.do("POST", "/api/v3/flows/executor/default-authenticator-totp-setup/", `{"component":"ak-stage-authenticator-totp","code":"000000"}`, w.cookie, "")
			w.e.do("POST", "/api/v3/flows/executor/default-authenticator-totp-setup/", `{"component":"ak-stage-authenticator-totp","code":"123456"}`, w.cookie, "")
			return []want{{kind: KindMFAAdded, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser, device: "totp"}}
		}},
		{"admin disables, enables, changes email, deletes", authentiktest.Config{}, func(w *world) []want {
			path := fmt.Sprintf("/api/v3/core/users/%d/", w.alice.PK)
			w.e.do("PATCH", path, `{"is_active":false}`, "", w.e.ak.AdminToken())
			w.e.do("PATCH", path, `{"is_active":true}`, "", w.e.ak.AdminToken())
			w.e.do("PATCH", path, `{"email":"alice.new@example.com"}`, "", w.e.ak.AdminToken())
			w.e.do("PATCH", path, `{"name":"Alice A."}`, "", w.e.ak.AdminToken())
			w.e.do("DELETE", path, "", "", w.e.ak.AdminToken())
			a := int64(w.alice.PK)
			return []want{
				{kind: KindAccountDisabled, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
				// authentik deletes a deactivated user's sessions, silently
				{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: w.sess.UUID},
				{kind: KindAccountEnabled, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
				{kind: KindEmailChanged, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, oldEmail: "alice@example.com", newEmail: "alice.new@example.com"},
				{kind: KindAccountDeleted, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
			}
		}},
		{"admin deletes a user with two sessions", authentiktest.Config{}, func(w *world) []want {
			s2, _ := w.e.session(w.alice.PK)
			w.e.do("DELETE", fmt.Sprintf("/api/v3/core/users/%d/", w.alice.PK), "", "", w.e.ak.AdminToken())
			a := int64(w.alice.PK)
			return []want{
				{kind: KindAccountDeleted, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
				{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: w.sess.UUID},
				{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: s2.UUID},
			}
		}},
		{"forged cookie carrying the victim's sid", authentiktest.Config{}, func(w *world) []want {
			forged, err := SignSessionCookie(SessionClaims{SID: w.sess.SID, Subject: w.alice.UID, Authenticated: true}, "not-the-secret")
			if err != nil {
				t.Fatal(err)
			}
			w.e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", forged, "")
			w.e.do("DELETE", "/api/v3/core/authenticated_sessions/"+w.sess.UUID+"/", "", forged, "")
			return nil
		}},
		{"anonymous caller", authentiktest.Config{}, func(w *world) []want {
			w.e.do("DELETE", "/api/v3/core/authenticated_sessions/"+w.sess.UUID+"/", "", "", "")
			w.e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", w.alice.PK), `{"password":"x"}`, "", "")
			return nil
		}},
		{"a user may not disable another (403)", authentiktest.Config{}, func(w *world) []want {
			bob := w.e.user("bob")
			_, bc := w.e.session(bob.PK)
			w.e.do("PATCH", fmt.Sprintf("/api/v3/core/users/%d/", w.alice.PK), `{"is_active":false}`, bc, "")
			return nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{ak: tc.ak})
			w := &world{e: e}
			w.alice = e.user("alice")
			w.admin, _ = e.ak.User(1)
			w.sess, w.cookie = e.session(w.alice.PK)
			wants := tc.act(w)
			e.settle()
			checkSignals(t, e.rec.signals(), wants)
			if n := e.kv.count(BucketJournal); n != 0 {
				t.Errorf("journal holds %d entries after settling", n)
			}
		})
	}
}

// TestEventAPIOnly checks actions the proxy never sees.
func TestEventAPIOnly(t *testing.T) {
	cases := []struct {
		name string
		ak   authentiktest.Config
		act  func(e *env, alice authentiktest.User) []want
	}{
		{"system disables a user the directory knows", authentiktest.Config{}, func(e *env, alice authentiktest.User) []want {
			if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
				t.Fatal(err)
			}
			if err := e.ak.SystemDisableUser(alice.PK); err != nil {
				t.Fatal(err)
			}
			return []want{{kind: KindAccountDisabled, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorSystem}}
		}},
		{"password set outside the proxy", authentiktest.Config{}, func(e *env, alice authentiktest.User) []want {
			if err := e.ak.SystemSetPassword(alice.PK, "fr0m-elsewhere", "http"); err != nil {
				t.Fatal(err)
			}
			return []want{{kind: KindPasswordChanged, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}}
		}},
		{"source-sync hash caching is skipped (2026.8)", authentiktest.Config{Version: authentiktest.Version2026_8}, func(e *env, alice authentiktest.User) []want {
			if err := e.ak.SystemSetPassword(alice.PK, "ldap-hash", "source_sync"); err != nil {
				t.Fatal(err)
			}
			return nil
		}},
		{"admin set_password outside the proxy names the actor (2026.8)", authentiktest.Config{Version: authentiktest.Version2026_8}, func(e *env, alice authentiktest.User) []want {
			// as authentik's 2026.8 docs describe it: `user` acts, context.subject is whose password changed
			if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "password_set", UserPK: 1, Context: map[string]any{
				"subject": map[string]any{"pk": alice.PK, "username": alice.Username, "email": alice.Email},
				"origin":  "http", "synced_from_source": false,
			}}); err != nil {
				t.Fatal(err)
			}
			return []want{{kind: KindPasswordChanged, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorAdmin}}
		}},
		{"logout recorded by authentik only", authentiktest.Config{}, func(e *env, alice authentiktest.User) []want {
			if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: alice.PK}); err != nil {
				t.Fatal(err)
			}
			return []want{{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}}
		}},
		{"user changes own email in the settings flow", authentiktest.Config{}, func(e *env, alice authentiktest.User) []want {
			_, c := e.session(alice.PK)
			// the settings flow is not tapped; the poller compares with the directory
			if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
				t.Fatal(err)
			}
			e.do("POST", "/api/v3/flows/executor/default-user-settings-flow/", `{"component":"ak-stage-prompt","email":"a2@example.com"}`, c, "")
			return []want{{kind: KindEmailChanged, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser,
				oldEmail: "alice@example.com", newEmail: "a2@example.com"}}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{ak: tc.ak})
			alice := e.user("alice")
			wants := tc.act(e, alice)
			e.settle()
			checkSignals(t, e.rec.signals(), wants)
		})
	}
}

// TestSecretKeyVerification: with the secret key, cookies are verified
// locally; a cookie signed with another key is refused.
func TestSecretKeyVerification(t *testing.T) {
	e := newEnv(t, envOpts{secretKey: true})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	forged, _ := SignSessionCookie(SessionClaims{SID: s.SID, Subject: alice.UID, Authenticated: true}, "wrong")
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", forged, "")
	e.settle()
	// authentik itself ignores the forged cookie too; only the event API could report, and it saw nothing
	checkSignals(t, e.rec.signals(), nil)
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s.SID)}})
	if e.tap.Stats().Untrusted == 0 {
		t.Error("the forged cookie was not counted as untrusted")
	}
}

// TestCrashBetweenForwardAndOutcome: the intent is journaled, authentik
// completes the action, the sidecar dies before the outcome; the next start
// reconciles against authentik and emits exactly once.
func TestCrashBetweenForwardAndOutcome(t *testing.T) {
	e := newEnv(t, envOpts{})
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

// anySource maps the reconciler's and the event API's source to one label,
// for actions either may report first.
func anySource(sigs []Signal) []Signal {
	out := append([]Signal(nil), sigs...)
	for i := range out {
		if out[i].Source == SourceEventAPI {
			out[i].Source = SourceReconcile
		}
	}
	return out
}

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

// TestPublishFailureRetried: a failing publisher keeps the intent; once it
// recovers the signal goes out once.
func TestPublishFailureRetried(t *testing.T) {
	e := newEnv(t, envOpts{})
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

// TestRateLimitPerIP: tapped observations beyond the burst are not tapped.
func TestRateLimitPerIP(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.RateBurst = 2; c.RatePerIP = 0.0001 }})
	alice := e.user("alice")
	for range 4 {
		e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", alice.PK), `{"password":"Adm1n-set"}`, "", e.ak.AdminToken())
	}
	e.waitFor("the journal to drain", func() bool { return e.kv.count(BucketJournal) == 0 && len(e.tap.queue) == 0 })
	if got := e.tap.Stats().RateLimited; got != 2 {
		t.Errorf("rate limited %d, want 2", got)
	}
	if n := len(e.rec.signals()); n != 2 {
		t.Errorf("%d signals, want 2", n)
	}
}

var _ = http.MethodGet

// TestLogoutCorrelationAndTwoSessions: OIDC end-session only redirects to
// the invalidation flow (no second logout); two logouts of one user from
// two sessions stay two, though the event API sees both as well.
func TestLogoutCorrelationAndTwoSessions(t *testing.T) {
	e := newEnv(t, envOpts{ak: authentiktest.Config{Applications: []authentiktest.Application{{Slug: "app", ClientID: "c", ClientSecret: "s"}}}})
	alice := e.user("alice")
	s1, c1 := e.session(alice.PK)
	s2, c2 := e.session(alice.PK)
	e.do("GET", "/application/o/app/end-session/", "", c1, "")
	e.do("GET", "/flows/-/default/invalidation/", "", c1, "")
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c1, "")
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c2, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorUser, sessionHash: HashSessionID(s1.SID)},
		{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorUser, sessionHash: HashSessionID(s2.SID)},
	})
	for _, s := range e.rec.signals() {
		if s.SessionHash == HashSessionID(s1.SID) && s.ReasonAdmin != "User logged out through OIDC end-session of application app" {
			t.Errorf("reason_admin = %q, want the end-session origin", s.ReasonAdmin)
		}
	}
	if got := e.tap.Stats().Signals[KindSessionRevoked][SourceTraffic]; got != 2 {
		t.Errorf("stats count %d traffic session_revoked signals, want 2", got)
	}
	if got := e.tap.Stats().DedupDrops; got != 2 {
		t.Errorf("dedup drops = %d, want 2 (the event API's two logout records)", got)
	}
}

// TestLoginEstablishesSession: the event API's login becomes
// session_established (the transmitter sends it only to streams asking).
func TestLoginEstablishesSession(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	e.do("POST", "/api/v3/flows/executor/default-authentication-flow/", `{"component":"ak-stage-identification","uid_field":"alice","password":"pw-alice"}`, "", "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionEstablished, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}})
}

// TestJournalHoldsNoSecrets: intents carry derived facts only.
func TestJournalHoldsNoSecrets(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	e.proxy.skipAfter = true
	e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"Sup3r-secret-pw","password_repeat":"Sup3r-secret-pw"}`, c, "")
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c, "")
	// (an admin password reset ends the user's other sessions, so it comes last, on bob)
	bob := e.user("bob")
	e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", bob.PK), `{"password":"An0ther-secret"}`, "", e.ak.AdminToken())
	var entries int
	_ = e.kv.Scan(BucketJournal, nil, func(k, v []byte) error {
		entries++
		for _, secret := range []string{c, s.SID, e.ak.AdminToken(), "Sup3r-secret-pw", "An0ther-secret"} {
			if strings.Contains(string(v), secret) {
				t.Errorf("journal entry %s holds a secret", k)
			}
		}
		return nil
	})
	if entries != 3 {
		t.Errorf("journal holds %d intents, want 3", entries)
	}
}

// direct sends a request straight to authentik, bypassing the proxy: only
// the event API can see it.
func (e *env) direct(method, path, body, cookie, bearer string) int {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.ak.URL()+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: cookie})
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestEventAPIOnlyDirect: actions that bypass the proxy (outposts, other
// paths into authentik) come from the event API alone, compared against
// the directory.
func TestEventAPIOnlyDirect(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	_, c := e.session(alice.PK)
	a := int64(alice.PK)
	admin := e.ak.AdminToken()
	userPath := fmt.Sprintf("/api/v3/core/users/%d/", alice.PK)
	steps := []struct {
		name string
		act  func()
		want []want
	}{
		{"seen once (login)", func() {
			e.direct("POST", "/api/v3/flows/executor/default-authentication-flow/", `{"component":"ak-stage-identification","uid_field":"alice","password":"pw-alice"}`, "", "")
		}, []want{{kind: KindSessionEstablished, source: SourceEventAPI, subject: a, initiator: InitiatorUser}}},
		{"TOTP enrolment", func() {
			e.direct("GET", "/api/v3/flows/executor/default-authenticator-totp-setup/", "", c, "")
			e.direct("POST", "/api/v3/flows/executor/default-authenticator-totp-setup/", `{"component":"ak-stage-authenticator-totp","code":"123456"}`, c, "")
		}, []want{{kind: KindMFAAdded, source: SourceEventAPI, subject: a, initiator: InitiatorUser, device: "totp"}}},
		{"admin removes that device", func() {
			devs := e.ak.Devices(alice.PK)
			if len(devs) != 1 {
				t.Fatalf("alice has %d devices", len(devs))
			}
			e.direct("DELETE", fmt.Sprintf("/api/v3/authenticators/admin/totp/%d/", devs[0].PK), "", "", admin)
		}, []want{{kind: KindMFARemoved, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin, device: "totp"}}},
		{"admin disables", func() { e.direct("PATCH", userPath, `{"is_active":false}`, "", admin) },
			[]want{{kind: KindAccountDisabled, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin}}},
		{"admin enables", func() { e.direct("PATCH", userPath, `{"is_active":true}`, "", admin) },
			[]want{{kind: KindAccountEnabled, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin}}},
		{"admin sets password", func() {
			e.direct("POST", userPath+"set_password/", `{"password":"Adm1n-set"}`, "", admin)
		}, []want{{kind: KindPasswordChanged, source: SourceEventAPI, subject: a, initiator: InitiatorUser}}}, // ≤2026.2 names no actor
		{"admin deletes", func() { e.direct("DELETE", userPath, "", "", admin) },
			[]want{{kind: KindAccountDeleted, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin}}},
	}
	var all []want
	for _, st := range steps {
		st.act()
		e.poll()
		all = append(all, st.want...)
		checkSignals(t, e.rec.signals(), all)
		if t.Failed() {
			t.Fatalf("after step %q", st.name)
		}
	}
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

// TestWithoutToken: no authentik token — the poller is off, flow slugs are
// authentik's defaults, and look-ups use the caller's own credentials.
func TestWithoutToken(t *testing.T) {
	e := newEnv(t, envOpts{noToken: true})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	bob := e.user("bob")
	bs, _ := e.session(bob.PK)
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+bs.UUID+"/", "", "", e.ak.AdminToken())
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorUser, sessionHash: HashSessionID(s.SID)},
		{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(bob.PK), initiator: InitiatorAdmin, sessionUUID: bs.UUID},
	})
	if e.tap.Stats().Polls != 0 {
		t.Error("the poller ran without a token")
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

// TestFlowRenamedWhileRunning: a slug the tap does not know triggers an
// early refresh; once refreshed, the renamed invalidation flow is tapped.
func TestFlowRenamedWhileRunning(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.FlowRefreshMinGap = time.Millisecond }})
	alice := e.user("alice")
	if err := e.ak.RenameFlow("default-invalidation-flow", "sign-me-out"); err != nil {
		t.Fatal(err)
	}
	_, c1 := e.session(alice.PK)
	s2, c2 := e.session(alice.PK)
	// the first logout on the new slug is not tapped (the event API reports it)
	e.do("GET", "/api/v3/flows/executor/sign-me-out/", "", c1, "")
	e.waitFor("the refresh", func() bool { inv, _ := e.tap.flows.role("sign-me-out"); return inv })
	if inv, _ := e.tap.flows.role("default-invalidation-flow"); inv {
		t.Error("the old slug is still treated as the invalidation flow")
	}
	e.do("GET", "/api/v3/flows/executor/sign-me-out/", "", c2, "")
	e.settle()
	var first, second []Signal
	for _, s := range e.rec.signals() {
		if s.SessionHash == HashSessionID(s2.SID) {
			second = append(second, s)
		} else {
			first = append(first, s)
		}
	}
	checkSignals(t, second, []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s2.SID)}})
	// the first logout: reported once, by the event API or (if the refresh
	// won the race with its Before) by the traffic
	if len(first) != 1 || first[0].Kind != KindSessionRevoked || first[0].Subject.PK != int64(alice.PK) {
		t.Errorf("first logout reported as %+v", first)
	}
}

// TestImpersonation: an admin impersonating a user acts on that user; the
// signal names the user as subject and the admin as actor.
func TestImpersonation(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	d, err := e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: alice.PK})
	if err != nil {
		t.Fatal(err)
	}
	_, adminCookie := e.session(1)
	// a tapped request first, so any identity cache would hold the admin
	e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"x","password_repeat":"y"}`, adminCookie, "")
	if code := e.direct("POST", fmt.Sprintf("/api/v3/core/users/%d/impersonate/", alice.PK), `{"reason":"support ticket 7"}`, adminCookie, ""); code != http.StatusNoContent {
		t.Fatalf("impersonate: %d", code)
	}
	e.do("DELETE", fmt.Sprintf("/api/v3/authenticators/totp/%d/", d.PK), "", adminCookie, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindMFARemoved, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorAdmin, device: "totp"}})
	if s := e.rec.signals(); len(s) == 1 && (s[0].Actor == nil || s[0].Actor.PK != 1) {
		t.Errorf("actor = %+v, want the admin", s[0].Actor)
	}
}
