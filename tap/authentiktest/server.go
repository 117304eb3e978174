package authentiktest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Version selects which authentik release the simulator imitates in its
// event log.
type Version string

const (
	// Version2025_2 imitates authentik 2025.2: device serializers carry
	// `user`, password_set has request context, but the events API ignores
	// the actions= filter, inactive users' sessions are not ended by
	// middleware and there is no bulk_delete.
	Version2025_2 Version = "2025.2"
	// Version2025_4 adds the database session store: a user found inactive
	// on a request is logged out (a logout event) by middleware.
	Version2025_4 Version = "2025.4"
	// Version2025_8 adds the events API's actions= filter.
	Version2025_8 Version = "2025.8"
	// Version2026_2 records events as authentik 2026.2 does (the default);
	// it adds authenticated_sessions/bulk_delete/.
	Version2026_2 Version = "2026.2"
	// Version2026_8 also records user_created, mfa_device_added and
	// mfa_device_removed, and adds subject/origin to password_set.
	Version2026_8 Version = "2026.8"
)

// FlowSlugs names the flows the simulator serves. Empty fields take
// authentik's default slugs.
type FlowSlugs struct {
	Authentication string // default "default-authentication-flow"
	Invalidation   string // default "default-invalidation-flow"
	PasswordChange string // default "default-password-change" (stage_configuration)
	TOTPSetup      string // default "default-authenticator-totp-setup" (stage_configuration)
	UserSettings   string // default "default-user-settings-flow" (stage_configuration)
}

// Application is an OAuth2/OpenID provider with its application slug and a
// confidential client allowed the client_credentials grant.
type Application struct {
	Slug         string
	ClientID     string
	ClientSecret string
	// Scopes the client may be granted; a token request without `scope`
	// gets all of them.
	Scopes []string
}

// Config configures a simulated authentik. The zero value is usable.
type Config struct {
	// Addr to listen on; default "127.0.0.1:0".
	Addr string
	// SecretKey is authentik's SECRET_KEY; the session cookie is signed with
	// the hex string of its SHA-512. Default "authentiktest-secret-key".
	SecretKey string
	// Version of authentik to imitate; default Version2026_2.
	Version Version
	// SessionBinding imitates a User Login stage with network binding: a
	// cookie presented from another client IP than the one that logged in
	// ends its session (logout event) and the request runs anonymously, as
	// authentik's BoundSessionMiddleware does. Off by default, as in
	// authentik.
	SessionBinding bool
	// Clock returns the current time; default time.Now.
	Clock func() time.Time
	// Rand feeds every generated id (uuids, session keys, tokens); default
	// crypto/rand. A seeded reader makes ids deterministic.
	Rand io.Reader
	// InstallID feeds user uids: uid = sha256("<InstallID>-<pk>") hex.
	InstallID string
	// Flows renames flows (tests use non-default slugs).
	Flows FlowSlugs
	// Applications are OAuth2 providers; default none.
	Applications []Application
	// Admin account created at start (pk 1, superuser). Defaults: akadmin,
	// root@localhost, password "akadmin-password", token "akadmin-token".
	AdminUsername, AdminEmail, AdminPassword, AdminToken string
	// TOTPCode is the code a TOTP setup stage accepts; default "123456".
	TOTPCode string
	// TOTPSetupNotLast adds a stage after the TOTP setup stage, so an
	// accepted code is answered with a 302 to the executor, as authentik
	// does for any stage that is not its flow's last.
	TOTPSetupNotLast bool
	// PageSize is the default page size of list endpoints; default 100.
	PageSize int
	// KeepEventsOfDeletedUsers turns off authentik's gdpr_compliance purge of
	// a deleted user's events.
	KeepEventsOfDeletedUsers bool
	// DisableCSRF stops requiring X-authentik-CSRF on cookie-authenticated
	// unsafe API requests.
	DisableCSRF bool
	// OAuthKey signs OAuth2 access tokens; default a generated RSA-2048 key.
	OAuthKey *rsa.PrivateKey
	// Logger; default discards.
	Logger *slog.Logger
}

var slugPattern = regexp.MustCompile(`^[-a-zA-Z0-9_]+$`)

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	switch c.Version {
	case "", Version2025_2, Version2025_4, Version2025_8, Version2026_2, Version2026_8:
	default:
		errs = append(errs, fmt.Errorf("authentiktest: unknown version %q", c.Version))
	}
	if c.PageSize < 0 {
		errs = append(errs, fmt.Errorf("authentiktest: page size %d is negative", c.PageSize))
	}
	seen := map[string]string{}
	for _, f := range []struct{ name, slug string }{
		{"authentication", c.Flows.Authentication}, {"invalidation", c.Flows.Invalidation},
		{"password change", c.Flows.PasswordChange}, {"totp setup", c.Flows.TOTPSetup},
		{"user settings", c.Flows.UserSettings},
	} {
		if f.slug == "" {
			continue
		}
		if !slugPattern.MatchString(f.slug) {
			errs = append(errs, fmt.Errorf("authentiktest: %s flow slug %q is not a slug", f.name, f.slug))
		}
		if other, ok := seen[f.slug]; ok {
			errs = append(errs, fmt.Errorf("authentiktest: %s and %s flows share slug %q", other, f.name, f.slug))
		}
		seen[f.slug] = f.name
	}
	apps := map[string]bool{}
	clients := map[string]bool{}
	for i, a := range c.Applications {
		if !slugPattern.MatchString(a.Slug) {
			errs = append(errs, fmt.Errorf("authentiktest: application %d: slug %q is not a slug", i, a.Slug))
		}
		if a.ClientID == "" || a.ClientSecret == "" {
			errs = append(errs, fmt.Errorf("authentiktest: application %q: client id and secret are required", a.Slug))
		}
		if apps[a.Slug] {
			errs = append(errs, fmt.Errorf("authentiktest: application slug %q twice", a.Slug))
		}
		if a.ClientID != "" && clients[a.ClientID] {
			errs = append(errs, fmt.Errorf("authentiktest: client id %q twice", a.ClientID))
		}
		apps[a.Slug], clients[a.ClientID] = true, true
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	if c.Addr == "" {
		c.Addr = "127.0.0.1:0"
	}
	if c.SecretKey == "" {
		c.SecretKey = "authentiktest-secret-key"
	}
	if c.Version == "" {
		c.Version = Version2026_2
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.InstallID == "" {
		c.InstallID = "authentiktest-install"
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.Flows.Authentication, "default-authentication-flow")
	def(&c.Flows.Invalidation, "default-invalidation-flow")
	def(&c.Flows.PasswordChange, "default-password-change")
	def(&c.Flows.TOTPSetup, "default-authenticator-totp-setup")
	def(&c.Flows.UserSettings, "default-user-settings-flow")
	def(&c.AdminUsername, "akadmin")
	def(&c.AdminEmail, "root@localhost")
	def(&c.AdminPassword, "akadmin-password")
	def(&c.AdminToken, "akadmin-token")
	def(&c.TOTPCode, "123456")
	if c.PageSize == 0 {
		c.PageSize = 100
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// FailMode makes the simulated authentik misbehave.
type FailMode int

const (
	// FailNone serves normally.
	FailNone FailMode = iota
	// Fail503 answers every request 503 Service Unavailable.
	Fail503
	// FailClose closes every connection without an answer.
	FailClose
)

// Server is a running simulated authentik.
type Server struct {
	cfg     Config
	log     *slog.Logger
	handler http.Handler
	// oauthKey returns the OAuth2 signing key, generated on first use.
	oauthKey func() (*rsa.PrivateKey, error)

	mu    sync.Mutex // guards the directory state below (see state.go)
	state state

	srvMu    sync.Mutex // guards srv, ln, addr
	srv      *http.Server
	ln       net.Listener
	addr     string
	failMode atomic.Int32
	delay    atomic.Int64

	countMu   sync.Mutex
	counts    map[string]int
	pathFails map[string]FailMode // path prefix → mode, guarded by countMu
}

// Start validates cfg, builds the initial directory (the admin user, its
// token, the flows and the default brand) and starts serving.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, counts: map[string]int{}}
	s.oauthKey = sync.OnceValues(func() (*rsa.PrivateKey, error) {
		if cfg.OAuthKey != nil {
			return cfg.OAuthKey, nil
		}
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, fmt.Errorf("authentiktest: generate oauth key: %w", err)
		}
		return k, nil
	})
	if err := s.initState(); err != nil {
		return nil, err
	}
	s.handler = s.middleware(s.routes())
	ln, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("authentiktest: listen %s: %w", cfg.Addr, err)
	}
	s.addr = ln.Addr().String()
	s.serve(ln)
	return s, nil
}

func (s *Server) serve(ln net.Listener) {
	srv := &http.Server{Handler: s.handler, ReadHeaderTimeout: 10 * time.Second}
	s.srvMu.Lock()
	s.srv, s.ln = srv, ln
	s.srvMu.Unlock()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("authentiktest: serve", slog.Any("error", err))
		}
	}()
}

// URL is the base URL, e.g. "http://127.0.0.1:41234" (no trailing slash).
func (s *Server) URL() string { return "http://" + s.Addr() }

// Addr is the host:port the server listens on (the same across Restart).
func (s *Server) Addr() string {
	s.srvMu.Lock()
	defer s.srvMu.Unlock()
	return s.addr
}

// Handler serves the simulator without a listener (e.g. for httptest).
func (s *Server) Handler() http.Handler { return s.handler }

// Close stops serving and drops open connections. The state is kept, so
// Restart can bring the same authentik back on the same address.
func (s *Server) Close() error {
	s.srvMu.Lock()
	srv := s.srv
	s.srv, s.ln = nil, nil
	s.srvMu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Close()
}

// Restart closes the listener if it is open and listens again on the same
// address, keeping all state (users, sessions, events).
func (s *Server) Restart() error {
	if err := s.Close(); err != nil {
		return fmt.Errorf("authentiktest: restart: %w", err)
	}
	var ln net.Listener
	var err error
	// The old socket may take a moment to be released.
	for i := 0; i < 50; i++ {
		ln, err = net.Listen("tcp", s.Addr())
		if err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		return fmt.Errorf("authentiktest: restart listen %s: %w", s.Addr(), err)
	}
	s.serve(ln)
	return nil
}

// SetFailMode makes every later request fail as mode says (FailNone heals).
func (s *Server) SetFailMode(mode FailMode) { s.failMode.Store(int32(mode)) }

// SetFailModeFor makes requests whose path starts with prefix fail as mode
// says, leaving the rest of the API healthy (FailNone removes the rule).
// For example "/api/v3/events/" takes only the event API down.
func (s *Server) SetFailModeFor(prefix string, mode FailMode) {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	if mode == FailNone {
		delete(s.pathFails, prefix)
		return
	}
	if s.pathFails == nil {
		s.pathFails = map[string]FailMode{}
	}
	s.pathFails[prefix] = mode
}

// SetDelay delays every later request by d before it is handled (0 heals).
// The delay ends early when the request's context is cancelled.
func (s *Server) SetDelay(d time.Duration) { s.delay.Store(int64(d)) }

// Requests returns how many requests reached path (any method, query
// ignored), including requests failed by SetFailMode.
func (s *Server) Requests(path string) int {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	return s.counts[path]
}

// RequestCounts returns a copy of the per-path request counts.
func (s *Server) RequestCounts() map[string]int {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// ResetRequestCounts zeroes the per-path request counts.
func (s *Server) ResetRequestCounts() {
	s.countMu.Lock()
	defer s.countMu.Unlock()
	s.counts = map[string]int{}
}

func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mode := FailMode(s.failMode.Load())
		s.countMu.Lock()
		s.counts[r.URL.Path]++
		if mode == FailNone {
			for prefix, m := range s.pathFails {
				if strings.HasPrefix(r.URL.Path, prefix) {
					mode = m
				}
			}
		}
		s.countMu.Unlock()
		if d := time.Duration(s.delay.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		switch mode {
		case Fail503:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"detail": "Service Unavailable"})
			return
		case FailClose:
			if hj, ok := w.(http.Hijacker); ok {
				if conn, _, err := hj.Hijack(); err == nil {
					_ = conn.Close()
					return
				}
			}
			panic(http.ErrAbortHandler)
		}
		s.mu.Lock()
		id := hex.EncodeToString(s.randBytes(16))
		s.mu.Unlock()
		w.Header().Set("X-authentik-id", id)
		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
		s.log.Debug("authentiktest: request", slog.String("method", r.Method), slog.String("path", r.URL.Path),
			slog.String("request_id", id))
		r.Body = http.MaxBytesReader(w, r.Body, 1<<20)
		s.checkSession(r)
		next.ServeHTTP(w, r)
	})
}

// requestIDKey holds the request id the middleware generated.
type requestIDKey struct{}

// checkSession runs what authentik's middleware does with a session before
// any view: from 2025.4 a session whose user is no longer active is logged
// out (a logout event naming the user; the request is answered 400 by the
// API, here it simply goes on anonymous), and with session binding on
// (BoundSessionMiddleware, network binding) a session used from another
// client IP than it logged in from is logged out and flushed, so the request
// goes on as anonymous.
func (s *Server) checkSession(r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.sessionFromRequest(r)
	if se == nil || !se.authenticated {
		return
	}
	u := s.state.users[se.userPK]
	switch {
	case u != nil && !u.isActive && s.atLeast(Version2025_4):
	case s.cfg.SessionBinding && se.boundIP != "" && se.boundIP != clientIP(r):
		s.state.bindingBreaks++
	default:
		return
	}
	delete(s.state.sessions, se.sid)
	s.record("logout", appSignals, eventUser(u), nil, r)
}

// BindingBreaks counts sessions ended by session binding.
func (s *Server) BindingBreaks() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.bindingBreaks
}

// releases maps each profile to the release /admin/version/ reports.
var releases = map[Version]string{
	Version2025_2: "2025.2.4", Version2025_4: "2025.4.3", Version2025_8: "2025.8.4",
	Version2026_2: "2026.2.2", Version2026_8: "2026.8.0",
}

// handleVersion serves /api/v3/admin/version/ (admins only, as authentik's
// RBAC has it).
func (s *Server) handleVersion(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	c := s.authAPI(w, r)
	s.mu.Unlock()
	if c == nil {
		return
	}
	if !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	v := releases[s.cfg.Version]
	writeJSON(w, http.StatusOK, map[string]any{"version_current": v, "version_latest": v, "version_latest_valid": true,
		"build_hash": "", "outdated": false, "outpost_outdated": false})
}
