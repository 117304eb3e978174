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
//     a password-change flow, a user-settings flow and a TOTP setup flow;
//   - /api/v3/admin/version/ and /api/v3/events/events/actions/;
//   - /flows/-/default/invalidation/, /if/flow/<slug>/ and
//     /application/o/<app>/end-session/ (redirects only);
//   - OAuth2 client-credentials tokens (RS256) with discovery and JWKS;
//   - /api/v3/events/events/ with authentik's pagination, ordering and filters.
//
// Config.Version selects the release imitated where releases differ:
// 2025.2 (the events API ignores actions=, no bulk_delete, inactive users'
// sessions just stop working), 2025.4 (a user found inactive is logged out
// on their next request, with a logout event), 2025.8 (the actions= filter),
// 2026.2 (the default; bulk_delete) and 2026.8 (user_created,
// mfa_device_added/removed, user_lockdown_triggered, subject/origin in
// password_set). Every response carries X-authentik-id, a request id the
// server generates (an incoming X-Request-Id is ignored) and records as
// context.http_request.request_id. Config.SessionBinding imitates a User
// Login stage with network binding.
//
// Events are recorded as authentik records them: model_updated carries no
// diff, device events name the acting user rather than the owner, session
// deletions record nothing, and deleting a user purges the events that name
// that user (gdpr_compliance).
//
// What each action records (user = the event's `user` field):
//
//	action                              2025.2–2026.2                        2026.8 adds
//	login flow success                  model_updated user (last_login,      -
//	                                    actor = the user), then login
//	login flow failure                  login_failed (anonymous, username)   -
//	invalidation flow (GET or HEAD)     logout (user = who, or               -
//	                                    AnonymousUser for a caller without
//	                                    a live session)
//	end-session, outpost sign_out,
//	/flows/-/default/invalidation/      nothing (302 only)                   -
//	DELETE authenticated_sessions/…,
//	bulk_delete                         nothing                              -
//	admin set_password                  password_set (user = target, with    subject, origin "http"
//	                                    http_request), model_updated user
//	                                    (actor)
//	password-change flow                prompt POST: 302 to the executor;    as above
//	                                    the GET runs user_write: as
//	                                    set_password, actor = the user,
//	                                    then user_write (password masked)
//	user-settings flow                  prompt POST: 302; the GET runs       -
//	                                    user_write: model_updated user
//	                                    (actor = user), user_write
//	POST /core/users/                   model_created user (actor)           user_created
//	PATCH/PUT /core/users/{id}/         model_updated user (actor), no diff; -
//	                                    a PATCH leaving the user inactive
//	                                    deletes its sessions (PUT does not)
//	DELETE /core/users/{id}/            model_deleted for each of the        -
//	                                    user's devices and the user (actor);
//	                                    the user's own events are purged
//	admin POST authenticators/admin/…   nothing: 500 (user is read-only)     -
//	TOTP setup: right code              model_created, confirmed (the        mfa_device_added
//	                                    device is not saved before)
//	DELETE a device (user or admin)     model_deleted device (actor)         mfa_device_removed
//	POST /core/users/{id}/impersonate/  impersonation_started; the cookie's  -
//	                                    sub becomes the impersonated user;
//	                                    every request-bound event names the
//	                                    admin with on_behalf_of the user
//	SystemDisableUser                   nothing (a background change)        -
//	SystemSetPassword                   password_set (no http_request)       origin, synced_from_source
//	LockdownUser                        (2026.8 only)                        model_updated, user_lockdown_triggered
//
// Simplifications, chosen on purpose and documented where they apply: the
// login flow accepts identification and password in one POST (or two); a TOTP
// setup stage accepts the fixed code Config.TOTPCode; the events `search`
// (AKQL) parameter is ignored; non-admin callers see filtered lists (their own
// sessions and devices, nothing else) and get 403 on admin-only writes.
//
// Sessions follow Django: a session authenticates only while its user is
// active and its password unchanged since login; a password change keeps
// the session that made it (update_session_auth_hash, which from 2025.4
// also cycles its key: a new sid and cookie) and flushes the user's other
// sessions when they are next used (a simplification: from 2025.4 authentik
// keeps them). Of several authentik_session cookies the
// last counts, as in Django; pks in paths and queries are read with
// Python's int() and booleans as DRF does. Users list in username order by
// default.
//
// The server is safe for concurrent use, keeps no global state and takes its
// clock and randomness from Config so tests are deterministic.
package authentiktest
