package authentiktest

import (
	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"

	"errors"
	"net/http"
	"sort"
	"strconv"
	"strings"
)

func (s *Server) avatar(u *user) string {
	return "/static/dist/assets/images/user_default.png"
}

// userSelfJSON renders the UserSelf schema.
func (s *Server) userSelfJSON(u *user) map[string]any {
	return map[string]any{
		"pk": u.pk, "username": u.username, "name": u.name, "is_active": u.isActive, "is_superuser": u.isSuper,
		"groups": []any{}, "roles": []any{}, "email": u.email, "avatar": s.avatar(u), "uid": s.uid(u.pk),
		"settings": map[string]any{}, "type": u.userType, "system_permissions": []string{},
	}
}

// userJSON renders the User schema.
func (s *Server) userJSON(u *user) map[string]any {
	return map[string]any{
		"pk": u.pk, "username": u.username, "name": u.name, "is_active": u.isActive,
		"last_login": pyTimePtr(u.lastLogin), "date_joined": pyTime(u.dateJoined), "is_superuser": u.isSuper,
		"groups": []string{}, "groups_obj": []any{}, "roles": []string{}, "roles_obj": []any{},
		"email": u.email, "avatar": s.avatar(u), "attributes": u.attributes, "uid": s.uid(u.pk),
		"path": u.path, "type": u.userType, "uuid": u.uuid,
		"password_change_date": pyTime(u.passwordChangeDate), "last_updated": pyTime(u.lastUpdated),
	}
}

// partialUserJSON renders the PartialUser schema.
func (s *Server) partialUserJSON(u *user) map[string]any {
	if u == nil {
		return nil
	}
	return map[string]any{
		"pk": u.pk, "username": u.username, "name": u.name, "is_active": u.isActive,
		"last_login": pyTimePtr(u.lastLogin), "email": u.email, "attributes": u.attributes, "uid": s.uid(u.pk),
	}
}

func (s *Server) handleMe(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	out := map[string]any{"user": s.userSelfJSON(c.user)}
	if c.session != nil && c.session.impersonating != 0 {
		if orig := s.state.users[c.session.userPK]; orig != nil {
			out["original"] = s.userSelfJSON(orig)
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// handleImpersonate starts impersonating the user (admin, session cookie
// only): 204, an impersonation_started event naming the admin on behalf of
// the user, and from then on the session acts as that user.
func (s *Server) handleImpersonate(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	u := s.userFor(w, r, c)
	if u == nil {
		return
	}
	if !c.admin() || c.session == nil || c.session.impersonating != 0 || u == c.user {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	var in struct {
		Reason *string `json:"reason"`
	}
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if in.Reason == nil || *in.Reason == "" {
		writeValidation(w, map[string][]string{"reason": {"This field is required."}})
		return
	}
	c.session.impersonating = u.pk
	s.record("impersonation_started", appSignals, eventUser(u), map[string]any{"reason": *in.Reason}, r)
	s.setSessionCookies(w, c.session) // the cookie's sub is now the impersonated user's uid
	w.WriteHeader(http.StatusNoContent)
}

// handleImpersonateEnd ends impersonation (204 either way); the
// impersonation_ended event names the original user.
func (s *Server) handleImpersonateEnd(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	if se := c.session; se != nil && se.impersonating != 0 {
		se.impersonating = 0
		s.record("impersonation_ended", appSignals, eventUser(s.state.users[se.userPK]), nil, r)
		s.setSessionCookies(w, se)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleUserList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	var list []*user
	if c.admin() { // RBAC: a user without view_user sees no users
		for _, u := range s.state.users {
			if u.pk == anonymousPK || !userMatches(u, q) {
				continue
			}
			list = append(list, u)
		}
	}
	sortUsers(list, q.Get("ordering"))
	items := make([]any, len(list))
	for i, u := range list {
		items[i] = s.userJSON(u)
	}
	s.writePage(w, r, items)
}

// sortUsers orders by `ordering` (username, pk, email, name, optionally
// "-"-prefixed); authentik's default is username.
func sortUsers(list []*user, ordering string) {
	desc := strings.HasPrefix(ordering, "-")
	key := strings.TrimPrefix(ordering, "-")
	less := func(a, b *user) bool { return a.username < b.username }
	switch key {
	case "pk":
		less = func(a, b *user) bool { return a.pk < b.pk }
	case "email":
		less = func(a, b *user) bool { return a.email < b.email }
	case "name":
		less = func(a, b *user) bool { return a.name < b.name }
	}
	sort.SliceStable(list, func(i, j int) bool {
		if desc {
			return less(list[j], list[i])
		}
		return less(list[i], list[j])
	})
}

// userMatches applies the filters of /core/users/ that the schema lists.
// Parameters it does not list (pk, for one) are ignored, as DRF does.
func userMatches(u *user, q map[string][]string) bool {
	get := func(k string) (string, bool) {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1], true
		}
		return "", false
	}
	if v, ok := get("username"); ok && v != "" && u.username != v {
		return false
	}
	if v, ok := get("email"); ok && v != "" && u.email != v {
		return false
	}
	if v, ok := get("name"); ok && v != "" && u.name != v {
		return false
	}
	if v, ok := get("uuid"); ok && v != "" && u.uuid != v {
		return false
	}
	if v, ok := get("path"); ok && v != "" && u.path != v {
		return false
	}
	if v, ok := get("is_active"); ok {
		if b, err := strconv.ParseBool(v); err == nil && b != u.isActive {
			return false
		}
	}
	if v, ok := get("is_superuser"); ok {
		if b, err := strconv.ParseBool(v); err == nil && b != u.isSuper {
			return false
		}
	}
	if ts := q["type"]; len(ts) > 0 {
		found := false
		for _, t := range ts {
			found = found || t == u.userType
		}
		if !found {
			return false
		}
	}
	if v, ok := get("search"); ok && v != "" &&
		!containsFold(u.username, v) && !containsFold(u.name, v) && !containsFold(u.email, v) {
		return false
	}
	return true
}

// userFor returns the user the path names, applying visibility: an admin
// sees every user, anyone else only themselves (404 otherwise).
func (s *Server) userFor(w http.ResponseWriter, r *http.Request, c *caller) *user {
	pk, ok := pathInt(r, "id")
	u := s.state.users[pk]
	if !ok || u == nil || pk == anonymousPK || (!c.admin() && u != c.user) {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return nil
	}
	return u
}

func (s *Server) handleUserGet(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	if u := s.userFor(w, r, c); u != nil {
		writeJSON(w, http.StatusOK, s.userJSON(u))
	}
}

// userWrite is UserRequest / PatchedUserRequest.
type userWrite struct {
	Username   *string         `json:"username"`
	Name       *string         `json:"name"`
	IsActive   *drfBool        `json:"is_active"`
	Email      *string         `json:"email"`
	Path       *string         `json:"path"`
	Type       *string         `json:"type"`
	Attributes *map[string]any `json:"attributes"`
}

// drfBool is a boolean read as DRF's BooleanField reads it ("false", "0",
// "off" and so on are accepted).
type drfBool bool

func (b *drfBool) UnmarshalJSON(raw []byte) error {
	v, ok := djparse.Bool(raw)
	if !ok {
		return errors.New("Must be a valid boolean.")
	}
	*b = drfBool(v)
	return nil
}

var userTypes = map[string]bool{"internal": true, "external": true, "service_account": true, "internal_service_account": true}

// validate checks a user write; full (PUT/POST) requires name and username.
func (s *Server) validateUserWrite(in userWrite, full bool, self *user) map[string][]string {
	errs := map[string][]string{}
	if full && in.Username == nil {
		errs["username"] = []string{"This field is required."}
	}
	if full && in.Name == nil {
		errs["name"] = []string{"This field is required."}
	}
	if in.Username != nil {
		if *in.Username == "" || len(*in.Username) > 150 || !usernamePattern.MatchString(*in.Username) {
			errs["username"] = []string{"Enter a valid username."}
		} else if other := s.userByUsername(*in.Username); other != nil && other != self {
			errs["username"] = []string{"A user with that username already exists."}
		}
	}
	if in.Email != nil && *in.Email != "" && (!strings.Contains(*in.Email, "@") || len(*in.Email) > 254) {
		errs["email"] = []string{"Enter a valid email address."}
	}
	if in.Type != nil && !userTypes[*in.Type] {
		errs["type"] = []string{"\"" + *in.Type + "\" is not a valid choice."}
	}
	if in.Path != nil && *in.Path == "" {
		errs["path"] = []string{"This field may not be blank."}
	}
	return errs
}

func applyUserWrite(u *user, in userWrite) {
	if in.Username != nil {
		u.username = *in.Username
	}
	if in.Name != nil {
		u.name = *in.Name
	}
	if in.IsActive != nil {
		u.isActive = bool(*in.IsActive)
	}
	if in.Email != nil {
		u.email = *in.Email
	}
	if in.Path != nil {
		u.path = *in.Path
	}
	if in.Type != nil {
		u.userType = *in.Type
	}
	if in.Attributes != nil && *in.Attributes != nil {
		u.attributes = *in.Attributes
	}
}

func (s *Server) handleUserCreate(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	if !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	var in userWrite
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if errs := s.validateUserWrite(in, true, nil); len(errs) > 0 {
		writeValidation(w, errs)
		return
	}
	u := s.newUser(*in.Username, *in.Name, "")
	applyUserWrite(u, in)
	s.recordUserModel("model_created", c.user, u, r)
	if s.newer() {
		s.record("user_created", appSignals, eventUser(c.user), map[string]any{"subject": eventUser(u)}, r)
	}
	writeJSON(w, http.StatusCreated, s.userJSON(u))
}

func (s *Server) handleUserUpdate(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	u := s.userFor(w, r, c)
	if u == nil {
		return
	}
	if !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	var in userWrite
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if errs := s.validateUserWrite(in, r.Method == http.MethodPut, u); len(errs) > 0 {
		writeValidation(w, errs)
		return
	}
	applyUserWrite(u, in)
	u.lastUpdated = s.now()
	if r.Method == http.MethodPatch && !u.isActive {
		// authentik's partial_update (PATCH only, not PUT) deletes an inactive
		// user's sessions, recording nothing for them. After a PUT the sessions
		// stay listed but no longer authenticate (inactive user).
		s.deleteUserSessions(u.pk)
	}
	s.recordUserModel("model_updated", c.user, u, r)
	writeJSON(w, http.StatusOK, s.userJSON(u))
}

func (s *Server) handleUserDelete(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	u := s.userFor(w, r, c)
	if u == nil {
		return
	}
	if !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	s.deleteUserSessions(u.pk)
	// Django's collector sends pre_delete for every cascaded row, so the
	// audit middleware logs model_deleted for each of the user's devices,
	// naming the acting admin as user.
	for _, d := range s.userDevices(u.pk) {
		delete(s.state.devices[d.typ], d.pk)
		s.recordDeviceModel("model_deleted", c.user, d, r)
	}
	for k, pk := range s.state.tokens {
		if pk == u.pk {
			delete(s.state.tokens, k)
		}
	}
	delete(s.state.users, u.pk)
	s.purgeUserEvents(u.pk)
	s.recordUserModel("model_deleted", c.user, u, r)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) handleSetPassword(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	u := s.userFor(w, r, c)
	if u == nil {
		return
	}
	if !c.admin() { // needs authentik_core.reset_user_password
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	var in struct {
		Password *string `json:"password"`
	}
	if err := decodeBody(r, &in); err != nil {
		writeParseError(w, err)
		return
	}
	if in.Password == nil || *in.Password == "" {
		writeValidation(w, map[string][]string{"password": {"This field is required."}})
		return
	}
	s.setPassword(u, *in.Password, c.user, r)
	if c.session != nil && c.user == u {
		s.keepSessionAuth(c.session) // update_session_auth_hash for one's own session
	}
	w.WriteHeader(http.StatusNoContent)
}

// setPassword changes u's password inside request r made by actor: it
// records password_set and, because the user row is saved, model_updated.
//
// As in Django, a session's auth hash derives from the password: the user's
// other sessions stop authenticating (they stay listed by the API until they
// expire); callers keep the current session alive with keepSessionAuth.
func (s *Server) setPassword(u *user, password string, actor *user, r *http.Request) {
	u.password = password
	u.passwordGen++
	u.passwordChangeDate = s.now()
	u.lastUpdated = s.now()
	s.recordPasswordSet(u, "http", r)
	s.recordUserModel("model_updated", actor, u, r)
}
