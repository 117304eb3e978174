// Package authentiktest is a simulated authentik 2026.2 (without an
// Enterprise licence) for tests and for the demo. It serves, over real HTTP on
// a loopback port, the parts of authentik the sidecar touches:
//
//   - the authentik_session cookie (an HS256 JWT signed with the hex string of
//     sha512(SECRET_KEY)) and the authentik_csrf cookie, set by a login flow;
//   - /api/v3/core/users/ (me, list with filters, get, create, patch, put,
//     delete, set_password);
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
// Simplifications, chosen on purpose and documented where they apply: the
// login flow accepts identification and password in one POST (or two); a TOTP
// setup stage accepts the fixed code Config.TOTPCode; the events `search`
// (AKQL) parameter is ignored; non-admin callers see filtered lists (their own
// sessions and devices, nothing else) and get 403 on admin-only writes.
//
// The server is safe for concurrent use, keeps no global state and takes its
// clock and randomness from Config so tests are deterministic.
package authentiktest
