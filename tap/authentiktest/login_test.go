package authentiktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"testing"
)

func TestLoginSetsVerifiableCookieAndMe(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw-alice"})

	c, err := s.Login("alice", "pw-alice")
	if err != nil {
		t.Fatalf("Login: %v", err)
	}
	raw := CookieValue(c, s.URL(), SessionCookieName)
	claims, err := ParseSessionCookie(s.SecretKey(), raw)
	if err != nil {
		t.Fatalf("cookie does not verify: %v", err)
	}
	if claims.Subject != alice.UID || !claims.Authenticated || claims.Issuer != "authentik" || claims.ACR != SessionACR {
		t.Fatalf("claims = %+v, want sub %s authenticated", claims, alice.UID)
	}
	se, ok := s.SessionBySID(claims.SID)
	if !ok || se.UserPK != alice.PK || !se.Authenticated {
		t.Fatalf("session for sid: %+v %v", se, ok)
	}
	if CookieValue(c, s.URL(), CSRFCookieName) == "" {
		t.Fatal("no authentik_csrf cookie")
	}

	r := do(t, c, "GET", s.URL()+"/api/v3/core/users/me/", "", nil)
	wantStatus(t, r, http.StatusOK)
	var me schemaSessionUser
	r.decode(t, &me)
	if me.User == nil {
		t.Fatal("no user in SessionUser")
	}
	me.User.check(t)
	if *me.User.PK != alice.PK || *me.User.UID != alice.UID || me.User.Email != "alice@example.com" || me.Original != nil {
		t.Fatalf("me = %+v", me.User)
	}

	logins := s.EventsByAction("login")
	if len(logins) != 1 || logins[0].User["pk"] != alice.PK {
		t.Fatalf("login events = %+v", logins)
	}
}

func TestLoginTwoStepAndFailures(t *testing.T) {
	s, _ := newTestServer(t, nil)
	mustUser(t, s, UserSpec{Username: "bob", Email: "bob@example.com", Password: "pw-bob"})
	mustUser(t, s, UserSpec{Username: "carol", Password: "pw-carol", Inactive: true})
	ctx := context.Background()
	slug := s.Flows().Authentication

	tests := []struct {
		name  string
		steps []map[string]any
		want  string // final component
		ok    bool
	}{
		{"two steps", []map[string]any{{"component": "ak-stage-identification", "uid_field": "bob"},
			{"component": "ak-stage-password", "password": "pw-bob"}}, "xak-flow-redirect", true},
		{"by email", []map[string]any{{"component": "ak-stage-identification", "uid_field": "bob@example.com", "password": "pw-bob"}}, "xak-flow-redirect", true},
		{"wrong password", []map[string]any{{"component": "ak-stage-identification", "uid_field": "bob", "password": "nope"}}, "ak-stage-identification", false},
		{"unknown user", []map[string]any{{"component": "ak-stage-identification", "uid_field": "mallory", "password": "x"}}, "ak-stage-identification", false},
		{"inactive user", []map[string]any{{"component": "ak-stage-identification", "uid_field": "carol", "password": "pw-carol"}}, "ak-stage-identification", false},
		{"password without identification", []map[string]any{{"component": "ak-stage-password", "password": "pw-bob"}}, "ak-stage-identification", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := NewBrowser()
			var res FlowResult
			for _, step := range tc.steps {
				var err error
				res, err = RunFlow(ctx, c, s.URL(), slug, step)
				if err != nil {
					t.Fatal(err)
				}
			}
			if res.Component != tc.want {
				t.Fatalf("component %q, want %q (%v)", res.Component, tc.want, res.Body)
			}
			me := do(t, c, "GET", s.URL()+"/api/v3/core/users/me/", "", nil)
			if got := me.status == http.StatusOK; got != tc.ok {
				t.Fatalf("authenticated = %v, want %v", got, tc.ok)
			}
			if !tc.ok && res.Body["response_errors"] == nil && tc.name != "password without identification" {
				t.Fatalf("failure without response_errors: %v", res.Body)
			}
		})
	}
	if n := len(s.EventsByAction("login_failed")); n != 3 {
		t.Fatalf("login_failed events = %d, want 3", n)
	}
}

func TestSessionCookieForgeryRefused(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	se, cookie, err := s.IssueSession(alice.PK)
	if err != nil {
		t.Fatal(err)
	}
	forged, err := MintSessionCookie("not-the-secret", SessionClaims{SID: se.SID, Issuer: "authentik", Subject: alice.UID, Authenticated: true, ACR: SessionACR})
	if err != nil {
		t.Fatal(err)
	}
	unknownSID, err := MintSessionCookie(s.SecretKey(), SessionClaims{SID: "no-such-session", Issuer: "authentik", Subject: alice.UID, Authenticated: true})
	if err != nil {
		t.Fatal(err)
	}
	claimsAnon, err := MintSessionCookie(s.SecretKey(), SessionClaims{SID: se.SID, Issuer: "authentik", Subject: "anonymous", Authenticated: false})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, cookie string
		want         int
	}{
		{"genuine", cookie, http.StatusOK},
		{"forged with another key", forged, http.StatusForbidden},
		{"unknown sid", unknownSID, http.StatusForbidden},
		{"authenticated claim flipped", claimsAnon, http.StatusForbidden},
		{"garbage", "not.a.jwt", http.StatusForbidden},
		{"none", "", http.StatusForbidden},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest("GET", s.URL()+"/api/v3/core/users/me/", nil)
			if tc.cookie != "" {
				req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: tc.cookie})
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

func TestSigningKeyIsHexOfSHA512(t *testing.T) {
	// sha512("") is a published test vector; the key is its hex text.
	const empty = "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce" +
		"47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
	if got := string(SigningKey("")); got != empty {
		t.Fatalf("SigningKey(\"\") = %q, want %q", got, empty)
	}
	if string(SigningKey("a")) == string(SigningKey("b")) {
		t.Fatal("different secrets give the same key")
	}
}

func TestSIDHashMatchesAuthentikSessionID(t *testing.T) {
	s, _ := newTestServer(t, nil)
	u := mustUser(t, s, UserSpec{Username: "dave", Password: "pw"})
	se, cookie, err := s.IssueSession(u.PK)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseSessionCookie(s.SecretKey(), cookie)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(c.SID))
	if c.SID != se.SID || len(hex.EncodeToString(sum[:])) != 64 || len(se.SID) != 32 {
		t.Fatalf("sid %q vs %q", c.SID, se.SID)
	}
}
