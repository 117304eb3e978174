package tap

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestConfigValidateReportsEverything(t *testing.T) {
	err := Config{Upstream: &url.URL{Path: "rel"}, PollInterval: -1, PageSize: 5000, DedupWindow: time.Hour, DedupRetention: time.Minute}.Validate()
	if err == nil {
		t.Fatal("no error")
	}
	for _, s := range []string{"absolute", "KV", "Publisher", "PollInterval", "PageSize", "DedupRetention"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not mention %s: %v", s, err)
		}
	}
	u, _ := url.Parse("http://ak:9000")
	if err := (Config{Upstream: u, KV: newBoltKV(t), Publisher: PublisherFunc(func(context.Context, Signal) error { return nil })}).Validate(); err != nil {
		t.Errorf("valid config refused: %v", err)
	}
}

func TestDecodeSessionCookie(t *testing.T) {
	claims := SessionClaims{SID: "sess-key", Subject: "uid-1", Authenticated: true}
	good, _ := SignSessionCookie(claims, "secret")
	expired, _ := SignSessionCookie(SessionClaims{SID: "s", Subject: "u", Authenticated: true,
		RegisteredClaims: jwt.RegisteredClaims{ExpiresAt: jwt.NewNumericDate(time.Now().Add(-time.Hour))}}, "secret")
	noSID, _ := SignSessionCookie(SessionClaims{Subject: "u"}, "secret")
	none := "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzaWQiOiJzZXNzLWtleSIsImF1dGhlbnRpY2F0ZWQiOnRydWV9."
	cases := []struct {
		name, value, key string
		verified         bool
		err              error
	}{
		{"verified", good, "secret", true, nil},
		{"decoded only without key", good, "", false, nil},
		{"wrong key", good, "other", false, ErrCookieSignature},
		{"alg none with key", none, "secret", false, ErrCookieSignature},
		{"expired", expired, "secret", false, ErrCookieSignature},
		{"no sid", noSID, "secret", false, ErrCookieMalformed},
		{"garbage", "not-a-jwt", "", false, ErrCookieMalformed},
		{"too long", strings.Repeat("a", 5000) + ".b.c", "", false, ErrCookieMalformed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, v, err := DecodeSessionCookie(tc.value, tc.key)
			if !errors.Is(err, tc.err) || (tc.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if v != tc.verified {
				t.Errorf("verified = %v", v)
			}
			if err == nil && c.SessionHash() != HashSessionID("sess-key") {
				t.Errorf("hash = %s", c.SessionHash())
			}
		})
	}
	// authentik's key derivation: the hex string of sha512(SECRET_KEY)
	if k := cookieSigningKey("x"); len(k) != 128 {
		t.Errorf("signing key length %d, want 128 hex chars", len(k))
	}
}

func TestParseRoute(t *testing.T) {
	tp := &Tap{flows: newFlows(), flowKick: make(chan struct{}, 1), cfg: Config{Clock: time.Now},
		unknownSlugs: newCache[string, struct{}](8, time.Minute, time.Now)}
	cases := []struct {
		method, path string
		op           op
		ok           bool
	}{
		{"GET", "/api/v3/flows/executor/default-invalidation-flow/", opLogout, true},
		{"POST", "/api/v3/flows/executor/default-password-change/", opFlowStage, true},
		{"GET", "/api/v3/flows/executor/default-password-change/", opFlowFollow, true},
		{"HEAD", "/api/v3/flows/executor/default-invalidation-flow/", opLogout, true},
		{"HEAD", "/flows/-/default/invalidation/", opLogoutHint, true},
		{"PUT", "/api/v3/flows/executor/default-invalidation-flow/", "", false},
		{"POST", "/api/v3/core/users/\u0663/set_password/", opSetPassword, true},
		{"PATCH", "/api/v3/core/users/ 12/", opUserUpdate, true},
		{"DELETE", "/api/v3/core/users/1_2/", opUserDelete, true},
		{"DELETE", "/api/v3/core/users/0/", "", false},
		{"DELETE", "/api/v3/core/users/12a/", "", false},
		{"POST", "/api/v3/flows/executor/default-authentication-flow/", "", false},
		{"DELETE", "/api/v3/core/authenticated_sessions/0b7c/", opSessionDelete, true},
		{"DELETE", "/api/v3/core/authenticated_sessions/bulk_delete/", opSessionBulk, true},
		{"GET", "/api/v3/core/authenticated_sessions/0b7c/", "", false},
		{"POST", "/api/v3/core/users/12/set_password/", opSetPassword, true},
		{"PATCH", "/api/v3/core/users/12/", opUserUpdate, true},
		{"PUT", "/api/v3/core/users/12/", opUserUpdate, true},
		{"DELETE", "/api/v3/core/users/12/", opUserDelete, true},
		{"PATCH", "/api/v3/core/users/me/", "", false},
		{"DELETE", "/api/v3/authenticators/totp/3/", opDeviceDelete, true},
		{"DELETE", "/api/v3/authenticators/admin/webauthn/3/", opDeviceDelete, true},
		{"DELETE", "/api/v3/authenticators/admin/endpoint/5f0e/", opDeviceDelete, true},
		{"DELETE", "/api/v3/authenticators/endpoint/5f0e/", "", false}, // read-only for users
		{"POST", "/api/v3/authenticators/admin/sms/", "", false},       // user is read-only: the create cannot succeed
		{"POST", "/api/v3/authenticators/totp/", "", false},
		{"DELETE", "/api/v3/authenticators/foo/3/", "", false},
		{"GET", "/application/o/app/end-session/", opLogoutHint, true},
		{"GET", "/flows/-/default/invalidation/", opLogoutHint, true},
		{"GET", "/static/app.js", "", false},
	}
	for _, tc := range cases {
		r, ok := tp.parseRoute(tc.method, tc.path)
		if ok != tc.ok || r.op != tc.op {
			t.Errorf("%s %s = %q %v, want %q %v", tc.method, tc.path, r.op, ok, tc.op, tc.ok)
		}
	}
}

// TestDedupRule exercises the one-action-one-signal rule directly.
func TestDedupRule(t *testing.T) {
	base := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	alice := User{PK: 3}
	sig := func(id string, src Source, at time.Duration, kind Kind, sh, dev string) Signal {
		s := Signal{ID: id, Kind: kind, Source: src, Time: base.Add(at), Subject: alice, SessionHash: sh}
		if dev != "" {
			s.Device = &Device{Type: "totp", PK: dev}
		}
		return s
	}
	cases := []struct {
		name string
		seq  []Signal
		dups []bool
	}{
		{"traffic then event API within the window", []Signal{
			sig("t1", SourceTraffic, 0, KindSessionRevoked, "h1", ""),
			sig("e1", SourceEventAPI, 3*time.Second, KindSessionRevoked, "", ""),
		}, []bool{false, true}},
		{"two logouts from two sessions, both sources", []Signal{
			sig("t1", SourceTraffic, 0, KindSessionRevoked, "h1", ""),
			sig("t2", SourceTraffic, time.Second, KindSessionRevoked, "h2", ""),
			sig("e1", SourceEventAPI, time.Second, KindSessionRevoked, "", ""),
			sig("e2", SourceEventAPI, 2*time.Second, KindSessionRevoked, "", ""),
		}, []bool{false, false, true, true}},
		{"a third report of two finds nothing left", []Signal{
			sig("t1", SourceTraffic, 0, KindSessionRevoked, "h1", ""),
			sig("e1", SourceEventAPI, time.Second, KindSessionRevoked, "", ""),
			sig("e2", SourceEventAPI, 2*time.Second, KindSessionRevoked, "", ""),
		}, []bool{false, true, false}},
		{"outside the window stays two", []Signal{
			sig("t1", SourceTraffic, 0, KindPasswordChanged, "", ""),
			sig("e1", SourceEventAPI, 10*time.Minute, KindPasswordChanged, "", ""),
		}, []bool{false, false}},
		{"other kind never matches", []Signal{
			sig("t1", SourceTraffic, 0, KindPasswordChanged, "", ""),
			sig("e1", SourceEventAPI, 0, KindSessionRevoked, "", ""),
		}, []bool{false, false}},
		{"same device pk matches exactly, even late and from one source", []Signal{
			sig("t1", SourceTraffic, 0, KindMFAAdded, "", "7"),
			sig("e1", SourceEventAPI, 30*time.Minute, KindMFAAdded, "", "7"),
			sig("e2", SourceEventAPI, 31*time.Minute, KindMFAAdded, "", "7"),
		}, []bool{false, true, true}},
		{"different device pks conflict", []Signal{
			sig("t1", SourceTraffic, 0, KindMFARemoved, "", "7"),
			sig("e1", SourceEventAPI, time.Second, KindMFARemoved, "", "8"),
		}, []bool{false, false}},
		{"the event API first, then the traffic", []Signal{
			sig("e1", SourceEventAPI, 0, KindAccountDisabled, "", ""),
			sig("t1", SourceTraffic, time.Second, KindAccountDisabled, "", ""),
		}, []bool{false, true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			kv := newBoltKV(t)
			tp := &Tap{cfg: Config{KV: kv, DedupWindow: 2 * time.Minute}}
			for i, s := range tc.seq {
				dup, marks, err := tp.dedupCheck(s)
				if err != nil {
					t.Fatal(err)
				}
				if dup != tc.dups[i] {
					t.Errorf("signal %s: dup = %v, want %v", s.ID, dup, tc.dups[i])
				}
				if err := kv.Commit(context.Background(), marks); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

func TestRateLimiterAndCacheBounds(t *testing.T) {
	now := time.Unix(0, 0)
	clock := func() time.Time { return now }
	l := newRateLimiter(1, 2, 2, clock)
	got := []bool{l.allow("a"), l.allow("a"), l.allow("a"), l.allow("b"), l.allow("c")}
	want := []bool{true, true, false, true, false}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("allow #%d = %v, want %v", i, got[i], want[i])
		}
	}
	now = now.Add(2 * time.Second)
	if !l.allow("a") || !l.allow("c") {
		t.Error("tokens did not refill / full buckets not forgotten")
	}
	c := newCache[string, int](2, time.Minute, clock)
	c.put("a", 1)
	c.put("b", 2)
	c.put("c", 3)
	if len(c.m) != 2 {
		t.Errorf("cache holds %d, want 2", len(c.m))
	}
	if v, ok := c.get("c"); !ok || v != 3 {
		t.Error("newest entry missing")
	}
	now = now.Add(2 * time.Minute)
	if _, ok := c.get("c"); ok {
		t.Error("expired entry returned")
	}
}

var _ = http.MethodGet

func TestPollActionsFollowsAuthentik(t *testing.T) {
	cases := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"2026.8 lists the new actions", 200, `[{"name":"Logout","component":"logout"},{"name":"x","component":"login"},{"component":"password_set"},{"component":"model_created"},{"component":"model_updated"},{"component":"model_deleted"},{"component":"mfa_device_added"},{"component":"mfa_device_removed"},{"component":"user_created"}]`,
			"logout,login,password_set,model_created,model_updated,model_deleted,mfa_device_added,mfa_device_removed,user_created"},
		{"2026.2 lacks them", 200, `[{"component":"logout"},{"component":"login"},{"component":"password_set"},{"component":"model_created"},{"component":"model_updated"},{"component":"model_deleted"}]`,
			"logout,login,password_set,model_created,model_updated,model_deleted"},
		{"no list: only actions every version has", 404, `{}`, "logout,login,password_set,model_created,model_updated,model_deleted"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/api/v3/events/events/actions/" || r.Header.Get("Authorization") != "Bearer tok" {
					http.Error(w, "no", 400)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			}))
			defer srv.Close()
			u, _ := url.Parse(srv.URL)
			tp, err := New(Config{Upstream: u, Token: "tok", KV: newBoltKV(t), Publisher: PublisherFunc(func(context.Context, Signal) error { return nil })})
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Join(tp.pollActions(t.Context()), ","); got != tc.want {
				t.Errorf("actions = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestDecodeEventPage(t *testing.T) {
	cases := []struct {
		name, body string
		next, n    int
		wantErr    bool
	}{
		{"authentik's envelope", `{"pagination":{"next":3,"previous":1,"count":250,"current":2,"total_pages":3,"start_index":101,"end_index":200},` +
			`"results":[{"pk":"0C85FB30-59a1-4b9c-845b-ac75248a0cc2","user":{"pk":3},"action":"logout","app":"a","context":{},"created":"2026-11-26T16:53:10.303842Z"}],"autocomplete":{}}`, 3, 1, false},
		{"last page", `{"pagination":{"next":0},"results":[]}`, 0, 0, false},
		{"record without created", `{"results":[{"pk":"x","action":"logout"}]}`, 0, 0, true},
		{"negative next", `{"pagination":{"next":-1},"results":[]}`, 0, 0, true},
		{"not json", `<html>`, 0, 0, true},
		{"odd user and context kept partial", `{"results":[{"pk":"x","action":"login","created":"2026-01-01T00:00:00Z","user":"?","context":7}]}`, 0, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := decodeEventPage([]byte(tc.body))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if err != nil {
				return
			}
			if p.Next != tc.next || len(p.Events) != tc.n {
				t.Errorf("next %d events %d, want %d %d", p.Next, len(p.Events), tc.next, tc.n)
			}
			if tc.n > 0 && strings.ContainsAny(p.Events[0].PK, "-ABCDEF") {
				t.Errorf("pk %q not normalised to authentik's hex form", p.Events[0].PK)
			}
		})
	}
}

func TestParseAKVersion(t *testing.T) {
	for _, tc := range []struct {
		in    string
		y, m  int
		ok    bool
		notes int
	}{
		{"2026.2.2", 2026, 2, true, 0}, {"2025.8.0-rc1", 2025, 8, true, 1}, {"2025.2.4", 2025, 2, true, 3},
		{"2024.12.3", 2024, 12, true, 4}, {"2026", 0, 0, false, 0}, {"2026.0.1", 0, 0, false, 0}, {"v2026.2", 0, 0, false, 0},
	} {
		v, err := parseAKVersion(tc.in)
		if (err == nil) != tc.ok || v.year != tc.y || v.month != tc.m {
			t.Errorf("parseAKVersion(%q) = %+v, %v", tc.in, v, err)
		}
		if err == nil && len(versionNotes(v)) != tc.notes {
			t.Errorf("%s: notes %q", tc.in, versionNotes(v))
		}
	}
}

func TestDeviceTypeMatches(t *testing.T) {
	for _, tc := range []struct {
		long, short string
		want        bool
	}{
		{"authentik_stages_authenticator_totp.TOTPDevice", "totp", true},
		{"authentik_stages_authenticator_endpoint_gdtc.EndpointDevice", "endpoint", true},
		{"authentik_stages_authenticator_totp.TOTPDevice", "endpoint", false},
		{"endpoint", "endpoint", true},
		{"authentik_stages_authenticator_sms.SMSDevice", "static", false},
	} {
		if got := deviceTypeMatches(tc.long, tc.short); got != tc.want {
			t.Errorf("deviceTypeMatches(%q, %q) = %v", tc.long, tc.short, got)
		}
	}
}

// TestDeviceRouteID: a device id in a DELETE path is read as authentik's
// int() reads it, so the look-up and the event match name device 12.
func TestDeviceRouteID(t *testing.T) {
	tp := &Tap{}
	for _, tc := range []struct{ path, id string }{
		{"/api/v3/authenticators/admin/totp/\u0661\u0662/", "12"},
		{"/api/v3/authenticators/totp/ 12 /", "12"},
		{"/api/v3/authenticators/admin/sms/12/", "12"},
		{"/api/v3/authenticators/admin/endpoint/5f0e-aa/", "5f0e-aa"},
	} {
		r, ok := tp.parseRoute("DELETE", tc.path)
		if !ok || r.op != opDeviceDelete || r.id != tc.id {
			t.Errorf("%q = %q %q %v, want device_delete %q", tc.path, r.op, r.id, ok, tc.id)
		}
	}
}
