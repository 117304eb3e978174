// Package admin serves the operator side of ssf-sidecar on --admin-listen:
// health, readiness, metrics, and a JSON API under /admin/ for streams, the
// outbox and signing keys. The CLI and the dashboard use the same API.
package admin

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// Transmitter is the stream side the admin API drives.
type Transmitter interface {
	AdminStreams(ctx context.Context) ([]ssf.Stream, error)
	AdminStream(ctx context.Context, id string) (ssf.Stream, error)
	AdminSetStatus(ctx context.Context, id, status, reason string) (ssf.Stream, error)
	AdminDeleteStream(ctx context.Context, id string) error
	AdminVerify(ctx context.Context, id, state string) error
}

// Keys is the signing-key side.
type Keys interface {
	List() []ssf.KeyInfo
	Rotate(ctx context.Context) (ssf.KeyInfo, error)
	// RotateNow rotates with the new key signing at once (a compromised
	// key), without waiting for the other replicas to publish it.
	RotateNow(ctx context.Context) (ssf.KeyInfo, error)
}

// Outbox is the delivery side.
type Outbox interface {
	Stats(ctx context.Context, streamID string) (outbox.StreamStats, error)
	AllStats(ctx context.Context) ([]outbox.StreamStats, error)
	DeadLetters(ctx context.Context, streamID string, limit int) ([]outbox.DeadLetter, error)
	Replay(ctx context.Context, streamID string, jtis []string) (int, error)
	Purge(ctx context.Context, streamID string, jtis []string) (int, error)
	History(ctx context.Context, streamID string, limit int) ([]outbox.Record, error)
}

// Check is one named health check: nil means healthy. Checks report; they
// never take the sidecar out of rotation.
type Check struct {
	Name string
	Run  func(ctx context.Context) error
}

// Config wires the admin server.
type Config struct {
	// Token is the bearer token the admin API requires. Empty: only
	// loopback peers are served.
	Token string
	// TokenFunc, when set, is asked for the token on every request instead
	// of Token, so a reloaded configuration can rotate it.
	TokenFunc func() string
	// AllowedHosts are extra Host names accepted besides loopback names and
	// IP literals (DNS-rebinding protection).
	AllowedHosts []string
	Transmitter  Transmitter
	Keys         Keys
	Outbox       Outbox
	Health       []Check
	// Ready reports whether the sidecar can take traffic (listeners up,
	// store open).
	Ready func() error
	// Metrics serves /metrics (Prometheus text); nil answers 404.
	Metrics http.Handler
	// Reload, when set, re-reads the configuration (POST /admin/reload)
	// and returns what changed.
	Reload func(ctx context.Context) (any, error)
	// Extra mounts more authenticated routes (the dashboard).
	Extra  func(g *echo.Group)
	Logger *slog.Logger
}

// Validate reports every missing piece at once.
func (c Config) Validate() error {
	var errs []error
	if c.Transmitter == nil {
		errs = append(errs, errors.New("admin: Transmitter is required"))
	}
	if c.Keys == nil {
		errs = append(errs, errors.New("admin: Keys is required"))
	}
	if c.Outbox == nil {
		errs = append(errs, errors.New("admin: Outbox is required"))
	}
	if c.Ready == nil {
		errs = append(errs, errors.New("admin: Ready is required"))
	}
	return errors.Join(errs...)
}

// New builds the admin HTTP handler.
func New(cfg Config) (http.Handler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := newServer(cfg)
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = s.errorHandler
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", func(c echo.Context) error {
		if cfg.Metrics == nil {
			return echo.ErrNotFound
		}
		cfg.Metrics.ServeHTTP(c.Response(), c.Request())
		return nil
	})
	s.mountLogin(e)
	g := e.Group("/admin", s.guard)
	g.GET("/streams", s.listStreams)
	g.GET("/streams/:id", s.showStream)
	g.POST("/streams/:id/pause", s.setStatus("paused"))
	g.POST("/streams/:id/resume", s.setStatus("enabled"))
	g.POST("/streams/:id/disable", s.setStatus("disabled"))
	g.POST("/streams/:id/verify", s.verify)
	g.DELETE("/streams/:id", s.deleteStream)
	g.GET("/keys", s.listKeys)
	g.POST("/keys/rotate", s.rotateKey)
	g.GET("/outbox", s.allStats)
	g.GET("/outbox/:id", s.stats)
	g.GET("/outbox/:id/dlq", s.deadLetters)
	g.GET("/outbox/:id/history", s.history)
	g.POST("/outbox/:id/replay", s.deadLetterAction("replay", "replayed", cfg.Outbox.Replay))
	g.POST("/outbox/:id/purge", s.deadLetterAction("purge", "purged", cfg.Outbox.Purge))
	g.POST("/dashboard/logout", s.logout)
	g.POST("/reload", s.reload)
	if cfg.Extra != nil {
		cfg.Extra(g)
	}
	return e, nil
}

type server struct {
	cfg      Config
	sessions *sessionStore
}

func newServer(cfg Config) *server {
	return &server{cfg: cfg, sessions: newSessionStore(time.Now)}
}

// token is the admin token in force now ("" when none is configured).
func (s *server) token() string {
	if s.cfg.TokenFunc != nil {
		return s.cfg.TokenFunc()
	}
	return s.cfg.Token
}

// apiError is the admin API's error body.
type apiError struct {
	Error       string `json:"error"`
	Description string `json:"description"`
}

func (s *server) errorHandler(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	status, code, msg := http.StatusInternalServerError, "internal_error", "internal error"
	var he *echo.HTTPError
	switch {
	case errors.Is(err, ssf.ErrNotFound):
		status, code, msg = http.StatusNotFound, "not_found", "no such stream"
	case errors.As(err, &he):
		status = he.Code
		code = strings.ReplaceAll(strings.ToLower(http.StatusText(status)), " ", "_")
		msg = fmt.Sprint(he.Message)
	default:
		s.cfg.Logger.Error("admin request failed", "path", c.Path(), "err", err)
	}
	if status == http.StatusUnauthorized {
		c.Response().Header().Set("WWW-Authenticate", `Bearer realm="ssf-sidecar admin"`)
	}
	_ = c.JSON(status, apiError{Error: code, Description: msg})
}

// guard enforces the admin API's protection: DNS-rebinding-safe Host,
// same-origin Origin, the bearer token (or a loopback peer when no token is
// configured), and a JSON or custom header on state-changing requests so a
// cross-site form cannot reach them.
func (s *server) guard(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		if !s.hostAllowed(r.Host) {
			return echo.NewHTTPError(http.StatusForbidden, "Host header not allowed for the admin API")
		}
		if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
			return echo.NewHTTPError(http.StatusForbidden, "cross-origin requests are refused")
		}
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
			return echo.NewHTTPError(http.StatusForbidden, "cross-site requests are refused")
		}
		if tok := s.token(); tok != "" {
			via, ok := s.authorized(r, tok)
			c.Set(authKey, via)
			if !ok {
				if wantsPage(r) {
					// A person opening the dashboard: the token form, not JSON.
					return c.Redirect(http.StatusSeeOther, "/admin/login")
				}
				return echo.NewHTTPError(http.StatusUnauthorized, "a valid admin bearer token is required")
			}
		} else if c.Set(authKey, "loopback"); !isLoopback(r.RemoteAddr) {
			return echo.NewHTTPError(http.StatusUnauthorized, "no --admin-token is configured, so only loopback clients are served")
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			ct := r.Header.Get("Content-Type")
			if !strings.HasPrefix(ct, "application/json") && r.Header.Get("X-SSF-Admin") == "" {
				return echo.NewHTTPError(http.StatusForbidden, "state-changing admin requests need Content-Type: application/json or an X-SSF-Admin header")
			}
		}
		return next(c)
	}
}

// authorized accepts the bearer token, or a dashboard session opened with
// the current token.
func (s *server) authorized(r *http.Request, want string) (string, bool) {
	h := r.Header.Get("Authorization")
	const prefix = "bearer "
	if len(h) <= len(prefix) || !strings.EqualFold(h[:len(prefix)], prefix) {
		// The dashboard's EventSource cannot set headers; it uses a session.
		if ck, err := r.Cookie(SessionCookie); err == nil {
			return "session", s.sessions.valid(ck.Value, want)
		}
		return "", false
	}
	return "bearer", subtle.ConstantTimeCompare([]byte(strings.TrimSpace(h[len(prefix):])), []byte(want)) == 1
}

// authKey is the echo context key of how a request was let in.
const authKey = "ssf.admin.auth"

// authOf is how the request was let in ("" when unknown).
func authOf(c echo.Context) string {
	v, _ := c.Get(authKey).(string)
	return v
}

// wantsPage reports whether r is a browser navigating to a dashboard page.
func wantsPage(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/admin/dashboard") &&
		!strings.HasPrefix(r.URL.Path, "/admin/dashboard/api/") && !strings.HasPrefix(r.URL.Path, "/admin/dashboard/events") &&
		strings.Contains(r.Header.Get("Accept"), "text/html")
}

// reload runs the configured reload; 409 with the reason when the new
// configuration is refused (the old one stays in force).
func (s *server) reload(c echo.Context) error {
	if s.cfg.Reload == nil {
		return echo.NewHTTPError(http.StatusNotImplemented, "this sidecar cannot reload its configuration (only serve can)")
	}
	res, err := s.cfg.Reload(c.Request().Context())
	if err != nil {
		return echo.NewHTTPError(http.StatusConflict, "reload refused, the configuration in force is kept: "+err.Error())
	}
	return c.JSON(http.StatusOK, res)
}

// SessionCookie is the cookie that carries a dashboard session id.
const SessionCookie = "ssf_admin"

func (s *server) hostAllowed(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	h = strings.Trim(h, "[]")
	if h == "" {
		return false
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	if ip := net.ParseIP(h); ip != nil {
		return true
	}
	// Names public DNS cannot hand out, so no rebinding page can use
	// them: a single label (a Kubernetes Service in the same namespace)
	// and in-cluster Service names.
	lh := strings.ToLower(strings.TrimSuffix(h, "."))
	if !strings.Contains(lh, ".") || strings.HasSuffix(lh, ".svc") || strings.HasSuffix(lh, ".svc.cluster.local") {
		return validHostname(lh)
	}
	for _, a := range s.cfg.AllowedHosts {
		if strings.EqualFold(a, h) {
			return true
		}
	}
	return false
}

func sameOrigin(origin, host string) bool {
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return false
	}
	return strings.EqualFold(u.Host, host)
}

func isLoopback(remote string) bool {
	h, _, err := net.SplitHostPort(remote)
	if err != nil {
		h = remote
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// health answers 200 while the process is alive, with each check's result;
// "degraded" tells operators something needs attention.
func (s *server) healthz(c echo.Context) error {
	ctx, cancel := context.WithTimeout(c.Request().Context(), 3*time.Second)
	defer cancel()
	type result struct {
		Status string `json:"status"`
		Error  string `json:"error,omitempty"`
	}
	out := struct {
		Status string            `json:"status"`
		Checks map[string]result `json:"checks"`
	}{Status: "ok", Checks: map[string]result{}}
	for _, ch := range s.cfg.Health {
		if err := ch.Run(ctx); err != nil {
			out.Status = "degraded"
			out.Checks[ch.Name] = result{Status: "failing", Error: err.Error()}
		} else {
			out.Checks[ch.Name] = result{Status: "ok"}
		}
	}
	return c.JSON(http.StatusOK, out)
}

func (s *server) readyz(c echo.Context) error {
	if err := s.cfg.Ready(); err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

func (s *server) listStreams(c echo.Context) error {
	st, err := s.cfg.Transmitter.AdminStreams(c.Request().Context())
	if err != nil {
		return err
	}
	if st == nil {
		st = []ssf.Stream{}
	}
	return c.JSON(http.StatusOK, st)
}

func (s *server) showStream(c echo.Context) error {
	st, err := s.cfg.Transmitter.AdminStream(c.Request().Context(), c.Param("id"))
	if err != nil {
		return err
	}
	stats, err := s.cfg.Outbox.Stats(c.Request().Context(), st.ID)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, struct {
		ssf.Stream
		Outbox outbox.StreamStats `json:"outbox"`
	}{st, stats})
}

type statusBody struct {
	Reason string `json:"reason"`
	State  string `json:"state"`
}

func bind(c echo.Context, v any) error {
	if c.Request().ContentLength == 0 {
		return nil
	}
	c.Request().Body = http.MaxBytesReader(c.Response(), c.Request().Body, 1<<20)
	if err := (&echo.DefaultBinder{}).BindBody(c, v); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "request body is not valid JSON")
	}
	return nil
}

func (s *server) setStatus(status string) echo.HandlerFunc {
	return func(c echo.Context) error {
		var b statusBody
		if err := bind(c, &b); err != nil {
			return err
		}
		if b.Reason == "" && status != "enabled" {
			// Enabled needs no reason: the pause's reason must not stay
			// shown on a stream that runs again.
			b.Reason = "set by the transmitter's operator"
		}
		st, err := s.cfg.Transmitter.AdminSetStatus(c.Request().Context(), c.Param("id"), status, b.Reason)
		if err != nil {
			return err
		}
		s.cfg.Logger.Info("stream status changed by operator", "stream_id", st.ID, "status", status)
		return c.JSON(http.StatusOK, st)
	}
}

func (s *server) verify(c echo.Context) error {
	var b statusBody
	if err := bind(c, &b); err != nil {
		return err
	}
	if err := s.cfg.Transmitter.AdminVerify(c.Request().Context(), c.Param("id"), b.State); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *server) deleteStream(c echo.Context) error {
	if err := s.cfg.Transmitter.AdminDeleteStream(c.Request().Context(), c.Param("id")); err != nil {
		return err
	}
	s.cfg.Logger.Info("stream deleted by operator", "stream_id", c.Param("id"))
	return c.NoContent(http.StatusNoContent)
}

func (s *server) listKeys(c echo.Context) error {
	return c.JSON(http.StatusOK, s.cfg.Keys.List())
}

// rotateBody is the body of POST /keys/rotate: now signs with the new key
// at once.
type rotateBody struct {
	Now bool `json:"now"`
}

func (s *server) rotateKey(c echo.Context) error {
	var b rotateBody
	if err := bind(c, &b); err != nil {
		return err
	}
	rotate := s.cfg.Keys.Rotate
	if b.Now {
		rotate = s.cfg.Keys.RotateNow
	}
	k, err := rotate(c.Request().Context())
	if err != nil {
		return echo.NewHTTPError(http.StatusConflict, err.Error())
	}
	s.cfg.Logger.Info("signing key rotated by operator", "kid", k.KID)
	return c.JSON(http.StatusOK, k)
}

// stream resolves :id to a known stream so unknown ids answer 404.
func (s *server) stream(c echo.Context) (string, error) {
	st, err := s.cfg.Transmitter.AdminStream(c.Request().Context(), c.Param("id"))
	if err != nil {
		return "", err
	}
	return st.ID, nil
}

func (s *server) allStats(c echo.Context) error {
	st, err := s.cfg.Outbox.AllStats(c.Request().Context())
	if err != nil {
		return err
	}
	if st == nil {
		st = []outbox.StreamStats{}
	}
	return c.JSON(http.StatusOK, st)
}

func (s *server) stats(c echo.Context) error {
	id, err := s.stream(c)
	if err != nil {
		return err
	}
	st, err := s.cfg.Outbox.Stats(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, st)
}

func limitParam(c echo.Context, def int) (int, error) {
	v := c.QueryParam("limit")
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > 100000 {
		return 0, echo.NewHTTPError(http.StatusBadRequest, "limit must be a whole number from 1 to 100000")
	}
	return n, nil
}

func (s *server) deadLetters(c echo.Context) error {
	id, err := s.stream(c)
	if err != nil {
		return err
	}
	n, err := limitParam(c, 100)
	if err != nil {
		return err
	}
	dl, err := s.cfg.Outbox.DeadLetters(c.Request().Context(), id, n)
	if err != nil {
		return err
	}
	if dl == nil {
		dl = []outbox.DeadLetter{}
	}
	return c.JSON(http.StatusOK, dl)
}

func (s *server) history(c echo.Context) error {
	id, err := s.stream(c)
	if err != nil {
		return err
	}
	n, err := limitParam(c, 200)
	if err != nil {
		return err
	}
	h, err := s.cfg.Outbox.History(c.Request().Context(), id, n)
	if err != nil {
		return err
	}
	if h == nil {
		h = []outbox.Record{}
	}
	return c.JSON(http.StatusOK, h)
}

type jtiBody struct {
	JTIs []string `json:"jtis"`
}

// deadLetterAction applies replay or purge to the jtis named in the body; an
// empty list means every dead letter of the stream.
func (s *server) deadLetterAction(verb, done string, act func(ctx context.Context, id string, jtis []string) (int, error)) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := s.stream(c)
		if err != nil {
			return err
		}
		var b jtiBody
		if err := bind(c, &b); err != nil {
			return err
		}
		if len(b.JTIs) == 0 {
			b.JTIs = nil
		}
		n, err := act(c.Request().Context(), id, b.JTIs)
		if err != nil {
			return err
		}
		s.cfg.Logger.Info("dead letters "+done+" by operator", "stream_id", id, "action", verb, "count", n)
		return c.JSON(http.StatusOK, map[string]int{done: n})
	}
}

// validHostname reports whether h is made of DNS labels only.
func validHostname(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return false
		}
		for _, c := range l {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}
