package authentiktest

import (
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// accessTokenLifetime is authentik's default access_token_validity (minutes=5).
const accessTokenLifetime = 5 * time.Minute

func (s *Server) application(slug string) *Application {
	for i := range s.cfg.Applications {
		if s.cfg.Applications[i].Slug == slug {
			return &s.cfg.Applications[i]
		}
	}
	return nil
}

// OAuthIssuer is the issuer of the application's OpenID provider:
// <base>/application/o/<slug>/.
func (s *Server) OAuthIssuer(slug string) string { return s.URL() + "/application/o/" + slug + "/" }

func keyID(k *rsa.PrivateKey) string {
	sum := sha256.Sum256(k.PublicKey.N.Bytes())
	return hex.EncodeToString(sum[:16])
}

func (s *Server) handleOIDCConfig(w http.ResponseWriter, r *http.Request) {
	slug := r.PathValue("slug")
	if s.application(slug) == nil {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return
	}
	base := s.URL()
	writeJSON(w, http.StatusOK, map[string]any{
		"issuer":                 s.OAuthIssuer(slug),
		"authorization_endpoint": base + "/application/o/authorize/",
		"token_endpoint":         base + "/application/o/token/",
		"userinfo_endpoint":      base + "/application/o/userinfo/",
		"end_session_endpoint":   base + "/application/o/" + slug + "/end-session/",
		"introspection_endpoint": base + "/application/o/introspect/",
		"revocation_endpoint":    base + "/application/o/revoke/",
		"jwks_uri":               base + "/application/o/" + slug + "/jwks/",
		"response_types_supported": []string{"code", "id_token", "id_token token", "code token", "code id_token",
			"code id_token token"},
		"grant_types_supported":                 []string{"authorization_code", "refresh_token", "implicit", "client_credentials", "password", "urn:ietf:params:oauth:grant-type:device_code"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"subject_types_supported":               []string{"public"},
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "client_secret_basic"},
		"scopes_supported":                      []string{"openid", "email", "profile"},
	})
}

func (s *Server) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if s.application(r.PathValue("slug")) == nil {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return
	}
	key, err := s.oauthKey()
	if err != nil {
		writeDetail(w, http.StatusInternalServerError, "no signing key")
		return
	}
	pub := key.PublicKey
	b64 := base64.RawURLEncoding.EncodeToString
	w.Header().Set("Access-Control-Allow-Origin", "*")
	writeJSON(w, http.StatusOK, map[string]any{"keys": []any{map[string]any{
		"kty": "RSA", "alg": "RS256", "use": "sig", "kid": keyID(key),
		"n": b64(pub.N.Bytes()), "e": b64(big.NewInt(int64(pub.E)).Bytes()),
	}}})
}

func tokenError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// handleToken serves the client_credentials grant: the client authenticates
// with client_secret_post or client_secret_basic and gets an RS256 access
// token (iss = the provider's issuer, aud = azp = client id).
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		tokenError(w, http.StatusBadRequest, "invalid_request", "malformed form body")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		tokenError(w, http.StatusBadRequest, "unsupported_grant_type", "only client_credentials is simulated")
		return
	}
	id, secret, ok := r.BasicAuth()
	if !ok {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
	}
	var app *Application
	for i := range s.cfg.Applications {
		if s.cfg.Applications[i].ClientID == id {
			app = &s.cfg.Applications[i]
		}
	}
	if app == nil || id == "" || secret != app.ClientSecret {
		tokenError(w, http.StatusBadRequest, "invalid_client", "Client authentication failed")
		return
	}
	scopes := app.Scopes
	if req := strings.Fields(r.PostForm.Get("scope")); len(req) > 0 {
		scopes = nil
		for _, sc := range req {
			if slices.Contains(app.Scopes, sc) {
				scopes = append(scopes, sc)
			}
		}
	}
	now := s.now()
	s.mu.Lock()
	jti := hex.EncodeToString(s.randBytes(16))
	s.mu.Unlock()
	sub := sha256.Sum256([]byte("ak-" + app.Slug + "-client_credentials"))
	claims := jwt.MapClaims{
		"iss": s.OAuthIssuer(app.Slug), "sub": hex.EncodeToString(sub[:]), "aud": id, "azp": id,
		"scope": strings.Join(scopes, " "), "iat": now.Unix(), "auth_time": now.Unix(),
		"exp": now.Add(accessTokenLifetime).Unix(), "jti": jti,
	}
	key, err := s.oauthKey()
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", "no signing key")
		return
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = keyID(key)
	signed, err := tok.SignedString(key)
	if err != nil {
		tokenError(w, http.StatusInternalServerError, "server_error", "signing failed")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": signed, "token_type": "Bearer",
		"expires_in": int(accessTokenLifetime.Seconds()), "scope": strings.Join(scopes, " ")})
}
