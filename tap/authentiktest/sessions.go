package authentiktest

import (
	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"

	"net/http"
	"sort"
)

func (s *Server) usernameOf(pk int) string {
	if u := s.state.users[pk]; u != nil {
		return u.username
	}
	return ""
}

func (s *Server) sessionJSON(se *session, c *caller) map[string]any {
	return map[string]any{
		"uuid":    se.uuid,
		"current": c.session == se,
		"user_agent": map[string]any{
			"device":     map[string]any{"brand": "", "family": "Other", "model": ""},
			"os":         map[string]any{"family": "Other", "major": "", "minor": "", "patch": "", "patch_minor": ""},
			"user_agent": map[string]any{"family": "Other", "major": "", "minor": "", "patch": ""},
			"string":     se.userAgent,
		},
		"geo_ip":          nil,
		"asn":             nil,
		"user":            se.userPK,
		"last_ip":         se.lastIP,
		"last_user_agent": se.userAgent,
		"last_used":       pyTime(se.lastUsed),
		"expires":         pyTime(se.expires),
	}
}

// visibleSession reports whether c may see se: admins see all, others their own.
func visibleSession(c *caller, se *session) bool { return c.admin() || se.userPK == c.user.pk }

func (s *Server) handleSessionList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	var items []any
	list := s.authSessions()
	// authentik orders sessions by user__username.
	sort.SliceStable(list, func(i, j int) bool {
		return s.usernameOf(list[i].userPK) < s.usernameOf(list[j].userPK)
	})
	for _, se := range list {
		if !visibleSession(c, se) {
			continue
		}
		if v := q.Get("user__username"); v != "" {
			if u := s.state.users[se.userPK]; u == nil || u.username != v {
				continue
			}
		}
		if v := q.Get("session__last_ip"); v != "" && se.lastIP != v {
			continue
		}
		if v := q.Get("session__last_user_agent"); v != "" && se.userAgent != v {
			continue
		}
		items = append(items, s.sessionJSON(se, c))
	}
	s.writePage(w, r, items)
}

func (s *Server) sessionFor(w http.ResponseWriter, r *http.Request, c *caller) *session {
	se := s.sessionByUUID(r.PathValue("uuid"))
	if se == nil || !visibleSession(c, se) {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return nil
	}
	return se
}

func (s *Server) handleSessionGet(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	if se := s.sessionFor(w, r, c); se != nil {
		writeJSON(w, http.StatusOK, s.sessionJSON(se, c))
	}
}

// handleSessionDelete revokes one session. Like authentik, it records no
// event (AuthenticatedSession is excluded from the audit log).
func (s *Server) handleSessionDelete(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	se := s.sessionFor(w, r, c)
	if se == nil {
		return
	}
	delete(s.state.sessions, se.sid)
	w.WriteHeader(http.StatusNoContent)
}

// handleSessionBulkDelete revokes all sessions of the users in user_pks
// (admin only); 200 {"deleted": n}. No events.
func (s *Server) handleSessionBulkDelete(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.atLeast(Version2026_2) {
		// before 2026.2 the path is a detail route for uuid "bulk_delete"
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return
	}
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	if !c.admin() {
		writeDetail(w, http.StatusForbidden, msgForbidden)
		return
	}
	raw := r.URL.Query()["user_pks"]
	if len(raw) == 0 {
		writeValidation(w, map[string][]string{"user_pks": {"This field is required."}})
		return
	}
	var pks []int
	for _, v := range raw {
		n, ok := djparse.Int(v) // DRF's IntegerField: Python's int()
		if !ok {
			writeValidation(w, map[string][]string{"user_pks": {"A valid integer is required."}})
			return
		}
		pks = append(pks, int(n))
	}
	deleted := 0
	for _, pk := range pks {
		deleted += s.deleteUserSessions(pk)
	}
	writeJSON(w, http.StatusOK, map[string]int{"deleted": deleted})
}
