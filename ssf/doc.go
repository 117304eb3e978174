// Package ssf is the transmitter: streams, subjects, receiver authentication,
// discovery, signing keys and JWKS, the SSF HTTP endpoints, the mapping of tap
// Signals to CAEP and RISC events, and SET building.
//
// Endpoints, for issuer https://h/ssf (an issuer without a path puts them
// under /ssf): discovery at /.well-known/ssf-configuration/ssf; under the
// issuer path jwks.json, streams (configuration endpoint), status,
// subjects:add, subjects:remove, verify and poll/<stream_id>.
//
// Choices and limits (documented for receivers and operators):
//
//   - description is truncated to 256 characters (Config.DescriptionLimit);
//     a status reason to the same limit.
//   - A receiver may hold 25 streams (Config.MaxStreamsPerReceiver, or its
//     own max_streams; more is 409) and a stream may list 10000 added or
//     removed subjects (Config.MaxSubjectsPerStream; more is 429). A create
//     identical to a stream the receiver has (delivery method and push
//     endpoint, events_requested in any order, aud, description) is 409
//     naming that stream.
//   - A create request without events_requested asks for every supported
//     event; a replace (PUT) without it asks for none. Unknown event types
//     are ignored. A replace must carry delivery.
//   - min_verification_interval is 5 s (Config.MinVerificationInterval),
//     in every stream configuration, enforced per stream with a second of
//     slack by 429 and Retry-After. Only push streams get an unsolicited
//     verification at creation (it proves the endpoint; on a poll stream it
//     would be polled ahead of the one the receiver asks for); it does not
//     count against the interval.
//   - iat is the time a SET is signed (at each push attempt or poll), so a
//     backlog delivered after an outage passes a receiver's maximum SET
//     age; toe and event_timestamp carry the event's time; the jti never
//     changes.
//   - credential_type: password → password; TOTP, Duo, static recovery
//     codes, email one-time codes and authentik endpoint devices → app
//     (CAEP has no value for recovery or emailed codes; the device name goes
//     in friendly_name); WebAuthn → fido2-platform or fido2-roaming; SMS →
//     phone-sms.
//   - Paused streams keep their SETs (verification included) and deliver
//     them in order once enabled, for as long as the outbox retention
//     (--retention, default 720h) allows; disabled streams keep nothing.
//   - A status change the transmitter or the operator makes is announced
//     with a stream-updated SET; changes the receiver asks for are not. On
//     resume the announcement goes out before the SETs the pause held.
//   - Subject matching follows SSF §8.1.3.1: a member missing on either side
//     of a complex subject matches anything, so a subject naming only a
//     session also matches events that carry no session.
package ssf
