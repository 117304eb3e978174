package tap

import (
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// SessionCookieName is the name of authentik's session cookie.
const SessionCookieName = "authentik_session"

// maxCookieLen bounds the cookie value the decoder accepts; authentik's
// cookies are a few hundred bytes.
const maxCookieLen = 4096

// SessionClaims is what authentik's session cookie (an HS256 JWT) says.
type SessionClaims struct {
	// SID is the Django session key. It is as secret as the cookie itself:
	// never store or log it, only SessionHash.
	SID string `json:"sid"`
	// Subject is the user's uid, or "anonymous".
	Subject       string `json:"sub"`
	Issuer        string `json:"iss"`
	Authenticated bool   `json:"authenticated"`
	ACR           string `json:"acr,omitempty"`
	jwt.RegisteredClaims
}

// SessionHash is sha256(sid) as lowercase hex: the session id authentik's
// own SSF provider puts in its SETs.
func (c SessionClaims) SessionHash() string { return HashSessionID(c.SID) }

// HashSessionID returns sha256(sid) as lowercase hex.
func HashSessionID(sid string) string {
	sum := sha256.Sum256([]byte(sid))
	return hex.EncodeToString(sum[:])
}

// Errors returned by DecodeSessionCookie.
var (
	ErrCookieMalformed = errors.New("tap: malformed session cookie")
	ErrCookieSignature = errors.New("tap: session cookie signature invalid")
)

// cookieSigningKey derives the HMAC key authentik signs its session cookie
// with: the hex digest of sha512(SECRET_KEY), used as bytes.
func cookieSigningKey(secretKey string) []byte {
	sum := sha512.Sum512([]byte(secretKey))
	return []byte(hex.EncodeToString(sum[:]))
}

// DecodeSessionCookie reads an authentik_session cookie value. With an empty
// secretKey it only decodes (verified is false): the claims are then no
// evidence of anything, since anyone can mint such a cookie. With the secret
// it verifies the HS256 signature and expiry and reports verified = true.
func DecodeSessionCookie(value, secretKey string) (claims SessionClaims, verified bool, err error) {
	if value == "" || len(value) > maxCookieLen || strings.Count(value, ".") != 2 {
		return SessionClaims{}, false, ErrCookieMalformed
	}
	if secretKey == "" {
		if _, _, err := jwt.NewParser().ParseUnverified(value, &claims); err != nil {
			return SessionClaims{}, false, fmt.Errorf("%w: %w", ErrCookieMalformed, err)
		}
		if claims.SID == "" {
			return SessionClaims{}, false, fmt.Errorf("%w: no sid", ErrCookieMalformed)
		}
		return claims, false, nil
	}
	key := cookieSigningKey(secretKey)
	_, err = jwt.ParseWithClaims(value, &claims, func(*jwt.Token) (any, error) { return key, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}))
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid), errors.Is(err, jwt.ErrTokenUnverifiable),
		errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet):
		return SessionClaims{}, false, fmt.Errorf("%w: %w", ErrCookieSignature, err)
	case err != nil:
		return SessionClaims{}, false, fmt.Errorf("%w: %w", ErrCookieMalformed, err)
	}
	if claims.SID == "" {
		return SessionClaims{}, false, fmt.Errorf("%w: no sid", ErrCookieMalformed)
	}
	return claims, true, nil
}

// SignSessionCookie mints a cookie the way authentik does. It exists for
// tests and the simulated authentik.
func SignSessionCookie(claims SessionClaims, secretKey string) (string, error) {
	if claims.Issuer == "" {
		claims.Issuer = "authentik"
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, claims)
	s, err := tok.SignedString(cookieSigningKey(secretKey))
	if err != nil {
		return "", fmt.Errorf("tap: sign session cookie: %w", err)
	}
	return s, nil
}
