package admin

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// LiveEvent is one change the dashboard's open pages hear about through
// server-sent events. It names the stream and, when known, the SET; pages
// re-fetch what they show rather than trusting the event's details.
type LiveEvent struct {
	Kind      string    `json:"kind"` // enqueue, attempt, delivered, dead, backoff, resync
	StreamID  string    `json:"stream_id,omitempty"`
	JTI       string    `json:"jti,omitempty"`
	Status    int       `json:"status_code,omitempty"`
	Outcome   string    `json:"outcome,omitempty"`
	LatencyMS float64   `json:"latency_ms,omitempty"`
	Queued    int       `json:"queued,omitempty"`
	Reason    string    `json:"reason,omitempty"`
	At        time.Time `json:"at"`
}

// broadcaster fans live events out to the open pages. Publishing never
// blocks: a subscriber whose buffer is full misses the event and is told
// to re-fetch (resync) once it catches up. Delivery of SETs therefore never
// waits for a slow browser.
type broadcaster struct {
	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	max     int
	buf     int
	dropped atomic.Int64
}

type subscriber struct {
	ch     chan LiveEvent
	lagged atomic.Bool
}

func newBroadcaster(maxSubs, buf int) *broadcaster {
	return &broadcaster{subs: map[*subscriber]struct{}{}, max: maxSubs, buf: buf}
}

// subscribe adds a listener; false when too many pages are open.
func (b *broadcaster) subscribe() (*subscriber, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.subs) >= b.max {
		return nil, false
	}
	s := &subscriber{ch: make(chan LiveEvent, b.buf)}
	b.subs[s] = struct{}{}
	return s, true
}

func (b *broadcaster) unsubscribe(s *subscriber) {
	b.mu.Lock()
	delete(b.subs, s)
	b.mu.Unlock()
}

func (b *broadcaster) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// publish hands ev to every subscriber without waiting.
func (b *broadcaster) publish(ev LiveEvent) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for s := range b.subs {
		select {
		case s.ch <- ev:
		default:
			s.lagged.Store(true)
			b.dropped.Add(1)
		}
	}
}

// hooks turns the outbox's callbacks into live events.
func (d *Dashboard) hooks() outbox.Hooks {
	now := d.cfg.Clock
	return outbox.Hooks{
		OnEnqueue: func(streamID string, queued, dropped int) {
			d.live.publish(LiveEvent{Kind: "enqueue", StreamID: streamID, Queued: queued, At: now()})
		},
		OnAttempt: func(streamID, jti, _ string, a outbox.Attempt) {
			d.live.publish(LiveEvent{Kind: "attempt", StreamID: streamID, JTI: jti, Status: a.StatusCode,
				Outcome: a.Outcome, LatencyMS: float64(a.Latency) / float64(time.Millisecond), At: now()})
		},
		OnDelivered: func(streamID, jti string, _ time.Duration) {
			d.live.publish(LiveEvent{Kind: "delivered", StreamID: streamID, JTI: jti, At: now()})
		},
		OnDeadLetter: func(streamID, jti, reason string) {
			d.live.publish(LiveEvent{Kind: "dead", StreamID: streamID, JTI: jti, Reason: reason, At: now()})
		},
		OnBackoff: func(streamID string, _ time.Time, lastErr string) {
			d.live.publish(LiveEvent{Kind: "backoff", StreamID: streamID, Reason: lastErr, At: now()})
		},
	}
}

// events streams live events as text/event-stream until the page goes
// away or the dashboard shuts down.
func (d *Dashboard) events(c echo.Context) error {
	d.closeOnShutdown(c.Request())
	sub, ok := d.live.subscribe()
	if !ok {
		return echo.NewHTTPError(http.StatusServiceUnavailable, "too many dashboard pages are open")
	}
	defer d.live.unsubscribe(sub)
	w := c.Response()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// Tell the page how long to wait before reconnecting, and that it is
	// connected (it re-fetches on open).
	if _, err := fmt.Fprint(w, "retry: 2000\nevent: hello\ndata: {}\n\n"); err != nil {
		return nil
	}
	w.Flush()
	heartbeat := time.NewTicker(d.cfg.Heartbeat)
	defer heartbeat.Stop()
	ctx := c.Request().Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-d.done:
			return nil
		case <-heartbeat.C:
			if _, err := fmt.Fprint(w, ": keep-alive\n\n"); err != nil {
				return nil
			}
		case ev := <-sub.ch:
			if sub.lagged.Swap(false) {
				// Events were missed: the page re-fetches everything.
				ev = LiveEvent{Kind: "resync", At: d.cfg.Clock()}
			}
			data, err := json.Marshal(ev)
			if err != nil {
				return nil
			}
			if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", ev.Kind, data); err != nil {
				return nil
			}
		}
		w.Flush()
	}
}

// closeOnShutdown ends the live connections when the HTTP server serving
// them shuts down: http.Server.Shutdown waits for active connections, and
// a live connection never goes idle by itself.
func (d *Dashboard) closeOnShutdown(r *http.Request) {
	srv, ok := r.Context().Value(http.ServerContextKey).(*http.Server)
	if !ok || srv == nil {
		return
	}
	if _, seen := d.servers.LoadOrStore(srv, true); !seen {
		srv.RegisterOnShutdown(d.Close)
	}
}
