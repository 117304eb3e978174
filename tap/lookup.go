package tap

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
)

// caller is an authenticated caller as the trust check established it.
type caller struct {
	User User
	// Actor is the real person behind an impersonated session.
	Actor *User
	// SessionHash is sha256(sid) of the cookie that authenticated, or "".
	SessionHash string
	// local is true when the cookie was verified with the secret key, not
	// confirmed by authentik: the session may have ended already.
	local bool
	cr    creds
}

// authenticate decides whether the request comes from an authenticated
// caller. A cookie the sidecar merely decoded is never evidence: either
// authentik accepts the caller's own credentials on /core/users/me/, or the
// cookie's signature verifies against the secret key. from carries the
// caller's client IP and User-Agent for look-ups made with their
// credentials.
func (t *Tap) authenticate(ctx context.Context, cookie, authz string, from creds) (*caller, error) {
	if cookie != "" {
		if c, err := t.authenticateCookie(ctx, cookie, from); err == nil {
			return c, nil
		} else if authz == "" {
			return nil, err
		}
	}
	if authz == "" {
		return nil, errUnauthorized
	}
	from.authz = authz
	return t.whoami(ctx, from, "")
}

// localCookies reports whether session cookies are verified with the secret
// key and never replayed to authentik: that needs the API token for every
// look-up a user's own cookie would otherwise serve.
func (t *Tap) localCookies() bool { return t.cfg.SecretKey != "" && t.cfg.Token != "" }

func (t *Tap) authenticateCookie(ctx context.Context, cookie string, from creds) (*caller, error) {
	if t.localCookies() {
		claims, verified, err := DecodeSessionCookie(cookie, t.cfg.SecretKey)
		if err != nil || !verified || !claims.Authenticated || claims.Subject == "" || claims.Subject == "anonymous" {
			return nil, errUnauthorized
		}
		u, ok := t.dir.byUID(claims.Subject)
		if !ok {
			// Verified, but the uid is new to us: find it with the token
			// (never by replaying the cookie, which session binding would
			// punish with a logout).
			if u, ok = t.findUID(ctx, claims.Subject); !ok {
				return nil, errUnauthorized
			}
		}
		c := &caller{User: u, SessionHash: claims.SessionHash(), local: true, cr: creds{cookie: cookie}}
		if admin, ok := t.impersonators.get(c.SessionHash); ok && admin.PK != u.PK {
			// the session impersonates: sub is the impersonated user, the
			// admin who started it acts
			c.Actor = &admin
		}
		return c, nil
	}
	claims, _, err := DecodeSessionCookie(cookie, "")
	if err != nil {
		return nil, err
	}
	from.cookie = cookie
	return t.whoami(ctx, from, claims.SessionHash())
}

// findUID pages authentik's user list with the token for a uid the
// directory does not know (the list has no uid filter), at most once per
// uid per CacheTTL.
func (t *Tap) findUID(ctx context.Context, uid string) (User, bool) {
	if _, recent := t.uidMisses.get(uid); recent {
		return User{}, false
	}
	t.uidMisses.put(uid, struct{}{})
	users, err := listAll[akUser](ctx, t.api, t.api.tokenCreds(), "/core/users/",
		url.Values{"page_size": {strconv.Itoa(t.cfg.PageSize)}, "include_groups": {"false"}, "ordering": {"-last_login"}}, 5)
	if err != nil {
		t.stats.misses.Add(1)
		return User{}, false
	}
	for _, u := range users {
		t.dir.noteUser(u)
	}
	return t.dir.byUID(uid)
}

// whoami asks authentik /core/users/me/ with the caller's own credentials,
// cached by a hash of those credentials.
func (t *Tap) whoami(ctx context.Context, cr creds, sessionHash string) (*caller, error) {
	sum := sha256.Sum256([]byte("c\x00" + cr.cookie + "\x00a\x00" + cr.authz))
	key := hex.EncodeToString(sum[:])
	// A cookie's identity can change under it (impersonation starts or
	// ends on the same session), so only token identities are cached.
	cacheable := cr.cookie == ""
	if c, ok := t.whoCache.get(key); ok && cacheable {
		c.cr = cr
		return &c, nil
	}
	if _, bad := t.badCreds.get(key); bad {
		return nil, errUnauthorized // refused a moment ago: no second look-up
	}
	budget := budgetKeyOf(ctx)
	release, err := t.admitLookup(ctx, budget)
	if err != nil {
		return nil, err
	}
	defer release()
	refused := func() {
		t.badCreds.put(key, struct{}{})
		t.limiter.spend(budget)
	}
	var me akSessionUser
	if err := t.api.getJSON(ctx, cr, "/core/users/me/", nil, &me); err != nil {
		if errors.Is(err, errUnauthorized) {
			refused()
		}
		return nil, err
	}
	if me.User.PK <= 0 || me.User.Username == "" || me.User.Username == "AnonymousUser" {
		refused()
		return nil, errUnauthorized
	}
	c := caller{User: me.User.user(), SessionHash: sessionHash}
	if me.Original != nil && me.Original.PK != me.User.PK {
		actor := me.Original.user()
		c.Actor = &actor
	}
	t.dir.noteUser(me.User)
	if cacheable {
		t.whoCache.put(key, c)
	}
	c.cr = cr
	return &c, nil
}

// lookupCreds are the credentials for a look-up: the sidecar's token, or
// the caller's own when there is none.
func (t *Tap) lookupCreds(c *caller) creds {
	if t.cfg.Token != "" {
		return t.api.tokenCreds()
	}
	if c != nil {
		return c.cr
	}
	return creds{}
}

// fetchUser reads a user fresh from authentik (no cache: callers compare
// states) and records it in the directory.
func (t *Tap) fetchUser(ctx context.Context, cr creds, pk int64) (akUser, error) {
	var u akUser
	if err := t.api.getJSON(ctx, cr, "/core/users/"+strconv.FormatInt(pk, 10)+"/", nil, &u); err != nil {
		return akUser{}, err
	}
	if u.PK != pk {
		return akUser{}, fmt.Errorf("tap: user %d: answer names %d", pk, u.PK)
	}
	t.dir.noteUser(u)
	return u, nil
}

// userByPK returns the user from the directory, or fetches it.
func (t *Tap) userByPK(ctx context.Context, cr creds, pk int64) (User, error) {
	if u, ok := t.dir.user(pk); ok {
		return u, nil
	}
	u, err := t.fetchUser(ctx, cr, pk)
	if err != nil {
		return User{PK: pk}, err
	}
	return u.user(), nil
}

// fetchSession reads an authenticated session.
func (t *Tap) fetchSession(ctx context.Context, cr creds, uuid string) (akSession, error) {
	var s akSession
	if err := t.api.getJSON(ctx, cr, "/core/authenticated_sessions/"+url.PathEscape(uuid)+"/", nil, &s); err != nil {
		return akSession{}, err
	}
	if s.User <= 0 {
		return akSession{}, errors.New("tap: session has no user")
	}
	return s, nil
}

// fetchDevice reads a device through the admin endpoint (token) or the
// user's own endpoint (caller's credentials).
func (t *Tap) fetchDevice(ctx context.Context, c *caller, dtype, id string, admin bool) (akDevice, error) {
	var d akDevice
	path := "/authenticators/" + dtype + "/" + url.PathEscape(id) + "/"
	cr := c.cr
	if t.cfg.Token != "" {
		path = "/authenticators/admin/" + dtype + "/" + url.PathEscape(id) + "/"
		cr = t.api.tokenCreds()
	} else if admin {
		path = "/authenticators/admin/" + dtype + "/" + url.PathEscape(id) + "/"
	}
	if err := t.api.getJSON(ctx, cr, path, nil, &d); err != nil {
		return akDevice{}, err
	}
	return d, nil
}

// deviceFrom builds the Device the signal carries.
func deviceFrom(dtype string, d akDevice) *Device {
	dev := &Device{Type: dtype, PK: d.pk(), Name: d.Name, AAGUID: d.AAGUID}
	if d.DeviceType != nil {
		// authentik does not say platform vs roaming; leave Platform false
		// (roaming) unless the MDS description says so.
		dev.Platform = containsFold(d.DeviceType.Description, "platform") ||
			containsFold(d.DeviceType.Description, "windows hello") ||
			containsFold(d.DeviceType.Description, "icloud")
	}
	return dev
}
