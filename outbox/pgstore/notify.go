package pgstore

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// notifyChannel is the LISTEN/NOTIFY channel; payloads are "schema:stream"
// so sidecars in different schemas of one database ignore each other.
const notifyChannel = "ssf_sidecar_new_set"

// Notifier is the outbox.Notifier of replicas sharing a database: Notify
// wakes this replica's waiters at once and every other replica's through
// NOTIFY; one connection per replica LISTENs. When that connection is
// lost, every waiter is woken once it is back (a wake-up may have been
// missed meanwhile; waking is always safe, waiters look again).
type Notifier struct {
	db  *DB
	log *slog.Logger

	mu      sync.Mutex
	waiters map[string]chan struct{}
	queued  map[string]bool // streams to NOTIFY, sent by the sender
	kick    chan struct{}

	cancel context.CancelFunc
	done   sync.WaitGroup
}

// Notifier returns the notifier of this replica, started on first use and
// stopped by Close.
func (d *DB) Notifier() *Notifier {
	d.notifyOnce.Do(func() { d.notifier = NewNotifier(d) })
	return d.notifier
}

// NewNotifier starts a listener and sender on db; Close stops them (before
// db is closed).
func NewNotifier(db *DB) *Notifier {
	ctx, cancel := context.WithCancel(context.Background())
	n := &Notifier{db: db, log: db.log, waiters: map[string]chan struct{}{}, queued: map[string]bool{},
		kick: make(chan struct{}, 1), cancel: cancel}
	ready := make(chan struct{})
	n.done.Add(2)
	go func() { defer n.done.Done(); n.listen(ctx, ready) }()
	go func() { defer n.done.Done(); n.send(ctx) }()
	select { // the first LISTEN, so a Notify right after this returns is heard
	case <-ready:
	case <-time.After(5 * time.Second):
	}
	return n
}

// Close stops the listener and sender.
func (n *Notifier) Close() {
	n.cancel()
	n.done.Wait()
}

// Notify implements outbox.Notifier.
func (n *Notifier) Notify(streamID string) {
	n.wake(streamID)
	n.mu.Lock()
	n.queued[streamID] = true
	n.mu.Unlock()
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// Wait implements outbox.Notifier.
func (n *Notifier) Wait(streamID string) <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	ch := n.waiters[streamID]
	if ch == nil {
		ch = make(chan struct{})
		n.waiters[streamID] = ch
	}
	return ch
}

func (n *Notifier) wake(streamID string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ch := n.waiters[streamID]; ch != nil {
		close(ch)
		delete(n.waiters, streamID)
	}
}

func (n *Notifier) wakeAll() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, ch := range n.waiters {
		close(ch)
		delete(n.waiters, id)
	}
}

// send NOTIFYs the queued streams, coalescing bursts into one statement.
func (n *Notifier) send(ctx context.Context) {
	prefix := n.db.schema + ":"
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.kick:
		}
		n.mu.Lock()
		ids := make([]string, 0, len(n.queued))
		for id := range n.queued {
			ids = append(ids, prefix+id)
		}
		clear(n.queued)
		n.mu.Unlock()
		if len(ids) == 0 {
			continue
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := n.db.pool.Exec(sctx, "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", notifyChannel, ids)
		cancel()
		if err != nil && ctx.Err() == nil {
			// The other replicas' waiters time out and look again.
			n.log.Warn("database notify failed", slog.Any("err", err))
		}
	}
}

// listen holds one connection LISTENing, reconnecting after a failure.
func (n *Notifier) listen(ctx context.Context, ready chan struct{}) {
	prefix := n.db.schema + ":"
	first := true
	for ctx.Err() == nil {
		// A connection of its own, not the pool's: it is busy for as long
		// as the notifier runs, and must not keep the pool from closing.
		conn, err := pgx.ConnectConfig(ctx, n.db.pool.Config().ConnConfig.Copy())
		if err == nil {
			if _, err = conn.Exec(ctx, "LISTEN "+pgx.Identifier{notifyChannel}.Sanitize()); err != nil {
				_ = conn.Close(context.Background())
			}
		}
		if err != nil {
			if ctx.Err() == nil {
				n.log.Warn("database listen failed; retrying", slog.Any("err", err))
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		if first {
			close(ready)
			first = false
		} else {
			n.wakeAll()
		}
		for {
			note, err := conn.WaitForNotification(ctx)
			if err != nil {
				break
			}
			if id, ok := strings.CutPrefix(note.Payload, prefix); ok {
				n.wake(id)
			}
		}
		_ = conn.Close(context.Background())
	}
}
