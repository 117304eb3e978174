package authentiktest

import (
	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"

	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var usernamePattern = regexp.MustCompile(`^[\w.@+-]+$`)

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	// core: users
	mux.HandleFunc("GET /api/v3/core/users/me/{$}", s.handleMe)
	mux.HandleFunc("GET /api/v3/core/users/{$}", s.handleUserList)
	mux.HandleFunc("POST /api/v3/core/users/{$}", s.handleUserCreate)
	mux.HandleFunc("GET /api/v3/core/users/{id}/{$}", s.handleUserGet)
	mux.HandleFunc("PATCH /api/v3/core/users/{id}/{$}", s.handleUserUpdate)
	mux.HandleFunc("PUT /api/v3/core/users/{id}/{$}", s.handleUserUpdate)
	mux.HandleFunc("DELETE /api/v3/core/users/{id}/{$}", s.handleUserDelete)
	mux.HandleFunc("POST /api/v3/core/users/{id}/set_password/{$}", s.handleSetPassword)
	mux.HandleFunc("POST /api/v3/core/users/{id}/impersonate/{$}", s.handleImpersonate)
	mux.HandleFunc("GET /api/v3/core/users/impersonate_end/{$}", s.handleImpersonateEnd)
	// core: sessions
	mux.HandleFunc("GET /api/v3/core/authenticated_sessions/{$}", s.handleSessionList)
	mux.HandleFunc("GET /api/v3/core/authenticated_sessions/{uuid}/{$}", s.handleSessionGet)
	mux.HandleFunc("DELETE /api/v3/core/authenticated_sessions/{uuid}/{$}", s.handleSessionDelete)
	mux.HandleFunc("DELETE /api/v3/core/authenticated_sessions/bulk_delete/{$}", s.handleSessionBulkDelete)
	// core: brands, flows
	mux.HandleFunc("GET /api/v3/core/brands/{$}", s.handleBrandList)
	mux.HandleFunc("GET /api/v3/core/brands/current/{$}", s.handleBrandCurrent)
	mux.HandleFunc("GET /api/v3/flows/instances/{$}", s.handleFlowList)
	mux.HandleFunc("GET /api/v3/flows/instances/{slug}/{$}", s.handleFlowGet)
	mux.HandleFunc("GET /api/v3/flows/executor/{slug}/{$}", s.handleExecutor)
	mux.HandleFunc("POST /api/v3/flows/executor/{slug}/{$}", s.handleExecutor)
	mux.HandleFunc("GET /flows/-/default/{designation}/{$}", s.handleDefaultFlow)
	mux.HandleFunc("GET /if/flow/{slug}/{$}", s.handleFlowShell)
	// authenticators
	mux.HandleFunc("GET /api/v3/authenticators/all/{$}", s.handleDeviceAll)
	mux.HandleFunc("GET /api/v3/authenticators/admin/all/{$}", s.handleAdminDeviceAll)
	for _, t := range DeviceTypes {
		s.deviceRoutes(mux, t)
	}
	// events
	mux.HandleFunc("GET /api/v3/events/events/{$}", s.handleEventList)
	mux.HandleFunc("GET /api/v3/events/events/actions/{$}", s.handleEventActions)
	mux.HandleFunc("GET /api/v3/admin/version/{$}", s.handleVersion)
	mux.HandleFunc("GET /api/v3/events/events/{uuid}/{$}", s.handleEventGet)
	// OAuth2 / OpenID
	mux.HandleFunc("POST /application/o/token/{$}", s.handleToken)
	mux.HandleFunc("GET /application/o/{slug}/.well-known/openid-configuration", s.handleOIDCConfig)
	mux.HandleFunc("GET /application/o/{slug}/jwks/{$}", s.handleJWKS)
	mux.HandleFunc("GET /application/o/{slug}/end-session/{$}", s.handleEndSession)
	mux.HandleFunc("POST /application/o/{slug}/end-session/{$}", s.handleEndSession)
	mux.HandleFunc("GET /outpost.goauthentik.io/sign_out", s.handleOutpostSignOut)
	mux.HandleFunc("/api/v3/", func(w http.ResponseWriter, r *http.Request) {
		writeDetail(w, http.StatusNotFound, "Not found.")
	})
	return mux
}

// ---- responses ----

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeDetail writes authentik's GenericError {"detail": msg}.
func writeDetail(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"detail": msg})
}

// writeValidation writes a DRF ValidationError: field → messages.
func writeValidation(w http.ResponseWriter, fields map[string][]string) {
	writeJSON(w, http.StatusBadRequest, fields)
}

const (
	msgNoCredentials = "Authentication credentials were not provided."
	msgTokenInvalid  = "Token invalid/expired"
	msgForbidden     = "You do not have permission to perform this action."
	msgNotFound      = "No matching object found."
	msgCSRF          = "CSRF Failed: CSRF token missing or incorrect."
)

// pyTime formats t as Django REST framework does: ISO 8601 in UTC with "Z",
// microseconds, and (like Python's isoformat) no fraction when it is zero.
func pyTime(t time.Time) string {
	t = t.UTC()
	if t.Nanosecond()/1000 == 0 {
		return t.Format("2006-01-02T15:04:05Z")
	}
	return t.Format("2006-01-02T15:04:05.000000Z")
}

func pyTimePtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return pyTime(*t)
}

// ---- authentication ----

type caller struct {
	user    *user
	session *session // set when the session cookie authenticated the request
}

func (c *caller) admin() bool { return c.user.isSuper }

// authAPI authenticates an API request (bearer token or session cookie,
// with CSRF for unsafe methods under a cookie). It writes the refusal itself
// and returns nil. The caller holds s.mu.
func (s *Server) authAPI(w http.ResponseWriter, r *http.Request) *caller {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, key, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			writeDetail(w, http.StatusForbidden, msgNoCredentials)
			return nil
		}
		pk, ok := s.state.tokens[strings.TrimSpace(key)]
		u := s.state.users[pk]
		if !ok || u == nil || !u.isActive {
			writeDetail(w, http.StatusForbidden, msgTokenInvalid)
			return nil
		}
		return &caller{user: u}
	}
	se := s.sessionFromRequest(r)
	u := s.sessionUser(se)
	if u == nil {
		writeDetail(w, http.StatusForbidden, msgNoCredentials)
		return nil
	}
	if unsafeMethod(r.Method) && !s.csrfOK(r, se) {
		writeDetail(w, http.StatusForbidden, msgCSRF)
		return nil
	}
	se.lastUsed = s.now()
	return &caller{user: u, session: se}
}

// csrfOK checks the CSRF cookie and header against the session's token.
func (s *Server) csrfOK(r *http.Request, se *session) bool {
	if s.cfg.DisableCSRF {
		return true
	}
	ck, err := r.Cookie(CSRFCookieName)
	return err == nil && ck.Value == se.csrf && r.Header.Get(CSRFHeader) == se.csrf
}

func unsafeMethod(m string) bool {
	return m != http.MethodGet && m != http.MethodHead && m != http.MethodOptions
}

// clientIP is authentik's: the first X-Forwarded-For entry, else the peer.
func clientIP(r *http.Request) string {
	if xff := r.Header.Get("X-Forwarded-For"); xff != "" {
		first, _, _ := strings.Cut(xff, ",")
		if ip := net.ParseIP(strings.TrimSpace(first)); ip != nil {
			return ip.String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// decodeBody decodes a JSON object body into v (unknown fields allowed, as
// DRF ignores them). An empty body decodes to the zero value.
func decodeBody(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if len(strings.TrimSpace(string(b))) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("JSON parse error - %w", err)
	}
	return nil
}

func writeParseError(w http.ResponseWriter, err error) {
	writeDetail(w, http.StatusBadRequest, err.Error())
}

// pathInt reads a pk from the path as Django does (int() of the value: "٣"
// and " 3" are 3).
func pathInt(r *http.Request, name string) (int, bool) {
	n, ok := djparse.Int(r.PathValue(name))
	return int(n), ok && n > 0
}

// ---- pagination (authentik's Pagination) ----

var errInvalidPage = errors.New("Invalid page.")

type pageInfo struct {
	start, end int // slice bounds
	body       map[string]int
}

// paginate cuts count items into pages as Django's Paginator does.
func (s *Server) paginate(r *http.Request, count int) (pageInfo, error) {
	size := s.cfg.PageSize
	if v := r.URL.Query().Get("page_size"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			size = n
		}
	}
	page := 1
	if v := r.URL.Query().Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return pageInfo{}, errInvalidPage
		}
		page = n
	}
	pages := 1
	if count > 0 {
		pages = (count + size - 1) / size
	}
	if page > pages {
		return pageInfo{}, errInvalidPage
	}
	start := (page - 1) * size
	end := min(start+size, count)
	info := pageInfo{start: start, end: end, body: map[string]int{
		"count": count, "current": page, "total_pages": pages, "next": 0, "previous": 0,
		"start_index": 0, "end_index": 0,
	}}
	if count > 0 {
		info.body["start_index"] = start + 1
		info.body["end_index"] = end
	}
	if page < pages {
		info.body["next"] = page + 1
	}
	if page > 1 {
		info.body["previous"] = page - 1
	}
	return info, nil
}

// writePage writes {"pagination", "results", "autocomplete"} for items.
func (s *Server) writePage(w http.ResponseWriter, r *http.Request, items []any) {
	info, err := s.paginate(r, len(items))
	if err != nil {
		writeDetail(w, http.StatusNotFound, err.Error())
		return
	}
	results := items[info.start:info.end]
	if results == nil {
		results = []any{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"pagination": info.body, "results": results, "autocomplete": map[string]any{}})
}

// queryBool parses DRF boolean filters; ok is false when absent or invalid.
func queryBool(r *http.Request, name string) (val, ok bool) {
	switch strings.ToLower(r.URL.Query().Get(name)) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}
