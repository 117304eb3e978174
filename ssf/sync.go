package ssf

import (
	"context"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// streamsLock guards the transmitter's streams. Every write lock is
// counted, so SyncStreams, which reads the store without holding the lock,
// can tell that a local change came in meanwhile and leave it alone.
type streamsLock struct {
	sync.RWMutex
	writes atomic.Uint64
}

// Lock takes the write lock and counts it.
func (l *streamsLock) Lock() {
	l.RWMutex.Lock()
	l.writes.Add(1)
}

// SyncStreams reads the persisted streams again and adopts what other
// replicas sharing the store changed: streams created, updated (status,
// delivery, subjects) or deleted elsewhere, registered with or removed
// from this replica's queue. A round that overlaps a change made on this
// replica applies nothing; the next round sees both.
func (t *Transmitter) SyncStreams(ctx context.Context) error {
	before := t.mu.writes.Load()
	recs, err := t.store.ListStreams(ctx)
	if err != nil {
		return fmt.Errorf("sync streams: %w", err)
	}
	fresh := make(map[string]*streamState, len(recs))
	for _, r := range recs {
		added, removed, err := t.store.Subjects(ctx, r.ID)
		if err != nil {
			return fmt.Errorf("sync streams: subjects of %s: %w", r.ID, err)
		}
		fresh[r.ID] = &streamState{rec: r, added: added, removed: removed}
	}
	if t.syncHook != nil {
		t.syncHook()
	}
	t.mu.Lock()
	if t.mu.writes.Load() != before+1 {
		t.mu.Unlock()
		return nil // changed here meanwhile: the next round
	}
	var register []StreamRecord
	var gone []string
	for id, st := range fresh {
		old := t.streams[id]
		if old != nil && reflect.DeepEqual(old.rec, st.rec) && reflect.DeepEqual(old.added, st.added) && reflect.DeepEqual(old.removed, st.removed) {
			continue
		}
		t.streams[id] = st
		if old == nil || old.rec.outboxConfig() != st.rec.outboxConfig() {
			register = append(register, st.rec)
		}
	}
	for id := range t.streams {
		if fresh[id] == nil {
			delete(t.streams, id)
			gone = append(gone, id)
		}
	}
	t.mu.Unlock()
	for _, r := range register {
		if r.push() {
			if err := outbox.CheckEndpointURL(r.EndpointURL, t.cfg.AllowPrivateEndpoints); err != nil {
				continue // as at start: kept, deliveries refused
			}
		}
		if err := t.adoptStream(ctx, r.outboxConfig()); err != nil {
			return fmt.Errorf("sync streams: register %s with the queue: %w", r.ID, err)
		}
		t.log.Info("stream changed on another replica", slog.String("stream_id", r.ID), slog.String("status", r.Status))
	}
	for _, id := range gone {
		if err := t.cfg.Queue.DeleteStream(ctx, id); err != nil {
			return fmt.Errorf("sync streams: forget %s: %w", id, err)
		}
		t.log.Info("stream deleted on another replica", slog.String("stream_id", id))
	}
	return nil
}

// RunSync calls SyncStreams every interval until ctx ends (replicas
// sharing a database).
func (t *Transmitter) RunSync(ctx context.Context, every time.Duration) error {
	repeat(ctx, every, t.log, "streams: sync from the store", t.SyncStreams)
	return nil
}

// repeat calls fn every interval until ctx ends, logging its failures.
func repeat(ctx context.Context, every time.Duration, log *slog.Logger, what string, fn func(context.Context) error) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				log.Warn(what, slog.Any("error", err))
			}
		}
	}
}
