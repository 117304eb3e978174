package authentiktest

import (
	"net/http"
	"strings"
	"testing"
)

// Tests of the behaviours taken from authentik's source: each would have
// failed on the earlier simulator.

func TestPromptNotLastAnswers302ThenWritesOnGET(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "old"})
	c, err := s.Login("alice", "old")
	if err != nil {
		t.Fatal(err)
	}
	u := s.URL() + "/api/v3/flows/executor/" + s.Flows().PasswordChange + "/?query="
	r := do(t, c, "POST", u, "", map[string]any{"component": "ak-stage-prompt", "password": "new", "password_repeat": "new"})
	wantStatus(t, r, http.StatusFound)
	if loc := r.header.Get("Location"); loc != "/api/v3/flows/executor/"+s.Flows().PasswordChange+"/?query=" {
		t.Fatalf("Location %q", loc)
	}
	if n := len(s.EventsByAction("password_set")); n != 0 {
		t.Fatalf("password set on the POST (%d events)", n)
	}
	r = do(t, c, "GET", u, "", nil)
	wantStatus(t, r, http.StatusOK)
	if !contains(string(r.body), "xak-flow-redirect") || len(s.EventsByAction("password_set")) != 1 {
		t.Fatalf("GET: %s", r.body)
	}
	if _, err := s.Login("alice", "new"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	// the settings flow has the same shape
	su := s.URL() + "/api/v3/flows/executor/" + s.Flows().UserSettings + "/?query="
	wantStatus(t, do(t, c, "POST", su, "", map[string]any{"component": "ak-stage-prompt", "email": "a2@example.com"}), http.StatusFound)
	if got, _ := s.User(alice.PK); got.Email != "alice@example.com" {
		t.Fatal("email written on the POST")
	}
	wantStatus(t, do(t, c, "GET", su, "", nil), http.StatusOK)
	if got, _ := s.User(alice.PK); got.Email != "a2@example.com" {
		t.Fatalf("email not written on the GET: %+v", got)
	}
}

func TestRequestIDGeneratedAndReturned(t *testing.T) {
	s, _ := newTestServer(t, nil)
	mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("GET", s.URL()+"/api/v3/flows/executor/"+s.Flows().Invalidation+"/?query=", nil)
	req.Header.Set("X-Request-Id", "client-chosen")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-authentik-id")
	if len(id) != 32 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("X-authentik-id %q", id)
	}
	lo := s.EventsByAction("logout")
	hr, _ := lo[len(lo)-1].Context["http_request"].(map[string]any)
	if hr["request_id"] != id {
		t.Fatalf("event request_id %v, response id %s", hr["request_id"], id)
	}
}

func TestSessionBinding(t *testing.T) {
	for _, on := range []bool{false, true} {
		s, _ := newTestServer(t, func(c *Config) { c.SessionBinding = on })
		alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
		_, ck, err := s.IssueSessionFrom(alice.PK, "203.0.113.7")
		if err != nil {
			t.Fatal(err)
		}
		me := func(xff string) int {
			req, _ := http.NewRequest("GET", s.URL()+"/api/v3/core/users/me/", nil)
			req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: ck})
			if xff != "" {
				req.Header.Set("X-Forwarded-For", xff)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if st := me("203.0.113.7"); st != http.StatusOK {
			t.Fatalf("binding %v: from the login IP: %d", on, st)
		}
		st := me("") // from the loopback address, as a sidecar look-up without X-Forwarded-For
		switch {
		case on && (st != http.StatusForbidden || len(s.Sessions(alice.PK)) != 0 || len(s.EventsByAction("logout")) != 1 || s.BindingBreaks() != 1):
			t.Fatalf("binding on: status %d, sessions %d, logouts %d", st, len(s.Sessions(alice.PK)), len(s.EventsByAction("logout")))
		case !on && (st != http.StatusOK || len(s.EventsByAction("logout")) != 0):
			t.Fatalf("binding off: status %d", st)
		}
	}
}

func TestVersionProfiles(t *testing.T) {
	for _, v := range []Version{Version2025_2, Version2025_4, Version2025_8, Version2026_2} {
		s, _ := newTestServer(t, func(c *Config) { c.Version = v })
		alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
		if _, _, err := s.IssueSession(alice.PK); err != nil {
			t.Fatal(err)
		}
		// actions= is a filter from 2025.8 on; before, django-filter ignores it
		wantStatus(t, do(t, nil, "PATCH", s.URL()+"/api/v3/core/users/"+itoa(alice.PK)+"/", s.AdminToken(), map[string]any{"name": "A"}), http.StatusOK)
		var page struct {
			Results []map[string]any `json:"results"`
		}
		do(t, nil, "GET", s.URL()+"/api/v3/events/events/?actions=logout", s.AdminToken(), nil).decodeLoose(t, &page)
		filtered := len(page.Results) == 0 // no logout yet; other events exist
		if filtered != (v == Version2025_8 || v == Version2026_2) {
			t.Errorf("%s: actions filter applied = %v", v, filtered)
		}
		st := do(t, nil, "DELETE", s.URL()+"/api/v3/core/authenticated_sessions/bulk_delete/?user_pks="+itoa(alice.PK), s.AdminToken(), nil).status
		if (st == http.StatusOK) != (v == Version2026_2) {
			t.Errorf("%s: bulk_delete answered %d", v, st)
		}
		// from 2025.4 a user found inactive is logged out by middleware
		_, ck, _ := s.IssueSession(alice.PK)
		if err := s.SystemDisableUser(alice.PK); err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("GET", s.URL()+"/api/v3/core/users/me/", nil)
		req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: ck})
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if n := len(s.EventsByAction("logout")); (n == 1) != (v != Version2025_2) {
			t.Errorf("%s: %d logout events for an inactive user's request", v, n)
		}
	}
}

func TestUserDeletionCascadesDeviceEvents(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	for _, typ := range []DeviceType{DeviceTOTP, DeviceWebAuthn} {
		if _, err := s.AddDevice(DeviceSpec{Type: typ, UserPK: alice.PK}); err != nil {
			t.Fatal(err)
		}
	}
	wantStatus(t, do(t, nil, "DELETE", s.URL()+"/api/v3/core/users/"+itoa(alice.PK)+"/", s.AdminToken(), nil), http.StatusNoContent)
	var devices, users int
	for _, e := range s.EventsByAction("model_deleted") {
		m, _ := e.Context["model"].(map[string]any)
		hr, _ := e.Context["http_request"].(map[string]any)
		if e.User["username"] != "akadmin" || hr["path"] != "/api/v3/core/users/"+itoa(alice.PK)+"/" {
			t.Errorf("model_deleted %+v", e)
		}
		if m["model_name"] == "user" {
			users++
		} else {
			devices++
		}
	}
	if devices != 2 || users != 1 {
		t.Fatalf("model_deleted: %d devices, %d users", devices, users)
	}
}

func TestLastDuplicateCookieAndPythonIDs(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	_, ck, _ := s.IssueSession(alice.PK)
	req, _ := http.NewRequest("GET", s.URL()+"/api/v3/core/users/me/", nil)
	req.Header.Set("Cookie", SessionCookieName+"=junk; "+SessionCookieName+"="+ck)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("last cookie not used: %d", resp.StatusCode)
	}
	arabic := strings.Map(func(r rune) rune { return r - '0' + 0x0660 }, itoa(alice.PK))
	wantStatus(t, do(t, nil, "PATCH", s.URL()+"/api/v3/core/users/"+arabic+"/", s.AdminToken(), map[string]any{"is_active": "false"}), http.StatusOK)
	if u, _ := s.User(alice.PK); u.IsActive {
		t.Fatal(`"is_active": "false" did not deactivate`)
	}
}
