package tap

import (
	"context"

	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// pending is the state Before hands to After.
type pending struct {
	in        *intent
	component string // the stage component the request answered
	journaled bool
	follow    bool   // the follow-up GET of a stage answered with a 302
	budgetKey string // charged when authentik refuses the action
}

// maxBulkUsers bounds how many users of one bulk_delete are looked up.
const maxBulkUsers = 100

// clientIP is the first X-Forwarded-For entry (the one authentik believes),
// else the peer address.
func clientIP(r *http.Request) string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		return strings.TrimSpace(first)
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func requestID(r *http.Request) string {
	for _, h := range []string{"X-Request-Id", "X-Authentik-Id"} {
		if v := r.Header.Get(h); v != "" && len(v) <= 128 {
			return v
		}
	}
	return ""
}

// Before runs before a matched request is forwarded. For an authenticated
// caller it learns what the request is about to change and journals an
// intent; it returns nil when the request is not to be tapped. It never
// fails the request.
func (t *Tap) Before(ctx context.Context, r *http.Request, body []byte) (state any) {
	rt, ok := t.parseRoute(r.Method, r.URL.Path)
	if !ok {
		return nil
	}
	nameServerSpan(ctx, r, rt)
	cookie := sessionCookie(r)
	if rt.op == opFlowFollow {
		return t.followStage(r, rt, cookie)
	}
	authz := r.Header.Get("Authorization")
	if cookie == "" && authz == "" {
		t.stats.anonymous.Add(1)
		return nil
	}
	if rt.op == opLogoutHint {
		// Only a redirect to the invalidation flow; the executor call that
		// follows is the logout. Remember how it started, as a hint.
		t.noteLogoutHint(r, cookie)
		return nil
	}
	if rt.op == opFlowStage {
		// Most stage answers are not tapped (identification, prompts
		// without a password or email); decide before spending a look-up.
		if _, err := parseStageRequest(body); err != nil {
			return nil
		}
	}
	// Authenticate first: a look-up is charged to the client IP only when
	// authentik refuses the credentials (see budget.go), so junk from an
	// address never costs a confirmed caller there their observation.
	ip := clientIP(r)
	c, err := t.authenticate(withBudgetKey(ctx, ip), cookie, authz, creds{clientIP: ip, userAgent: r.UserAgent()})
	if err != nil {
		if ctx.Err() != nil {
			// Held past the before-bound (an over-budget look-up, or a slow
			// authentik): not a verdict on the caller, so counted as a miss.
			t.stats.misses.Add(1)
			t.log.WarnContext(ctx, "tap: caller look-up did not finish within the before-bound", "op", string(rt.op))
			return nil
		}
		t.stats.untrusted.Add(1)
		t.log.DebugContext(ctx, "tap: caller not authenticated", "op", string(rt.op), "err", err)
		return nil
	}
	if rt.op == opImpersonate || rt.op == opImpersonEnd {
		// Not an action to report: remember who really holds a session
		// that impersonates (with local cookie verification the cookie's
		// sub becomes the impersonated user).
		if c.SessionHash == "" {
			return nil
		}
		return &pending{in: &intent{Op: rt.op, Caller: c.User, SessionHash: c.SessionHash}, budgetKey: userBudgetKey(c.User.PK)}
	}
	in := &intent{
		ID: t.cfg.NewID(), Op: rt.op, Created: t.cfg.Clock().UTC(), RequestID: requestID(r),
		TraceParent: traceParentOf(ctx, r), Caller: c.User, ObjectID: rt.id, Holder: t.cfg.LeaseHolder,
	}
	if c.Actor != nil {
		in.Caller = *c.Actor
	}
	p := &pending{in: in, budgetKey: userBudgetKey(c.User.PK)}
	t.sessionSeen(c)
	// A confirmed caller whose tapped actions authentik keeps refusing
	// (a low-privilege user trying admin routes) has the look-ups made on
	// its behalf held once its budget is spent.
	release, err := t.admitLookup(ctx, p.budgetKey)
	if err != nil {
		t.stats.misses.Add(1)
		return nil
	}
	ok = t.prepare(ctx, p, rt, c, r, body)
	release()
	if !ok {
		return nil
	}
	if err := t.journalPut(ctx, in, true, t.dir.drain()...); err != nil {
		t.stats.misses.Add(1)
		t.log.WarnContext(ctx, "tap: journal intent failed", "intent", in.ID, "request_id", in.RequestID, "err", err)
		return p // After may still queue it; a crash before then loses it (counted)
	}
	p.journaled = true
	return p
}

// prepare fills the intent for the route; false means "not tapped".
func (t *Tap) prepare(ctx context.Context, p *pending, rt route, c *caller, r *http.Request, body []byte) bool {
	in := p.in
	lc := t.lookupCreds(c)
	switch rt.op {
	case opLogout:
		if c.SessionHash == "" {
			return false // only a browser session logs out
		}
		in.Subject, in.SessionHash, in.Unconfirmed = c.User, c.SessionHash, c.local
		if h, ok := t.hints.get(c.SessionHash); ok {
			in.Via = h.via
			if in.RequestID == "" {
				in.RequestID = h.requestID
			}
		}
	case opFlowStage:
		a, err := parseStageRequest(body)
		if err != nil {
			return false
		}
		in.Subject, in.Stage, in.SessionHash = c.User, a.kind, c.SessionHash
		in.ObjectID = rt.slug
		p.component = a.component
		if a.kind == stageMFA {
			in.Device = &Device{Type: a.dtype}
		}
		if a.email != "" {
			old := c.User.Email
			if t.cfg.Token != "" {
				if u, err := t.fetchUser(ctx, lc, c.User.PK); err == nil {
					old = u.Email
				}
			}
			in.Before = userState{Email: old}
			in.After = userState{Email: a.email}
		}
	case opSessionDelete:
		s, err := t.fetchSession(ctx, lc, rt.id)
		if err != nil {
			t.stats.misses.Add(1)
			t.log.WarnContext(ctx, "tap: session look-up failed", "request_id", in.RequestID, "err", err)
			return false
		}
		owner, err := t.userByPK(ctx, lc, s.User)
		if err != nil {
			t.stats.misses.Add(1)
		}
		in.Subject = owner
		in.Sessions = []sessionRef{{UUID: s.UUID, Owner: owner, Hash: t.hashForSession(s.UUID)}}
	case opSessionBulk:
		pks := r.URL.Query()["user_pks"]
		if len(pks) == 0 {
			return false
		}
		for i, s := range pks {
			if i >= maxBulkUsers {
				break
			}
			pk, ok := djparse.Int(s)
			if !ok || pk <= 0 {
				continue
			}
			owner, err := t.userByPK(ctx, lc, pk)
			if err != nil {
				t.stats.misses.Add(1)
			}
			var sessions []akSession
			err = nil
			if owner.Username != "" {
				// the list filters by user__username only; keep the owner's
				// sessions whatever the list returns
				sessions, err = listAll[akSession](ctx, t.api, lc, "/core/authenticated_sessions/",
					url.Values{"user__username": {owner.Username}}, 5)
			}
			for _, ss := range sessions {
				if ss.User == pk && ss.UUID != "" {
					in.Sessions = append(in.Sessions, sessionRef{UUID: ss.UUID, Owner: owner, Hash: t.hashForSession(ss.UUID)})
				}
			}
			if err != nil || owner.Username == "" {
				in.BulkUsers = append(in.BulkUsers, owner) // sessions unknown: one signal for the user
			}
		}
		if len(in.Sessions) == 0 && len(in.BulkUsers) == 0 {
			return false
		}
	case opSetPassword, opUserUpdate, opUserDelete:
		pk, _ := strconv.ParseInt(rt.id, 10, 64)
		u, err := t.fetchUser(ctx, lc, pk)
		if err != nil {
			t.stats.misses.Add(1)
			t.log.WarnContext(ctx, "tap: user look-up failed", "request_id", in.RequestID, "err", err)
			if rt.op != opSetPassword {
				return false // without the state before, the change cannot be told
			}
			in.Subject = User{PK: pk}
			break
		}
		in.Subject = u.user()
		in.Before = userState{Email: u.Email, IsActive: u.IsActive == nil || *u.IsActive, Known: u.IsActive != nil}
		// Deleting a user, or deactivating one with PATCH, makes authentik
		// delete the user's sessions without a trace: list them now.
		if rt.op == opUserDelete || (r.Method == http.MethodPatch && in.Before.IsActive && deactivates(body)) {
			in.Sessions = t.userSessions(ctx, lc, in.Subject)
		}
	case opDeviceDelete:
		d, err := t.fetchDevice(ctx, c, rt.dtype, rt.id, rt.admin)
		if err != nil {
			t.stats.misses.Add(1)
			t.log.WarnContext(ctx, "tap: device look-up failed", "request_id", in.RequestID, "err", err)
			return false
		}
		if d.Confirmed != nil && !*d.Confirmed {
			return false // an unfinished enrolment going away is not a credential change
		}
		switch {
		case d.User != nil && d.User.PK > 0:
			owner, err := t.userByPK(ctx, lc, d.User.PK)
			if err != nil {
				owner = d.User.user()
			}
			in.Subject = owner
		case !rt.admin:
			in.Subject = c.User // the user endpoints only show the caller's own devices
		default:
			t.stats.misses.Add(1)
			return false
		}
		in.Device = deviceFrom(rt.dtype, d)
		// Keep the owner known after the device is gone: authentik's
		// model_deleted names the actor, not the owner.
		t.dir.putDevice(rt.dtype, in.Device.PK, dirDevice{Owner: in.Subject.PK, Confirmed: true, Name: d.Name})
	default:
		return false
	}
	return true
}

// After runs once authentik answered. It journals the outcome and queues a
// completed intent for classification; it never blocks on publishing.
func (t *Tap) After(ctx context.Context, state any, r *http.Request, status int, header http.Header, body []byte) {
	p, ok := state.(*pending)
	if !ok || p == nil {
		return
	}
	in := p.in
	if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusNotFound {
		t.limiter.spend(p.budgetKey) // refused by authentik: the caller pays for the look-ups
	}
	switch in.Op {
	case opImpersonate:
		if status == http.StatusNoContent || status == http.StatusOK {
			t.impersonators.put(in.SessionHash, in.Caller)
		}
		return
	case opImpersonEnd:
		if status/100 == 2 {
			t.impersonators.del(in.SessionHash)
		}
		return
	}
	if in.Op == opFlowStage && !p.follow && in.Stage != stageMFA && redirectsToSelf(status, header, r.URL.Path) {
		// The prompt was accepted; the user_write stage runs on the
		// browser's follow-up GET. Hold the intent in memory until then
		// (a crash in between leaves the change to the event API).
		if in.SessionHash != "" {
			t.stagePending.put(in.SessionHash+"\x00"+in.ObjectID, p)
		} else {
			t.stats.misses.Add(1)
		}
		if p.journaled {
			if err := t.journalDrop(ctx, in); err != nil {
				t.log.WarnContext(ctx, "tap: journal outcome failed", "intent", in.ID, "err", err)
			}
		}
		return
	}
	if !t.completed(p, status, header, body) {
		if p.journaled {
			if err := t.journalDrop(ctx, in); err != nil {
				t.log.WarnContext(ctx, "tap: journal outcome failed", "intent", in.ID, "err", err)
			}
		}
		return
	}
	if in.Op == opFlowStage && in.Stage == stagePassword && in.SessionHash != "" {
		t.followCycledSession(in.SessionHash, header)
	}
	in.Outcome, in.Done = outcomeCompleted, t.responseTime(header)
	if id := header.Get("X-Authentik-Id"); id != "" && len(id) <= 128 {
		in.RequestID = id // authentik's own request id, as its event context and SETs name it
		in.AuthentikID = id
	}
	if err := t.journalPut(ctx, in, false); err != nil {
		if t.moved(in) {
			// The request outlived the grace period and another replica
			// (or this one's rescan) claimed the intent: it is theirs.
			t.log.InfoContext(ctx, "tap: intent claimed by a rescan while its request ran; left to the claimer", "intent", in.ID)
			return
		}
		t.stats.misses.Add(1)
		t.log.WarnContext(ctx, "tap: journal outcome failed", "intent", in.ID, "err", err)
	}
	t.enqueue(in)
}

// completed decides from the response whether the action happened, and
// records what the response says (the user after an update, a new device).
func (t *Tap) completed(p *pending, status int, header http.Header, body []byte) bool {
	in := p.in
	switch in.Op {
	case opLogout:
		return (status/100 == 2 || status/100 == 3) && sessionEnded(header, in.SessionHash, t.cfg.SecretKey, t.cfg.Clock())
	case opFlowStage:
		if p.follow && status == http.StatusFound {
			return true // user_write ran and more stages follow
		}
		if in.Stage == stageMFA && status == http.StatusFound {
			return true // the setup stage saved the device; more stages follow
		}
		return stageCompleted(status, p.component, body)
	case opSessionDelete, opUserDelete:
		return status == http.StatusNoContent || status == http.StatusOK
	case opSetPassword:
		return status == http.StatusNoContent || status == http.StatusOK
	case opSessionBulk:
		n, err := parseBulkDeleted(body)
		return status == http.StatusOK && err == nil && n > 0
	case opUserUpdate:
		if status != http.StatusOK {
			return false
		}
		u, err := parseUserBody(body)
		if err != nil {
			return false
		}
		in.After = userState{Email: u.Email, IsActive: u.IsActive == nil || *u.IsActive, Known: u.IsActive != nil}
		t.dir.noteUser(u)
		return true
	case opDeviceDelete:
		return status == http.StatusNoContent || status == http.StatusOK
	}
	return false
}

// sessionCookie is the request's authentik_session cookie value. Django's
// parse_cookie keeps the last of several cookies of one name, so the tap
// does too.
func sessionCookie(r *http.Request) string {
	var v string
	for _, c := range r.Cookies() {
		if c.Name == SessionCookieName {
			v = c.Value
		}
	}
	return v
}

// followStage picks up an intent whose prompt was answered with a 302 to
// the executor: the browser's GET that follows (same session, same flow)
// runs the user_write stage, and its answer tells whether it worked.
func (t *Tap) followStage(r *http.Request, rt route, cookie string) any {
	if cookie == "" {
		return nil
	}
	claims, _, err := DecodeSessionCookie(cookie, "")
	if err != nil {
		return nil
	}
	key := claims.SessionHash() + "\x00" + rt.slug
	p, ok := t.stagePending.get(key)
	if !ok {
		return nil
	}
	t.stagePending.del(key)
	return &pending{in: p.in, component: p.component, follow: true, budgetKey: p.budgetKey}
}

// followCycledSession keeps the AuthenticatedSession ↔ sha256(sid) link
// when a password change cycles the session key (update_session_auth_hash,
// 2025.4 and later): the response carries the same session's cookie with a
// new sid.
func (t *Tap) followCycledSession(oldHash string, header http.Header) {
	for _, c := range (&http.Response{Header: header}).Cookies() {
		if c.Name != SessionCookieName || c.Value == "" {
			continue
		}
		claims, _, err := DecodeSessionCookie(c.Value, t.cfg.SecretKey)
		if err != nil || !claims.Authenticated || claims.SessionHash() == oldHash {
			continue
		}
		newHash := claims.SessionHash()
		t.sessionHash.rewrite(func(h string) (string, bool) { return newHash, h == oldHash })
		if admin, ok := t.impersonators.get(oldHash); ok {
			t.impersonators.put(newHash, admin)
		}
	}
}

// sessionSeen remembers that this caller's session cookie was seen, so a
// later DELETE of its AuthenticatedSession can carry sha256(sid). The
// AuthenticatedSession uuid is learnt by asking authentik, with the
// caller's own credentials, which of the user's sessions is `current`.
func (t *Tap) sessionSeen(c *caller) {
	if c.SessionHash == "" || c.cr.cookie == "" || t.localCookies() {
		return // with local verification the cookie is never replayed
	}
	if _, ok := t.seenHashes.get(c.SessionHash); ok {
		return
	}
	t.seenHashes.put(c.SessionHash, struct{}{})
	cr := creds{cookie: c.cr.cookie, clientIP: c.cr.clientIP, userAgent: c.cr.userAgent}
	hash := c.SessionHash
	q := url.Values{"user__username": {c.User.Username}, "page_size": {"100"}} // the default page is 20
	select {
	case t.learn <- func(ctx context.Context) {
		var page akPage[struct {
			UUID    string `json:"uuid"`
			Current bool   `json:"current"`
		}]
		if err := t.api.getJSON(ctx, cr, "/core/authenticated_sessions/", q, &page); err != nil {
			return
		}
		for _, s := range page.Results {
			if s.Current {
				t.sessionHash.put(s.UUID, hash)
			}
		}
	}:
	default:
	}
}

// hashForSession returns sha256(sid) for an AuthenticatedSession uuid when
// its cookie has been seen.
func (t *Tap) hashForSession(uuid string) string {
	h, _ := t.sessionHash.get(uuid)
	return h
}

// logoutHint records how a logout started (OIDC end-session, outpost
// sign-out, the default invalidation URL).
type logoutHint struct {
	via       string
	requestID string
}

func (t *Tap) noteLogoutHint(r *http.Request, cookie string) {
	if cookie == "" {
		return
	}
	claims, _, err := DecodeSessionCookie(cookie, "")
	if err != nil {
		return
	}
	via := "the default invalidation URL"
	switch p := r.URL.Path; {
	case strings.HasPrefix(p, "/application/o/"):
		slug := strings.TrimSuffix(strings.TrimPrefix(p, "/application/o/"), "/")
		slug = strings.TrimSuffix(slug, "/end-session")
		via = "OIDC end-session of application " + slug
	case strings.HasPrefix(p, "/outpost.goauthentik.io/"):
		via = "outpost sign-out"
	}
	if old, ok := t.hints.get(claims.SessionHash()); ok && old.via != "the default invalidation URL" {
		return // keep the more specific origin
	}
	t.hints.put(claims.SessionHash(), logoutHint{via: via, requestID: requestID(r)})
}

// userSessions lists a user's authenticated sessions (nil when they cannot
// be listed; the account signal still goes out).
func (t *Tap) userSessions(ctx context.Context, cr creds, owner User) []sessionRef {
	if owner.Username == "" {
		return nil
	}
	sessions, err := listAll[akSession](ctx, t.api, cr, "/core/authenticated_sessions/",
		url.Values{"user__username": {owner.Username}}, 5)
	if err != nil {
		t.stats.misses.Add(1)
		return nil
	}
	var out []sessionRef
	for _, s := range sessions {
		if s.User == owner.PK && s.UUID != "" {
			out = append(out, sessionRef{UUID: s.UUID, Owner: owner, Hash: t.hashForSession(s.UUID)})
		}
	}
	return out
}

// responseTime is when authentik answered, on authentik's clock when its
// Date header says the two clocks differ by more than a couple of seconds:
// de-duplication compares this time with the event API's `created`.
func (t *Tap) responseTime(header http.Header) time.Time {
	now := t.cfg.Clock().UTC()
	d, err := http.ParseTime(header.Get("Date"))
	if err != nil {
		return now
	}
	if skew := now.Sub(d); skew > 2*time.Second && skew < 24*time.Hour || skew < -2*time.Second && skew > -24*time.Hour {
		return d.UTC()
	}
	return now
}
