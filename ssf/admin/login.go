package admin

import (
	"bytes"
	"crypto/subtle"
	"html"
	"io/fs"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// The dashboard's live view uses EventSource, which cannot send an
// Authorization header, and a browser cannot send one when the operator
// opens the page. When --admin-token is set the operator therefore posts
// the token once on /admin/login; the answer sets it as an HttpOnly,
// SameSite=Strict cookie scoped to /admin, which the guard accepts. These
// two handlers sit outside the guard (they are how one gets past it) and
// do its Host and Origin checks themselves.

// mountLogin adds the login routes to the admin server, outside the
// guard: GET and POST /admin/login and the form's stylesheet.
func (s *server) mountLogin(e *echo.Echo) {
	e.GET("/admin/login", s.loginPage)
	e.POST("/admin/login", s.login)
	e.GET("/admin/login.css", func(c echo.Context) error {
		if err := s.loginChecks(c.Request()); err != nil {
			return err
		}
		b, err := fs.ReadFile(webFS, "web/app.css")
		if err != nil {
			return err
		}
		securityHeaders(c.Response().Header())
		return c.Blob(http.StatusOK, "text/css; charset=utf-8", b)
	})
}

// loginPage serves the token form.
func (s *server) loginPage(c echo.Context) error {
	if err := s.loginChecks(c.Request()); err != nil {
		return err
	}
	return s.loginForm(c, http.StatusOK, "")
}

// loginForm serves the token form, with a message when one is given.
func (s *server) loginForm(c echo.Context, status int, msg string) error {
	b, err := fs.ReadFile(webFS, "web/login.html")
	if err != nil {
		return err
	}
	notice := ""
	if msg != "" {
		notice = `<p class="error" role="alert">` + html.EscapeString(msg) + `</p>`
	}
	b = bytes.Replace(b, []byte("<!--notice-->"), []byte(notice), 1)
	securityHeaders(c.Response().Header())
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.Blob(status, "text/html; charset=utf-8", b)
}

// endSession closes the request's dashboard session, if any.
func (s *server) endSession(r *http.Request) {
	if ck, err := r.Cookie(SessionCookie); err == nil {
		s.sessions.end(ck.Value)
	}
}

// login checks the posted token and sets the session cookie.
func (s *server) login(c echo.Context) error {
	r := c.Request()
	if err := s.loginChecks(r); err != nil {
		return err
	}
	token := s.token()
	if token == "" {
		// Without a token only loopback is served; nothing to log in to.
		return c.Redirect(http.StatusSeeOther, "/admin/dashboard/")
	}
	r.Body = http.MaxBytesReader(c.Response(), r.Body, 8<<10)
	if err := r.ParseForm(); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "the login form could not be read")
	}
	got := r.PostForm.Get("token")
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(token)) != 1 {
		s.cfg.Logger.Warn("dashboard login refused", "remote", r.RemoteAddr)
		return s.loginForm(c, http.StatusUnauthorized, "That is not the admin token. Try again.")
	}
	id, err := s.sessions.create(token)
	if err != nil {
		return err
	}
	c.SetCookie(&http.Cookie{Name: SessionCookie, Value: id, Path: "/admin", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(sessionTTL / time.Second)})
	s.cfg.Logger.Info("dashboard login", "remote", r.RemoteAddr)
	return c.Redirect(http.StatusSeeOther, "/admin/dashboard/")
}

// loginChecks applies the guard's Host and cross-site rules to the login
// routes.
func (s *server) loginChecks(r *http.Request) error {
	if !s.hostAllowed(r.Host) {
		return echo.NewHTTPError(http.StatusForbidden, "Host header not allowed for the admin API")
	}
	if o := r.Header.Get("Origin"); o != "" && !sameOrigin(o, r.Host) {
		return echo.NewHTTPError(http.StatusForbidden, "cross-origin requests are refused")
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return echo.NewHTTPError(http.StatusForbidden, "cross-site requests are refused")
	}
	return nil
}

// logout ends the dashboard session on the server and clears its cookie.
func (s *server) logout(c echo.Context) error {
	s.endSession(c.Request())
	c.SetCookie(&http.Cookie{Name: SessionCookie, Value: "", Path: "/admin", MaxAge: -1,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: c.Request().TLS != nil})
	return c.NoContent(http.StatusNoContent)
}
