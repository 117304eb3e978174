package ssf

import (
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"github.com/labstack/echo/v4"
)

// scopePoll is the scope check of the poll endpoint: ssf.read, ssf.manage
// or ssf.manage.poll.
const scopePoll = "poll"

// principal is an authenticated receiver and what its token allows.
type principal struct {
	receiver *Receiver
	scopes   []string
	// unscoped is true for OAuth tokens of receivers with
	// require_scopes: false.
	unscoped bool
	via      string // "token" or "oauth"
}

func (p principal) can(scope string) bool {
	if p.unscoped || hasScope(p.scopes, scope) {
		return true
	}
	// The poll endpoint also takes the finer ssf.manage.poll (CAEP
	// interoperability profile §2.7.2).
	if scope == scopePoll {
		return hasScope(p.scopes, "ssf.manage.poll") || p.can(ScopeRead)
	}
	// ssf.manage allows reading too.
	return scope == ScopeRead && hasScope(p.scopes, ScopeManage)
}

// authenticate finds the receiver behind the request's bearer token and
// checks it carries scope. Tokens are accepted only in the Authorization
// header (RFC 6750 §2.1); one in the query string is refused.
func (t *Transmitter) authenticate(c echo.Context, scope string) (principal, error) {
	r := c.Request()
	q := r.URL.Query()
	if q.Has("access_token") || q.Has("token") {
		return principal{}, &apiError{Status: 401, Code: "invalid_request", Challenge: "invalid_request",
			Desc: "tokens are accepted only in the Authorization header, never in the query string"}
	}
	h := r.Header.Get("Authorization")
	if h == "" {
		return principal{}, &apiError{Status: 401, Code: "invalid_token", Desc: "an Authorization: Bearer token is required"}
	}
	scheme, tok, ok := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return principal{}, unauthorized("the Authorization header must be a Bearer token")
	}
	p, ok := t.staticToken(tok)
	if !ok && t.oauth != nil && strings.Count(tok, ".") == 2 {
		var err error
		p, err = t.oauthToken(c, tok)
		if err != nil {
			return principal{}, err
		}
		ok = true
	}
	if !ok {
		return principal{}, unauthorized("the token is not valid")
	}
	if !p.can(scope) {
		return principal{}, forbidden(scope)
	}
	tagServerSpan(c, p.receiver.Name)
	if scope != scopePoll {
		if ok, wait := t.calls.allow(p.receiver.Name); !ok {
			return principal{}, tooManyCalls(wait)
		}
	}
	return p, nil
}

// staticToken compares tok against every configured token in constant time
// (over their SHA-256 hashes, so lengths do not leak either).
func (t *Transmitter) staticToken(tok string) (principal, bool) {
	h := sha256.Sum256([]byte(tok))
	var found *tokenEntry
	tokens := t.recv.Load().tokens
	for i := range tokens {
		if subtle.ConstantTimeCompare(h[:], tokens[i].hash[:]) == 1 {
			found = &tokens[i]
		}
	}
	if found == nil {
		return principal{}, false
	}
	return principal{receiver: found.receiver, scopes: found.scopes, via: "token"}, true
}

func (t *Transmitter) oauthToken(c echo.Context, tok string) (principal, error) {
	claims, err := t.oauth.verify(c.Request().Context(), tok)
	if err != nil {
		t.log.InfoContext(c.Request().Context(), "oauth token refused", "reason", err.Error(), "request_id", requestID(c))
		return principal{}, unauthorized("the access token is not valid")
	}
	client := claims.clientID()
	var rcv *Receiver
	for _, r := range t.recv.Load().byName {
		if hasScope(r.OAuthClientIDs, client) {
			rcv = r
		}
	}
	if rcv == nil {
		return principal{}, unauthorized("the access token's client is not a known receiver")
	}
	if !claims.audienceHasAny(rcv.OAuthClientIDs, t.cfg.Issuer) {
		return principal{}, unauthorized("the access token's audience is not this transmitter or the receiver's client")
	}
	return principal{receiver: rcv, scopes: claims.scopes(), unscoped: !rcv.RequireScopes, via: "oauth"}, nil
}
