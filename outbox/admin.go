package outbox

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// StreamStats is the state of one stream's queue, for the admin API, the
// CLI and the dashboard.
type StreamStats struct {
	StreamID  string `json:"stream_id"`
	Method    Method `json:"method"`
	Status    Status `json:"status"`
	Backlog   int64  `json:"backlog"`
	Delivered int64  `json:"delivered"`
	Dead      int64  `json:"dead"`
	// Dropped counts SETs left undelivered on purpose: those enqueued while
	// the stream was disabled, and those a newer Supersede SET replaced
	// before they were handed out.
	Dropped int64 `json:"dropped"`
	// Non202 counts deliveries the receiver accepted with a 2xx other than
	// 202.
	Non202          int64         `json:"non_202"`
	OldestAge       time.Duration `json:"oldest_age"`
	LastSuccess     time.Time     `json:"last_success,omitzero"`
	LastError       string        `json:"last_error,omitempty"`
	LastErrorAt     time.Time     `json:"last_error_at,omitzero"`
	FailingSince    time.Time     `json:"failing_since,omitzero"`
	BackingOffUntil time.Time     `json:"backing_off_until,omitzero"`
	Leased          int           `json:"leased,omitempty"`
}

// DeadLetter is a SET that will not be delivered unless replayed.
type DeadLetter struct {
	JTI          string    `json:"jti"`
	StreamID     string    `json:"stream_id"`
	EventType    string    `json:"event_type,omitempty"`
	EnqueuedAt   time.Time `json:"enqueued_at"`
	DeadAt       time.Time `json:"dead_at"`
	Reason       string    `json:"reason"`
	AttemptCount int       `json:"attempt_count"`
	Attempts     []Attempt `json:"attempts,omitempty"`
}

// Stats returns one stream's statistics.
func (o *Outbox) Stats(ctx context.Context, streamID string) (StreamStats, error) {
	var s StreamStats
	err := o.store.view(func(tx kv.Tx) error {
		m, err := getMeta(tx, streamID)
		if err != nil {
			return err
		}
		if m == nil {
			return ErrUnknownStream
		}
		s = o.statsOf(tx, m)
		return nil
	})
	return s, err
}

// AllStats returns every stream's statistics, ordered by stream id.
func (o *Outbox) AllStats(ctx context.Context) ([]StreamStats, error) {
	var out []StreamStats
	err := o.store.view(func(tx kv.Tx) error {
		return tx.Bucket(bktStreams).ForEach(func(k, _ []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			m, err := getMeta(tx, string(k))
			if err != nil {
				return err
			}
			out = append(out, o.statsOf(tx, m))
			return nil
		})
	})
	return out, err
}

func (o *Outbox) statsOf(tx kv.Tx, m *streamMeta) StreamStats {
	s := StreamStats{StreamID: m.Config.ID, Method: m.Config.Method, Status: m.Config.Status,
		Backlog: m.Queued, Delivered: m.Delivered, Dead: m.Dead, Dropped: m.Dropped,
		Non202: m.Non202, LastSuccess: m.LastSuccess}
	if m.Config.Method == MethodPoll {
		s.Leased = o.liveLeases(tx, m.Config.ID)
	}
	now := o.now()
	// The oldest SET is near the head (Head SETs are young): look at a few.
	p := streamPrefix(m.Config.ID)
	c := tx.Bucket(bktQueue).Cursor()
	n := 0
	for k, v := c.Seek(p); k != nil && hasPrefix(k, p) && n < 16; k, v = c.Next() {
		n++
		if r, err := getRecord(tx, string(v)); err == nil && r != nil {
			if age := now.Sub(r.QueuedAt); age > s.OldestAge {
				s.OldestAge = age
			}
		}
	}
	if st := o.stream(m.Config.ID); st != nil {
		st.mu.Lock()
		if st.lastSuccess.After(s.LastSuccess) {
			s.LastSuccess = st.lastSuccess
		}
		s.LastError, s.LastErrorAt = st.lastErr, st.lastErrAt
		s.FailingSince = st.failingSince
		if st.until.After(now) {
			s.BackingOffUntil = st.until
		}
		st.mu.Unlock()
	}
	return s
}

// DeadLetters lists up to limit dead letters of a stream, oldest first
// (limit ≤ 0: 100).
func (o *Outbox) DeadLetters(ctx context.Context, streamID string, limit int) ([]DeadLetter, error) {
	if limit <= 0 {
		limit = 100
	}
	var out []DeadLetter
	err := o.store.view(func(tx kv.Tx) error {
		if m, err := getMeta(tx, streamID); err != nil || m == nil {
			return errors.Join(err, ErrUnknownStream)
		}
		p := streamPrefix(streamID)
		c := tx.Bucket(bktDead).Cursor()
		for k, v := c.Seek(p); k != nil && hasPrefix(k, p) && len(out) < limit; k, v = c.Next() {
			r, err := getRecord(tx, string(v))
			if err != nil {
				return err
			}
			if r == nil {
				continue
			}
			out = append(out, DeadLetter{JTI: r.JTI, StreamID: r.StreamID, EventType: r.EventType,
				EnqueuedAt: r.EnqueuedAt, DeadAt: r.DeadAt, Reason: r.Reason,
				AttemptCount: r.AttemptCount, Attempts: r.Attempts})
		}
		return nil
	})
	if err != nil && errors.Is(err, ErrUnknownStream) {
		return nil, ErrUnknownStream
	}
	return out, err
}

// Replay puts dead letters back at the tail of their stream's queue with
// the same jti (nil jtis: all of the stream's dead letters). It returns how
// many were queued again.
func (o *Outbox) Replay(ctx context.Context, streamID string, jtis []string) (int, error) {
	now := o.now()
	n := 0
	err := o.store.update(ctx, func(tx kv.Tx) error {
		n = 0
		m, err := getMeta(tx, streamID)
		if err != nil {
			return err
		}
		if m == nil {
			return ErrUnknownStream
		}
		if m.Config.Status == StatusDisabled {
			return fmt.Errorf("outbox: stream %q is disabled", streamID)
		}
		recs, err := deadRecords(tx, streamID, jtis)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := tx.Bucket(bktDead).Delete(seqKey(r.StreamID, r.Seq)); err != nil {
				return err
			}
			if err := tx.Bucket(bktHist).Delete(seqKey(r.StreamID, r.Seq)); err != nil {
				return err
			}
			r.Seq = m.Tail
			m.Tail++
			r.State = StateQueued
			r.QueuedAt = now
			r.DeadAt = time.Time{}
			r.Reason = ""
			if err := o.queueRecord(tx, r); err != nil {
				return err
			}
			m.Dead--
			m.Queued++
			n++
		}
		return putMeta(tx, m)
	})
	if err != nil {
		return 0, err
	}
	if n > 0 {
		o.cfg.Notifier.Notify(streamID)
	}
	return n, nil
}

// Purge deletes dead letters for good (nil jtis: all of the stream's).
func (o *Outbox) Purge(ctx context.Context, streamID string, jtis []string) (int, error) {
	n := 0
	err := o.store.update(ctx, func(tx kv.Tx) error {
		n = 0
		m, err := getMeta(tx, streamID)
		if err != nil {
			return err
		}
		if m == nil {
			return ErrUnknownStream
		}
		recs, err := deadRecords(tx, streamID, jtis)
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := dropRecord(tx, r); err != nil {
				return err
			}
			m.Dead--
			n++
		}
		return putMeta(tx, m)
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

// deadRecords returns the stream's dead records named by jtis (nil: all).
func deadRecords(tx kv.Tx, streamID string, jtis []string) ([]*Record, error) {
	var out []*Record
	if jtis == nil {
		p := streamPrefix(streamID)
		c := tx.Bucket(bktDead).Cursor()
		for k, v := c.Seek(p); k != nil && hasPrefix(k, p); k, v = c.Next() {
			r, err := getRecord(tx, string(v))
			if err != nil {
				return nil, err
			}
			if r != nil && r.State == StateDead {
				out = append(out, r)
			}
		}
		return out, nil
	}
	seen := map[string]bool{}
	for _, j := range jtis {
		if seen[j] {
			continue
		}
		seen[j] = true
		r, err := getRecord(tx, j)
		if err != nil {
			return nil, err
		}
		if r != nil && r.StreamID == streamID && r.State == StateDead {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].Seq < out[b].Seq })
	return out, nil
}

// History returns up to limit of a stream's most recent records (queued,
// delivered and dead), newest first (limit ≤ 0: 50).
func (o *Outbox) History(ctx context.Context, streamID string, limit int) ([]Record, error) {
	if limit <= 0 {
		limit = 50
	}
	var out []Record
	err := o.store.view(func(tx kv.Tx) error {
		c := tx.Bucket(bktHist).Cursor()
		p := streamPrefix(streamID)
		upper := seqKey(streamID, math.MaxUint64)
		k, v := c.Seek(upper)
		if k == nil {
			k, v = c.Last()
		} else if string(k) != string(upper) {
			k, v = c.Prev()
		}
		for ; k != nil && hasPrefix(k, p) && len(out) < limit; k, v = c.Prev() {
			r, err := getRecord(tx, string(v))
			if err != nil {
				return err
			}
			if r != nil {
				out = append(out, *r)
			}
		}
		return nil
	})
	return out, err
}

// DroppedUnknown counts SETs dropped since start because their stream was
// unknown (drops on disabled streams are in each stream's Dropped).
func (o *Outbox) DroppedUnknown() int64 { return o.droppedUnknown.Load() }
