// Package tap knows authentik: it recognises the security-relevant exchanges in
// the traffic the proxy hands it, reads authentik's event API, de-duplicates
// what both sources saw, and emits one Signal per completed user action.
//
// The package imports nothing else of the project. The transmitter (package
// ssf) consumes Signals through the Publisher interface defined here.
package tap

import (
	"context"
	"time"
)

// Kind says what happened. Each kind maps to exactly one CAEP or RISC event
// type (the mapping lives in package ssf).
type Kind string

const (
	// KindSessionRevoked: a session ended — by logout through an
	// invalidation flow, or by deleting an authenticated session.
	KindSessionRevoked Kind = "session_revoked"
	// KindSessionEstablished: a user logged in (event API `login`).
	KindSessionEstablished Kind = "session_established"
	// KindPasswordChanged: a user's password was set (by the user in a
	// flow, or by an admin through set_password).
	KindPasswordChanged Kind = "password_changed"
	// KindMFAAdded: an authenticator device was added and confirmed.
	KindMFAAdded Kind = "mfa_added"
	// KindMFARemoved: an authenticator device was removed.
	KindMFARemoved Kind = "mfa_removed"
	// KindAccountDisabled: is_active went from true to false.
	KindAccountDisabled Kind = "account_disabled"
	// KindAccountEnabled: is_active went from false to true.
	KindAccountEnabled Kind = "account_enabled"
	// KindAccountDeleted: the user was deleted.
	KindAccountDeleted Kind = "account_deleted"
	// KindEmailChanged: the user's email address changed (OldEmail → NewEmail).
	KindEmailChanged Kind = "email_changed"
)

// Kinds lists every Kind, in a stable order.
var Kinds = []Kind{
	KindSessionRevoked, KindSessionEstablished, KindPasswordChanged,
	KindMFAAdded, KindMFARemoved, KindAccountDisabled, KindAccountEnabled,
	KindAccountDeleted, KindEmailChanged,
}

// Source says which observation produced a Signal.
type Source string

const (
	SourceTraffic   Source = "traffic"   // seen through the proxy
	SourceEventAPI  Source = "event_api" // read from authentik's event API
	SourceReconcile Source = "reconcile" // an intent left open by a crash, confirmed at start
)

// Initiator is CAEP's initiating_entity.
type Initiator string

const (
	InitiatorUser   Initiator = "user"   // the subject acted on themselves
	InitiatorAdmin  Initiator = "admin"  // someone else acted on the subject
	InitiatorSystem Initiator = "system" // authentik acted on its own
	InitiatorPolicy Initiator = "policy"
)

// User identifies an authentik user. PK is authentik's numeric primary key,
// UID its opaque uid (authentik's default OIDC `sub`).
type User struct {
	PK       int64  `json:"pk,omitempty"`
	UID      string `json:"uid,omitempty"`
	Username string `json:"username,omitempty"`
	Email    string `json:"email,omitempty"`
}

// Device describes an authenticator device (MFA credential).
type Device struct {
	// Type is authentik's device type: totp, webauthn, static, duo, sms,
	// email or endpoint.
	Type string `json:"type"`
	PK   string `json:"pk,omitempty"`
	Name string `json:"name,omitempty"`
	// Platform is true for a WebAuthn platform authenticator (built into
	// the device) and false for a roaming one (a security key), when known.
	Platform bool   `json:"platform,omitempty"`
	AAGUID   string `json:"aaguid,omitempty"`
}

// Signal is one completed security-relevant action on one user, as the tap
// understood it. It holds only derived facts: never cookies, tokens or
// passwords.
type Signal struct {
	// ID is deterministic for the observation that produced the signal (a
	// journal intent id, an event-API record pk). Together with a stream id
	// it makes the outbox's idempotency key, so a replay after a crash
	// cannot double a SET.
	ID     string `json:"id"`
	Kind   Kind   `json:"kind"`
	Source Source `json:"source"`
	// Time is when the action happened (authentik's `created` for the
	// event API, the response time for traffic).
	Time    time.Time `json:"time"`
	Subject User      `json:"subject"`
	// Actor is who performed the action, when known; nil for authentik's
	// own actions.
	Actor     *User     `json:"actor,omitempty"`
	Initiator Initiator `json:"initiator"`
	// SessionHash is sha256(sid) in lowercase hex — the id authentik's own
	// SSF provider uses — when the session's cookie was seen.
	SessionHash string `json:"session_hash,omitempty"`
	// SessionUUID is authentik's AuthenticatedSession uuid, when known.
	SessionUUID string  `json:"session_uuid,omitempty"`
	Device      *Device `json:"device,omitempty"`
	// OldEmail and NewEmail are set for KindEmailChanged.
	OldEmail string `json:"old_email,omitempty"`
	NewEmail string `json:"new_email,omitempty"`
	// Revoked marks a password made unusable rather than changed (CAEP
	// change_type revoke).
	Revoked bool `json:"revoked,omitempty"`
	// RequestID is authentik's or the proxy's request id, used as the SET's
	// txn when present.
	RequestID string `json:"request_id,omitempty"`
	// ReasonAdmin and ReasonUser are short English explanations for the
	// receiver's administrator and for the user.
	ReasonAdmin string `json:"reason_admin,omitempty"`
	ReasonUser  string `json:"reason_user,omitempty"`
	// Marks are state changes the tap needs committed in the same
	// transaction as the SETs the signal produces (journal entry done,
	// poller cursor moved, de-duplication key recorded).
	Marks []Mark `json:"-"`
	// TraceParent is the W3C traceparent of the request that caused the
	// signal, when there was one.
	TraceParent string `json:"-"`
}

// Mark is one key/value change in one bucket, committed atomically with the
// SETs a signal produces. Delete removes the key; otherwise Value is stored.
//
// A mark may carry conditions, checked in the commit's own transaction
// before anything is written; when one fails the whole commit (every mark,
// and the SETs of a Publish) is refused. Replicas sharing a store rely on
// them: a poller that lost its lease cannot move the cursor, and two
// replicas that read the same de-duplication state or journal entry cannot
// both act on it.
type Mark struct {
	Bucket string
	Key    []byte
	Value  []byte
	Delete bool
	// Fence, when Fence.Lease is set, refuses the commit unless that lease
	// is still held with Fence.Token. A mark with only a Fence (no Bucket
	// and Key) writes nothing.
	Fence Fence
	// IfValue makes the commit conditional on the key's current value: it
	// is refused unless the stored value equals Expect (nil Expect: the key
	// is absent).
	IfValue bool
	Expect  []byte
}

// Fence names a lease and the fencing token a write is made under.
type Fence struct {
	Lease string
	Token uint64
}

// Publisher turns a Signal into SETs for every interested stream and commits
// them together with the signal's marks. It returns only once both are
// durable; an error means nothing was committed and the tap must keep the
// signal's source open (intent, cursor) so it is tried again.
type Publisher interface {
	Publish(ctx context.Context, s Signal) error
}

// PublisherFunc adapts a function to Publisher.
type PublisherFunc func(ctx context.Context, s Signal) error

// Publish calls f.
func (f PublisherFunc) Publish(ctx context.Context, s Signal) error { return f(ctx, s) }
