package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// Errors returned to callers that map them to HTTP answers.
var (
	ErrUnknownStream = errors.New("outbox: unknown stream")
	ErrNotPoll       = errors.New("outbox: stream is not a poll stream")
)

// Outbox is the per-stream queue of SETs and its delivery machinery.
type Outbox struct {
	cfg    Config
	store  *Store
	log    *slog.Logger
	now    func() time.Time
	client *http.Client

	workers chan struct{} // global push slots
	signers chan struct{} // concurrent Sign calls

	mu      sync.Mutex
	streams map[string]*streamState
	runCtx  context.Context // set while Run runs
	wg      sync.WaitGroup

	droppedUnknown atomic.Int64

	leases Leases // the dispatch leases (StoreLeases on store)
	// heartbeatAfter is the timer of lease heartbeats (cfg.After; tests
	// tell its timers apart from the others).
	heartbeatAfter func(time.Duration) <-chan time.Time
	fenced         atomic.Int64 // delivery outcomes refused for a stale token
}

// streamState is the in-memory side of a stream: its configuration and its
// delivery state (lastSuccess, lastErr and lastErrAt, and the failing run —
// failures, failingSince, until, reported — are also kept in the stream's
// meta with the outcomes they come from, and read back at open).
type streamState struct {
	id string

	mu  sync.Mutex
	cfg StreamConfig
	// gen is the meta's Gen that cfg comes from; held is set when another
	// replica moved the push destination (endpoint or method): its
	// credentials are not stored, so delivery waits until the stream's
	// owner registers it again here (SetStream or AdoptStream).
	gen     uint64
	held    bool
	adopted chan struct{} // signalled (cap 1) when adopt changed cfg
	// suspect is set while the dispatcher reads the meta of a stream
	// whose change was just announced: the poster makes no attempt
	// meanwhile.
	suspect      atomic.Bool
	failures     int
	failingSince time.Time
	until        time.Time // backing off until
	lastErr      string
	lastErrAt    time.Time
	lastSuccess  time.Time
	reported     bool
	cancel       context.CancelFunc // dispatcher
	headPending  atomic.Bool        // a Head SET arrived: restart the batch

	// The dispatch lease: lease and renewAt belong to the dispatcher
	// goroutine, or to its heartbeat while one runs; token mirrors
	// lease.Token for the other goroutines (0: none), lost is set when a
	// fenced write or a renewal was refused, and validTo (unix nanos on
	// this process's clock) is when the lease ends unless renewed.
	lease   Lease
	renewAt time.Time
	token   atomic.Uint64
	lost    atomic.Bool
	validTo atomic.Int64
}

// New opens the outbox on the store; Run starts delivery.
func New(cfg Config) (*Outbox, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	o := &Outbox{
		cfg:     cfg,
		store:   cfg.Store,
		log:     cfg.Logger,
		now:     cfg.Clock,
		workers: make(chan struct{}, cfg.Workers),
		signers: make(chan struct{}, cfg.Signers),
		streams: make(map[string]*streamState),
	}
	o.leases = &StoreLeases{store: cfg.Store, now: cfg.Clock, log: cfg.Logger}
	o.heartbeatAfter = cfg.After
	o.client = o.newClient()
	if err := o.store.update(context.Background(), ensureBuckets); err != nil {
		return nil, err
	}
	err := o.store.view(func(tx kv.Tx) error {
		return tx.Bucket(bktStreams).ForEach(func(k, v []byte) error {
			var m streamMeta
			if err := json.Unmarshal(v, &m); err != nil {
				return fmt.Errorf("outbox: stream %q meta: %w", k, err)
			}
			o.streams[m.Config.ID] = newStreamState(&m)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	return o, nil
}

// Run delivers until ctx ends: one dispatcher per push stream, and the
// retention and lease sweeps. It returns nil on a clean shutdown.
func (o *Outbox) Run(ctx context.Context) error {
	o.mu.Lock()
	if o.runCtx != nil {
		o.mu.Unlock()
		return errors.New("outbox: Run called twice")
	}
	o.runCtx = ctx
	for _, st := range o.streams {
		o.startDispatcherLocked(st)
	}
	o.mu.Unlock()

	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.sweepLoop(ctx)
	}()
	<-ctx.Done()
	o.wg.Wait()
	return nil
}

// newStreamState is the in-memory side of a stream read from its meta.
func newStreamState(m *streamMeta) *streamState {
	f := m.Failing
	return &streamState{id: m.Config.ID, cfg: m.Config, gen: m.Gen, adopted: make(chan struct{}, 1),
		lastSuccess: m.LastSuccess, lastErr: m.LastError, lastErrAt: m.LastErrorAt,
		failures: f.Failures, failingSince: f.Since, until: f.Until, reported: f.Reported}
}

func (o *Outbox) startDispatcherLocked(st *streamState) {
	if o.runCtx == nil || o.runCtx.Err() != nil {
		return
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.cancel != nil {
		return
	}
	ctx, cancel := context.WithCancel(o.runCtx)
	st.cancel = cancel
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		o.dispatch(ctx, st)
	}()
}

func (o *Outbox) stream(id string) *streamState {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.streams[id]
}

// Enqueue commits the SETs one signal produced (across streams) together
// with marks, in one durable transaction. A SET whose Key (or JTI) was
// committed before is skipped while the marks still commit. SETs for an
// unknown or disabled stream are dropped (counted).
func (o *Outbox) Enqueue(ctx context.Context, sets []SET, marks []Mark) error {
	var errs []error
	for i, s := range sets {
		if err := checkSET(s); err != nil {
			errs = append(errs, fmt.Errorf("outbox: SET %d: %w", i, err))
		}
	}
	errs = append(errs, validateMarks(marks))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	now := o.now()
	type tally struct{ queued, dropped int }
	var counts map[string]*tally
	var heads []string
	// fresh: the SETs queued, per stream, with the number queued before
	// each, for the tracer to tell of those that will wait.
	var fresh map[string][]Delivery
	traced := o.cfg.Hooks.Trace != nil
	prefetch := make([]kv.BucketKey, 0, 3*len(sets))
	for _, s := range sets {
		key := s.Key
		if key == "" {
			key = s.JTI
		}
		prefetch = append(prefetch, kv.BucketKey{Bucket: bktKeys, Key: []byte(key)},
			kv.BucketKey{Bucket: bktSets, Key: []byte(s.JTI)}, kv.BucketKey{Bucket: bktStreams, Key: []byte(s.StreamID)})
	}
	err := o.store.updatePrefetch(ctx, prefetch, func(tx kv.Tx) error {
		// A refused condition refuses the SETs too.
		if err := checkMarks(tx, marks); err != nil {
			return err
		}
		counts = map[string]*tally{}
		heads = heads[:0]
		if traced {
			fresh = map[string][]Delivery{}
		}
		metas := map[string]*streamMeta{}
		keys := tx.Bucket(bktKeys)
		for _, s := range sets {
			t := counts[s.StreamID]
			if t == nil {
				t = &tally{}
				counts[s.StreamID] = t
			}
			key := s.Key
			if key == "" {
				key = s.JTI
			}
			if keys.Get([]byte(key)) != nil || tx.Bucket(bktSets).Get([]byte(s.JTI)) != nil {
				continue // replayed
			}
			exp := now.Add(o.cfg.Retention)
			if err := keys.Put([]byte(key), binaryTime(exp)); err != nil {
				return err
			}
			if err := tx.Bucket(bktExpiry).Put(expiryKey(exp, expKey, key), nil); err != nil {
				return err
			}
			m, ok := metas[s.StreamID]
			if !ok {
				var err error
				if m, err = getMeta(tx, s.StreamID); err != nil {
					return err
				}
				metas[s.StreamID] = m
			}
			if m == nil || m.Config.Status == StatusDisabled {
				t.dropped++
				if m != nil {
					m.Dropped++
				}
				continue
			}
			if s.Supersede {
				if err := o.supersede(tx, m, s.StreamID, m.Superseding[s.EventType]); err != nil {
					return err
				}
				if m.Superseding == nil {
					m.Superseding = map[string]string{}
				}
				m.Superseding[s.EventType] = s.JTI
			}
			var seq uint64
			if s.Head {
				seq = m.nextHead(tx, s.StreamID)
				heads = append(heads, s.StreamID)
			} else {
				seq = m.Tail
				m.Tail++
			}
			r := &Record{JTI: s.JTI, StreamID: s.StreamID, Seq: seq, EventType: s.EventType,
				Claims: compactJSON(s.Claims), Labels: s.Labels, TraceParent: s.TraceParent, Announce: s.Announce,
				State: StateQueued, EnqueuedAt: now, QueuedAt: now}
			if err := o.queueRecord(tx, r); err != nil {
				return err
			}
			if traced {
				d := deliveryOf(r, "", 0)
				if !s.Head {
					d.Ahead = int(m.Queued)
				}
				fresh[s.StreamID] = append(fresh[s.StreamID], d)
			}
			m.Queued++
			t.queued++
		}
		for _, m := range metas {
			if m != nil {
				if err := putMeta(tx, m); err != nil {
					return err
				}
			}
		}
		return applyMarks(tx, marks)
	})
	if err != nil {
		return err
	}
	for _, id := range heads {
		if st := o.stream(id); st != nil {
			st.headPending.Store(true)
		}
	}
	for id, t := range counts {
		if t.dropped > 0 && o.stream(id) == nil {
			o.droppedUnknown.Add(int64(t.dropped))
		}
		if t.queued > 0 {
			o.cfg.Notifier.Notify(id)
		}
		if o.cfg.Hooks.OnEnqueue != nil {
			o.cfg.Hooks.OnEnqueue(id, t.queued, t.dropped)
		}
	}
	o.holdOnEnqueue(fresh)
	return nil
}

// supersede drops the stream's queued SET jti if it was never handed out
// (SET.Supersede). A SET under a poll lease stays: the receiver has it and
// may acknowledge it.
func (o *Outbox) supersede(tx kv.Tx, m *streamMeta, stream, jti string) error {
	if jti == "" {
		return nil
	}
	r, err := getRecord(tx, jti)
	if err != nil || r == nil || r.StreamID != stream || r.State != StateQueued {
		return err
	}
	if handedOut(tx, r) {
		return nil
	}
	if err := dropRecord(tx, r); err != nil {
		return err
	}
	m.Queued--
	m.Dropped++
	return nil
}

// queueRecord stores r as queued at r.Seq with its indexes.
func (o *Outbox) queueRecord(tx kv.Tx, r *Record) error {
	k := seqKey(r.StreamID, r.Seq)
	if err := tx.Bucket(bktQueue).Put(k, []byte(r.JTI)); err != nil {
		return err
	}
	if err := tx.Bucket(bktHist).Put(k, []byte(r.JTI)); err != nil {
		return err
	}
	if err := tx.Bucket(bktExpiry).Put(expiryKey(r.QueuedAt.Add(o.cfg.Retention), expQueued, r.JTI), nil); err != nil {
		return err
	}
	return putRecord(tx, r)
}

func checkSET(s SET) error {
	var errs []error
	if err := checkStreamID(s.StreamID); err != nil {
		errs = append(errs, err)
	}
	if s.JTI == "" {
		errs = append(errs, errors.New("empty JTI"))
	}
	if !json.Valid(s.Claims) || !bytes.HasPrefix(bytes.TrimSpace(s.Claims), []byte("{")) {
		errs = append(errs, errors.New("claims are not a JSON object"))
	}
	return errors.Join(errs...)
}

func checkStreamID(id string) error {
	if id == "" {
		return errors.New("empty stream id")
	}
	if strings.IndexByte(id, 0) >= 0 {
		return errors.New("stream id contains NUL")
	}
	return nil
}

// SetStream creates or updates a stream; the configuration is persisted.
// Paused → enabled releases held SETs in order; disabled discards the queue.
func (o *Outbox) SetStream(ctx context.Context, cfg StreamConfig) error {
	var errs []error
	if err := checkStreamID(cfg.ID); err != nil {
		errs = append(errs, err)
	}
	switch cfg.Method {
	case MethodPush:
		if err := CheckEndpointURL(cfg.EndpointURL, o.cfg.AllowPrivateEndpoints); err != nil {
			errs = append(errs, err)
		}
	case MethodPoll:
	default:
		errs = append(errs, fmt.Errorf("unknown delivery method %q", cfg.Method))
	}
	switch cfg.Status {
	case StatusEnabled, StatusPaused, StatusDisabled:
	default:
		errs = append(errs, fmt.Errorf("unknown status %q", cfg.Status))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("outbox: stream config: %w", err)
	}
	if st := o.stream(cfg.ID); st != nil {
		// The backoff ends before the change is stored, so an outcome
		// committed meanwhile does not store the old run again.
		st.mu.Lock()
		if retryNow(st.cfg, cfg) {
			st.until = time.Time{}
			st.failures = 0
			st.failingSince = time.Time{}
			st.reported = false
		}
		st.mu.Unlock()
	}
	var gen uint64
	changed := false
	err := o.store.update(ctx, func(tx kv.Tx) error {
		m, err := getMeta(tx, cfg.ID)
		if err != nil {
			return err
		}
		if m == nil {
			m = &streamMeta{Tail: seqOrigin, Head: seqOrigin - 1}
		}
		if retryNow(m.Config, cfg) {
			m.Failing = failingState{}
		}
		// A change of what is stored moves the generation: every other
		// replica's dispatcher stops at its next transaction (or at once,
		// woken by changeKey) and goes on under the new configuration.
		changed = !sameStored(m.Config, cfg)
		if changed {
			m.Gen++
		}
		gen = m.Gen
		m.Config = cfg
		return putMeta(tx, m)
	})
	if err != nil {
		return err
	}
	if changed {
		o.cfg.Notifier.Notify(changeKey(cfg.ID))
	}
	if cfg.Status == StatusDisabled {
		// New SETs are dropped from now on; the queue goes in chunks so a
		// large backlog never makes one huge transaction.
		if err := o.discardChunks(ctx, cfg.ID, bktQueue, true, true); err != nil {
			return err
		}
		// What is left (its own announcement) is handed out afresh.
		if err := o.clearPollLeases(ctx, cfg.ID); err != nil {
			return err
		}
	}
	o.mu.Lock()
	st := o.streams[cfg.ID]
	if st == nil {
		st = &streamState{id: cfg.ID, adopted: make(chan struct{}, 1)}
		o.streams[cfg.ID] = st
	}
	st.mu.Lock()
	old := st.cfg
	st.cfg = cfg
	st.gen = max(st.gen, gen)
	st.held = false
	st.mu.Unlock()
	o.startDispatcherLocked(st)
	o.mu.Unlock()
	o.log.Info("outbox stream set", slog.String("stream_id", cfg.ID),
		slog.String("method", string(cfg.Method)), slog.String("status", string(cfg.Status)))
	if cfg.Status == StatusPaused && old.Status != StatusPaused {
		o.traceHold(st, HoldPaused, time.Time{}, "", 0)
	}
	o.cfg.Notifier.Notify(cfg.ID)
	return nil
}

// StreamConfig returns the configuration this replica delivers a stream
// under (its credentials left out), and whether it knows the stream.
func (o *Outbox) StreamConfig(id string) (StreamConfig, bool) {
	st := o.stream(id)
	if st == nil {
		return StreamConfig{}, false
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	cfg := st.cfg
	cfg.AuthorizationHeader = ""
	return cfg, true
}

// sameStored reports whether two configurations store the same (the
// authorization header is never stored).
func sameStored(a, b StreamConfig) bool {
	a.AuthorizationHeader, b.AuthorizationHeader = "", ""
	return a == b
}

// changeKey is the Notifier key a change of a stream's configuration is
// announced on, apart from the stream's own (which every new SET wakes):
// a dispatcher in the middle of a delivery waits on it alone. A stream id
// that happens to be the same string only costs spurious wake-ups.
func changeKey(streamID string) string { return "config/" + streamID }

// AdoptStream registers a stream as another replica sharing the store set
// it: its stored configuration (method, status, endpoint) is taken as it
// is, with cfg's authorization header when cfg names the same
// destination, and nothing is written. A replica keeps to what was
// committed last, even when the caller's view of the stream is older.
func (o *Outbox) AdoptStream(ctx context.Context, cfg StreamConfig) error {
	var m *streamMeta
	err := o.store.view(func(tx kv.Tx) error {
		var err error
		m, err = getMeta(tx, cfg.ID)
		return err
	})
	if err != nil {
		return err
	}
	if m == nil {
		return ErrUnknownStream
	}
	o.mu.Lock()
	st := o.streams[cfg.ID]
	if st == nil {
		st = newStreamState(m)
		o.streams[cfg.ID] = st
	} else {
		o.adopt(st, m)
	}
	st.mu.Lock()
	if st.cfg.Method == cfg.Method && st.cfg.EndpointURL == cfg.EndpointURL {
		st.cfg.AuthorizationHeader, st.held = cfg.AuthorizationHeader, false
	}
	st.mu.Unlock()
	o.startDispatcherLocked(st)
	o.mu.Unlock()
	o.cfg.Notifier.Notify(cfg.ID)
	return nil
}

// adopt takes a stream's stored state into st when it is newer than what
// st has: another replica changed the stream (m nil: deleted it). It
// reports whether st changed. A new destination is held until the
// stream's owner registers it here with its credentials.
func (o *Outbox) adopt(st *streamState, m *streamMeta) bool {
	st.mu.Lock()
	old := st.cfg
	switch {
	case m == nil:
		if old.Status == StatusDisabled {
			st.mu.Unlock()
			return false
		}
		st.cfg.Status = StatusDisabled
	case m.Gen < st.gen || (m.Gen == st.gen && sameStored(m.Config, old)):
		st.mu.Unlock()
		return false
	default:
		cfg := m.Config
		cfg.AuthorizationHeader = old.AuthorizationHeader
		if cfg.Method != old.Method || cfg.EndpointURL != old.EndpointURL {
			st.held = true
		}
		st.cfg, st.gen = cfg, m.Gen
		if retryNow(old, cfg) {
			f := m.Failing
			st.failures, st.failingSince, st.until, st.reported = f.Failures, f.Since, f.Until, f.Reported
		}
	}
	cfg := st.cfg
	st.mu.Unlock()
	select {
	case st.adopted <- struct{}{}:
	default:
	}
	o.log.Info("outbox stream changed through another replica", slog.String("stream_id", st.id),
		slog.String("status", string(cfg.Status)), slog.Bool("deleted", m == nil))
	// The SETs held are traced by the replica that made the change.
	if w, ok := o.cfg.Reporter.(StreamWatcher); ok {
		w.StreamChanged(st.id)
	}
	return true
}

// retryNow reports whether a stream's change ends its backoff: a receiver
// that fixed its endpoint or credentials, or resumed the stream, gets an
// attempt now.
func retryNow(old, cfg StreamConfig) bool {
	return old.EndpointURL != cfg.EndpointURL || old.AuthorizationHeader != cfg.AuthorizationHeader ||
		old.Status != cfg.Status || old.Method != cfg.Method
}

// DeleteStream forgets a stream and discards its queue, dead letter and
// history.
func (o *Outbox) DeleteStream(ctx context.Context, id string) error {
	if err := checkStreamID(id); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	// First stop accepting SETs, then remove everything in chunks, then
	// forget the stream.
	err := o.store.update(ctx, func(tx kv.Tx) error {
		m, err := getMeta(tx, id)
		if err != nil || m == nil {
			return err
		}
		if m.Config.Status != StatusDisabled {
			m.Config.Status = StatusDisabled
			m.Gen++
		}
		return putMeta(tx, m)
	})
	if err != nil {
		return err
	}
	o.cfg.Notifier.Notify(changeKey(id))
	for _, b := range [][]byte{bktQueue, bktHist, bktDead} {
		if err := o.discardChunks(ctx, id, b, false, false); err != nil {
			return err
		}
	}
	if err := o.store.update(ctx, func(tx kv.Tx) error {
		return tx.Bucket(bktStreams).Delete([]byte(id))
	}); err != nil {
		return err
	}
	o.mu.Lock()
	st := o.streams[id]
	delete(o.streams, id)
	o.mu.Unlock()
	if st != nil {
		st.mu.Lock()
		if st.cancel != nil {
			st.cancel()
		}
		st.mu.Unlock()
	}
	o.cfg.Notifier.Notify(id)
	return nil
}

// discardChunk bounds the keys one discard transaction removes.
const discardChunk = 5000

// discardChunks removes a stream's entries from an index bucket (queue,
// hist or dead) and their records, discardChunk per transaction. For the
// queue, countDropped moves the counters from queued to dropped, and
// keepAnnounce leaves Announce SETs in place (a disable keeps its own
// announcement).
func (o *Outbox) discardChunks(ctx context.Context, id string, bucket []byte, countDropped, keepAnnounce bool) error {
	p := streamPrefix(id)
	for {
		n := 0
		err := o.store.update(ctx, func(tx kv.Tx) error {
			n = 0
			m, err := getMeta(tx, id)
			if err != nil {
				return err
			}
			c := tx.Bucket(bucket).Cursor()
			for k, v := c.Seek(p); k != nil && hasPrefix(k, p) && n < discardChunk; k, v = c.Seek(p) {
				r, err := getRecord(tx, string(v))
				if err != nil {
					return err
				}
				if keepAnnounce && r != nil && r.Announce {
					// Skip the kept ones (they sit at the head); the next
					// key to remove is the first after them.
					for k != nil && hasPrefix(k, p) && r != nil && r.Announce {
						if k, v = c.Next(); k == nil || !hasPrefix(k, p) {
							break
						}
						if r, err = getRecord(tx, string(v)); err != nil {
							return err
						}
					}
					if k == nil || !hasPrefix(k, p) {
						break
					}
				}
				if r != nil {
					if err := dropRecord(tx, r); err != nil {
						return err
					}
				} else if err := c.Delete(); err != nil {
					return err
				} else if err := tx.Bucket(bktPolled).Delete(k); err != nil {
					return err
				}
				if err := tx.Bucket(bktHist).Delete(k); err != nil {
					return err
				}
				_ = tx.Bucket(bucket).Delete(k)
				n++
			}
			if m != nil && n > 0 {
				if string(bucket) == string(bktQueue) {
					m.Queued -= int64(n)
					if countDropped {
						m.Dropped += int64(n)
					}
				}
				if string(bucket) == string(bktDead) {
					m.Dead -= int64(n)
				}
				return putMeta(tx, m)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if n < discardChunk {
			return nil
		}
	}
}

func binaryTime(t time.Time) []byte {
	return expiryKey(t, 0, "")[:8]
}
