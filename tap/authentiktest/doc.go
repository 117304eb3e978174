// Package authentiktest is a simulated authentik 2026.2 (without an
// Enterprise licence) for tests and for the demo. It serves, over real HTTP on
// a loopback port, the parts of authentik the sidecar touches:
//
//   - the authentik_session cookie (an HS256 JWT signed with the hex string of
//     sha512(SECRET_KEY)) and the authentik_csrf cookie, set by a login flow;
//   - /api/v3/core/users/ (me, list with filters, get, create, patch, put,
//     delete, set_password, impersonate, impersonate_end);
//   - /api/v3/core/authenticated_sessions/ (list, get, delete, bulk_delete);
//   - /api/v3/authenticators/ for the user's own devices and the admin's,
//     per device type (totp, webauthn, static, duo, sms, email);
//   - /api/v3/flows/instances/, /api/v3/core/brands/ and brands/current/;
//   - the flow executor for the login flow, the invalidation (logout) flow,
//     a password-change flow and a TOTP setup flow;
//   - /flows/-/default/invalidation/, /if/flow/<slug>/ and
//     /application/o/<app>/end-session/ (redirects only);
//   - OAuth2 client-credentials tokens (RS256) with discovery and JWKS;
//   - /api/v3/events/events/ with authentik's pagination, ordering and filters.
//
// Events are recorded as authentik 2026.2 records them: model_updated carries
// no diff, device events name the acting user rather than the owner, session
// deletions record nothing, and deleting a user purges the events that name
// that user (gdpr_compliance). Config.Version = Version2026_8 adds the newer
// actions (user_created, mfa_device_added, mfa_device_removed) and the
// subject/origin fields of password_set.
//
// What each action records (user = the event's `user` field):
//
//	action                              2026.2                               2026.8 adds
//	login flow success                  model_updated user (last_login,      -
//	                                    actor = the user), then login
//	login flow failure                  login_failed (anonymous, username)   -
//	invalidation flow, authenticated    logout (user = who, http_request)    -
//	invalidation flow, anonymous        nothing                              -
//	end-session, outpost sign_out,
//	/flows/-/default/invalidation/      nothing (302 only)                   -
//	DELETE authenticated_sessions/…,
//	bulk_delete                         nothing                              -
//	admin set_password                  password_set (user = target, no      password_set with http_request,
//	                                    http_request, ip 255.255.255.255),   subject, origin "http"
//	                                    model_updated user (actor)
//	password-change flow                as set_password, actor = the user,   as above
//	                                    then user_write (password masked)
//	user-settings flow                  model_updated user (actor = user),   -
//	                                    user_write (the prompt's fields)
//	POST /core/users/                   model_created user (actor)           user_created
//	PATCH/PUT /core/users/{id}/         model_updated user (actor), no diff; -
//	                                    a PATCH leaving the user inactive
//	                                    deletes its sessions (PUT does not)
//	DELETE /core/users/{id}/            model_deleted user (actor); the      -
//	                                    user's own events are purged
//	admin POST authenticators/admin/…   model_created device (actor)         mfa_device_added
//	TOTP setup: first request           model_created, device unconfirmed    -
//	TOTP setup: right code              model_updated (confirmed), no diff   mfa_device_added
//	DELETE a device (user or admin)     model_deleted device (actor)         mfa_device_removed
//	POST /core/users/{id}/impersonate/  impersonation_started; afterwards    -
//	                                    every request-bound event names the
//	                                    admin with on_behalf_of the user
//	SystemDisableUser                   model_updated user (AnonymousUser,   -
//	                                    no http_request)
//	SystemSetPassword                   password_set (no http_request)       origin, synced_from_source
//
// Simplifications, chosen on purpose and documented where they apply: the
// login flow accepts identification and password in one POST (or two); a TOTP
// setup stage accepts the fixed code Config.TOTPCode; the events `search`
// (AKQL) parameter is ignored; non-admin callers see filtered lists (their own
// sessions and devices, nothing else) and get 403 on admin-only writes.
//
// Sessions follow Django: a session authenticates only while its user is
// active and its password unchanged since login; a password change keeps
// the session that made it (update_session_auth_hash) and flushes the
// user's other sessions when they are next used. Users list in username
// order by default.
//
// The server is safe for concurrent use, keeps no global state and takes its
// clock and randomness from Config so tests are deterministic.
package authentiktest
