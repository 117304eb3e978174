package authentiktest

import (
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Apps that write events, as authentik names them in the `app` field.
const (
	appSignals    = "authentik.events.signals"
	appMiddleware = "authentik.events.middleware"
	appFlows      = "authentik.flows.views.executor"
)

// eventExpiry is how long authentik keeps events by default (about a year).
const eventExpiry = 365 * 24 * time.Hour

func eventUser(u *user) map[string]any {
	if u == nil {
		return map[string]any{"pk": anonymousPK, "email": "", "username": "AnonymousUser"}
	}
	return map[string]any{"pk": u.pk, "email": u.email, "username": u.username}
}

// httpContext is the context.http_request authentik records for r.
func httpContext(r *http.Request) map[string]any {
	args := map[string]any{}
	for k, v := range r.URL.Query() {
		if len(v) > 0 {
			args[k] = v[len(v)-1]
		}
	}
	ctx := map[string]any{"args": args, "path": r.URL.Path, "method": r.Method, "user_agent": r.UserAgent()}
	// authentik generates its own id per request (uuid4 hex) and ignores
	// any id the client sent; the response carries it as X-authentik-id.
	if id, ok := r.Context().Value(requestIDKey{}).(string); ok && id != "" {
		ctx["request_id"] = id
	}
	return ctx
}

func (s *Server) brandRef() map[string]any {
	return map[string]any{"pk": strings.ReplaceAll(s.state.brandUUID, "-", ""), "app": "authentik_brands",
		"name": "Default brand", "model_name": "brand"}
}

// record appends an event. r may be nil (no http context, authentik's
// fallback client_ip). The caller holds s.mu.
func (s *Server) record(action, app string, who map[string]any, ctx map[string]any, r *http.Request) *event {
	if ctx == nil {
		ctx = map[string]any{}
	}
	now := s.now()
	ev := &event{pk: s.newUUID(), user: who, action: action, app: app, context: ctx, created: now, expires: now.Add(eventExpiry)}
	ip := "255.255.255.255"
	if r != nil {
		// from_http: while a session impersonates, every event names the
		// original user with the impersonated one as on_behalf_of.
		if se := s.sessionFromRequest(r); se != nil && se.impersonating != 0 {
			ev.user = eventUser(s.state.users[se.userPK])
			ev.user["on_behalf_of"] = eventUser(s.state.users[se.impersonating])
		}
		ctx["http_request"] = httpContext(r)
		ip = clientIP(r)
		ev.brand = s.brandRef()
	}
	ev.clientIP = &ip
	s.state.events = append(s.state.events, ev)
	return ev
}

// recordModel writes model_created/updated/deleted the way authentik's audit
// middleware does: user = the acting user, context.model names the object,
// and (without an Enterprise licence) no diff.
func (s *Server) recordModel(action string, actor *user, app, model string, pk any, name string, r *http.Request) {
	s.record(action, appMiddleware, eventUser(actor), map[string]any{
		"model": map[string]any{"app": app, "model_name": model, "pk": pk, "name": name},
	}, r)
}

// recordUserModel logs a user row change. authentik's model_to_dict takes a
// model's `name` attribute when it has one, so a user is named by its
// display name, not its username.
func (s *Server) recordUserModel(action string, actor, target *user, r *http.Request) {
	s.recordModel(action, actor, "authentik_core", "user", target.pk, target.name, r)
}

func (s *Server) recordDeviceModel(action string, actor *user, d *device, r *http.Request) {
	m := deviceMetas[d.typ]
	s.recordModel(action, actor, m.app, m.model, d.pk, d.name, r)
}

func (s *Server) newer() bool { return s.cfg.Version == Version2026_8 }

// versionOrder ranks the imitated releases.
var versionOrder = map[Version]int{Version2025_2: 1, Version2025_4: 2, Version2025_8: 3, Version2026_2: 4, Version2026_8: 5}

// atLeast reports whether the imitated release is v or newer.
func (s *Server) atLeast(v Version) bool { return versionOrder[s.cfg.Version] >= versionOrder[v] }

// recordMFA writes the 2026.8 mfa_device_added/removed actions.
func (s *Server) recordMFA(action string, actor *user, d *device, r *http.Request) {
	if !s.newer() {
		return
	}
	owner := s.state.users[d.userPK]
	s.record(action, appSignals, eventUser(actor), map[string]any{
		"subject":    eventUser(owner),
		"mfa_device": map[string]any{"type": deviceMetas[d.typ].app + "." + deviceMetas[d.typ].model, "name": d.name, "pk": d.pk},
	}, r)
}

// recordPasswordSet writes password_set with user = whose password changed.
func (s *Server) recordPasswordSet(target *user, origin string, r *http.Request) {
	ctx := map[string]any{}
	if s.newer() {
		ctx["subject"] = eventUser(target)
		ctx["origin"] = origin
		ctx["synced_from_source"] = origin == "source_sync"
	}
	// Since 2025.2 on_password_changed records from_http(request, user):
	// the request context, and under impersonation user = the impersonating
	// admin with on_behalf_of (record applies that rewrite).
	s.record("password_set", appSignals, eventUser(target), ctx, r)
}

// ---- exported ----

// Event is a snapshot of an event record, with the fields of the API's Event.
type Event struct {
	PK       string
	User     map[string]any
	Action   string
	App      string
	Context  map[string]any
	ClientIP *string
	Created  time.Time
	Expires  time.Time
	Brand    map[string]any
}

func eventView(e *event) Event {
	return Event{PK: e.pk, User: e.user, Action: e.action, App: e.app, Context: e.context, ClientIP: e.clientIP,
		Created: e.created, Expires: e.expires, Brand: e.brand}
}

// JSON renders the event as the API does.
func (e Event) JSON() map[string]any {
	var ip any
	if e.ClientIP != nil {
		ip = *e.ClientIP
	}
	var brand any = map[string]any{}
	if e.Brand != nil {
		brand = e.Brand
	}
	u := e.User
	if u == nil {
		u = map[string]any{}
	}
	return map[string]any{"pk": e.PK, "user": u, "action": e.Action, "app": e.App, "context": e.Context,
		"client_ip": ip, "created": pyTime(e.Created), "expires": pyTime(e.Expires), "brand": brand}
}

// Events returns every recorded event in the order recorded. The maps are
// shared with the server and must not be modified.
func (s *Server) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Event, len(s.state.events))
	for i, e := range s.state.events {
		out[i] = eventView(e)
	}
	return out
}

// EventsByAction returns the recorded events with the given action.
func (s *Server) EventsByAction(action string) []Event {
	var out []Event
	for _, e := range s.Events() {
		if e.Action == action {
			out = append(out, e)
		}
	}
	return out
}

// EventSpec describes a raw event for RecordEvent.
type EventSpec struct {
	Action  string         // required
	App     string         // default "authentik.events.signals"
	UserPK  int            // 0 means the anonymous user
	Context map[string]any // default {}
	Created time.Time      // default the clock
}

// RecordEvent appends an arbitrary event (e.g. to build equal timestamps or
// actions the simulator does not produce) and returns its pk.
func (s *Server) RecordEvent(spec EventSpec) (string, error) {
	if spec.Action == "" {
		return "", fmt.Errorf("authentiktest: record event: action is required")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var u *user
	if spec.UserPK != 0 {
		u = s.state.users[spec.UserPK]
		if u == nil {
			return "", fmt.Errorf("authentiktest: record event: no user %d", spec.UserPK)
		}
	}
	app := spec.App
	if app == "" {
		app = appSignals
	}
	ev := s.record(spec.Action, app, eventUser(u), spec.Context, nil)
	if !spec.Created.IsZero() {
		ev.created = spec.Created.UTC()
		ev.expires = ev.created.Add(eventExpiry)
	}
	return ev.pk, nil
}

// SystemDisableUser deactivates a user as authentik's own background work
// does (LDAP or SCIM source sync in the worker, no HTTP request the proxy
// could see): is_active becomes false and nothing else happens. authentik's
// audit middleware logs model changes only inside HTTP requests, so there is
// no event, and the user's sessions are not deleted; from 2025.4 the
// session middleware logs such a user out on their next request (a logout
// event), before that their sessions just stop authenticating.
func (s *Server) SystemDisableUser(pk int) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.state.users[pk]
	if u == nil {
		return fmt.Errorf("authentiktest: system disable: no user %d", pk)
	}
	u.isActive = false
	u.lastUpdated = s.now()
	return nil
}

// SystemSetPassword sets a user's password outside any HTTP request, as a
// source sync (LDAP/Kerberos hash caching) does when origin is
// "source_sync". It records password_set (with origin and
// synced_from_source under Version2026_8).
func (s *Server) SystemSetPassword(pk int, password, origin string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := s.state.users[pk]
	if u == nil {
		return fmt.Errorf("authentiktest: system set password: no user %d", pk)
	}
	if origin == "" {
		origin = "unknown"
	}
	u.password = password
	u.passwordGen++
	u.passwordChangeDate = s.now()
	s.recordPasswordSet(u, origin, nil)
	return nil
}

// ---- API ----

func (s *Server) handleEventList(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	q := r.URL.Query()
	var list []*event
	if c.admin() { // RBAC: others hold no view_event permission and see nothing
		for _, e := range s.state.events {
			if eventMatches(e, q, s.atLeast(Version2025_8)) {
				list = append(list, e)
			}
		}
	}
	desc := true
	key := "created"
	if o := q.Get("ordering"); o != "" {
		desc = strings.HasPrefix(o, "-")
		key = strings.TrimPrefix(o, "-")
	}
	sort.SliceStable(list, func(i, j int) bool {
		a, b := list[i], list[j]
		var cmp int
		switch key {
		case "action":
			cmp = strings.Compare(a.action, b.action)
		case "app":
			cmp = strings.Compare(a.app, b.app)
		default:
			cmp = a.created.Compare(b.created)
		}
		if desc {
			cmp = -cmp
		}
		if cmp == 0 { // a database returns ties in no promised order; use the pk
			return a.pk < b.pk
		}
		return cmp < 0
	})
	items := make([]any, len(list))
	for i, e := range list {
		items[i] = eventView(e).JSON()
	}
	s.writePage(w, r, items)
}

// eventMatches applies the list filters; withActions is false below 2025.8,
// where django-filter ignores the unknown actions= parameter.
func eventMatches(e *event, q map[string][]string, withActions bool) bool {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	if acts := q["actions"]; withActions && len(acts) > 0 && !slices.Contains(acts, e.action) {
		return false
	}
	if a := get("action"); a != "" && !containsFold(e.action, a) {
		return false
	}
	if u := get("username"); u != "" && fmt.Sprint(e.user["username"]) != u {
		return false
	}
	if ip := get("client_ip"); ip != "" && (e.clientIP == nil || *e.clientIP != ip) {
		return false
	}
	if b := get("brand_name"); b != "" && (e.brand == nil || fmt.Sprint(e.brand["name"]) != b) {
		return false
	}
	model, _ := e.context["model"].(map[string]any)
	if v := get("context_model_app"); v != "" && (model == nil || fmt.Sprint(model["app"]) != v) {
		return false
	}
	if v := get("context_model_name"); v != "" && (model == nil || fmt.Sprint(model["model_name"]) != v) {
		return false
	}
	if v := get("context_model_pk"); v != "" {
		if model == nil {
			return false
		}
		want := strings.ReplaceAll(v, "-", "")
		got := fmt.Sprint(model["pk"])
		if got != want {
			if n, err := strconv.Atoi(v); err != nil || fmt.Sprint(n) != got {
				return false
			}
		}
	}
	if v := get("context_authorized_app"); v != "" {
		app, _ := e.context["authorized_application"].(map[string]any)
		if app == nil || fmt.Sprint(app["pk"]) != strings.ReplaceAll(v, "-", "") {
			return false
		}
	}
	return true
}

func (s *Server) handleEventGet(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.authAPI(w, r)
	if c == nil {
		return
	}
	id := r.PathValue("uuid")
	for _, e := range s.state.events {
		if c.admin() && e.pk == id {
			writeJSON(w, http.StatusOK, eventView(e).JSON())
			return
		}
	}
	writeDetail(w, http.StatusNotFound, msgNotFound)
}

// purgeUserEvents drops the events naming user pk (gdpr_compliance).
func (s *Server) purgeUserEvents(pk int) {
	if s.cfg.KeepEventsOfDeletedUsers {
		return
	}
	kept := s.state.events[:0]
	for _, e := range s.state.events {
		if n, ok := e.user["pk"].(int); ok && n == pk {
			continue
		}
		kept = append(kept, e)
	}
	s.state.events = kept
}

// LockdownUser runs an Account Lockdown stage (enterprise, newer than
// 2026.2; Version2026_8 only) on user pk, started by actorPK: the user is
// deactivated, their password made unusable (Django's set_unusable_password,
// which sends no password_changed, so no password_set), their sessions and
// tokens deleted, and user_lockdown_triggered recorded with the reason and
// affected_user = the username, besides the user's model_updated.
func (s *Server) LockdownUser(pk, actorPK int, reason string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.newer() {
		return fmt.Errorf("authentiktest: lockdown: no account lockdown stage in %s", s.cfg.Version)
	}
	u, actor := s.state.users[pk], s.state.users[actorPK]
	if u == nil || actor == nil {
		return fmt.Errorf("authentiktest: lockdown: no user %d or %d", pk, actorPK)
	}
	u.isActive = false
	u.password = ""
	u.passwordGen++
	u.lastUpdated = s.now()
	s.deleteUserSessions(pk)
	for k, owner := range s.state.tokens {
		if owner == pk {
			delete(s.state.tokens, k)
		}
	}
	s.recordUserModel("model_updated", actor, u, nil)
	s.record("user_lockdown_triggered", appSignals, eventUser(actor), map[string]any{"reason": reason, "affected_user": u.username}, nil)
	return nil
}

// eventActions is authentik's EventAction enum as of 2025.2–2026.2.
var eventActions = []string{
	"login", "login_failed", "logout", "user_write", "suspicious_request", "password_set", "secret_view",
	"secret_rotate", "invitation_used", "authorize_application", "source_linked", "impersonation_started",
	"impersonation_ended", "flow_execution", "policy_execution", "policy_exception", "property_mapping_exception",
	"system_task_execution", "system_task_exception", "system_exception", "configuration_error", "model_created",
	"model_updated", "model_deleted", "email_sent", "update_available", "custom_",
}

// eventActions2026_8 are the actions newer releases add.
var eventActions2026_8 = []string{"user_created", "mfa_device_added", "mfa_device_removed", "login_blocked", "user_lockdown_triggered"}

// handleEventActions serves /events/events/actions/: {name, component} per
// action of the release's enum.
func (s *Server) handleEventActions(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	c := s.authAPI(w, r)
	s.mu.Unlock()
	if c == nil {
		return
	}
	acts := eventActions
	if s.newer() {
		acts = append(slices.Clone(acts), eventActions2026_8...)
	}
	out := make([]map[string]string, 0, len(acts))
	for _, a := range acts {
		out = append(out, map[string]string{"name": strings.ReplaceAll(a, "_", " "), "component": a})
	}
	writeJSON(w, http.StatusOK, out)
}
