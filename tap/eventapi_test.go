package tap

import (
	"fmt"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestEventAPIOnly checks actions the proxy never sees.
func TestEventAPIOnly(t *testing.T) {
	cases := []struct {
		name string
		ak   authentiktest.Config
		act  func(e *env, alice authentiktest.User) []want
	}{
		{"system disables a user the directory knows (no event: the re-check sees it)", authentiktest.Config{}, func(e *env, alice authentiktest.User) []want {
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
			if _, err := e.tap.fetchUser(t.Context(), e.tap.api.tokenCreds(), int64(alice.PK)); err != nil {
				t.Fatal(err)
			}
			// the prompt POST is a 302; user_write runs on the GET. The
			// traffic sees it, the event API's model_updated is its duplicate.
			e.flow("default-user-settings-flow", `{"component":"ak-stage-prompt","email":"a2@example.com"}`, &c)
			return []want{{kind: KindEmailChanged, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorUser,
				oldEmail: "alice@example.com", newEmail: "a2@example.com"}}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, envOpts{ak: tc.ak, mutate: func(c *Config) { c.DirectoryRecheck = time.Nanosecond }})
			alice := e.user("alice")
			wants := tc.act(e, alice)
			e.settle()
			checkSignals(t, e.rec.signals(), wants)
		})
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

// TestDirectorySeeded: the directory is seeded from authentik's user list
// at start, so a change to a user the sidecar never looked up still shows;
// the seed never overwrites a state persisted by an earlier run.
func TestDirectorySeeded(t *testing.T) {
	// a background disable leaves no event: the directory re-check (every
	// poll here) is what sees it
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.DirectoryRecheck = time.Nanosecond }})
	alice := e.user("alice") // created after the seed
	bob := e.user("bob")
	e.restart() // seeds alice and bob
	if err := e.ak.SystemDisableUser(alice.PK); err != nil {
		t.Fatal(err)
	}
	e.poll()
	// bob is disabled while the sidecar is down: the persisted state (active)
	// must survive the next seed for the change to show
	e.stop()
	e.stop = nil
	if err := e.ak.SystemDisableUser(bob.PK); err != nil {
		t.Fatal(err)
	}
	e.start()
	e.poll()
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindAccountDisabled, source: SourceEventAPI, subject: int64(alice.PK), initiator: InitiatorSystem},
		{kind: KindAccountDisabled, source: SourceEventAPI, subject: int64(bob.PK), initiator: InitiatorSystem},
	})
}
