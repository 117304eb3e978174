// Package outbox is the durable, per-stream queue of Security Event Tokens
// and the machinery that delivers them: push (RFC 8935) with ordered,
// per-stream backoff, poll (RFC 8936) with lease and acknowledgement, dead
// letter and retention.
//
// It owns the single bbolt file and its group-commit writer; other packages
// persist their own buckets through it (Store.Commit, Store.Get, Store.Scan).
// It knows bytes, endpoints and time — nothing of SSF semantics or authentik.
package outbox

import (
	"context"
	"encoding/json"
	"time"
)

// Mark is one key/value change in one bucket, committed in the same
// transaction as the SETs it accompanies. Delete removes the key; otherwise
// Value is stored (an empty Value stores an empty value).
//
// A mark may carry conditions, checked in the same transaction before
// anything is written: when one fails, the whole commit (every mark, and
// the SETs of an Enqueue) is refused and nothing lands. That is how a
// holder that lost its lease, or a writer that read a stale value, is kept
// from overwriting newer state.
type Mark struct {
	Bucket string
	Key    []byte
	Value  []byte
	Delete bool
	// Fence, when its Lease is set, refuses the commit with a *FenceError
	// unless that lease is still held with Fence.Token. A mark with only a
	// Fence (no Bucket and Key) writes nothing.
	Fence Fence
	// IfValue makes the mark conditional on the key's current value: the
	// commit is refused with a *ConditionError unless the stored value
	// equals Expect (a nil Expect: the key is absent).
	IfValue bool
	Expect  []byte
}

// Fence names a lease and the fencing token a write was made under.
type Fence struct {
	Lease string
	Token uint64
}

// SET is one Security Event Token to deliver on one stream, stored as its
// claims and signed only when it is handed out.
type SET struct {
	StreamID string
	// JTI is fixed at enqueue and never changes, across retries and
	// restarts. It must equal the "jti" inside Claims.
	JTI string
	// Key makes Enqueue idempotent: a SET whose Key was committed before is
	// skipped (conventionally "<source record id>/<stream id>"). Empty
	// means JTI.
	Key string
	// EventType is the event URI, for statistics and the dashboard.
	EventType string
	// Claims is the SET's JSON claims set.
	Claims json.RawMessage
	// Head queues the SET before every SET queued without Head on its
	// stream, behind the Head SETs still queued (used for the stream-updated
	// SETs that announce a status change, which keep their order).
	Head bool
	// Announce marks a stream-updated SET that announces a status change
	// (queue it with Head): it is still delivered — pushed, or
	// handed out to a poll — once the stream is no longer enabled, and
	// disabling the stream does not discard it, so the receiver hears of
	// the change before delivery stops (SSF 1.0 §8.1.5).
	Announce bool
	// Supersede replaces the stream's previous Supersede SET of the same
	// EventType while that one is still queued and was never handed out
	// (not under a poll lease): it is dropped (counted) and only the new one
	// is delivered. For a verification the receiver asked for again, where
	// only the answer to its latest request matters.
	Supersede bool
	// TraceParent is the W3C traceparent of the cause, so a delivery
	// attempt hours later links to the request that produced it.
	TraceParent string
	// Labels are small, non-secret facts kept for operators (source,
	// initiator, masked subject); never delivered.
	Labels map[string]string
}

// Signer signs a SET's claims at hand-out time. The transmitter's key
// manager implements it; the current key signs, so a retired key never
// strands the backlog.
type Signer interface {
	Sign(ctx context.Context, claims []byte) (compact string, err error)
}

// Method is a stream's delivery method.
type Method string

const (
	MethodPush Method = "push" // RFC 8935
	MethodPoll Method = "poll" // RFC 8936
)

// Status is a stream's status as the outbox acts on it.
type Status string

const (
	StatusEnabled  Status = "enabled"  // deliver
	StatusPaused   Status = "paused"   // hold, deliver in order once enabled
	StatusDisabled Status = "disabled" // drop new SETs, discard queued ones
)

// StreamConfig is what the outbox needs to know of a stream to deliver it.
type StreamConfig struct {
	ID     string
	Method Method
	Status Status
	// EndpointURL is the push destination (push streams only).
	EndpointURL string
	// AuthorizationHeader is sent verbatim as the Authorization header of
	// every push when not empty. It is a secret: never logged, and never
	// written to the store — the owner of the streams (which keeps it
	// sealed) registers each stream again with SetStream on start.
	AuthorizationHeader string `json:"-"`
}

// FailureReporter is told when a push stream has failed continuously for the
// configured pause-after duration. The transmitter pauses the stream and
// queues a stream-updated SET at its head.
type FailureReporter interface {
	StreamFailing(ctx context.Context, streamID string, since time.Time, lastErr string)
}

// StreamWatcher is implemented by a FailureReporter that wants to hear at
// once when a dispatcher finds that another replica sharing the store
// changed a stream (the transmitter reads its stream records again). It
// must not block.
type StreamWatcher interface {
	StreamChanged(streamID string)
}

// Notifier wakes dispatchers and long polls when a stream has new SETs. The
// in-process implementation is a set of channels; a shared database backend
// can wake other replicas.
type Notifier interface {
	Notify(streamID string)
	// Wait returns a channel that is closed by the next Notify for the
	// stream (or already closed if one raced with the call).
	Wait(streamID string) <-chan struct{}
}
