package ssf

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// streamAdopter is a Queue that can take a stream over as another replica
// sharing its store set it, without writing it again (outbox.Outbox).
type streamAdopter interface {
	AdoptStream(ctx context.Context, cfg outbox.StreamConfig) error
}

// adoptStream registers a stream another replica created or changed with
// the queue. A queue on the shared store already holds what that replica
// committed, and takes it from there: a sync round that read the stream's
// record before a newer change then cannot write the older configuration
// back over it.
func (t *Transmitter) adoptStream(ctx context.Context, cfg outbox.StreamConfig) error {
	if a, ok := t.cfg.Queue.(streamAdopter); ok {
		err := a.AdoptStream(ctx, cfg)
		if !errors.Is(err, outbox.ErrUnknownStream) {
			return err
		}
	}
	return t.cfg.Queue.SetStream(ctx, cfg)
}

// resyncState coalesces the sync rounds StreamChanged asks for.
type resyncState struct {
	running, again atomic.Bool
}

// resyncDelay is how long a sync round asked for by StreamChanged waits
// first: the replica that changed the stream writes the queue's side
// before the stream's record.
const resyncDelay = 100 * time.Millisecond

var _ outbox.StreamWatcher = (*Transmitter)(nil)

// StreamChanged implements outbox.StreamWatcher: the queue found that
// another replica changed the stream, so the stream records are read
// again now rather than at the next sync round (status, reason and the
// push credentials are the records').
func (t *Transmitter) StreamChanged(string) {
	t.resync.again.Store(true)
	if t.resync.running.CompareAndSwap(false, true) {
		go t.resyncLoop()
	}
}

func (t *Transmitter) resyncLoop() {
	for {
		for t.resync.again.Swap(false) {
			time.Sleep(resyncDelay)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := t.SyncStreams(ctx); err != nil {
				t.log.Warn("streams: sync after a change through another replica", slog.Any("error", err))
			}
			cancel()
		}
		t.resync.running.Store(false)
		// A change heard after the last round and before the flag fell.
		if !t.resync.again.Load() || !t.resync.running.CompareAndSwap(false, true) {
			return
		}
	}
}
