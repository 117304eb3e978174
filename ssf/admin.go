package ssf

import (
	"context"
	"fmt"
	"log/slog"
)

// AdminStreams lists every receiver's streams, oldest first.
func (t *Transmitter) AdminStreams(context.Context) ([]Stream, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := []Stream{}
	for _, st := range t.sortedStreams() {
		out = append(out, st.rec.view())
	}
	return out, nil
}

// AdminStream returns one stream, or ErrNotFound.
func (t *Transmitter) AdminStream(_ context.Context, id string) (Stream, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	st, ok := t.streams[id]
	if !ok {
		return Stream{}, ErrNotFound
	}
	return st.rec.view(), nil
}

// AdminSetStatus changes a stream's status on the operator's behalf and
// announces it to the receiver with a stream-updated SET.
func (t *Transmitter) AdminSetStatus(ctx context.Context, id, status, reason string) (Stream, error) {
	switch status {
	case StatusEnabled, StatusPaused, StatusDisabled:
	default:
		return Stream{}, fmt.Errorf("status %q is not one of enabled, paused, disabled", status)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[id]
	if !ok {
		return Stream{}, ErrNotFound
	}
	rec, err := t.setStatusLocked(ctx, st, status, truncate(reason, t.cfg.DescriptionLimit), true)
	if err != nil {
		return Stream{}, err
	}
	t.log.InfoContext(ctx, "stream status set by operator", slog.String("stream_id", id), slog.String("status", status))
	return rec.view(), nil
}

// AdminDeleteStream deletes a stream and drops its queued SETs.
func (t *Transmitter) AdminDeleteStream(ctx context.Context, id string) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.streams[id]; !ok {
		return ErrNotFound
	}
	if err := t.removeStreamLocked(ctx, id); err != nil {
		return err
	}
	t.log.InfoContext(ctx, "stream deleted by operator", slog.String("stream_id", id))
	return nil
}

// AdminVerify queues a verification SET (with state, when not empty)
// without the receiver's rate limit.
func (t *Transmitter) AdminVerify(ctx context.Context, id, state string) error {
	t.mu.RLock()
	st, ok := t.streams[id]
	var rec StreamRecord
	if ok {
		rec = st.rec
	}
	t.mu.RUnlock()
	if !ok {
		return ErrNotFound
	}
	var s *string
	if state != "" {
		s = &state
	}
	return t.enqueueVerification(ctx, rec, s)
}
