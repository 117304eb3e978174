package authentiktest

import (
	"encoding/json"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"
)

func flowJSON(f *flow) map[string]any {
	return map[string]any{
		"pk": f.pk, "policybindingmodel_ptr_id": f.pk, "name": f.name, "slug": f.slug, "title": f.title,
		"designation": f.designation, "background": "", "background_url": "/static/dist/assets/images/flow_background.jpg",
		"background_themed_urls": nil, "stages": []string{}, "policies": []string{}, "cache_count": 0,
		"policy_engine_mode": "any", "compatibility_mode": false,
		"export_url": "/api/v3/flows/instances/" + f.slug + "/export/", "layout": "stacked",
		"denied_action": "message_continue", "authentication": f.authentication,
	}
}

func (s *Server) handleFlowList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	var items []any
	if c.admin() { // RBAC: others hold no view_flow and see nothing
		for _, f := range s.state.flows {
			if (q.Get("designation") != "" && f.designation != q.Get("designation")) ||
				(q.Get("slug") != "" && f.slug != q.Get("slug")) ||
				(q.Get("flow_uuid") != "" && f.pk != q.Get("flow_uuid")) ||
				(q.Get("name") != "" && f.name != q.Get("name")) {
				continue
			}
			items = append(items, flowJSON(f))
		}
	}
	s.writePage(w, r, items)
}

func (s *Server) handleFlowGet(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	f := s.flowBySlug(r.PathValue("slug"))
	if f == nil || !c.admin() {
		writeDetail(w, http.StatusNotFound, msgNotFound)
		return
	}
	writeJSON(w, http.StatusOK, flowJSON(f))
}

func (s *Server) handleBrandList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	var items []any
	if c.admin() {
		uuidOf := func(k flowKind) any { return s.flowOf(k).pk }
		items = append(items, map[string]any{
			"brand_uuid": s.state.brandUUID, "domain": "authentik-default", "default": true,
			"branding_title": "authentik", "branding_logo": "/static/dist/assets/icons/icon_left_brand.svg",
			"branding_favicon": "/static/dist/assets/icons/icon.png", "branding_custom_css": "",
			"branding_default_flow_background": "/static/dist/assets/images/flow_background.jpg",
			"flow_authentication":              uuidOf(kindAuthentication), "flow_invalidation": uuidOf(kindInvalidation),
			"flow_recovery": nil, "flow_unenrollment": nil, "flow_user_settings": uuidOf(kindUserSettings),
			"flow_device_code": nil, "default_application": nil, "web_certificate": nil,
			"client_certificates": []string{}, "attributes": map[string]any{},
		})
	}
	s.writePage(w, r, items)
}

// handleBrandCurrent serves CurrentBrand, which names flows by slug; it
// needs no authentication.
func (s *Server) handleBrandCurrent(w http.ResponseWriter, r *http.Request) {
	fl := s.Flows()
	writeJSON(w, http.StatusOK, map[string]any{
		"matched_domain": "authentik-default", "branding_title": "authentik",
		"branding_logo": "/static/dist/assets/icons/icon_left_brand.svg", "branding_logo_themed_urls": nil,
		"branding_favicon": "/static/dist/assets/icons/icon.png", "branding_favicon_themed_urls": nil,
		"branding_custom_css": "", "ui_footer_links": []any{}, "ui_theme": "automatic",
		"flow_authentication": fl.Authentication, "flow_invalidation": fl.Invalidation,
		"flow_user_settings": fl.UserSettings, "default_locale": "",
		"flags": map[string]bool{"enterprise_audit_include_expanded_diff": false, "policies_buffered_access_view": false,
			"flows_continuous_login": false, "flows_refresh_others": false},
	})
}

// handleDefaultFlow redirects /flows/-/default/<designation>/ to the
// brand's flow, as authentik's ToDefaultFlow does.
func (s *Server) handleDefaultFlow(w http.ResponseWriter, r *http.Request) {
	var slug string
	switch r.PathValue("designation") {
	case "invalidation":
		slug = s.Flows().Invalidation
	case "authentication":
		slug = s.Flows().Authentication
	default:
		http.NotFound(w, r)
		return
	}
	http.Redirect(w, r, "/if/flow/"+slug+"/", http.StatusFound)
}

func (s *Server) handleFlowShell(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	f := s.flowBySlug(r.PathValue("slug"))
	s.mu.Unlock()
	if f == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!DOCTYPE html><html><head><title>%s</title></head><body><ak-flow-executor flowSlug=%q></ak-flow-executor></body></html>\n",
		html.EscapeString(f.title), html.EscapeString(f.slug))
}

// handleEndSession is OIDC RP-initiated logout: it only redirects to the
// invalidation flow; the logout happens on the executor request.
func (s *Server) handleEndSession(w http.ResponseWriter, r *http.Request) {
	if s.application(r.PathValue("slug")) == nil {
		http.NotFound(w, r)
		return
	}
	http.Redirect(w, r, "/if/flow/"+s.Flows().Invalidation+"/", http.StatusFound)
}

// handleOutpostSignOut imitates a proxy outpost's sign-out: a redirect to
// the invalidation flow, nothing more.
func (s *Server) handleOutpostSignOut(w http.ResponseWriter, r *http.Request) {
	http.Redirect(w, r, "/if/flow/"+s.Flows().Invalidation+"/", http.StatusFound)
}

// ---- flow executor ----

type challengeError struct {
	String string `json:"string"`
	Code   string `json:"code"`
}

func respErrors(field, msg string) map[string][]challengeError {
	return map[string][]challengeError{field: {{String: msg, Code: "invalid"}}}
}

func (s *Server) flowInfo(f *flow) map[string]any {
	return map[string]any{"title": f.title, "background": "/static/dist/assets/images/flow_background.jpg",
		"cancel_url": "/flows/-/cancel/", "layout": "stacked"}
}

func redirectChallenge() map[string]any {
	return map[string]any{"component": "xak-flow-redirect", "to": "/"}
}

func (s *Server) accessDenied(f *flow) map[string]any {
	return map[string]any{"component": "ak-stage-access-denied", "flow_info": s.flowInfo(f),
		"error_message": "Flow does not apply to current user."}
}

// flowBody is the union of the challenge responses the simulator accepts.
type flowBody struct {
	Component      string `json:"component"`
	UIDField       string `json:"uid_field"`
	Password       string `json:"password"`
	PasswordRepeat string `json:"password_repeat"`
	Code           string `json:"code"`
	Username       string `json:"username"`
	Name           string `json:"name"`
	Email          string `json:"email"`
}

// parseFlowBody decodes a flow executor POST body.
func parseFlowBody(b []byte) (flowBody, error) {
	var fb flowBody
	if len(strings.TrimSpace(string(b))) == 0 {
		return fb, nil
	}
	if err := json.Unmarshal(b, &fb); err != nil {
		return flowBody{}, fmt.Errorf("JSON parse error - %w", err)
	}
	return fb, nil
}

func (s *Server) handleExecutor(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flowBySlug(r.PathValue("slug"))
	if f == nil {
		writeDetail(w, http.StatusNotFound, "No Flow matches the given query.")
		return
	}
	var body flowBody
	if r.Method == http.MethodPost {
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			writeParseError(w, fmt.Errorf("read body: %w", err))
			return
		}
		fb, err := parseFlowBody(raw)
		if err != nil {
			writeParseError(w, err)
			return
		}
		body = fb
	}
	se := s.sessionFromRequest(r)
	if se == nil {
		se = s.newSession(clientIP(r), r.UserAgent())
		s.setSessionCookies(w, se)
	}
	se.lastUsed = s.now()
	u := s.sessionUser(se)
	if u != nil && r.Method == http.MethodPost && !s.csrfOK(r, se) {
		// DRF's SessionAuthentication enforces CSRF for authenticated sessions,
		// on the executor as on any API view.
		writeDetail(w, http.StatusForbidden, msgCSRF)
		return
	}
	var out map[string]any
	switch f.kind {
	case kindAuthentication:
		out = s.execLogin(w, r, f, se, body)
	case kindInvalidation:
		out = s.execLogout(w, r, se, u)
	case kindPasswordChange:
		out = s.execPasswordChange(w, r, f, se, u, body)
	case kindTOTPSetup:
		out = s.execTOTPSetup(w, r, f, se, u, body)
	case kindUserSettings:
		out = s.execUserSettings(w, r, f, se, u, body)
	}
	if out != nil { // nil: the stage answered with a redirect already
		writeJSON(w, http.StatusOK, out)
	}
}

func (s *Server) identificationChallenge(f *flow, errs any) map[string]any {
	out := map[string]any{"component": "ak-stage-identification", "flow_info": s.flowInfo(f),
		"user_fields": []string{"username", "email"}, "password_fields": true, "primary_action": "Log in",
		"show_source_labels": false, "sources": []any{}}
	if errs != nil {
		out["response_errors"] = errs
	}
	return out
}

// identify finds the user an identification stage names: by username, else
// by email (the lowest pk when several share it).
func (s *Server) identify(uid string) *user {
	if uid == "" {
		return nil
	}
	if u := s.userByUsername(uid); u != nil && u.pk != anonymousPK {
		return u
	}
	var found *user
	for _, c := range s.state.users {
		if c.pk != anonymousPK && c.email == uid && (found == nil || c.pk < found.pk) {
			found = c
		}
	}
	return found
}

// execLogin runs the authentication flow. Simplification: identification
// and password may come in one POST ({uid_field, password}) or two
// (ak-stage-identification, then ak-stage-password).
func (s *Server) execLogin(w http.ResponseWriter, r *http.Request, f *flow, se *session, b flowBody) map[string]any {
	if r.Method == http.MethodGet {
		se.pendingUser = 0
		return s.identificationChallenge(f, nil)
	}
	fail := func(uid string) map[string]any {
		se.pendingUser = 0
		s.record("login_failed", appSignals, eventUser(nil), map[string]any{"username": uid}, r)
		return s.identificationChallenge(f, respErrors("non_field_errors", "Failed to authenticate."))
	}
	var u *user
	password := b.Password
	switch b.Component {
	case "ak-stage-password":
		u = s.state.users[se.pendingUser]
		if u == nil {
			return s.identificationChallenge(f, nil)
		}
	default:
		u = s.identify(b.UIDField)
		if u == nil {
			return fail(b.UIDField)
		}
		if password == "" {
			se.pendingUser = u.pk
			return map[string]any{"component": "ak-stage-password", "flow_info": s.flowInfo(f), "pending_user": u.username,
				"pending_user_avatar": s.avatar(u)}
		}
	}
	if !u.isActive || u.password == "" || password != u.password {
		return fail(u.username)
	}
	se.lastIP, se.userAgent = clientIP(r), r.UserAgent()
	s.authenticate(se, u)
	s.setSessionCookies(w, se)
	// Django's update_last_login saves the user inside the request, so the
	// audit middleware logs model_updated (actor: the user) before login.
	u.lastUpdated = s.now()
	s.recordUserModel("model_updated", u, u, r)
	s.record("login", appSignals, eventUser(u), map[string]any{"auth_method": "password", "auth_method_args": map[string]any{}}, r)
	return redirectChallenge()
}

// cleansed is what authentik's cleanse_dict writes for secret-looking keys.
const cleansed = "********************"

// recordUserWrite writes the user_write event of a user_write stage: the
// prompt data (secrets masked) plus "created", user = the written user.
func (s *Server) recordUserWrite(u *user, data map[string]any, r *http.Request) {
	data["created"] = false
	s.record("user_write", appSignals, eventUser(u), data, r)
}

// execLogout runs the invalidation flow: the user logout stage ends the
// session (a logout event naming the user) and an anonymous session cookie
// replaces the old one.
func (s *Server) execLogout(w http.ResponseWriter, r *http.Request, se *session, u *user) map[string]any {
	// The user logout stage calls logout() whoever the caller is: for an
	// anonymous caller user_logged_out still fires and authentik records a
	// logout naming AnonymousUser.
	delete(s.state.sessions, se.sid)
	s.record("logout", appSignals, eventUser(u), nil, r)
	anon := s.newSession(clientIP(r), r.UserAgent())
	s.setSessionCookies(w, anon)
	return redirectChallenge()
}

func (s *Server) promptChallenge(f *flow, fields []map[string]any, errs any) map[string]any {
	out := map[string]any{"component": "ak-stage-prompt", "flow_info": s.flowInfo(f), "fields": fields}
	if errs != nil {
		out["response_errors"] = errs
	}
	return out
}

func promptField(key, typ, label string) map[string]any {
	return map[string]any{"field_key": key, "label": label, "type": typ, "required": true, "placeholder": label,
		"initial_value": "", "order": 0, "sub_text": "", "choices": nil}
}

var passwordFields = []map[string]any{
	promptField("password", "password", "Password"), promptField("password_repeat", "password", "Password (repeat)"),
}

// stayOnExecutor answers a stage that is not the flow's last the way
// authentik's executor does: stage_ok() redirects to the executor URL with
// the same query, and since that is the URL of this very request,
// to_stage_response() returns the redirect itself, an HTTP 302. The next
// stage runs on the browser's follow-up GET.
func stayOnExecutor(w http.ResponseWriter, r *http.Request) map[string]any {
	w.Header().Set("Location", r.URL.RequestURI())
	w.WriteHeader(http.StatusFound)
	return nil
}

// execPasswordChange runs a stage_configuration flow with a prompt stage for
// password and password_repeat (order 0), then a user_write stage (order
// 1): a valid prompt answer is a 302 to the executor and the password is set
// on the GET that follows.
func (s *Server) execPasswordChange(w http.ResponseWriter, r *http.Request, f *flow, se *session, u *user, b flowBody) map[string]any {
	if u == nil {
		return s.accessDenied(f)
	}
	if r.Method != http.MethodPost {
		pw := se.pendingWrite
		if pw == nil || pw.flow != f.slug {
			return s.promptChallenge(f, passwordFields, nil)
		}
		se.pendingWrite = nil
		s.setPassword(u, pw.password, u, r)
		s.recordUserWrite(u, map[string]any{"password": cleansed, "password_repeat": cleansed}, r)
		s.keepSessionAuth(se) // the user_write stage keeps the current session
		if s.atLeast(Version2025_4) {
			// update_session_auth_hash cycles the session key: same
			// AuthenticatedSession, new sid, new cookie
			delete(s.state.sessions, se.sid)
			se.sid = s.newSessionKey()
			s.state.sessions[se.sid] = se
			s.setSessionCookies(w, se)
		}
		return redirectChallenge()
	}
	switch {
	case b.Password == "":
		return s.promptChallenge(f, passwordFields, respErrors("password", "This field is required."))
	case b.Password != b.PasswordRepeat:
		return s.promptChallenge(f, passwordFields, respErrors("non_field_errors", "Passwords don't match."))
	}
	se.pendingWrite = &pendingWrite{flow: f.slug, password: b.Password}
	return stayOnExecutor(w, r)
}

// execUserSettings runs the user-settings flow: a prompt for username, name
// and email, then a user_write stage (model_updated by the user) on the
// follow-up GET.
func (s *Server) execUserSettings(w http.ResponseWriter, r *http.Request, f *flow, se *session, u *user, b flowBody) map[string]any {
	if u == nil {
		return s.accessDenied(f)
	}
	fields := []map[string]any{promptField("username", "text", "Username"), promptField("name", "text", "Name"),
		promptField("email", "email", "Email")}
	if r.Method != http.MethodPost {
		pw := se.pendingWrite
		if pw == nil || pw.flow != f.slug {
			return s.promptChallenge(f, fields, nil)
		}
		se.pendingWrite = nil
		// user_write validates again on write (the username may have been
		// taken meanwhile): the flow then ends in an error.
		if errs := s.validateUserWrite(pw.write, false, u); len(errs) > 0 {
			return map[string]any{"component": "ak-stage-flow-error", "flow_info": s.flowInfo(f), "error": "Failed to update user."}
		}
		applyUserWrite(u, pw.write)
		u.lastUpdated = s.now()
		s.recordUserModel("model_updated", u, u, r)
		s.recordUserWrite(u, pw.data, r)
		return redirectChallenge()
	}
	in := userWrite{}
	if b.Username != "" {
		in.Username = &b.Username
	}
	if b.Name != "" {
		in.Name = &b.Name
	}
	if b.Email != "" {
		in.Email = &b.Email
	}
	if errs := s.validateUserWrite(in, false, u); len(errs) > 0 {
		for k, v := range errs {
			return s.promptChallenge(f, fields, respErrors(k, v[0]))
		}
	}
	data := map[string]any{}
	for k, v := range map[string]string{"username": b.Username, "name": b.Name, "email": b.Email} {
		if v != "" {
			data[k] = v
		}
	}
	se.pendingWrite = &pendingWrite{flow: f.slug, write: in, data: data}
	return stayOnExecutor(w, r)
}

// execTOTPSetup runs an authenticator setup stage as authentik does: the
// device is kept unsaved in the flow while the user scans the code, and a
// POST with the right code saves it once, already confirmed (model_created;
// mfa_device_added under 2026.8). With Config.TOTPSetupNotLast another stage
// follows, so the accepted code is answered with a 302 to the executor.
func (s *Server) execTOTPSetup(w http.ResponseWriter, r *http.Request, f *flow, se *session, u *user, b flowBody) map[string]any {
	if u == nil {
		return s.accessDenied(f)
	}
	if se.pendingWrite != nil && se.pendingWrite.flow == f.slug && r.Method != http.MethodPost {
		se.pendingWrite = nil // the stage after the setup stage
		return redirectChallenge()
	}
	if r.Method != http.MethodPost || se.pendingTOTP != u.pk {
		se.pendingTOTP = u.pk
		return s.totpChallenge(f, u, nil)
	}
	if b.Code != s.cfg.TOTPCode {
		return s.totpChallenge(f, u, respErrors("code", "Code does not match"))
	}
	se.pendingTOTP = 0
	d := s.newDevice(DeviceTOTP, u.pk, "TOTP Device")
	s.recordDeviceModel("model_created", u, d, r)
	s.recordMFA("mfa_device_added", u, d, r)
	if s.cfg.TOTPSetupNotLast {
		se.pendingWrite = &pendingWrite{flow: f.slug}
		return stayOnExecutor(w, r)
	}
	return redirectChallenge()
}

func (s *Server) totpChallenge(f *flow, u *user, errs any) map[string]any {
	cfgURL := "otpauth://totp/authentik:" + url.PathEscape(u.username) + "?secret=JBSWY3DPEHPK3PXP&algorithm=SHA1&digits=6&period=30&issuer=authentik"
	out := map[string]any{"component": "ak-stage-authenticator-totp", "flow_info": s.flowInfo(f),
		"config_url": cfgURL, "pending_user": u.username, "pending_user_avatar": s.avatar(u)}
	if errs != nil {
		out["response_errors"] = errs
	}
	return out
}
