package authentiktest

import (
	"fmt"
	"math/rand"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

func FuzzParseSessionCookie(f *testing.F) {
	const secret = "fuzz-secret"
	good, err := MintSessionCookie(secret, SessionClaims{SID: "abc", Issuer: "authentik", Subject: "u", Authenticated: true, ACR: SessionACR})
	if err != nil {
		f.Fatal(err)
	}
	other, _ := MintSessionCookie("other", SessionClaims{SID: "abc", Issuer: "authentik"})
	noSID, _ := MintSessionCookie(secret, SessionClaims{Issuer: "authentik"})
	for _, seed := range []string{good, other, noSID, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", strings.Repeat("A", 300)} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		c, err := ParseSessionCookie(secret, v)
		if err == nil && (c.SID == "" || c.Issuer != "authentik") {
			t.Fatalf("accepted %q as %+v", v, c)
		}
		if err == nil {
			// whatever verifies must re-sign to a cookie that verifies the same
			again, err := MintSessionCookie(secret, c)
			if err != nil {
				t.Fatal(err)
			}
			c2, err := ParseSessionCookie(secret, again)
			if err != nil || c2 != c {
				t.Fatalf("round trip: %+v vs %+v (%v)", c, c2, err)
			}
		}
	})
}

func FuzzParseFlowBody(f *testing.F) {
	for _, seed := range []string{
		`{"component":"ak-stage-identification","uid_field":"alice","password":"x"}`,
		`{"component":"ak-stage-prompt","password":"a","password_repeat":"a"}`,
		`{"component":"ak-stage-authenticator-totp","code":"123456"}`,
		``, `null`, `[]`, `{"code":1}`, `{`, "\x00",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fb, err := parseFlowBody(b)
		if err != nil && fb != (flowBody{}) {
			t.Fatalf("error with a non-zero body: %+v", fb)
		}
	})
}

// fuzzServer is shared by the handler fuzz targets: one simulator, reached
// in-process through its Handler.
var fuzzServer = sync.OnceValue(func() *Server {
	s, err := Start(Config{Rand: &lockedRand{r: rand.New(rand.NewSource(7))}})
	if err != nil {
		panic(err)
	}
	u, err := s.AddUser(UserSpec{Username: "target", Email: "t@example.com", Password: "pw"})
	if err != nil || u.PK != fuzzTargetPK {
		panic(fmt.Sprintf("fuzz target user: %+v %v", u, err))
	}
	return s
})

// fuzzTargetPK is the pk of the first user added (1 is akadmin, 2 AnonymousUser).
const fuzzTargetPK = 3

func serveFuzz(t *testing.T, s *Server, method, target, body string, header http.Header) int {
	req := httptest.NewRequest(method, "http://authentik"+target, strings.NewReader(body))
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, req)
	if rec.Code >= 500 {
		t.Fatalf("%s %s %q: status %d %s", method, target, body, rec.Code, rec.Body)
	}
	return rec.Code
}

func FuzzUserWriteBody(f *testing.F) {
	for _, seed := range []string{
		`{"is_active":false}`, `{"email":"new@example.com"}`, `{"username":"","name":null}`,
		`{"attributes":null}`, `{"type":"robot"}`, `{"is_active":"no"}`, `[]`, `{`, ``,
	} {
		f.Add("PATCH", seed)
		f.Add("PUT", seed)
	}
	f.Add("POST", `{"password":"x"}`)
	f.Fuzz(func(t *testing.T, method, body string) {
		s := fuzzServer()
		h := http.Header{"Authorization": {"Bearer " + s.AdminToken()}, "Content-Type": {"application/json"}}
		// The target keeps its pk whatever earlier inputs renamed or changed.
		path := "/api/v3/core/users/" + itoa(fuzzTargetPK) + "/"
		switch method {
		case "PATCH", "PUT":
			serveFuzz(t, s, method, path, body, h)
		case "POST":
			serveFuzz(t, s, method, path+"set_password/", body, h)
		}
	})
}

func FuzzExecutorBody(f *testing.F) {
	for _, seed := range []string{
		`{"component":"ak-stage-identification","uid_field":"target","password":"pw"}`,
		`{"component":"ak-stage-password","password":"pw"}`,
		`{"component":"ak-stage-prompt","password":"a","password_repeat":"b"}`,
		`{"code":"123456"}`, `{`, ``, `"x"`,
	} {
		f.Add("default-authentication-flow", seed)
		f.Add("default-password-change", seed)
		f.Add("default-authenticator-totp-setup", seed)
	}
	f.Fuzz(func(t *testing.T, slug, body string) {
		s := fuzzServer()
		serveFuzz(t, s, "POST", "/api/v3/flows/executor/"+url.PathEscape(slug)+"/?query=", body, nil)
	})
}

func FuzzEventQuery(f *testing.F) {
	for _, seed := range []string{
		"ordering=created&page=1&page_size=2", "actions=logout&actions=login", "page=-1", "page_size=0",
		"context_model_pk=1-2-3", "ordering=-action", "page=99999999999999999999", "%zz",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, q string) {
		s := fuzzServer()
		h := http.Header{"Authorization": {"Bearer " + s.AdminToken()}}
		req := httptest.NewRequest("GET", "http://authentik/api/v3/events/events/", nil)
		req.URL.RawQuery = q
		for k, v := range h {
			req.Header[k] = v
		}
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && rec.Code != http.StatusNotFound {
			t.Fatalf("query %q: status %d", q, rec.Code)
		}
	})
}
