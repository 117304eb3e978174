package tap

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"
)

// op is a tapped operation.
type op string

const (
	opLogout        op = "logout"          // invalidation flow executor
	opFlowStage     op = "flow_stage"      // stage_configuration flow executor POST
	opFlowFollow    op = "flow_follow"     // the GET after a stage answered 302 (never journaled)
	opSessionDelete op = "session_delete"  // DELETE authenticated_sessions/{uuid}/
	opSessionBulk   op = "session_bulk"    // DELETE authenticated_sessions/bulk_delete/
	opSetPassword   op = "set_password"    // POST users/{id}/set_password/
	opUserUpdate    op = "user_update"     // PATCH/PUT users/{id}/
	opUserDelete    op = "user_delete"     // DELETE users/{id}/
	opDeviceDelete  op = "device_delete"   // DELETE authenticators/[admin/]{type}/{id}/
	opLogoutHint    op = "logout_hint"     // end-session, default invalidation, outpost sign-out
	opImpersonate   op = "impersonate"     // POST users/{id}/impersonate/ (never journaled)
	opImpersonEnd   op = "impersonate_end" // GET users/impersonate_end/ (never journaled)
)

// route is what Match understood of a request path.
type route struct {
	op    op
	slug  string // flow slug
	id    string // object id from the path
	dtype string // device type
	admin bool   // an /authenticators/admin/ endpoint
}

// deviceTypes are authentik's authenticator device types.
var deviceTypes = map[string]bool{
	"totp": true, "webauthn": true, "static": true, "duo": true, "sms": true, "email": true, "endpoint": true,
}

const apiPrefix = "/api/v3/"

// parseRoute classifies a request by method and path alone. It allocates
// nothing on the common untapped path.
func (t *Tap) parseRoute(method, path string) (route, bool) {
	if !strings.HasPrefix(path, apiPrefix) {
		switch {
		case (method == http.MethodGet || method == http.MethodHead) && strings.HasPrefix(path, "/flows/-/default/invalidation"),
			strings.HasPrefix(path, "/outpost.goauthentik.io/sign_out"),
			strings.HasPrefix(path, "/application/o/") && strings.HasSuffix(strings.TrimSuffix(path, "/"), "/end-session"):
			return route{op: opLogoutHint}, true
		}
		return route{}, false
	}
	var buf [5]string
	parts, ok := splitPath(strings.Trim(path[len(apiPrefix):], "/"), buf[:0])
	if !ok {
		return route{}, false
	}
	switch {
	case len(parts) == 3 && parts[0] == "flows" && parts[1] == "executor":
		// Django's View sets head = get: HEAD runs the executor's GET,
		// stages included (a logout stage logs out on HEAD too).
		if method != http.MethodGet && method != http.MethodHead && method != http.MethodPost {
			return route{}, false
		}
		inv, conf := t.flows.role(parts[2])
		switch {
		case inv:
			return route{op: opLogout, slug: parts[2]}, true
		case conf && method == http.MethodPost:
			return route{op: opFlowStage, slug: parts[2]}, true
		case conf:
			return route{op: opFlowFollow, slug: parts[2]}, true
		case !inv && !conf:
			// An unknown slug may be a renamed flow: refresh early, once per
			// slug per refresh period (login flows land here constantly).
			if _, seen := t.unknownSlugs.get(parts[2]); !seen {
				t.unknownSlugs.put(parts[2], struct{}{})
				t.kickFlows()
			}
		}
	case len(parts) == 3 && parts[0] == "core" && parts[1] == "authenticated_sessions" && method == http.MethodDelete:
		if parts[2] == "bulk_delete" {
			return route{op: opSessionBulk}, true
		}
		return route{op: opSessionDelete, id: parts[2]}, true
	case len(parts) == 3 && parts[0] == "core" && parts[1] == "users" && parts[2] == "impersonate_end" &&
		(method == http.MethodGet || method == http.MethodHead):
		return route{op: opImpersonEnd}, true
	case len(parts) == 4 && parts[0] == "core" && parts[1] == "users" && parts[3] == "impersonate" && method == http.MethodPost:
		pk, ok := djparse.Int(parts[2])
		if !ok || pk <= 0 {
			return route{}, false
		}
		return route{op: opImpersonate, id: strconv.FormatInt(pk, 10)}, true
	case len(parts) == 3 && parts[0] == "core" && parts[1] == "users" &&
		(method == http.MethodPatch || method == http.MethodPut || method == http.MethodDelete):
		pk, ok := djparse.Int(parts[2])
		if !ok || pk <= 0 {
			return route{}, false
		}
		o := opUserUpdate
		if method == http.MethodDelete {
			o = opUserDelete
		}
		return route{op: o, id: strconv.FormatInt(pk, 10)}, true
	case len(parts) == 4 && parts[0] == "core" && parts[1] == "users" &&
		parts[3] == "set_password" && method == http.MethodPost:
		pk, ok := djparse.Int(parts[2])
		if !ok || pk <= 0 {
			return route{}, false
		}
		return route{op: opSetPassword, id: strconv.FormatInt(pk, 10)}, true
	case len(parts) == 3 && parts[0] == "authenticators" && deviceTypes[parts[1]] && parts[1] != "endpoint" && method == http.MethodDelete:
		// (the user endpoint of endpoint devices is read-only)
		return route{op: opDeviceDelete, dtype: parts[1], id: devicePK(parts[2])}, true
	case len(parts) == 4 && parts[0] == "authenticators" && parts[1] == "admin" && deviceTypes[parts[2]] && method == http.MethodDelete:
		return route{op: opDeviceDelete, dtype: parts[2], id: devicePK(parts[3]), admin: true}, true
	}
	return route{}, false
}

// splitPath splits on "/" into buf without allocating; false when there
// are more segments than buf holds (no tapped route is that deep).
func splitPath(s string, buf []string) ([]string, bool) {
	for {
		if len(buf) == cap(buf) {
			return nil, false
		}
		i := strings.IndexByte(s, '/')
		if i < 0 {
			return append(buf, s), true
		}
		buf = append(buf, s[:i])
		s = s[i+1:]
	}
}

// Match reports whether the request is one the tap watches. It is cheap:
// method and decoded path only.
func (t *Tap) Match(method, _, path string) bool {
	_, ok := t.parseRoute(method, path)
	return ok
}

// devicePK is a device id from a path as authentik reads it: an integer
// pk is parsed as Python's int() does (" 12 " and "١٢" name device 12), so
// the tap looks up, journals and matches events for the device authentik
// deletes. Other ids (UUIDs) stay as they are.
func devicePK(s string) string {
	if pk, ok := djparse.Int(s); ok && pk > 0 {
		return strconv.FormatInt(pk, 10)
	}
	return s
}
