package authentiktest

import (
	"net/http"
	"testing"
)

func userURL(s *Server, pk int) string { return s.URL() + "/api/v3/core/users/" + itoa(pk) + "/" }

func TestUsersListFilters(t *testing.T) {
	s, _ := newTestServer(t, nil)
	mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com"})
	mustUser(t, s, UserSpec{Username: "bob", Email: "bob@example.com", Inactive: true})
	tests := []struct {
		query string
		want  []string
	}{
		{"", []string{"akadmin", "alice", "bob"}},
		{"?username=bob", []string{"bob"}},
		{"?email=alice@example.com", []string{"alice"}},
		{"?is_active=false", []string{"bob"}},
		{"?is_active=true", []string{"akadmin", "alice"}},
		{"?is_superuser=true", []string{"akadmin"}},
		{"?search=EXAMPLE", []string{"alice", "bob"}},
		{"?pk=3", []string{"akadmin", "alice", "bob"}}, // not a filter of this endpoint: ignored
		{"?ordering=-username", []string{"bob", "alice", "akadmin"}},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			var p schemaPage[schemaUser]
			r := do(t, nil, "GET", s.URL()+"/api/v3/core/users/"+tc.query, s.AdminToken(), nil)
			wantStatus(t, r, http.StatusOK)
			r.decode(t, &p)
			p.check(t)
			var got []string
			for _, u := range p.Results {
				u.check(t)
				got = append(got, *u.Username)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestUserPatchDeactivateEndsSessionsModelUpdatedWithoutDiff(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Name: "Alice Liddell", Email: "alice@example.com", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	var out schemaUser
	r := do(t, nil, "PATCH", userURL(s, alice.PK), s.AdminToken(), map[string]any{"is_active": false, "email": "a2@example.com"})
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &out)
	out.check(t)
	if out.IsActive || out.Email != "a2@example.com" {
		t.Fatalf("after PATCH: %+v", out)
	}
	if len(s.Sessions(alice.PK)) != 0 {
		t.Fatal("deactivated user keeps sessions")
	}
	wantStatus(t, do(t, c, "GET", s.URL()+"/api/v3/core/users/me/", "", nil), http.StatusForbidden)
	ups := s.EventsByAction("model_updated")
	// the login saved last_login (actor alice), then the admin's PATCH
	if len(ups) != 2 || ups[0].User["username"] != "alice" {
		t.Fatalf("model_updated events: %+v", ups)
	}
	e := ups[1]
	model := e.Context["model"].(map[string]any)
	if e.User["username"] != "akadmin" || model["model_name"] != "user" || model["app"] != "authentik_core" || model["pk"] != alice.PK || model["name"] != "Alice Liddell" { // model_to_dict uses the display name
		t.Fatalf("event %+v", e)
	}
	if _, has := e.Context["diff"]; has {
		t.Fatal("model_updated carries a diff without an Enterprise licence")
	}
	// the inactive user can no longer log in; re-enable with PUT
	if _, err := s.Login("alice", "pw"); err == nil {
		t.Fatal("inactive user logged in")
	}
	wantStatus(t, do(t, nil, "PUT", userURL(s, alice.PK), s.AdminToken(), map[string]any{"is_active": true}), http.StatusBadRequest)
	r = do(t, nil, "PUT", userURL(s, alice.PK), s.AdminToken(), map[string]any{"username": "alice", "name": "Alice", "is_active": true})
	wantStatus(t, r, http.StatusOK)
	if u, _ := s.User(alice.PK); !u.IsActive {
		t.Fatal("PUT did not re-enable")
	}
}

func TestUserWritesPermissionsAndValidation(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	bob := mustUser(t, s, UserSpec{Username: "bob", Password: "pw"})
	tok, err := s.MintToken(alice.PK)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, method, url, token string
		body                     any
		want                     int
	}{
		{"user reads self", "GET", userURL(s, alice.PK), tok, nil, http.StatusOK},
		{"user cannot read others", "GET", userURL(s, bob.PK), tok, nil, http.StatusNotFound},
		{"user cannot patch self", "PATCH", userURL(s, alice.PK), tok, map[string]any{"is_active": false}, http.StatusForbidden},
		{"user cannot delete others", "DELETE", userURL(s, bob.PK), tok, nil, http.StatusNotFound},
		{"user cannot set password", "POST", userURL(s, alice.PK) + "set_password/", tok, map[string]any{"password": "x"}, http.StatusForbidden},
		{"anonymous", "GET", userURL(s, alice.PK), "", nil, http.StatusForbidden},
		{"unknown user", "GET", userURL(s, 999), s.AdminToken(), nil, http.StatusNotFound},
		{"bad id", "GET", s.URL() + "/api/v3/core/users/abc/", s.AdminToken(), nil, http.StatusNotFound},
		{"duplicate username", "PATCH", userURL(s, bob.PK), s.AdminToken(), map[string]any{"username": "alice"}, http.StatusBadRequest},
		{"bad email", "PATCH", userURL(s, bob.PK), s.AdminToken(), map[string]any{"email": "nope"}, http.StatusBadRequest},
		{"bad type", "PATCH", userURL(s, bob.PK), s.AdminToken(), map[string]any{"type": "robot"}, http.StatusBadRequest},
		{"not a DRF boolean", "PATCH", userURL(s, bob.PK), s.AdminToken(), map[string]any{"is_active": "nein"}, http.StatusBadRequest},
		{"set_password empty", "POST", userURL(s, bob.PK) + "set_password/", s.AdminToken(), map[string]any{}, http.StatusBadRequest},
		{"create without name", "POST", s.URL() + "/api/v3/core/users/", s.AdminToken(), map[string]any{"username": "x"}, http.StatusBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantStatus(t, do(t, nil, tc.method, tc.url, tc.token, tc.body), tc.want)
		})
	}
	if n := len(s.Events()); n != 0 {
		t.Fatalf("refused writes recorded %d events", n)
	}
}

func TestSetPasswordAndDeletePurgesEvents(t *testing.T) {
	tests := []struct {
		name    string
		version Version
		keep    bool
	}{
		{"2026.2 purge", Version2026_2, false},
		{"2026.8 keep", Version2026_8, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newTestServer(t, func(c *Config) { c.Version = tc.version; c.KeepEventsOfDeletedUsers = tc.keep })
			bob := mustUser(t, s, UserSpec{Username: "bob", Email: "bob@example.com", Password: "old"})
			wantStatus(t, do(t, nil, "POST", userURL(s, bob.PK)+"set_password/", s.AdminToken(), map[string]any{"password": "new"}), http.StatusNoContent)
			if _, err := s.Login("bob", "new"); err != nil {
				t.Fatalf("new password does not work: %v", err)
			}
			ps := s.EventsByAction("password_set")
			if len(ps) != 1 || ps[0].User["pk"] != bob.PK {
				t.Fatalf("password_set = %+v", ps)
			}
			_, hasSubject := ps[0].Context["subject"]
			if hasSubject != (tc.version == Version2026_8) {
				t.Fatalf("subject present = %v under %s", hasSubject, tc.version)
			}
			if tc.version == Version2026_8 && ps[0].Context["origin"] != "http" {
				t.Fatalf("origin = %v", ps[0].Context["origin"])
			}
			wantStatus(t, do(t, nil, "DELETE", userURL(s, bob.PK), s.AdminToken(), nil), http.StatusNoContent)
			if _, ok := s.User(bob.PK); ok {
				t.Fatal("user survived delete")
			}
			del := s.EventsByAction("model_deleted")
			if len(del) != 1 || del[0].User["username"] != "akadmin" {
				t.Fatalf("model_deleted = %+v", del)
			}
			// bob's own events (password_set, login) go with him unless kept.
			remaining := len(s.EventsByAction("password_set")) + len(s.EventsByAction("login"))
			if want := map[bool]int{true: 2, false: 0}[tc.keep]; remaining != want {
				t.Fatalf("bob's events left: %d, want %d", remaining, want)
			}
		})
	}
}

func TestUserCreate(t *testing.T) {
	for _, v := range []Version{Version2026_2, Version2026_8} {
		s, _ := newTestServer(t, func(c *Config) { c.Version = v })
		var u schemaUser
		r := do(t, nil, "POST", s.URL()+"/api/v3/core/users/", s.AdminToken(), map[string]any{"username": "new", "name": "New", "email": "new@example.com"})
		wantStatus(t, r, http.StatusCreated)
		r.decode(t, &u)
		u.check(t)
		if len(s.EventsByAction("model_created")) != 1 {
			t.Fatal("no model_created")
		}
		if got := len(s.EventsByAction("user_created")); got != map[Version]int{Version2026_2: 0, Version2026_8: 1}[v] {
			t.Fatalf("%s: user_created events %d", v, got)
		}
	}
}

func TestSystemHelpers(t *testing.T) {
	s, _ := newTestServer(t, func(c *Config) { c.Version = Version2026_8 })
	u := mustUser(t, s, UserSpec{Username: "sys", Password: "p"})
	if _, _, err := s.IssueSession(u.PK); err != nil {
		t.Fatal(err)
	}
	if err := s.SystemDisableUser(u.PK); err != nil {
		t.Fatal(err)
	}
	// a background change: no event, sessions kept (they stop working)
	got, _ := s.User(u.PK)
	if got.IsActive || len(s.Sessions(u.PK)) != 1 {
		t.Fatal("SystemDisableUser did not disable, or ended sessions")
	}
	if up := s.EventsByAction("model_updated"); len(up) != 0 {
		t.Fatalf("system model_updated = %+v", up)
	}
	if err := s.SystemSetPassword(u.PK, "x", "source_sync"); err != nil {
		t.Fatal(err)
	}
	ps := s.EventsByAction("password_set")
	if len(ps) != 1 || ps[0].Context["origin"] != "source_sync" || ps[0].Context["synced_from_source"] != true {
		t.Fatalf("password_set = %+v", ps)
	}
	if err := s.SystemDisableUser(999); err == nil {
		t.Fatal("no error for unknown user")
	}
}

func TestPasswordChangeEndsOtherSessionsAndPutKeepsThem(t *testing.T) {
	s, _ := newTestServer(t, nil)
	bob := mustUser(t, s, UserSpec{Username: "bob", Password: "pw"})
	me := s.URL() + "/api/v3/core/users/me/"

	// Self-service change: the session that changed it lives, the other dies.
	c1, err := s.Login("bob", "pw")
	if err != nil {
		t.Fatal(err)
	}
	c2, err := s.Login("bob", "pw")
	if err != nil {
		t.Fatal(err)
	}
	res, err := RunFlow(t.Context(), c1, s.URL(), s.Flows().PasswordChange,
		map[string]any{"component": "ak-stage-prompt", "password": "pw2", "password_repeat": "pw2"})
	if err != nil || res.Component != "xak-flow-redirect" {
		t.Fatalf("change: %v %v", res.Body, err)
	}
	wantStatus(t, do(t, c1, "GET", me, "", nil), http.StatusOK)
	if len(s.Sessions(bob.PK)) != 2 {
		t.Fatal("the stale session should stay listed until it is used")
	}
	wantStatus(t, do(t, c2, "GET", me, "", nil), http.StatusForbidden)
	if len(s.Sessions(bob.PK)) != 1 {
		t.Fatal("a stale session is flushed when used")
	}

	// Admin set_password: every session of bob stops authenticating.
	wantStatus(t, do(t, nil, "POST", userURL(s, bob.PK)+"set_password/", s.AdminToken(), map[string]any{"password": "pw3"}), http.StatusNoContent)
	wantStatus(t, do(t, c1, "GET", me, "", nil), http.StatusForbidden)

	// PUT is_active=false keeps sessions listed (only PATCH deletes them),
	// but they no longer authenticate.
	c3, err := s.Login("bob", "pw3")
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, do(t, nil, "PUT", userURL(s, bob.PK), s.AdminToken(), map[string]any{"username": "bob", "name": "bob", "is_active": false}), http.StatusOK)
	if len(s.Sessions(bob.PK)) != 1 {
		t.Fatalf("PUT deleted sessions: %d left", len(s.Sessions(bob.PK)))
	}
	wantStatus(t, do(t, c3, "GET", me, "", nil), http.StatusForbidden)
	wantStatus(t, do(t, nil, "PATCH", userURL(s, bob.PK), s.AdminToken(), map[string]any{"name": "Bob"}), http.StatusOK)
	if len(s.Sessions(bob.PK)) != 0 {
		t.Fatal("PATCH of an inactive user keeps sessions")
	}
}

func TestImpersonationAttributesEventsToTheAdmin(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"})
	dev, err := s.AddDevice(DeviceSpec{Type: DeviceTOTP, UserPK: alice.PK, Name: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := s.Login("akadmin", "akadmin-password")
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, do(t, admin, "POST", userURL(s, alice.PK)+"impersonate/", "", map[string]any{}), http.StatusBadRequest)
	wantStatus(t, do(t, nil, "POST", userURL(s, alice.PK)+"impersonate/", s.AdminToken(), map[string]any{"reason": "x"}), http.StatusForbidden)
	wantStatus(t, do(t, admin, "POST", userURL(s, alice.PK)+"impersonate/", "", map[string]any{"reason": "support ticket"}), http.StatusNoContent)

	var me schemaSessionUser
	r := do(t, admin, "GET", s.URL()+"/api/v3/core/users/me/", "", nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &me)
	if *me.User.PK != alice.PK || me.Original == nil || *me.Original.Username != "akadmin" {
		t.Fatalf("me while impersonating: user %v original %v", *me.User.Username, me.Original)
	}
	// acting as alice: her own device endpoint works, admin endpoints do not
	wantStatus(t, do(t, admin, "GET", s.URL()+"/api/v3/authenticators/admin/totp/", "", nil), http.StatusForbidden)
	wantStatus(t, do(t, admin, "DELETE", s.URL()+"/api/v3/authenticators/totp/"+itoa(dev.PK)+"/", "", nil), http.StatusNoContent)
	del := s.EventsByAction("model_deleted")
	if len(del) != 1 || del[0].User["username"] != "akadmin" {
		t.Fatalf("model_deleted while impersonating = %+v", del)
	}
	if obo, _ := del[0].User["on_behalf_of"].(map[string]any); obo == nil || obo["pk"] != alice.PK {
		t.Fatalf("on_behalf_of = %v", del[0].User["on_behalf_of"])
	}
	st := s.EventsByAction("impersonation_started")
	if len(st) != 1 || st[0].Context["reason"] != "support ticket" || st[0].User["username"] != "akadmin" {
		t.Fatalf("impersonation_started = %+v", st)
	}
	wantStatus(t, do(t, admin, "GET", s.URL()+"/api/v3/core/users/impersonate_end/", "", nil), http.StatusNoContent)
	me = schemaSessionUser{}
	do(t, admin, "GET", s.URL()+"/api/v3/core/users/me/", "", nil).decode(t, &me)
	if *me.User.Username != "akadmin" || me.Original != nil {
		t.Fatalf("after end: %v %v", *me.User.Username, me.Original)
	}
	if end := s.EventsByAction("impersonation_ended"); len(end) != 1 || end[0].User["on_behalf_of"] != nil {
		t.Fatalf("impersonation_ended = %+v", end)
	}
}
