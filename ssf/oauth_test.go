package ssf

import (
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// oauthIssuer is a minimal OpenID provider: discovery and JWKS.
type oauthIssuer struct {
	srv     *httptest.Server
	key     *rsa.PrivateKey
	kidMu   sync.Mutex
	kid     string
	fetches atomic.Int32
}

func newOAuthIssuer(t *testing.T) *oauthIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	o := &oauthIssuer{key: key, kid: "k1"}
	mux := http.NewServeMux()
	o.srv = httptest.NewServer(mux)
	t.Cleanup(o.srv.Close)
	mux.HandleFunc("/application/o/ssf/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{"issuer": o.issuer(), "jwks_uri": o.srv.URL + "/application/o/ssf/jwks/"})
	})
	mux.HandleFunc("/application/o/ssf/jwks/", func(w http.ResponseWriter, r *http.Request) {
		o.fetches.Add(1)
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{
			"kty": "RSA", "kid": o.currentKID(), "use": "sig", "alg": "RS256",
			"n": b64(key.N.Bytes()), "e": b64(big.NewInt(int64(key.E)).Bytes())}}})
	})
	return o
}

func (o *oauthIssuer) currentKID() string {
	o.kidMu.Lock()
	defer o.kidMu.Unlock()
	return o.kid
}

func (o *oauthIssuer) issuer() string { return o.srv.URL + "/application/o/ssf/" }

func (o *oauthIssuer) mint(t *testing.T, now time.Time, mod func(jwt.MapClaims, map[string]any)) string {
	t.Helper()
	c := jwt.MapClaims{"iss": o.issuer(), "aud": "acme-client", "azp": "acme-client", "sub": "svc",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "scope": "openid ssf.manage ssf.read"}
	hdr := map[string]any{"kid": o.currentKID()}
	if mod != nil {
		mod(c, hdr)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, c)
	for k, v := range hdr {
		tok.Header[k] = v
	}
	s, err := tok.SignedString(o.key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestOAuthTokens(t *testing.T) {
	o := newOAuthIssuer(t)
	h := newHarness(t, func(c *Config) { c.OAuthIssuer = o.issuer(); c.HTTPClient = o.srv.Client() })
	now := h.clock.Now()
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	cases := []struct {
		name   string
		method string
		tok    string
		status int
	}{
		{"valid manage token creates", "POST", o.mint(t, now, nil), 201},
		{"read scope cannot create", "POST", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["scope"] = "ssf.read" }), 403},
		{"read scope reads", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["scope"] = "ssf.read" }), 200},
		{"no scope", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["scope"] = "openid" }), 403},
		{"require_scopes false", "POST", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) {
			c["scope"], c["azp"], c["aud"] = "openid", "umbrella-client", "umbrella-client"
		}), 201},
		{"expired beyond leeway", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["exp"] = now.Add(-61 * time.Second).Unix() }), 401},
		{"expired within leeway", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["exp"] = now.Add(-30 * time.Second).Unix() }), 200},
		{"no exp", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { delete(c, "exp") }), 401},
		{"not yet valid", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() }), 401},
		{"wrong issuer", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["iss"] = "https://evil.example/" }), 401},
		{"unknown client", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["azp"], c["aud"] = "stranger", "stranger" }), 401},
		{"client_id claim", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { delete(c, "azp"); c["client_id"] = "acme-client" }), 200},
		{"audience elsewhere", "GET", o.mint(t, now, func(c jwt.MapClaims, _ map[string]any) { c["aud"] = "some-api" }), 401},
		{"alg none", "GET", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"iss": o.issuer(), "azp": "acme-client", "aud": "acme-client", "exp": now.Add(time.Minute).Unix()})
			s, _ := tok.SignedString(jwt.UnsafeAllowNoneSignatureType)
			return s
		}(), 401},
		{"HS256 with the public key as secret", "GET", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"iss": o.issuer(), "azp": "acme-client", "aud": "acme-client", "exp": now.Add(time.Minute).Unix(), "scope": "ssf.read"})
			tok.Header["kid"] = o.currentKID()
			s, _ := tok.SignedString(o.key.N.Bytes())
			return s
		}(), 401},
		{"signed by another key", "GET", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodRS256, jwt.MapClaims{"iss": o.issuer(), "azp": "acme-client", "aud": "acme-client", "exp": now.Add(time.Minute).Unix(), "scope": "ssf.read"})
			tok.Header["kid"] = o.currentKID()
			s, _ := tok.SignedString(other)
			return s
		}(), 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			body := any(nil)
			if c.method == "POST" {
				body = `{}`
			}
			r := h.do(c.method, "/ssf/streams", c.tok, body)
			if r.status != c.status {
				t.Fatalf("status %d, want %d: %s", r.status, c.status, r.body)
			}
			if c.status == 401 && r.header.Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
	// The discovery document advertises OAuth.
	if r := h.do("GET", "/.well-known/ssf-configuration/ssf", "", nil); !json.Valid(r.body) || !strings.Contains(string(r.body), `"spec_urn":"urn:ietf:rfc:6749"`) {
		t.Errorf("discovery: %s", r.body)
	}
	// An unknown kid fetches the keys again, but at most once per interval:
	// the keys were fetched just now, so nothing is fetched at first.
	before := o.fetches.Load()
	unknown := func() string {
		return o.mint(t, now, func(_ jwt.MapClaims, hdr map[string]any) { hdr["kid"] = "rotated" })
	}
	for range 3 {
		if r := h.do("GET", "/ssf/streams", unknown(), nil); r.status != 401 {
			t.Fatalf("unknown kid: %d", r.status)
		}
	}
	if n := o.fetches.Load() - before; n != 0 {
		t.Errorf("%d JWKS fetches within the interval, want 0", n)
	}
	h.clock.Advance(31 * time.Second)
	now = h.clock.Now()
	for range 3 {
		h.do("GET", "/ssf/streams", unknown(), nil)
	}
	if n := o.fetches.Load() - before; n != 1 {
		t.Errorf("%d fetches for 3 unknown-kid tokens after the interval, want 1", n)
	}
	// A key the issuer publishes after rotation is found by that refetch.
	h.clock.Advance(31 * time.Second)
	now = h.clock.Now()
	o.kidMu.Lock()
	o.kid = "rotated"
	o.kidMu.Unlock()
	if r := h.do("GET", "/ssf/streams", o.mint(t, now, nil), nil); r.status != 200 {
		t.Errorf("rotated key: %d %s", r.status, r.body)
	}
}
