package tap

import (
	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"
	"net/url"

	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// defaultActions are the event-API actions the poller asks for.
var defaultActions = []string{
	"logout", "login", "password_set", "model_created", "model_updated", "model_deleted",
	"mfa_device_added", "mfa_device_removed", "user_created", "user_lockdown_triggered", "impersonation_ended",
}

// akEventUser is an event's `user` (or context `subject`) object.
type akEventUser struct {
	PK         int64        `json:"pk"`
	Username   string       `json:"username"`
	Email      string       `json:"email"`
	OnBehalfOf *akEventUser `json:"on_behalf_of,omitempty"`
}

// akModel is context.model / context.mfa_device.
type akModel struct {
	App       string          `json:"app"`
	ModelName string          `json:"model_name"`
	PK        json.RawMessage `json:"pk"`
	Name      string          `json:"name"`
	Type      string          `json:"type"`
}

// akEventContext is the part of an event's context the tap reads.
type akEventContext struct {
	Model     *akModel     `json:"model"`
	Subject   *akEventUser `json:"subject"`
	MFADevice *akModel     `json:"mfa_device"`
	Origin    string       `json:"origin"`
	// AffectedUser names the user of an account lockdown (a username);
	// AffectedUserPK the owner in one stored shape of mfa_device_*.
	AffectedUser   string          `json:"affected_user"`
	AffectedUserPK json.RawMessage `json:"affected_user_pk"`
	SyncedFrom     *bool           `json:"synced_from_source"`
	HTTPRequest    *struct {
		Path      string `json:"path"`
		Method    string `json:"method"`
		RequestID string `json:"request_id"`
	} `json:"http_request"`
}

// akEvent is one event-API record.
type akEvent struct {
	PK      string          `json:"pk"`
	User    akEventUser     `json:"-"`
	Action  string          `json:"action"`
	App     string          `json:"app"`
	Created time.Time       `json:"created"`
	Context akEventContext  `json:"-"`
	RawUser json.RawMessage `json:"user"`
	RawCtx  json.RawMessage `json:"context"`
}

// eventPage is one decoded page of /events/events/.
type eventPage struct {
	Events []akEvent
	Next   int // next page number, 0 when none
}

// maxEventsPerPage bounds a decoded page.
const maxEventsPerPage = 1000

// decodeEventPage parses a page of authentik's event list. Records that are
// unreadable in parts keep what could be read; records without pk, action
// or created are an error, since the cursor cannot move past them safely.
func decodeEventPage(body []byte) (eventPage, error) {
	var raw struct {
		Pagination struct {
			Next json.Number `json:"next"`
		} `json:"pagination"`
		Results []akEvent `json:"results"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return eventPage{}, fmt.Errorf("tap: event page: %w", err)
	}
	if len(raw.Results) > maxEventsPerPage {
		return eventPage{}, errors.New("tap: event page: too many results")
	}
	var p eventPage
	if raw.Pagination.Next != "" {
		n, err := raw.Pagination.Next.Float64()
		if err != nil || n < 0 || n > 1<<20 || n != float64(int(n)) {
			return eventPage{}, errors.New("tap: event page: bad next page")
		}
		p.Next = int(n)
	}
	for i := range raw.Results {
		e := raw.Results[i]
		// The pk is a UUID, dashes or not: compare it without them, and
		// check it only then (a pk of dashes alone is no pk).
		e.PK = strings.ReplaceAll(strings.ToLower(e.PK), "-", "")
		if e.PK == "" || e.Action == "" || e.Created.IsZero() {
			return eventPage{}, fmt.Errorf("tap: event page: record %d lacks pk, action or created", i)
		}
		_ = json.Unmarshal(e.RawUser, &e.User)
		_ = json.Unmarshal(e.RawCtx, &e.Context)
		e.RawUser, e.RawCtx = nil, nil
		p.Events = append(p.Events, e)
	}
	return p, nil
}

// deviceModels maps authentik's device model names to device types.
var deviceModels = map[string]string{
	"totpdevice": "totp", "webauthndevice": "webauthn", "staticdevice": "static",
	"duodevice": "duo", "smsdevice": "sms", "emaildevice": "email", "endpointdevice": "endpoint",
}

// normalizeDeviceType turns "totp", "totpdevice" or
// "authentik_stages_authenticator_totp.TOTPDevice" into "totp".
func normalizeDeviceType(s string) string {
	s = strings.ToLower(s)
	if i := strings.LastIndexByte(s, '.'); i >= 0 {
		s = s[i+1:]
	}
	if v, ok := deviceModels[s]; ok {
		return v
	}
	return s
}

func isUserModel(m *akModel) bool {
	return m != nil && m.App == "authentik_core" && m.ModelName == "user"
}

// errNoUser: the record names no user to report about.
var errNoUser = errors.New("tap: event names no user")

// eventSignals maps one event to signals. Look-up failures are returned so
// the poller retries the event rather than skip it; a record naming no user
// maps to nothing.
func (t *Tap) eventSignals(ctx context.Context, e akEvent) ([]Signal, error) {
	sigs, err := t.mapEvent(ctx, e)
	if errors.Is(err, errNoUser) {
		return nil, nil
	}
	return sigs, err
}

func (t *Tap) mapEvent(ctx context.Context, e akEvent) ([]Signal, error) {
	actor := User{PK: e.User.PK, Username: e.User.Username, Email: e.User.Email}
	self := e.User // whose session a login/logout record is about
	if e.User.OnBehalfOf != nil && e.User.OnBehalfOf.PK > 0 {
		// impersonation: `user` is the original user, acting for on_behalf_of
		self = *e.User.OnBehalfOf
	}
	mk := func(suffix string, kind Kind, subject User) Signal {
		s := Signal{ID: "e:" + e.PK + suffix, Kind: kind, Source: SourceEventAPI, Time: e.Created.UTC(), Subject: subject}
		if actor.PK > 0 && actor.Username != "AnonymousUser" {
			a := actor
			s.Actor = &a
			s.Initiator = initiator(actor, subject)
		} else {
			s.Initiator = InitiatorSystem
		}
		if e.Context.HTTPRequest != nil {
			s.RequestID = e.Context.HTTPRequest.RequestID
		}
		return s
	}
	cr := t.api.tokenCreds()
	resolve := func(u akEventUser) (User, error) {
		if u.PK <= 0 {
			return User{}, errNoUser
		}
		full, err := t.userByPK(ctx, cr, u.PK)
		if errors.Is(err, ErrNotFound) {
			return User{PK: u.PK, Username: u.Username, Email: u.Email}, nil
		}
		if err != nil {
			return User{}, err
		}
		return full, nil
	}
	c := e.Context
	switch e.Action {
	case "logout", "login":
		if isAnonymous(self) {
			// logout() runs for anonymous callers too (a stale cookie on
			// the invalidation flow): no session of anyone ended.
			return nil, nil
		}
		subj, err := resolve(self)
		if err != nil {
			return nil, err
		}
		if e.Action == "login" {
			s := mk("", KindSessionEstablished, subj)
			s.ReasonAdmin, s.ReasonUser = "User logged in", "You logged in"
			return []Signal{s}, nil
		}
		s := mk("", KindSessionRevoked, subj)
		s.ReasonAdmin, s.ReasonUser = "User logged out", "You logged out"
		before, known := t.dir.userState(subj.PK)
		if u, err := t.fetchUser(ctx, cr, subj.PK); err == nil && u.IsActive != nil && !*u.IsActive {
			// From 2025.4 authentik's session middleware logs out a user
			// it finds inactive on their next request: the deactivation
			// ended the session, not the user.
			s.Actor, s.Initiator = nil, InitiatorSystem
			s.ReasonAdmin, s.ReasonUser = "Session of a deactivated user ended", "Your session ended because the account was disabled"
			if known && before.IsActive != nil && *before.IsActive {
				// a background deactivation (LDAP sync) the directory had
				// not seen yet: this logout is its first trace
				d := mk("/disabled", KindAccountDisabled, u.user())
				d.Actor, d.Initiator = nil, InitiatorSystem
				d.ReasonAdmin, d.ReasonUser = "Account disabled", "Your account was disabled"
				return []Signal{d, s}, nil
			}
		}
		return []Signal{s}, nil
	case "password_set":
		if c.Origin == "source_sync" || (c.SyncedFrom != nil && *c.SyncedFrom) {
			return nil, nil // a cached hash from LDAP/Kerberos, not a change
		}
		if hr := c.HTTPRequest; hr != nil && hr.Method == http.MethodPost && strings.HasPrefix(hr.Path, apiPrefix+"flows/executor/") {
			// Up to 2026.2 the only password_set made by a flow executor
			// POST is an LDAP or Kerberos source caching the hash while the
			// password stage authenticates: user_write, which changes
			// passwords in flows, always runs on the GET that follows a
			// stage's redirect.
			return nil, nil
		}
		target := e.User
		switch {
		case c.Subject != nil:
			target = *c.Subject
		case e.User.OnBehalfOf != nil && e.User.OnBehalfOf.PK > 0:
			// From 2025.2 password_set is recorded from the request, and
			// under impersonation `user` is the impersonating admin with
			// on_behalf_of the impersonated user; the actor is the admin.
			target = t.passwordOwner(ctx, e)
		default:
			actor = User{} // ≤2026.2: `user` is the target, the actor is unknown
		}
		subj, err := resolve(target)
		if err != nil {
			return nil, err
		}
		s := mk("", KindPasswordChanged, subj)
		if s.Actor == nil && actor.PK == 0 {
			s.Initiator = InitiatorUser // the usual case; the traffic knows better when it saw it
		}
		s.ReasonAdmin, s.ReasonUser = "Password set", "Your password was changed"
		return []Signal{s}, nil
	case "mfa_device_added", "mfa_device_removed":
		// The owner is context.subject, or affected_user_pk in the other
		// shape these records have been stored in.
		owner := c.Subject
		if owner == nil {
			if pk, ok := rawInt(c.AffectedUserPK); ok && pk > 0 {
				owner = &akEventUser{PK: pk}
			}
		}
		if owner == nil || c.MFADevice == nil {
			t.stats.misses.Add(1)
			t.log.Warn("tap: MFA event without owner or device; not reported", "event", e.PK, "action", e.Action)
			return nil, nil
		}
		subj, err := resolve(*owner)
		if err != nil {
			return nil, err
		}
		kind := KindMFAAdded
		if e.Action == "mfa_device_removed" {
			kind = KindMFARemoved
		}
		dtype := normalizeDeviceType(c.MFADevice.Type)
		s := mk("", kind, subj)
		s.Device = &Device{Type: dtype, PK: rawPK(c.MFADevice.PK), Name: c.MFADevice.Name}
		s.ReasonAdmin, s.ReasonUser = "Authenticator changed", "Your authenticators changed"
		return []Signal{s}, nil
	case "model_created", "model_updated", "model_deleted":
		if c.Model == nil {
			return nil, nil
		}
		if dtype, ok := deviceModels[c.Model.ModelName]; ok && strings.Contains(c.Model.App, "authenticator") {
			return t.deviceEvent(ctx, e, dtype, mk)
		}
		if isUserModel(c.Model) {
			return t.userEvent(ctx, e, mk)
		}
	case "user_lockdown_triggered":
		return t.lockdownSignals(ctx, e, mk)
	case "impersonation_ended":
		// However it ended (the impersonate_end call, or the session),
		// that admin's sessions impersonate no longer. `user` is the
		// admin, with on_behalf_of the user while the session still
		// impersonated.
		if e.User.PK > 0 {
			t.impersonators.delWhere(func(u User) bool { return u.PK == e.User.PK })
		}
		return nil, nil
	case "user_created":
		if c.Subject != nil {
			_, _ = t.fetchUser(ctx, cr, c.Subject.PK) // seed the directory
		}
	}
	return nil, nil
}

// passwordOwner tells whose password an impersonated password_set changed:
// the one of `user` (the admin) and `user.on_behalf_of` whose
// password_change_date is closest to the event, within a few seconds;
// on_behalf_of when neither says (a self-service change while
// impersonating is the usual case).
func (t *Tap) passwordOwner(ctx context.Context, e akEvent) akEventUser {
	best, bestGap := *e.User.OnBehalfOf, 5*time.Second
	for _, cand := range []akEventUser{*e.User.OnBehalfOf, e.User} {
		u, err := t.fetchUser(ctx, t.api.tokenCreds(), cand.PK)
		if err != nil || u.PasswordChangeDate == nil {
			continue
		}
		gap := u.PasswordChangeDate.Sub(e.Created)
		if gap < 0 {
			gap = -gap
		}
		if gap < bestGap {
			best, bestGap = cand, gap
		}
	}
	return best
}

// rawInt reads a pk stored as a JSON number or string.
func rawInt(raw json.RawMessage) (int64, bool) {
	if len(raw) == 0 {
		return 0, false
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return djparse.Int(s)
	}
	var n json.Number
	if json.Unmarshal(raw, &n) != nil {
		return 0, false
	}
	v, err := n.Int64()
	return v, err == nil
}

// lockdownSignals maps an account lockdown (user_lockdown_triggered, with
// context.affected_user = the username): the stage deactivated the user,
// made their password unusable (Django's set_unusable_password, so no
// password_set) and deleted their sessions and tokens.
func (t *Tap) lockdownSignals(ctx context.Context, e akEvent, mk func(string, Kind, User) Signal) ([]Signal, error) {
	name := e.Context.AffectedUser
	if name == "" {
		t.stats.misses.Add(1)
		t.log.Warn("tap: lockdown event without affected_user; not reported", "event", e.PK)
		return nil, nil
	}
	var page akPage[akUser]
	if err := t.api.getJSON(ctx, t.api.tokenCreds(), "/core/users/", url.Values{"username": {name}, "include_groups": {"false"}}, &page); err != nil {
		return nil, err
	}
	var u akUser
	for _, c := range page.Results {
		if c.Username == name {
			u = c
		}
	}
	if u.PK <= 0 {
		t.stats.misses.Add(1)
		t.log.Warn("tap: lockdown of a user authentik no longer lists; not reported", "event", e.PK)
		return nil, nil
	}
	// The stage saved the user first: its model_updated, compared with the
	// directory, may have reported the disable already.
	before, known := t.dir.userState(u.PK)
	reported := known && before.IsActive != nil && !*before.IsActive
	t.dir.noteUser(u) // inactive from now on: a later model_updated changes nothing
	subj := u.user()
	var out []Signal
	if !reported {
		d := mk("/disabled", KindAccountDisabled, subj)
		d.ReasonAdmin, d.ReasonUser = "Account locked down", "Your account was locked"
		out = append(out, d)
	}
	p := mk("/password", KindPasswordChanged, subj)
	p.Revoked = true
	p.ReasonAdmin, p.ReasonUser = "Password made unusable by an account lockdown", "Your password was revoked when your account was locked"
	s := mk("/sessions", KindSessionRevoked, subj)
	s.ReasonAdmin, s.ReasonUser = "All sessions ended by an account lockdown", "Your sessions were ended when your account was locked"
	return append(out, p, s), nil
}

// isAnonymous reports whether an event's user is Django's AnonymousUser.
func isAnonymous(u akEventUser) bool {
	return u.PK <= 0 || u.Username == "AnonymousUser"
}

// deviceEvent handles model_* records of device models. authentik names the
// actor, not the owner, so the owner comes from the device (or, once it is
// gone, from the directory).
func (t *Tap) deviceEvent(ctx context.Context, e akEvent, dtype string, mk func(string, Kind, User) Signal) ([]Signal, error) {
	pk := rawPK(e.Context.Model.PK)
	if pk == "" {
		return nil, nil
	}
	cr := t.api.tokenCreds()
	known, wasKnown := t.dir.device(dtype, pk)
	if e.Action == "model_deleted" {
		if wasKnown && !known.Confirmed {
			t.dir.forgetDevice(dtype, pk)
			return nil, nil
		}
		hr := e.Context.HTTPRequest
		if hr != nil && isUserDelete(hr.Method, hr.Path) {
			// Deleting a user cascades to their devices, each logged as
			// model_deleted by the acting admin: the account-purged of
			// the user says it all.
			t.dir.forgetDevice(dtype, pk)
			return nil, nil
		}
		owner := known.Owner
		if !wasKnown {
			// authentik names the actor. Through the user's own endpoint
			// for this very device the actor is the owner; through the
			// admin endpoints, or as a cascade of deleting something else
			// (an SMS, Email or Duo stage), it may be anyone, and a wrong
			// subject is worse than none.
			if hr == nil || !isOwnDeviceDelete(hr.Method, hr.Path, dtype, pk) || e.User.PK <= 0 {
				t.stats.misses.Add(1)
				t.log.Warn("tap: device deleted, owner unknown; not reported", "event", e.PK, "device_type", dtype)
				return nil, nil
			}
			owner = e.User.PK
		}
		subj, err := t.userByPK(ctx, cr, owner)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		t.dir.forgetDevice(dtype, pk)
		s := mk("", KindMFARemoved, subj)
		s.Device = &Device{Type: dtype, PK: pk, Name: e.Context.Model.Name}
		s.ReasonAdmin, s.ReasonUser = "Authenticator removed", "An authenticator was removed from your account"
		return []Signal{s}, nil
	}
	var d akDevice
	err := t.api.getJSON(ctx, cr, "/authenticators/admin/"+dtype+"/"+pk+"/", nil, &d)
	if errors.Is(err, ErrNotFound) {
		return nil, nil // gone again already; its deletion will be reported
	}
	if err != nil {
		return nil, err
	}
	confirmed := d.Confirmed == nil || *d.Confirmed
	if d.Confirmed == nil {
		confirmed = t.deviceConfirmed(ctx, d, dtype, pk)
	}
	owner := int64(0)
	if d.User != nil {
		owner = d.User.PK
		t.dir.noteUser(*d.User)
	}
	t.dir.putDevice(dtype, pk, dirDevice{Owner: owner, Confirmed: confirmed, Name: d.Name})
	// Added = confirmed now and not known confirmed before (created
	// confirmed, or confirmed later by a setup stage).
	if !confirmed || (wasKnown && known.Confirmed) || (e.Action == "model_updated" && !wasKnown) {
		return nil, nil
	}
	subj, err := t.userByPK(ctx, cr, owner)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	s := mk("", KindMFAAdded, subj)
	s.Device = deviceFrom(dtype, d)
	s.ReasonAdmin, s.ReasonUser = "Authenticator added", "An authenticator was added to your account"
	return []Signal{s}, nil
}

// isUserDelete reports whether a request was DELETE /api/v3/core/users/{pk}/.
func isUserDelete(method, path string) bool {
	rest, ok := strings.CutPrefix(path, apiPrefix+"core/users/")
	if method != http.MethodDelete || !ok {
		return false
	}
	id, ok := strings.CutSuffix(rest, "/")
	if !ok {
		return false
	}
	_, ok = djparse.Int(id)
	return ok
}

// isOwnDeviceDelete reports whether a request was the user endpoint's
// DELETE /api/v3/authenticators/{type}/{pk}/ of exactly this device.
func isOwnDeviceDelete(method, path, dtype, pk string) bool {
	return method == http.MethodDelete && path == apiPrefix+"authenticators/"+dtype+"/"+pk+"/"
}

// deviceConfirmed reads `confirmed` from the owner's device list when the
// per-type serializer does not carry it.
func (t *Tap) deviceConfirmed(ctx context.Context, d akDevice, dtype, pk string) bool {
	if d.User == nil {
		return true
	}
	devs, err := t.api.userDevices(ctx, d.User.PK)
	if err != nil {
		return true
	}
	for _, x := range devs {
		if x.pk() == pk && deviceTypeMatches(x.Type, dtype) && x.Confirmed != nil {
			return *x.Confirmed
		}
	}
	return true
}

// userEvent handles model_* records of the user model by comparing the
// user's state with the directory.
func (t *Tap) userEvent(ctx context.Context, e akEvent, mk func(string, Kind, User) Signal) ([]Signal, error) {
	pkStr := rawPK(e.Context.Model.PK)
	pk, err := strconv.ParseInt(pkStr, 10, 64)
	if err != nil || pk <= 0 {
		return nil, nil
	}
	before, known := t.dir.userState(pk)
	switch e.Action {
	case "model_deleted":
		// context.model.name is the display name, not the username
		subj := User{PK: pk}
		if known {
			subj = User{PK: pk, UID: before.UID, Username: before.Username, Email: before.Email}
		}
		t.dir.forgetUser(pk)
		s := mk("", KindAccountDeleted, subj)
		s.ReasonAdmin, s.ReasonUser = "Account deleted", "Your account was deleted"
		return []Signal{s}, nil
	case "model_created":
		_, err := t.fetchUser(ctx, t.api.tokenCreds(), pk)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, nil
	}
	u, err := t.fetchUser(ctx, t.api.tokenCreds(), pk)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !known {
		return nil, nil // nothing to compare with; the directory knows it from now on
	}
	b := userState{Email: before.Email, IsActive: before.IsActive == nil || *before.IsActive, Known: before.IsActive != nil}
	a := userState{Email: u.Email, IsActive: u.IsActive == nil || *u.IsActive, Known: u.IsActive != nil}
	subj := u.user()
	return userChangeSignals(b, a, func(suffix string, kind Kind) Signal { return mk(suffix, kind, subj) }), nil
}
