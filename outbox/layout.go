package outbox

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// Buckets owned by the outbox. Other packages must use other names.
var (
	bktStreams = []byte("outbox.streams") // stream id → streamMeta (JSON)
	bktQueue   = []byte("outbox.queue")   // stream id 0x00 seq → jti (undelivered, in order)
	bktSets    = []byte("outbox.sets")    // jti → Record (record.go)
	bktHist    = []byte("outbox.hist")    // stream id 0x00 seq → jti (every kept record)
	bktDead    = []byte("outbox.dead")    // stream id 0x00 seq → jti (dead letter)
	bktKeys    = []byte("outbox.keys")    // idempotency key → expiry (unix nanos)
	bktExpiry  = []byte("outbox.expiry")  // unix nanos, kind, id → nil (time-ordered sweeps)
)

var allBuckets = [][]byte{bktStreams, bktQueue, bktSets, bktHist, bktDead, bktKeys, bktExpiry, bktPolled}

// Expiry kinds.
const (
	expQueued = 'q' // an undelivered SET reaches its retention: dead letter
	expRecord = 'r' // a delivered or dead record is purged
	expKey    = 'k' // an idempotency key is forgotten
)

// seqOrigin is the first tail sequence; head SETs count down from below it,
// so they sort before everything queued.
const seqOrigin = uint64(1) << 63

// State is where a SET is in its life.
type State string

const (
	StateQueued    State = "queued"
	StateDelivered State = "delivered"
	StateDead      State = "dead"
)

// Attempt is one delivery attempt of a SET.
type Attempt struct {
	Time       time.Time     `json:"time"`
	StatusCode int           `json:"status_code,omitempty"`
	Latency    time.Duration `json:"latency"`
	// Outcome is one of delivered, dead, retry, handed_out, acked, set_err.
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// maxAttemptsKept bounds the attempts remembered per record.
const maxAttemptsKept = 8

// Record is what the outbox keeps of one SET: its claims (so the dashboard
// can decode them on demand), labels, state and delivery attempts.
type Record struct {
	JTI         string            `json:"jti"`
	StreamID    string            `json:"stream_id"`
	Seq         uint64            `json:"seq"`
	EventType   string            `json:"event_type,omitempty"`
	Claims      json.RawMessage   `json:"claims"`
	Labels      map[string]string `json:"labels,omitempty"`
	TraceParent string            `json:"traceparent,omitempty"`
	// Announce: delivered even while the stream is paused or disabled
	// (SET.Announce).
	Announce   bool      `json:"announce,omitempty"`
	State      State     `json:"state"`
	EnqueuedAt time.Time `json:"enqueued_at"`
	// QueuedAt is when the SET last entered the queue (enqueue or replay);
	// retention counts from it.
	QueuedAt    time.Time `json:"queued_at"`
	DeliveredAt time.Time `json:"delivered_at,omitzero"`
	DeadAt      time.Time `json:"dead_at,omitzero"`
	// Reason says why the SET is in the dead letter.
	Reason       string    `json:"reason,omitempty"`
	AttemptCount int       `json:"attempt_count"`
	Attempts     []Attempt `json:"attempts,omitempty"`
}

func (r *Record) addAttempt(a Attempt) {
	r.AttemptCount++
	r.Attempts = append(r.Attempts, a)
	if n := len(r.Attempts); n > maxAttemptsKept {
		r.Attempts = append(r.Attempts[:0], r.Attempts[n-maxAttemptsKept:]...)
	}
}

// streamMeta is the persisted state of a stream.
type streamMeta struct {
	Config StreamConfig `json:"config"`
	// Gen counts the changes of Config (its stored fields: method, status,
	// endpoint). Every dispatcher reads it in the transactions it makes
	// anyway, so a change made through any replica stops the delivery of
	// every other one before its next attempt (see adopt).
	Gen uint64 `json:"gen,omitempty"`
	// Tail is the next tail sequence; Head is the highest sequence below
	// every one used so far (where the next block of head sequences ends).
	Tail uint64 `json:"tail"`
	Head uint64 `json:"head"`
	// HeadNext and HeadEnd are the current block of head sequences:
	// [HeadNext, HeadEnd) is still free, and every head SET of the block
	// sorts before every tail SET (see nextHead).
	HeadNext uint64 `json:"head_next,omitempty"`
	HeadEnd  uint64 `json:"head_end,omitempty"`
	// Superseding is the jti of the latest Supersede SET of each event
	// type (SET.Supersede).
	Superseding map[string]string `json:"superseding,omitempty"`
	// Counters.
	Queued      int64     `json:"queued"`
	Delivered   int64     `json:"delivered"`
	Dead        int64     `json:"dead"`
	Dropped     int64     `json:"dropped"`
	Non202      int64     `json:"non_202"`
	LastSuccess time.Time `json:"last_success,omitzero"`
	// LastError is the push stream's latest failed attempt (no secret:
	// push errors never carry the endpoint URL) and LastErrorAt its time,
	// recorded with the attempt's outcome so a restart keeps them.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// Failing is the push stream's run of failed attempts, recorded with
	// their outcomes so a restart keeps the backoff and the time the
	// stream began to fail (zero once an attempt succeeds).
	Failing failingState `json:"failing,omitzero"`
}

// failingState is a push stream's run of consecutive failed attempts.
type failingState struct {
	// Since is when the run began; Until is when the stream may be tried
	// again (the backoff); Failures counts the attempts; Reported says the
	// Reporter heard of it.
	Since    time.Time `json:"since,omitzero"`
	Until    time.Time `json:"until,omitzero"`
	Failures int       `json:"failures,omitempty"`
	Reported bool      `json:"reported,omitempty"`
}

// headBlock is how many head sequences one block holds.
const headBlock = 1 << 20

// nextHead returns the sequence of a new head SET on the stream: ahead of
// every tail SET, and behind the head SETs still queued, so that head SETs
// keep the order they were queued in (a pause announced, then the resume,
// then another pause reach the receiver in that order, before the SETs the
// pause held). While head SETs are queued they take increasing sequences
// from the current block; the first head SET after the queue's head ran
// empty starts a new block below every sequence used before, so no key of
// the history is ever reused. A stream whose heads were queued before
// blocks existed falls back to the sequence below everything.
func (m *streamMeta) nextHead(tx kv.Tx, stream string) uint64 {
	k, _ := tx.Bucket(bktQueue).Cursor().Seek(streamPrefix(stream))
	headsQueued := k != nil && hasPrefix(k, streamPrefix(stream)) && seqOf(k) < seqOrigin
	if headsQueued && m.HeadNext != 0 && m.HeadNext < m.HeadEnd {
		seq := m.HeadNext
		m.HeadNext++
		return seq
	}
	if headsQueued || m.Head < headBlock {
		seq := m.Head
		m.Head--
		return seq
	}
	start := m.Head + 1 - headBlock
	m.HeadNext, m.HeadEnd = start+1, m.Head+1
	m.Head = start - 1
	return start
}

func seqKey(stream string, seq uint64) []byte {
	k := make([]byte, 0, len(stream)+9)
	k = append(k, stream...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

func streamPrefix(stream string) []byte {
	return append([]byte(stream), 0)
}

func seqOf(k []byte) uint64 {
	if len(k) < 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k[len(k)-8:])
}

func expiryKey(at time.Time, kind byte, id string) []byte {
	k := make([]byte, 0, 9+len(id))
	k = binary.BigEndian.AppendUint64(k, uint64(at.UnixNano()))
	k = append(k, kind)
	return append(k, id...)
}

func getMeta(tx kv.Tx, stream string) (*streamMeta, error) {
	v := tx.Bucket(bktStreams).Get([]byte(stream))
	if v == nil {
		return nil, nil
	}
	var m streamMeta
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("outbox: stream %q meta: %w", stream, err)
	}
	return &m, nil
}

func putMeta(tx kv.Tx, m *streamMeta) error {
	v, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return tx.Bucket(bktStreams).Put([]byte(m.Config.ID), v)
}

func getRecord(tx kv.Tx, jti string) (*Record, error) {
	v := tx.Bucket(bktSets).Get([]byte(jti))
	if v == nil {
		return nil, nil
	}
	r, err := decodeRecord(v)
	if err != nil {
		return nil, fmt.Errorf("outbox: record %q: %w", jti, err)
	}
	return r, nil
}

func putRecord(tx kv.Tx, r *Record) error {
	return tx.Bucket(bktSets).Put([]byte(r.JTI), encodeRecord(nil, r))
}

func ensureBuckets(tx kv.Tx) error {
	for _, b := range allBuckets {
		if _, err := tx.CreateBucketIfNotExists(b); err != nil {
			return fmt.Errorf("outbox: bucket %s: %w", b, err)
		}
	}
	return nil
}
