package tap

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

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
			w.e.flow("pw-here", `{"component":"ak-stage-prompt","password":"n3w","password_repeat":"n3w"}`, &w.cookie)
			return []want{
				{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser, sessionHash: HashSessionID(w.sess.SID)},
				// the password change came first in authentik, but the cookie is gone after logout: only the logout is seen
			}
		}},
		{"password change flow", authentiktest.Config{}, func(w *world) []want {
			// the prompt POST is answered 302; user_write sets the password on the GET
			if st := w.e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, &w.cookie); st != http.StatusOK {
				t.Fatalf("flow status %d", st)
			}
			return []want{{kind: KindPasswordChanged, source: SourceTraffic, subject: int64(w.alice.PK), initiator: InitiatorUser}}
		}},
		{"password change flow rejected", authentiktest.Config{}, func(w *world) []want {
			w.e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"a","password_repeat":"b"}`, &w.cookie)
			return nil
		}},
		{"password change flow: prompt accepted, never followed", authentiktest.Config{}, func(w *world) []want {
			// the password is set only when the browser comes back for the next stage
			w.e.do("POST", "/api/v3/flows/executor/default-password-change/?query=", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, w.cookie, "")
			return nil
		}},
		{"password change flow: another session's GET does not complete it", authentiktest.Config{}, func(w *world) []want {
			_, other := w.e.session(w.alice.PK)
			w.e.do("POST", "/api/v3/flows/executor/default-password-change/?query=", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, w.cookie, "")
			w.e.do("GET", "/api/v3/flows/executor/default-password-change/?query=", "", other, "")
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
		{"admin create of a device fails in authentik (user is read-only)", authentiktest.Config{}, func(w *world) []want {
			if resp := w.e.do("POST", "/api/v3/authenticators/admin/static/", fmt.Sprintf(`{"name":"codes","user":%d}`, w.alice.PK), "", w.e.ak.AdminToken()); resp.StatusCode != http.StatusInternalServerError {
				t.Fatalf("admin create answered %d", resp.StatusCode)
			}
			return nil
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

// TestRateLimitPerIP: tapped observations beyond the burst are not tapped.
func TestRateLimitPerIP(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.RateBurst = 2; c.RatePerIP = 0.0001 }})
	alice := e.user("alice")
	// Credentials authentik refuses spend the client IP's budget: of four
	// different ones, the two over the budget are held (one look-up at a
	// time across all over-budget addresses) and counted, not dropped.
	before := e.ak.Requests("/api/v3/core/users/me/")
	for i := range 4 {
		e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", alice.PK), `{"password":"x"}`, "", fmt.Sprintf("not-a-token-%d", i))
	}
	if got := e.tap.Stats().RateLimited; got != 2 {
		t.Errorf("rate limited %d, want 2", got)
	}
	if n := e.ak.Requests("/api/v3/core/users/me/") - before; n != 4 {
		t.Errorf("%d look-ups for unconfirmed callers, want 4", n)
	}
	// A credential refused a moment ago costs no second look-up.
	before = e.ak.Requests("/api/v3/core/users/me/")
	for range 3 {
		e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", alice.PK), `{"password":"x"}`, "", "not-a-token-0")
	}
	if n := e.ak.Requests("/api/v3/core/users/me/") - before; n != 0 {
		t.Errorf("%d look-ups for a refused credential, want 0", n)
	}
	// A confirmed admin is never limited: every action becomes a signal.
	e2 := newEnv(t, envOpts{mutate: func(c *Config) { c.RateBurst = 2; c.RatePerIP = 0.0001 }})
	bob := e2.user("bob")
	for range 5 {
		e2.do("POST", fmt.Sprintf("/api/v3/core/users/%d/set_password/", bob.PK), `{"password":"Adm1n-set"}`, "", e2.ak.AdminToken())
	}
	e2.waitFor("the journal to drain", func() bool { return e2.kv.count(BucketJournal) == 0 && len(e2.tap.queue) == 0 })
	if got := e2.tap.Stats().RateLimited; got != 0 {
		t.Errorf("a confirmed caller was rate limited %d times", got)
	}
	if n := len(e2.rec.signals()); n != 5 {
		t.Errorf("%d signals, want 5", n)
	}
}

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

// TestClockSkewDedup: authentik's clock runs 5 minutes behind; the traffic
// time follows authentik's Date header, so both sources still meet within
// the de-duplication window.
func TestClockSkewDedup(t *testing.T) {
	behind := func() time.Time { return time.Now().Add(-5 * time.Minute) }
	e := newEnv(t, envOpts{ak: authentiktest.Config{Clock: behind}, wrap: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Date", behind().UTC().Format(http.TimeFormat)) // authentik's host clock
			h.ServeHTTP(w, r)
		})
	}})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/", "", c, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s.SID)}})
}
