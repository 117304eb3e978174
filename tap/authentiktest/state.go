package authentiktest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

// anonymousPK is the pk of authentik's AnonymousUser (as in the notes'
// example event records).
const anonymousPK = 2

type user struct {
	pk                 int
	uuid               string
	username, name     string
	email, password    string
	isActive, isSuper  bool
	userType, path     string
	attributes         map[string]any
	dateJoined         time.Time
	lastLogin          *time.Time
	lastUpdated        time.Time
	passwordChangeDate time.Time
	// passwordGen counts password changes; a session authenticates only
	// while its authGen matches (Django's session auth hash).
	passwordGen int
}

type session struct {
	uuid          string // AuthenticatedSession uuid (only meaningful when authenticated)
	sid           string // Django session key, the cookie's `sid`
	userPK        int
	authenticated bool
	csrf          string
	lastIP        string
	boundIP       string // client IP at login, for session binding
	userAgent     string
	lastUsed      time.Time
	expires       time.Time
	// flow state
	pendingUser int
	pendingTOTP int // user pk a TOTP setup stage showed its code to (device not saved yet)
	authGen     int // the user's passwordGen when the session was authenticated
	// impersonating is the pk of the user an admin session impersonates
	// (userPK stays the admin), 0 when not impersonating.
	impersonating int
	// pendingWrite is a prompt answer accepted by a flow whose user_write
	// stage runs on the next request.
	pendingWrite *pendingWrite
}

// pendingWrite is what a prompt stage handed on to user_write.
type pendingWrite struct {
	flow     string
	password string         // password-change flow
	write    userWrite      // user-settings flow
	data     map[string]any // the prompt data user_write records
}

type device struct {
	typ         DeviceType
	pk          int
	userPK      int
	name        string
	confirmed   bool
	created     time.Time
	lastUpdated time.Time
	phone       string
	email       string
	aaguid      string
	tokens      []string
}

type event struct {
	pk       string
	user     map[string]any
	action   string
	app      string
	context  map[string]any
	clientIP *string
	created  time.Time
	expires  time.Time
	brand    map[string]any
}

// flowKind says which of the simulated flows a flow is (its stages).
type flowKind int

const (
	kindAuthentication flowKind = iota
	kindInvalidation
	kindPasswordChange
	kindTOTPSetup
	kindUserSettings
)

type flow struct {
	kind                                               flowKind
	pk, slug, name, title, designation, authentication string
}

type state struct {
	users        map[int]*user
	nextUserPK   int
	sessions     map[string]*session // by sid
	devices      map[DeviceType]map[int]*device
	nextDevicePK map[DeviceType]int
	tokens       map[string]int // API token key → user pk
	events       []*event
	flows        []*flow
	brandUUID    string
	// bindingBreaks counts sessions ended by session binding.
	bindingBreaks int
}

func (s *Server) initState() error {
	st := &s.state
	st.users = map[int]*user{}
	st.sessions = map[string]*session{}
	st.devices = map[DeviceType]map[int]*device{}
	st.nextDevicePK = map[DeviceType]int{}
	for _, t := range DeviceTypes {
		st.devices[t] = map[int]*device{}
		st.nextDevicePK[t] = 1
	}
	st.tokens = map[string]int{}
	now := s.now()
	st.users[1] = &user{pk: 1, uuid: s.newUUID(), username: s.cfg.AdminUsername, name: "authentik Default Admin",
		email: s.cfg.AdminEmail, password: s.cfg.AdminPassword, isActive: true, isSuper: true,
		userType: "internal", path: "users", attributes: map[string]any{}, dateJoined: now, lastUpdated: now, passwordChangeDate: now}
	st.users[anonymousPK] = &user{pk: anonymousPK, uuid: s.newUUID(), username: "AnonymousUser", isActive: true,
		userType: "internal", path: "users", attributes: map[string]any{}, dateJoined: now, lastUpdated: now, passwordChangeDate: now}
	st.nextUserPK = 3
	st.tokens[s.cfg.AdminToken] = 1
	f := s.cfg.Flows
	st.flows = []*flow{
		{kind: kindAuthentication, slug: f.Authentication, name: "Welcome to authentik!", title: "Welcome to authentik!", designation: "authentication", authentication: "none"},
		{kind: kindInvalidation, slug: f.Invalidation, name: "Logout", title: "Default Invalidation Flow", designation: "invalidation", authentication: "none"},
		{kind: kindPasswordChange, slug: f.PasswordChange, name: "Change Password", title: "Change password", designation: "stage_configuration", authentication: "require_authenticated"},
		{kind: kindTOTPSetup, slug: f.TOTPSetup, name: "default-authenticator-totp-setup", title: "Set up Two-Factor authentication", designation: "stage_configuration", authentication: "require_authenticated"},
		{kind: kindUserSettings, slug: f.UserSettings, name: "User settings", title: "Update your info", designation: "stage_configuration", authentication: "require_authenticated"},
	}
	for _, fl := range st.flows {
		fl.pk = s.newUUID()
	}
	st.brandUUID = s.newUUID()
	return nil
}

func (s *Server) now() time.Time { return s.cfg.Clock().UTC() }

// randBytes reads n bytes from Config.Rand. Callers hold s.mu or run
// during Start, so a non-concurrent reader (math/rand) is fine.
func (s *Server) randBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(s.cfg.Rand, b); err != nil {
		panic(fmt.Sprintf("authentiktest: read randomness: %v", err))
	}
	return b
}

func (s *Server) newUUID() string {
	b := s.randBytes(16)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// newSessionKey returns a Django-style 32-character session key.
func (s *Server) newSessionKey() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := s.randBytes(32)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return string(b)
}

func (s *Server) newToken() string { return hex.EncodeToString(s.randBytes(24)) }

// uid is authentik's User.uid: sha256("<install id>-<pk>") hex.
func (s *Server) uid(pk int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s-%d", s.cfg.InstallID, pk)))
	return hex.EncodeToString(sum[:])
}

// ---- exported views and fixtures ----

// User is a snapshot of a simulated user.
type User struct {
	PK                 int
	UID                string
	UUID               string
	Username           string
	Name               string
	Email              string
	IsActive           bool
	IsSuperuser        bool
	PasswordChangeDate time.Time
}

// UserSpec describes a user for AddUser.
type UserSpec struct {
	Username string // required
	Name     string // default Username
	Email    string
	Password string
	// Superuser makes the user an admin (is_superuser).
	Superuser bool
	// Inactive creates the user with is_active false.
	Inactive bool
}

func (s *Server) userView(u *user) User {
	return User{PK: u.pk, UID: s.uid(u.pk), UUID: u.uuid, Username: u.username, Name: u.name, Email: u.email,
		IsActive: u.isActive, IsSuperuser: u.isSuper, PasswordChangeDate: u.passwordChangeDate}
}

// AddUser creates a user directly (a fixture: no event is recorded).
func (s *Server) AddUser(spec UserSpec) (User, error) {
	if spec.Username == "" || !usernamePattern.MatchString(spec.Username) {
		return User{}, fmt.Errorf("authentiktest: add user: invalid username %q", spec.Username)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.userByUsername(spec.Username) != nil {
		return User{}, fmt.Errorf("authentiktest: add user: username %q taken", spec.Username)
	}
	u := s.newUser(spec.Username, spec.Name, spec.Email)
	u.password, u.isSuper, u.isActive = spec.Password, spec.Superuser, !spec.Inactive
	return s.userView(u), nil
}

func (s *Server) newUser(username, name, email string) *user {
	now := s.now()
	if name == "" {
		name = username
	}
	u := &user{pk: s.state.nextUserPK, uuid: s.newUUID(), username: username, name: name, email: email,
		isActive: true, userType: "internal", path: "users", attributes: map[string]any{},
		dateJoined: now, lastUpdated: now, passwordChangeDate: now}
	s.state.nextUserPK++
	s.state.users[u.pk] = u
	return u
}

func (s *Server) userByUsername(name string) *user {
	for _, u := range s.state.users {
		if u.username == name {
			return u
		}
	}
	return nil
}

// User returns the user with pk.
func (s *Server) User(pk int) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.state.users[pk]
	if !ok {
		return User{}, false
	}
	return s.userView(u), true
}

// UserByUsername returns the user named username.
func (s *Server) UserByUsername(username string) (User, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.userByUsername(username)
	if u == nil {
		return User{}, false
	}
	return s.userView(u), true
}

// AdminToken is the API token of the admin user (pk 1).
func (s *Server) AdminToken() string { return s.cfg.AdminToken }

// MintToken creates an API token (intent api) for the user and returns its key.
func (s *Server) MintToken(userPK int) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.state.users[userPK]; !ok {
		return "", fmt.Errorf("authentiktest: mint token: no user %d", userPK)
	}
	k := s.newToken()
	s.state.tokens[k] = userPK
	return k, nil
}

// Session is a snapshot of a simulated session.
type Session struct {
	UUID          string // the AuthenticatedSession uuid
	SID           string // the session key (the cookie's sid)
	UserPK        int
	Authenticated bool
	LastIP        string
	UserAgent     string
	Expires       time.Time
}

func sessionView(se *session) Session {
	return Session{UUID: se.uuid, SID: se.sid, UserPK: se.userPK, Authenticated: se.authenticated,
		LastIP: se.lastIP, UserAgent: se.userAgent, Expires: se.expires}
}

// Session returns the authenticated session with the AuthenticatedSession uuid.
func (s *Server) Session(uuid string) (Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.sessionByUUID(uuid)
	if se == nil {
		return Session{}, false
	}
	return sessionView(se), true
}

// SessionBySID returns the session whose key (cookie sid) is sid.
func (s *Server) SessionBySID(sid string) (Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se, ok := s.state.sessions[sid]
	if !ok {
		return Session{}, false
	}
	return sessionView(se), true
}

// Sessions lists the authenticated sessions of a user, oldest first.
func (s *Server) Sessions(userPK int) []Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Session
	for _, se := range s.authSessions() {
		if se.userPK == userPK {
			out = append(out, sessionView(se))
		}
	}
	return out
}

// IssueSession creates an authenticated session for the user directly (a
// fixture: no login event) and returns it with its authentik_session cookie.
func (s *Server) IssueSession(userPK int) (Session, string, error) {
	return s.IssueSessionFrom(userPK, "127.0.0.1")
}

// IssueSessionFrom is IssueSession for a login from client IP ip (the IP
// session binding holds the session to).
func (s *Server) IssueSessionFrom(userPK int, ip string) (Session, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.state.users[userPK]
	if !ok || !u.isActive {
		return Session{}, "", fmt.Errorf("authentiktest: issue session: no active user %d", userPK)
	}
	se := s.newSession(ip, "authentiktest")
	s.authenticate(se, u)
	c, err := s.cookieFor(se)
	if err != nil {
		return Session{}, "", err
	}
	return sessionView(se), c, nil
}

func (s *Server) newSession(ip, ua string) *session {
	now := s.now()
	se := &session{sid: s.newSessionKey(), csrf: hex.EncodeToString(s.randBytes(16)), lastIP: ip, userAgent: ua,
		lastUsed: now, expires: now.Add(24 * time.Hour)}
	s.state.sessions[se.sid] = se
	return se
}

// authenticate turns se into an authenticated session of u; like Django's
// login(), the session key is cycled.
func (s *Server) authenticate(se *session, u *user) {
	delete(s.state.sessions, se.sid)
	se.sid = s.newSessionKey()
	se.uuid = s.newUUID()
	se.userPK, se.authenticated, se.pendingUser = u.pk, true, 0
	se.authGen = u.passwordGen
	se.boundIP = se.lastIP
	s.state.sessions[se.sid] = se
	now := s.now()
	u.lastLogin = &now
}

// keepSessionAuth re-binds se to its user's current password (Django's
// update_session_auth_hash).
func (s *Server) keepSessionAuth(se *session) {
	if u := s.state.users[se.userPK]; u != nil {
		se.authGen = u.passwordGen
	}
}

// sessionUser returns the active user se authenticates, or nil when the
// session is anonymous, the user inactive or gone, or the password changed
// since the session was authenticated. In the last case the session is
// flushed, as Django's get_user does on an auth-hash mismatch.
func (s *Server) sessionUser(se *session) *user {
	if se == nil || !se.authenticated {
		return nil
	}
	u := s.state.users[se.userPK]
	if u == nil || !u.isActive {
		return nil
	}
	if se.authGen != u.passwordGen {
		delete(s.state.sessions, se.sid)
		return nil
	}
	if se.impersonating != 0 {
		if target := s.state.users[se.impersonating]; target != nil && target.isActive {
			return target
		}
		return nil
	}
	return u
}

func (s *Server) sessionByUUID(uuid string) *session {
	for _, se := range s.state.sessions {
		if se.authenticated && se.uuid == uuid {
			return se
		}
	}
	return nil
}

// authSessions returns the authenticated sessions sorted by uuid.
func (s *Server) authSessions() []*session {
	var out []*session
	for _, se := range s.state.sessions {
		if se.authenticated {
			out = append(out, se)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].uuid < out[j].uuid })
	return out
}

// deleteUserSessions removes every session of the user and returns how many
// authenticated ones there were. authentik records no event for this.
func (s *Server) deleteUserSessions(pk int) int {
	n := 0
	for sid, se := range s.state.sessions {
		if se.userPK == pk {
			if se.authenticated {
				n++
			}
			delete(s.state.sessions, sid)
		}
	}
	return n
}

// flowBySlug returns the flow with slug, or nil.
func (s *Server) flowBySlug(slug string) *flow {
	for _, f := range s.state.flows {
		if f.slug == slug {
			return f
		}
	}
	return nil
}

// flowOf returns the flow of the kind. The caller holds s.mu.
func (s *Server) flowOf(k flowKind) *flow {
	for _, f := range s.state.flows {
		if f.kind == k {
			return f
		}
	}
	return nil
}

// slugs returns the current flow slugs. The caller holds s.mu.
func (s *Server) slugs() FlowSlugs {
	return FlowSlugs{
		Authentication: s.flowOf(kindAuthentication).slug, Invalidation: s.flowOf(kindInvalidation).slug,
		PasswordChange: s.flowOf(kindPasswordChange).slug, TOTPSetup: s.flowOf(kindTOTPSetup).slug,
		UserSettings: s.flowOf(kindUserSettings).slug,
	}
}

// Flows returns the flow slugs in use (defaults filled in, renames applied).
func (s *Server) Flows() FlowSlugs {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.slugs()
}

// RenameFlow changes a flow's slug while the server runs, as an operator
// editing the flow would: the old slug stops working at once, the brand and
// the flow list name the new one.
func (s *Server) RenameFlow(oldSlug, newSlug string) error {
	if !slugPattern.MatchString(newSlug) {
		return fmt.Errorf("authentiktest: rename flow: %q is not a slug", newSlug)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flowBySlug(oldSlug)
	if f == nil {
		return fmt.Errorf("authentiktest: rename flow: no flow %q", oldSlug)
	}
	if other := s.flowBySlug(newSlug); other != nil && other != f {
		return fmt.Errorf("authentiktest: rename flow: slug %q is taken", newSlug)
	}
	f.slug = newSlug
	return nil
}

func containsFold(haystack, needle string) bool {
	return strings.Contains(strings.ToLower(haystack), strings.ToLower(needle))
}
