package authentiktest

import (
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestClientCredentialsTokenVerifiesWithJWKS(t *testing.T) {
	s, _ := newTestServer(t, func(c *Config) {
		c.Applications = []Application{{Slug: "acme", ClientID: "acme-id", ClientSecret: "acme-secret", Scopes: []string{"ssf.manage", "ssf.read"}}}
	})
	// discovery and JWKS
	var disc map[string]any
	r := do(t, nil, "GET", s.URL()+"/application/o/acme/.well-known/openid-configuration", "", nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &disc)
	if disc["issuer"] != s.URL()+"/application/o/acme/" || disc["jwks_uri"] != s.URL()+"/application/o/acme/jwks/" {
		t.Fatalf("discovery = %v", disc)
	}
	var jwks struct {
		Keys []struct{ Kty, Alg, Use, Kid, N, E string } `json:"keys"`
	}
	r = do(t, nil, "GET", s.URL()+"/application/o/acme/jwks/", "", nil)
	wantStatus(t, r, http.StatusOK)
	if err := json.Unmarshal(r.body, &jwks); err != nil || len(jwks.Keys) != 1 {
		t.Fatalf("jwks %s: %v", r.body, err)
	}
	k := jwks.Keys[0]
	nb, _ := base64.RawURLEncoding.DecodeString(k.N)
	eb, _ := base64.RawURLEncoding.DecodeString(k.E)
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(nb), E: int(new(big.Int).SetBytes(eb).Int64())}

	token := func(form url.Values, basic bool) (int, map[string]any) {
		req, _ := http.NewRequest("POST", s.URL()+"/application/o/token/", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if basic {
			req.SetBasicAuth("acme-id", "acme-secret")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out
	}
	tests := []struct {
		name      string
		form      url.Values
		basic     bool
		status    int
		wantScope string
	}{
		{"post secret, all scopes", url.Values{"grant_type": {"client_credentials"}, "client_id": {"acme-id"}, "client_secret": {"acme-secret"}}, false, 200, "ssf.manage ssf.read"},
		{"basic, read only", url.Values{"grant_type": {"client_credentials"}, "scope": {"ssf.read openid"}}, true, 200, "ssf.read"},
		{"wrong secret", url.Values{"grant_type": {"client_credentials"}, "client_id": {"acme-id"}, "client_secret": {"x"}}, false, 400, ""},
		{"unknown client", url.Values{"grant_type": {"client_credentials"}, "client_id": {"who"}, "client_secret": {"x"}}, false, 400, ""},
		{"other grant", url.Values{"grant_type": {"password"}}, true, 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			status, out := token(tc.form, tc.basic)
			if status != tc.status {
				t.Fatalf("status %d (%v), want %d", status, out, tc.status)
			}
			if status != 200 {
				if out["error"] == nil {
					t.Fatalf("no error code: %v", out)
				}
				return
			}
			raw, _ := out["access_token"].(string)
			claims := jwt.MapClaims{}
			tok, err := jwt.ParseWithClaims(raw, claims, func(tk *jwt.Token) (any, error) {
				if tk.Header["kid"] != k.Kid {
					t.Errorf("kid %v, want %s", tk.Header["kid"], k.Kid)
				}
				return pub, nil
			}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithIssuer(s.URL()+"/application/o/acme/"),
				jwt.WithAudience("acme-id"), jwt.WithTimeFunc(func() time.Time { return t0 }))
			if err != nil || !tok.Valid {
				t.Fatalf("token does not verify: %v", err)
			}
			if claims["azp"] != "acme-id" || claims["scope"] != tc.wantScope || out["token_type"] != "Bearer" {
				t.Fatalf("claims %v / %v", claims, out)
			}
		})
	}
	wantStatus(t, do(t, nil, "GET", s.URL()+"/application/o/nope/jwks/", "", nil), http.StatusNotFound)
}
