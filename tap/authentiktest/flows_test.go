package authentiktest

import (
	"fmt"
	"net/http"
	"testing"
)

func TestPasswordChangeFlow(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "old"})
	c, err := s.Login("alice", "old")
	if err != nil {
		t.Fatal(err)
	}
	slug := s.Flows().PasswordChange
	ctx := t.Context()

	anon := NewBrowser()
	res, err := RunFlow(ctx, anon, s.URL(), slug, nil)
	if err != nil || res.Component != "ak-stage-access-denied" {
		t.Fatalf("anonymous: %q %v", res.Component, err)
	}
	res, err = RunFlow(ctx, c, s.URL(), slug, nil)
	if err != nil || res.Component != "ak-stage-prompt" {
		t.Fatalf("GET: %q %v", res.Component, err)
	}
	steps := []struct {
		body   map[string]any
		want   string
		errors bool
	}{
		{map[string]any{"component": "ak-stage-prompt", "password": "a", "password_repeat": "b"}, "ak-stage-prompt", true},
		{map[string]any{"component": "ak-stage-prompt"}, "ak-stage-prompt", true},
		{map[string]any{"component": "ak-stage-prompt", "password": "new", "password_repeat": "new"}, "xak-flow-redirect", false},
	}
	for i, st := range steps {
		res, err = RunFlow(ctx, c, s.URL(), slug, st.body)
		if err != nil {
			t.Fatal(err)
		}
		if res.Component != st.want || (res.Body["response_errors"] != nil) != st.errors {
			t.Fatalf("step %d: %v", i, res.Body)
		}
		if want := map[bool]int{true: 0, false: 1}[st.errors]; len(s.EventsByAction("password_set")) != want {
			t.Fatalf("step %d: password_set events %d, want %d", i, len(s.EventsByAction("password_set")), want)
		}
	}
	uw := s.EventsByAction("user_write")
	if len(uw) != 1 || uw[0].Context["password"] != cleansed || uw[0].Context["created"] != false {
		t.Fatalf("user_write = %+v", uw)
	}
	ps := s.EventsByAction("password_set")[0]
	// since 2025.2 password_set carries the request (the follow-up GET on
	// which user_write ran)
	hr, _ := ps.Context["http_request"].(map[string]any)
	if ps.User["pk"] != alice.PK || hr == nil || hr["method"] != "GET" || hr["request_id"] == "" {
		t.Fatalf("2026.2 password_set = %+v", ps)
	}
	if _, err := s.Login("alice", "new"); err != nil {
		t.Fatalf("new password: %v", err)
	}
	// the session survives a password change
	wantStatus(t, do(t, c, "GET", s.URL()+"/api/v3/core/users/me/", "", nil), http.StatusOK)
}

func TestTOTPSetupSavesOnceConfirmed(t *testing.T) {
	for _, v := range []Version{Version2026_2, Version2026_8} {
		for _, notLast := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/not-last=%v", v, notLast), func(t *testing.T) {
				s, _ := newTestServer(t, func(c *Config) { c.Version = v; c.TOTPCode = "424242"; c.TOTPSetupNotLast = notLast })
				alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
				c, err := s.Login("alice", "pw")
				if err != nil {
					t.Fatal(err)
				}
				slug := s.Flows().TOTPSetup
				res, err := RunFlow(t.Context(), c, s.URL(), slug, nil)
				if err != nil || res.Component != "ak-stage-authenticator-totp" || res.Body["config_url"] == nil {
					t.Fatalf("GET: %v %v", res.Body, err)
				}
				// the device lives in the flow until the code is right
				if devs := s.Devices(alice.PK); len(devs) != 0 {
					t.Fatalf("after GET devices = %+v, want none saved", devs)
				}
				res, _ = RunFlow(t.Context(), c, s.URL(), slug, map[string]any{"component": "ak-stage-authenticator-totp", "code": "000000"})
				if res.Component != "ak-stage-authenticator-totp" || res.Body["response_errors"] == nil || len(s.Devices(alice.PK)) != 0 {
					t.Fatalf("wrong code: %v", res.Body)
				}
				res, _ = RunFlow(t.Context(), c, s.URL(), slug, map[string]any{"component": "ak-stage-authenticator-totp", "code": "424242"})
				if res.Component != "xak-flow-redirect" || res.Redirected != notLast {
					t.Fatalf("right code: %v (redirected %v)", res.Body, res.Redirected)
				}
				devs := s.Devices(alice.PK)
				if len(devs) != 1 || !devs[0].Confirmed {
					t.Fatalf("devices %+v, want one confirmed", devs)
				}
				cr, up := s.EventsByAction("model_created"), deviceEvents(s.EventsByAction("model_updated"))
				if len(cr) != 1 || len(up) != 0 || cr[0].User["pk"] != alice.PK {
					t.Fatalf("created %d updated %d", len(cr), len(up))
				}
				want := map[Version]int{Version2026_2: 0, Version2026_8: 1}[v]
				if got := len(s.EventsByAction("mfa_device_added")); got != want {
					t.Fatalf("mfa_device_added %d, want %d", got, want)
				}
			})
		}
	}
}

func TestRenamedFlowSlugsAndBrand(t *testing.T) {
	slugs := FlowSlugs{Authentication: "corp-login", Invalidation: "corp-logout", PasswordChange: "corp-pw",
		TOTPSetup: "corp-totp", UserSettings: "corp-settings"}
	s, _ := newTestServer(t, func(c *Config) {
		c.Flows = slugs
		c.Applications = []Application{{Slug: "hr", ClientID: "hr-client", ClientSecret: "s"}}
	})
	mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatalf("login via renamed flow: %v", err)
	}
	var flows schemaPage[schemaFlow]
	r := do(t, nil, "GET", s.URL()+"/api/v3/flows/instances/?designation=invalidation", s.AdminToken(), nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &flows)
	flows.check(t)
	if len(flows.Results) != 1 || *flows.Results[0].Slug != "corp-logout" {
		t.Fatalf("invalidation flows = %+v", flows.Results)
	}
	flows.Results[0].check(t)
	invalidationUUID := *flows.Results[0].PK
	flows = schemaPage[schemaFlow]{}
	do(t, nil, "GET", s.URL()+"/api/v3/flows/instances/?designation=stage_configuration", s.AdminToken(), nil).decode(t, &flows)
	if len(flows.Results) != 3 {
		t.Fatalf("stage_configuration flows = %d", len(flows.Results))
	}

	var brands schemaPage[schemaBrand]
	r = do(t, nil, "GET", s.URL()+"/api/v3/core/brands/", s.AdminToken(), nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &brands)
	brands.check(t)
	if len(brands.Results) != 1 || brands.Results[0].FlowInvalidation == nil || *brands.Results[0].FlowInvalidation != invalidationUUID {
		t.Fatalf("brand = %+v", brands.Results)
	}
	var cur map[string]any
	r = do(t, nil, "GET", s.URL()+"/api/v3/core/brands/current/", "", nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &cur)
	if cur["flow_invalidation"] != "corp-logout" || cur["flow_user_settings"] != "corp-settings" {
		t.Fatalf("current brand = %v", cur)
	}

	// the default slugs do not exist
	res, _ := RunFlow(t.Context(), c, s.URL(), "default-invalidation-flow", nil)
	if res.Status != http.StatusNotFound {
		t.Fatalf("default slug answered %d", res.Status)
	}
	// redirects point at the renamed flow
	for _, path := range []string{"/flows/-/default/invalidation/", "/application/o/hr/end-session/", "/outpost.goauthentik.io/sign_out"} {
		r := do(t, c, "GET", s.URL()+path, "", nil)
		if r.status != http.StatusFound || r.header.Get("Location") != "/if/flow/corp-logout/" {
			t.Fatalf("%s: %d %q", path, r.status, r.header.Get("Location"))
		}
	}
	wantStatus(t, do(t, c, "GET", s.URL()+"/application/o/nope/end-session/", "", nil), http.StatusNotFound)
	wantStatus(t, do(t, c, "GET", s.URL()+"/if/flow/corp-logout/", "", nil), http.StatusOK)
	if len(s.EventsByAction("logout")) != 0 {
		t.Fatal("a redirect logged the user out")
	}
	res, _ = RunFlow(t.Context(), c, s.URL(), "corp-logout", nil)
	if res.Component != "xak-flow-redirect" || len(s.EventsByAction("logout")) != 1 {
		t.Fatalf("renamed logout: %v", res.Body)
	}
	// non-admins see no flows or brands
	u2 := mustUser(t, s, UserSpec{Username: "bob"})
	btok, err := s.MintToken(u2.PK)
	if err != nil {
		t.Fatal(err)
	}
	flows = schemaPage[schemaFlow]{}
	do(t, nil, "GET", s.URL()+"/api/v3/flows/instances/", btok, nil).decode(t, &flows)
	if len(flows.Results) != 0 {
		t.Fatal("non-admin lists flows")
	}
}

func TestConfigValidateReportsAll(t *testing.T) {
	cfg := Config{
		Version:  "1999.1",
		PageSize: -1,
		Flows:    FlowSlugs{Invalidation: "bad slug", PasswordChange: "x", TOTPSetup: "x"},
		Applications: []Application{{Slug: "a", ClientID: "c", ClientSecret: "s"},
			{Slug: "a", ClientID: "c"}},
	}
	err := cfg.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"unknown version", "negative", "not a slug", "share slug", "id and secret", "slug \"a\" twice", "client id \"c\" twice"} {
		if !contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, err := Start(cfg); err == nil {
		t.Fatal("Start accepted a bad config")
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
}

// deviceEvents keeps the events about device models (not users).
func deviceEvents(es []Event) []Event {
	var out []Event
	for _, e := range es {
		if m, ok := e.Context["model"].(map[string]any); ok && m["model_name"] != "user" {
			out = append(out, e)
		}
	}
	return out
}

func TestUserSettingsFlowChangesEmail(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "old@example.com", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	slug := s.Flows().UserSettings
	res, err := RunFlow(t.Context(), c, s.URL(), slug, nil)
	if err != nil || res.Component != "ak-stage-prompt" {
		t.Fatalf("GET: %v %v", res.Body, err)
	}
	res, _ = RunFlow(t.Context(), c, s.URL(), slug, map[string]any{"component": "ak-stage-prompt", "email": "not-an-email"})
	if res.Component != "ak-stage-prompt" || res.Body["response_errors"] == nil {
		t.Fatalf("bad email accepted: %v", res.Body)
	}
	res, _ = RunFlow(t.Context(), c, s.URL(), slug, map[string]any{"component": "ak-stage-prompt", "email": "new@example.com"})
	if res.Component != "xak-flow-redirect" {
		t.Fatalf("change: %v", res.Body)
	}
	if u, _ := s.User(alice.PK); u.Email != "new@example.com" {
		t.Fatalf("email = %s", u.Email)
	}
	uw := s.EventsByAction("user_write")
	if len(uw) != 1 || uw[0].Context["email"] != "new@example.com" || uw[0].User["pk"] != alice.PK {
		t.Fatalf("user_write = %+v", uw)
	}
}

func TestExecutorEnforcesCSRFForAuthenticatedSessions(t *testing.T) {
	s, _ := newTestServer(t, nil)
	mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	plain := &http.Client{Jar: c.Jar} // same cookies, no CSRF header
	r := do(t, plain, "POST", s.URL()+"/api/v3/flows/executor/"+s.Flows().PasswordChange+"/?query=", "",
		map[string]any{"component": "ak-stage-prompt", "password": "x", "password_repeat": "x"})
	wantStatus(t, r, http.StatusForbidden)
	if len(s.EventsByAction("password_set")) != 0 {
		t.Fatal("password changed without CSRF")
	}
	// anonymous POSTs (the login flow) need none
	anon := &http.Client{}
	r = do(t, anon, "POST", s.URL()+"/api/v3/flows/executor/"+s.Flows().Authentication+"/?query=", "",
		map[string]any{"component": "ak-stage-identification", "uid_field": "alice", "password": "pw"})
	wantStatus(t, r, http.StatusOK)
}

func TestRenameFlowWhileRunning(t *testing.T) {
	s, _ := newTestServer(t, nil)
	mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RenameFlow("default-invalidation-flow", "bye"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][2]string{{"bye", "default-password-change"}, {"nope", "x"}, {"bye", "not a slug"}} {
		if err := s.RenameFlow(bad[0], bad[1]); err == nil {
			t.Fatalf("RenameFlow(%q, %q) accepted", bad[0], bad[1])
		}
	}
	if s.Flows().Invalidation != "bye" {
		t.Fatalf("Flows() = %+v", s.Flows())
	}
	var flows schemaPage[schemaFlow]
	do(t, nil, "GET", s.URL()+"/api/v3/flows/instances/?designation=invalidation", s.AdminToken(), nil).decode(t, &flows)
	if len(flows.Results) != 1 || *flows.Results[0].Slug != "bye" {
		t.Fatalf("flows = %+v", flows.Results)
	}
	r := do(t, c, "GET", s.URL()+"/flows/-/default/invalidation/", "", nil)
	if r.header.Get("Location") != "/if/flow/bye/" {
		t.Fatalf("redirect to %q", r.header.Get("Location"))
	}
	if res, _ := RunFlow(t.Context(), c, s.URL(), "default-invalidation-flow", nil); res.Status != http.StatusNotFound {
		t.Fatalf("old slug answered %d", res.Status)
	}
	if res, _ := RunFlow(t.Context(), c, s.URL(), "bye", nil); res.Component != "xak-flow-redirect" || len(s.EventsByAction("logout")) != 1 {
		t.Fatalf("renamed flow: %v", res.Body)
	}
}
