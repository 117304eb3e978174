package authentiktest

import (
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/golang-jwt/jwt/v5"
)

// Cookie names authentik uses.
const (
	SessionCookieName = "authentik_session"
	CSRFCookieName    = "authentik_csrf"
	// CSRFHeader must repeat the authentik_csrf cookie on unsafe API requests
	// authenticated by the session cookie.
	CSRFHeader = "X-authentik-CSRF"
)

// SessionACR is the acr claim of authentik's session cookie.
const SessionACR = "goauthentik.io/core/default"

// SigningKey derives the session-cookie HMAC key from authentik's SECRET_KEY:
// the bytes of the lowercase hex string of sha512(secret), as authentik
// passes sha512(SECRET_KEY).hexdigest() to PyJWT.
func SigningKey(secret string) []byte {
	sum := sha512.Sum512([]byte(secret))
	return []byte(hex.EncodeToString(sum[:]))
}

// SessionClaims is the payload of the authentik_session cookie.
type SessionClaims struct {
	SID           string `json:"sid"`
	Issuer        string `json:"iss"`
	Subject       string `json:"sub"` // the user's uid, or "anonymous"
	Authenticated bool   `json:"authenticated"`
	ACR           string `json:"acr"`
}

// GetExpirationTime and the other jwt.Claims methods let golang-jwt validate
// the cookie; authentik's cookie carries no time claims.
func (c SessionClaims) GetExpirationTime() (*jwt.NumericDate, error) { return nil, nil }
func (c SessionClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return nil, nil }
func (c SessionClaims) GetNotBefore() (*jwt.NumericDate, error)      { return nil, nil }
func (c SessionClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c SessionClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c SessionClaims) GetAudience() (jwt.ClaimStrings, error)       { return nil, nil }

// MintSessionCookie signs claims as authentik does (HS256 with
// SigningKey(secret)). Tests use it to forge cookies with other keys.
func MintSessionCookie(secret string, claims SessionClaims) (string, error) {
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	v, err := tok.SignedString(SigningKey(secret))
	if err != nil {
		return "", fmt.Errorf("authentiktest: sign session cookie: %w", err)
	}
	return v, nil
}

// ErrBadCookie is returned (wrapped) for a session cookie that does not
// verify or does not hold a session.
var ErrBadCookie = errors.New("authentiktest: invalid session cookie")

// ParseSessionCookie verifies an authentik_session cookie value with the key
// derived from secret and returns its claims. Only HS256 is accepted; the
// issuer must be "authentik" and sid must be present.
func ParseSessionCookie(secret, value string) (SessionClaims, error) {
	var c SessionClaims
	_, err := jwt.ParseWithClaims(value, &c, func(*jwt.Token) (any, error) { return SigningKey(secret), nil },
		jwt.WithValidMethods([]string{"HS256"}))
	if err != nil {
		return SessionClaims{}, fmt.Errorf("%w: %w", ErrBadCookie, err)
	}
	if c.Issuer != "authentik" || c.SID == "" {
		return SessionClaims{}, fmt.Errorf("%w: missing sid or wrong issuer", ErrBadCookie)
	}
	return c, nil
}

// cookieFor returns the authentik_session cookie value for se.
func (s *Server) cookieFor(se *session) (string, error) {
	sub := "anonymous"
	if se.authenticated {
		// encode_session(session_key, request.user): while impersonating,
		// request.user is the impersonated user.
		sub = s.uid(se.userPK)
		if se.impersonating != 0 {
			sub = s.uid(se.impersonating)
		}
	}
	return MintSessionCookie(s.cfg.SecretKey, SessionClaims{SID: se.sid, Issuer: "authentik", Subject: sub,
		Authenticated: se.authenticated, ACR: SessionACR})
}

// setSessionCookies sets authentik_session and authentik_csrf for se.
func (s *Server) setSessionCookies(w http.ResponseWriter, se *session) {
	v, err := s.cookieFor(se)
	if err != nil {
		s.log.Error("authentiktest: session cookie", "error", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookieName, Value: v, Path: "/", HttpOnly: true, SameSite: http.SameSiteLaxMode})
	http.SetCookie(w, &http.Cookie{Name: CSRFCookieName, Value: se.csrf, Path: "/", SameSite: http.SameSiteLaxMode})
}

// sessionFromRequest returns the session the request's cookie names, if the
// cookie verifies and the session still exists.
func (s *Server) sessionFromRequest(r *http.Request) *session {
	// Django's parse_cookie keeps the last of several cookies of one name.
	var value string
	found := false
	for _, ck := range r.Cookies() {
		if ck.Name == SessionCookieName {
			value, found = ck.Value, true
		}
	}
	if !found {
		return nil
	}
	claims, err := ParseSessionCookie(s.cfg.SecretKey, value)
	if err != nil {
		return nil
	}
	se := s.state.sessions[claims.SID]
	if se == nil || se.authenticated != claims.Authenticated {
		return nil
	}
	return se
}
