package tap

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// These tests hold the tap to authentik's real behaviour as the simulator
// now imitates it, for every release profile where they apply.

// releases are the simulator's authentik profiles a test runs against.
var releases = []authentiktest.Version{
	authentiktest.Version2025_2, authentiktest.Version2025_4, authentiktest.Version2025_8, authentiktest.Version2026_2,
}

// forReleases runs fn once per authentik profile.
func forReleases(t *testing.T, fn func(t *testing.T, v authentiktest.Version)) {
	for _, v := range releases {
		t.Run("authentik-"+string(v), func(t *testing.T) { fn(t, v) })
	}
}

// doHeader sends a request through the proxy with the given headers.
func (e *env) doHeader(method, path string, h http.Header) *http.Response {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.front.URL+path, nil)
	for k, v := range h {
		req.Header[k] = v
	}
	return e.send(req)
}

// TestSelfServiceFlowsFromTrafficAlone: without an API token, the default
// password-change flow (prompt POST answered 302, user_write on the GET)
// and the user-settings flow's email change produce their signals from the
// traffic alone.
func TestSelfServiceFlowsFromTrafficAlone(t *testing.T) {
	forReleases(t, func(t *testing.T, v authentiktest.Version) {
		e := newEnv(t, envOpts{ak: authentiktest.Config{Version: v}, noToken: true})
		alice := e.user("alice")
		_, c := e.session(alice.PK)
		if st := e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, &c); st != http.StatusOK {
			t.Fatalf("password flow answered %d", st)
		}
		if st := e.flow("default-user-settings-flow", `{"component":"ak-stage-prompt","username":"alice","email":"a2@example.com"}`, &c); st != http.StatusOK {
			t.Fatalf("settings flow answered %d", st)
		}
		if u, _ := e.ak.User(alice.PK); u.Email != "a2@example.com" {
			t.Fatalf("authentik did not change the email: %+v", u)
		}
		e.settle()
		a := int64(alice.PK)
		checkSignals(t, e.rec.signals(), []want{
			{kind: KindPasswordChanged, source: SourceTraffic, subject: a, initiator: InitiatorUser},
			{kind: KindEmailChanged, source: SourceTraffic, subject: a, initiator: InitiatorUser, oldEmail: "alice@example.com", newEmail: "a2@example.com"},
		})
	})
}

// TestHeadOnInvalidationFlowLogsOut: Django runs GET for HEAD, so HEAD on
// the invalidation flow's executor logs the user out; the tap sees it.
func TestHeadOnInvalidationFlowLogsOut(t *testing.T) {
	e := newEnv(t, envOpts{noToken: true})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	resp := e.doHeader("HEAD", "/api/v3/flows/executor/default-invalidation-flow/?query=",
		http.Header{"Cookie": {SessionCookieName + "=" + c}})
	if resp.StatusCode != http.StatusOK || len(e.ak.Sessions(alice.PK)) != 0 {
		t.Fatalf("HEAD answered %d; sessions left %d", resp.StatusCode, len(e.ak.Sessions(alice.PK)))
	}
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s.SID)}})
}

// TestDuplicateSessionCookiesLastWins: Django keeps the last of two
// authentik_session cookies; a junk first one must not hide the logout.
func TestDuplicateSessionCookiesLastWins(t *testing.T) {
	e := newEnv(t, envOpts{noToken: true})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	e.doHeader("GET", "/api/v3/flows/executor/default-invalidation-flow/?query=",
		http.Header{"Cookie": {SessionCookieName + "=junk; " + SessionCookieName + "=" + c}})
	if len(e.ak.Sessions(alice.PK)) != 0 {
		t.Fatal("authentik did not log the session out")
	}
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s.SID)}})
}

// TestIDsReadAsPythonDoes: authentik reads a pk with int(), so a path with
// Arabic-Indic digits, a space or an underscore names the same user.
func TestIDsReadAsPythonDoes(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	arabic := strings.Map(func(r rune) rune { return r - '0' + 0x0660 }, fmt.Sprint(alice.PK))
	if resp := e.do("POST", "/api/v3/core/users/"+url.PathEscape(arabic)+"/set_password/", `{"password":"Adm1n-set"}`, "", e.ak.AdminToken()); resp.StatusCode != http.StatusNoContent {
		t.Fatalf("set_password answered %d", resp.StatusCode)
	}
	bob := e.user("bob")
	e.session(bob.PK)
	if resp := e.do("DELETE", "/api/v3/core/authenticated_sessions/bulk_delete/?user_pks="+url.QueryEscape(" "+fmt.Sprint(bob.PK)), "", "", e.ak.AdminToken()); resp.StatusCode != http.StatusOK {
		t.Fatalf("bulk_delete answered %d", resp.StatusCode)
	}
	e.settle()
	got := e.rec.signals()
	var pw, revoked int
	for _, s := range got {
		switch {
		case s.Kind == KindPasswordChanged && s.Source == SourceTraffic && s.Subject.PK == int64(alice.PK) && s.Initiator == InitiatorAdmin:
			pw++
		case s.Kind == KindSessionRevoked && s.Source == SourceTraffic && s.Subject.PK == int64(bob.PK):
			revoked++
		}
	}
	if pw != 1 || revoked != 1 {
		t.Fatalf("password signals %d, revocations %d; all: %+v", pw, revoked, got)
	}
}

// TestStringBooleanDeactivation: DRF accepts "is_active": "false"; the
// user's sessions go with it and must be reported.
func TestStringBooleanDeactivation(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	s, _ := e.session(alice.PK)
	if resp := e.do("PATCH", fmt.Sprintf("/api/v3/core/users/%d/", alice.PK), `{"is_active":"false"}`, "", e.ak.AdminToken()); resp.StatusCode != http.StatusOK {
		t.Fatalf("PATCH answered %d", resp.StatusCode)
	}
	e.settle()
	a := int64(alice.PK)
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindAccountDisabled, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
		{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: s.UUID},
	})
}

// TestInactiveUserLoggedOutByMiddleware: from 2025.4 authentik logs out a
// user it finds inactive on their next request. That logout was caused by
// the deactivation (here a background one without any event), so it is
// system-initiated, and it is the first trace of the disable.
func TestInactiveUserLoggedOutByMiddleware(t *testing.T) {
	forReleases(t, func(t *testing.T, v authentiktest.Version) {
		e := newEnv(t, envOpts{ak: authentiktest.Config{Version: v}, mutate: func(c *Config) { c.DirectoryRecheck = -1 }})
		alice := e.user("alice")
		_, c := e.session(alice.PK)
		if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
			t.Fatal(err)
		}
		if err := e.ak.SystemDisableUser(alice.PK); err != nil {
			t.Fatal(err)
		}
		e.direct("GET", "/api/v3/core/users/me/", "", c, "")
		e.settle()
		var wants []want
		if v != authentiktest.Version2025_2 {
			a := int64(alice.PK)
			wants = []want{
				{kind: KindAccountDisabled, source: SourceEventAPI, subject: a, initiator: InitiatorSystem},
				{kind: KindSessionRevoked, source: SourceEventAPI, subject: a, initiator: InitiatorSystem},
			}
		}
		checkSignals(t, e.rec.signals(), wants)
	})
}

// TestBackgroundDisableSeenByRecheck: an LDAP-sync style disable leaves no
// event at all; the paged directory re-check reports it once.
func TestBackgroundDisableSeenByRecheck(t *testing.T) {
	e := newEnv(t, envOpts{ak: authentiktest.Config{PageSize: 2}, mutate: func(c *Config) {
		c.DirectoryRecheck = time.Nanosecond
		c.PageSize = 2
	}})
	var users []authentiktest.User
	for _, n := range []string{"u1", "u2", "u3", "u4", "u5"} {
		users = append(users, e.user(n))
	}
	for _, u := range users {
		if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(u.PK)); err != nil {
			t.Fatal(err)
		}
	}
	last := users[len(users)-1] // on the last page
	if err := e.ak.SystemDisableUser(last.PK); err != nil {
		t.Fatal(err)
	}
	e.ak.ResetRequestCounts()
	for range 5 { // seven users (admin, anonymous, five) at two a page: four polls read them all
		e.poll()
	}
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindAccountDisabled, source: SourceEventAPI, subject: int64(last.PK), initiator: InitiatorSystem}})
	if n := e.ak.Requests("/api/v3/core/users/"); n > 7 {
		t.Errorf("re-check read %d pages in 6 polls: one page per poll expected", n)
	}
}

// TestSessionBindingSurvivesTappedActions: with a User Login stage binding
// sessions to the client's network, the sidecar's own look-ups must not
// look like the cookie being used from elsewhere: with the secret key the
// cookie is never replayed, without it the caller's X-Forwarded-For and
// User-Agent go along. The user's session stays alive and nothing the user
// did not cause is reported.
func TestSessionBindingSurvivesTappedActions(t *testing.T) {
	modes := []struct {
		name string
		o    envOpts
	}{
		{"secret key and token", envOpts{secretKey: true}},
		{"token, cookies confirmed by look-up", envOpts{}},
		{"no token", envOpts{noToken: true}},
	}
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			m.o.ak.SessionBinding = true
			e := newEnv(t, m.o)
			alice := e.user("alice")
			// the test proxy presents every client as 203.0.113.7
			_, c, err := e.ak.IssueSessionFrom(alice.PK, "203.0.113.7")
			if err != nil {
				t.Fatal(err)
			}
			d, _ := e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: alice.PK})
			if st := e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, &c); st != http.StatusOK {
				t.Fatalf("password flow answered %d", st)
			}
			if resp := e.do("DELETE", fmt.Sprintf("/api/v3/authenticators/totp/%d/", d.PK), "", c, ""); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("device delete answered %d", resp.StatusCode)
			}
			e.settle()
			if n := e.ak.BindingBreaks(); n != 0 {
				t.Fatalf("the sidecar's look-ups broke %d session bindings", n)
			}
			if len(e.ak.Sessions(alice.PK)) != 1 {
				t.Fatal("alice's session is gone")
			}
			a := int64(alice.PK)
			checkSignals(t, e.rec.signals(), []want{
				{kind: KindPasswordChanged, source: SourceTraffic, subject: a, initiator: InitiatorUser},
				{kind: KindMFARemoved, source: SourceTraffic, subject: a, initiator: InitiatorUser, device: "totp"},
			})
		})
	}
}

// TestStaleCookieLogoutNoSET: with the secret key a cookie verifies for
// ever (it has no exp). Logging out with one whose session authentik had
// already ended is a logout of AnonymousUser, not of the cookie's user.
func TestStaleCookieLogoutNoSET(t *testing.T) {
	e := newEnv(t, envOpts{secretKey: true})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	// the directory knows alice (any earlier look-up does that)
	if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
		t.Fatal(err)
	}
	if st := e.direct("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken()); st != http.StatusNoContent {
		t.Fatalf("direct session delete answered %d", st)
	}
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/?query=", "", c, "")
	e.settle()
	checkSignals(t, e.rec.signals(), nil)
	if e.tap.Stats().StaleLogouts != 1 {
		t.Errorf("stale logouts counted %d", e.tap.Stats().StaleLogouts)
	}
	// a live session's logout still counts
	s2, c2 := e.session(alice.PK)
	e.do("GET", "/api/v3/flows/executor/default-invalidation-flow/?query=", "", c2, "")
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK),
		initiator: InitiatorUser, sessionHash: HashSessionID(s2.SID)}})
}

// TestCascadedDeviceDeletions: deleting a user (or an SMS, Email or Duo
// stage) makes authentik log model_deleted for every cascaded device with
// the acting admin as user. That is neither the admin's authenticator nor,
// for a deleted user, anything beyond account-purged.
func TestCascadedDeviceDeletions(t *testing.T) {
	for _, through := range []string{"proxy", "direct"} {
		t.Run(through, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			alice := e.user("alice")
			s, _ := e.session(alice.PK)
			known, _ := e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: alice.PK})
			e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceWebAuthn, UserPK: alice.PK})
			e.tap.dir.putDevice("totp", fmt.Sprint(known.PK), dirDevice{Owner: int64(alice.PK), Confirmed: true})
			if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
				t.Fatal(err)
			}
			path := fmt.Sprintf("/api/v3/core/users/%d/", alice.PK)
			a := int64(alice.PK)
			var wants []want
			if through == "proxy" {
				e.do("DELETE", path, "", "", e.ak.AdminToken())
				wants = []want{
					{kind: KindAccountDeleted, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
					{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: s.UUID},
				}
			} else {
				e.direct("DELETE", path, "", "", e.ak.AdminToken())
				wants = []want{{kind: KindAccountDeleted, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin}}
			}
			// an SMS stage deleted by the admin takes a device the sidecar never saw
			if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "model_deleted", App: "authentik.events.middleware", UserPK: 1,
				Context: map[string]any{
					"model":        map[string]any{"app": "authentik_stages_authenticator_sms", "model_name": "smsdevice", "pk": 77, "name": "phone"},
					"http_request": map[string]any{"path": "/api/v3/stages/authenticator/sms/0b9e1c4e0a3f4b1e9c1d2e3f4a5b6c7d/", "method": "DELETE"},
				}}); err != nil {
				t.Fatal(err)
			}
			e.settle()
			checkSignals(t, e.rec.signals(), wants)
		})
	}
}

// TestAccountLockdown: the lockdown stage leaves user_lockdown_triggered
// (the user by username in affected_user); it disabled the account, made
// the password unusable and ended every session.
func TestAccountLockdown(t *testing.T) {
	e := newEnv(t, envOpts{ak: authentiktest.Config{Version: authentiktest.Version2026_8}})
	alice := e.user("alice")
	e.session(alice.PK)
	if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
		t.Fatal(err)
	}
	if err := e.ak.LockdownUser(alice.PK, 1, "compromised"); err != nil {
		t.Fatal(err)
	}
	e.settle()
	a := int64(alice.PK)
	sigs := e.rec.signals()
	checkSignals(t, sigs, []want{
		{kind: KindAccountDisabled, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin},
		{kind: KindPasswordChanged, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin},
		{kind: KindSessionRevoked, source: SourceEventAPI, subject: a, initiator: InitiatorAdmin},
	})
	for _, s := range sigs {
		if s.Kind == KindPasswordChanged && !s.Revoked {
			t.Errorf("lockdown password signal is not a revocation: %+v", s)
		}
	}
}

// TestMFAEventOwnerShapes: mfa_device_* name the owner in context.subject
// or in affected_user_pk; a record with neither is counted, not guessed.
func TestMFAEventOwnerShapes(t *testing.T) {
	e := newEnv(t, envOpts{ak: authentiktest.Config{Version: authentiktest.Version2026_8}})
	alice := e.user("alice")
	dev := map[string]any{"type": "totpdevice", "name": "phone", "pk": 5}
	for _, ctx := range []map[string]any{
		{"affected_user_pk": alice.PK, "mfa_device": dev},
		{"affected_user_pk": fmt.Sprint(alice.PK), "mfa_device": map[string]any{"type": "webauthndevice", "name": "key", "pk": 6}},
		{"mfa_device": map[string]any{"type": "smsdevice", "name": "sms", "pk": 7}},
	} {
		if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "mfa_device_added", UserPK: alice.PK, Context: ctx}); err != nil {
			t.Fatal(err)
		}
	}
	misses := e.tap.Stats().Misses
	e.settle()
	a := int64(alice.PK)
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindMFAAdded, source: SourceEventAPI, subject: a, initiator: InitiatorUser, device: "totp"},
		{kind: KindMFAAdded, source: SourceEventAPI, subject: a, initiator: InitiatorUser, device: "webauthn"},
	})
	if e.tap.Stats().Misses != misses+1 {
		t.Errorf("misses %d → %d, want one more", misses, e.tap.Stats().Misses)
	}
}

// TestImpersonationReal: an admin impersonating alice removes her device
// and changes her password. authentik re-mints the cookie with alice's uid
// as sub, and from 2025.2 records password_set naming the admin with
// on_behalf_of alice. Both actions are the admin's, on alice.
func TestImpersonationReal(t *testing.T) {
	for _, mode := range []struct {
		name string
		o    envOpts
	}{{"secret key", envOpts{secretKey: true}}, {"look-ups", envOpts{}}} {
		t.Run(mode.name, func(t *testing.T) {
			e := newEnv(t, mode.o)
			alice := e.user("alice")
			d, _ := e.ak.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: alice.PK})
			_, ac := e.session(1)
			resp := e.do("POST", fmt.Sprintf("/api/v3/core/users/%d/impersonate/", alice.PK), `{"reason":"ticket 7"}`, ac, "")
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("impersonate: %d", resp.StatusCode)
			}
			ac = sessionCookieOf(resp, ac)
			if claims, _, _ := DecodeSessionCookie(ac, ""); claims.Subject != alice.UID {
				t.Fatalf("cookie sub %q, want alice's uid", claims.Subject)
			}
			if resp := e.do("DELETE", fmt.Sprintf("/api/v3/authenticators/totp/%d/", d.PK), "", ac, ""); resp.StatusCode != http.StatusNoContent {
				t.Fatalf("device delete: %d", resp.StatusCode)
			}
			if st := e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, &ac); st != http.StatusOK {
				t.Fatalf("password flow: %d", st)
			}
			ac = sessionCookieOf(e.do("GET", "/api/v3/core/users/impersonate_end/", "", ac, ""), ac)
			e.settle()
			a := int64(alice.PK)
			sigs := e.rec.signals()
			checkSignals(t, sigs, []want{
				{kind: KindMFARemoved, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, device: "totp"},
				{kind: KindPasswordChanged, source: SourceTraffic, subject: a, initiator: InitiatorAdmin},
			})
			for _, s := range sigs {
				if s.Actor == nil || s.Actor.PK != 1 {
					t.Errorf("%s: actor %+v, want the admin", s.Kind, s.Actor)
				}
			}
			if e.tap.impersonators.len() != 0 {
				t.Error("impersonation end not noticed")
			}
		})
	}
}

// TestImpersonatedPasswordSetEventAPI: the event API alone (the change did
// not cross the proxy) must name alice, not the impersonating admin.
func TestImpersonatedPasswordSetEventAPI(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	_, ac := e.session(1)
	if st := e.direct("POST", fmt.Sprintf("/api/v3/core/users/%d/impersonate/", alice.PK), `{"reason":"ticket 7"}`, ac, ""); st != http.StatusNoContent {
		t.Fatalf("impersonate: %d", st)
	}
	c := authentiktest.NewBrowser()
	u, _ := url.Parse(e.ak.URL())
	c.Jar.SetCookies(u, []*http.Cookie{{Name: SessionCookieName, Value: ac, Path: "/"}})
	if _, err := authentiktest.RunFlow(t.Context(), c, e.ak.URL(), "default-password-change", map[string]any{"component": "ak-stage-prompt", "password": "n3w-pass", "password_repeat": "n3w-pass"}); err != nil {
		t.Fatal(err)
	}
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindPasswordChanged, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorAdmin}})
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestVersionFloors: the tap reads authentik's release at start, says once
// what does not work on it, and where the events API would ignore the
// actions= filter it filters itself; the event API still delivers.
func TestVersionFloors(t *testing.T) {
	forReleases(t, func(t *testing.T, v authentiktest.Version) {
		logs := &syncBuffer{}
		e := newEnv(t, envOpts{ak: authentiktest.Config{Version: v}, mutate: func(c *Config) {
			c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
		}})
		if got := e.tap.Stats().AuthentikVersion; !strings.HasPrefix(got, string(v)+".") {
			t.Fatalf("version %q, want %s.x", got, v)
		}
		old := v == authentiktest.Version2025_2 || v == authentiktest.Version2025_4
		if strings.Contains(logs.String(), "no actions= filter") != old || e.tap.noActionsFilter.Load() != old {
			t.Errorf("actions= fallback: logged %v, on %v, want %v", strings.Contains(logs.String(), "no actions= filter"), e.tap.noActionsFilter.Load(), old)
		}
		if n := strings.Count(logs.String(), "older authentik"); (n > 0) != (v != authentiktest.Version2026_2) {
			t.Errorf("%d version warnings:\n%s", n, logs.String())
		}
		alice := e.user("alice")
		// noise the filter would have kept away, then a logout only authentik saw
		for range 3 {
			e.direct("PATCH", fmt.Sprintf("/api/v3/core/users/%d/", alice.PK), `{"name":"A"}`, "", e.ak.AdminToken())
		}
		_, c := e.session(alice.PK)
		e.direct("GET", "/api/v3/flows/executor/default-invalidation-flow/?query=", "", c, "")
		e.settle()
		checkSignals(t, e.rec.signals(), []want{{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}})
	})
}

// TestMFAEnrolmentNotLastStage: a setup stage followed by another stage
// saves the device on the POST and answers 302; that is the enrolment.
func TestMFAEnrolmentNotLastStage(t *testing.T) {
	forReleases(t, func(t *testing.T, v authentiktest.Version) {
		e := newEnv(t, envOpts{ak: authentiktest.Config{Version: v, TOTPSetupNotLast: true}, noToken: true})
		alice := e.user("alice")
		_, c := e.session(alice.PK)
		e.do("GET", "/api/v3/flows/executor/default-authenticator-totp-setup/?query=", "", c, "")
		if st := e.flow("default-authenticator-totp-setup", `{"component":"ak-stage-authenticator-totp","code":"123456"}`, &c); st != http.StatusOK {
			t.Fatalf("setup flow answered %d", st)
		}
		if devs := e.ak.Devices(alice.PK); len(devs) != 1 {
			t.Fatalf("devices %+v", devs)
		}
		e.settle()
		checkSignals(t, e.rec.signals(), []want{{kind: KindMFAAdded, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorUser, device: "totp"}})
	})
}

// TestImpersonationEndedEvent: the event API's impersonation_ended clears
// what the tap remembered of that admin's impersonating sessions.
func TestImpersonationEndedEvent(t *testing.T) {
	e := newEnv(t, envOpts{secretKey: true})
	admin, _ := e.ak.User(1)
	e.tap.impersonators.put("session-hash", User{PK: int64(admin.PK), Username: admin.Username})
	e.tap.impersonators.put("other-admin-session", User{PK: 99})
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "impersonation_ended", UserPK: admin.PK}); err != nil {
		t.Fatal(err)
	}
	e.settle()
	if _, ok := e.tap.impersonators.get("session-hash"); ok {
		t.Error("impersonation of the admin still remembered")
	}
	if _, ok := e.tap.impersonators.get("other-admin-session"); !ok {
		t.Error("another admin's impersonation forgotten")
	}
}

// TestSourceHashCachingAtLoginSkipped: on authentik up to 2026.2 an LDAP or
// Kerberos source caching the password at login writes an ordinary
// password_set from the password stage's POST; user_write sets passwords
// only on a flow's GET.
func TestSourceHashCachingAtLoginSkipped(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	for _, method := range []string{"POST", "GET"} {
		if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "password_set", UserPK: alice.PK, Context: map[string]any{
			"http_request": map[string]any{"path": "/api/v3/flows/executor/default-authentication-flow/", "method": method, "request_id": "r-" + method},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	e.settle()
	checkSignals(t, e.rec.signals(), []want{{kind: KindPasswordChanged, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorUser}})
}

// TestPasswordChangeCyclesSessionKey: from 2025.4 a user's own password
// change cycles the session key; a later revocation of that session must
// name its new sha256(sid).
func TestPasswordChangeCyclesSessionKey(t *testing.T) {
	e := newEnv(t, envOpts{})
	alice := e.user("alice")
	s, c := e.session(alice.PK)
	// a tapped request with the cookie teaches the tap the uuid ↔ sid link
	e.do("POST", "/api/v3/flows/executor/default-password-change/", `{"component":"ak-stage-prompt","password":"x","password_repeat":"y"}`, c, "")
	e.waitFor("the session link", func() bool { return e.tap.hashForSession(s.UUID) != "" })
	if st := e.flow("default-password-change", `{"component":"ak-stage-prompt","password":"n3w-pass","password_repeat":"n3w-pass"}`, &c); st != http.StatusOK {
		t.Fatalf("password flow: %d", st)
	}
	claims, _, err := DecodeSessionCookie(c, "")
	if err != nil || claims.SID == s.SID {
		t.Fatalf("the session key was not cycled: %v", err)
	}
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+s.UUID+"/", "", "", e.ak.AdminToken())
	e.settle()
	a := int64(alice.PK)
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindPasswordChanged, source: SourceTraffic, subject: a, initiator: InitiatorUser},
		{kind: KindSessionRevoked, source: SourceTraffic, subject: a, initiator: InitiatorAdmin, sessionUUID: s.UUID, sessionHash: HashSessionID(claims.SID)},
	})
}

// TestActionsListUnavailableSaidOnce: while authentik cannot list its event
// actions the poller asks only for those every version has, tries the list
// again each poll, and says so once, not at every poll.
func TestActionsListUnavailableSaidOnce(t *testing.T) {
	logs := &syncBuffer{}
	e := newEnv(t, envOpts{mutate: func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}})
	e.ak.SetFailModeFor("/api/v3/events/events/actions/", authentiktest.Fail503)
	e.tap.actionsMu.Lock()
	e.tap.actions = nil
	e.tap.actionsMu.Unlock()
	ctx := context.Background()
	for range 3 {
		got := e.tap.pollActions(ctx)
		for _, a := range got {
			if !slices.Contains(legacyActions, a) {
				t.Fatalf("asked for %q while the list is unavailable", a)
			}
		}
	}
	if n := strings.Count(logs.String(), "event actions list unavailable"); n != 1 {
		t.Errorf("said %d times, want once:\n%s", n, logs.String())
	}
	e.ak.SetFailModeFor("/api/v3/events/events/actions/", authentiktest.FailNone)
	if got := e.tap.pollActions(ctx); len(got) == 0 {
		t.Error("no actions once the list answers again")
	}
}
