package outbox

import (
	"context"
	"log/slog"
	"time"
)

// DeliveryTracer follows each SET's delivery in the trace it was queued
// with (SET.TraceParent): every push attempt, every poll hand-out and
// acknowledgement, and every decision that makes a SET wait. The outbox
// knows nothing of the tracing library; cmd implements it. Calls run on the
// delivery path and must be quick.
type DeliveryTracer interface {
	// StartPush is called just before a push attempt. It returns the W3C
	// traceparent to send with the request ("" sends none) and the function
	// the outbox calls once with the attempt's outcome.
	StartPush(d Delivery) (traceParent string, end func(Attempt))
	// Polled reports SETs a poll handed out (step "handed_out") or a
	// receiver acknowledged ("acked") or rejected ("set_err"); ctx is the
	// poll request's.
	Polled(ctx context.Context, step string, ds []Delivery)
	// Held reports SETs that wait, and why.
	Held(h Hold)
}

// Delivery is what a DeliveryTracer learns of one SET on its way out.
type Delivery struct {
	StreamID    string
	JTI         string
	EventType   string
	TraceParent string
	Labels      map[string]string
	// Endpoint is the push URL (push only).
	Endpoint string
	// Attempt is this attempt's number, counted in the store, so it goes
	// on across restarts (push); for a poll step, the attempts recorded.
	Attempt int
	// Ahead is how many SETs are queued before this one (Held only).
	Ahead      int
	EnqueuedAt time.Time
}

// Why a SET waits.
const (
	HoldBackoff = "backoff" // the stream is backing off after a failed push
	HoldPaused  = "paused"  // the stream is paused
)

// Hold is one decision that makes SETs wait.
type Hold struct {
	StreamID string
	Reason   string
	// Until is the end of the backoff (HoldBackoff).
	Until time.Time
	// LastError is the failure that caused the backoff.
	LastError string
	// HeadJTI is the SET at the head of the queue, the one being retried.
	HeadJTI string
	// Waiting are the SETs held, first maxHeldReported of the queue.
	Waiting []Delivery
}

// maxHeldReported bounds the SETs one Hold names: a decision costs at most
// this many records read, however long the backlog.
const maxHeldReported = 32

func deliveryOf(r *Record, endpoint string, attempt int) Delivery {
	return Delivery{StreamID: r.StreamID, JTI: r.JTI, EventType: r.EventType, TraceParent: r.TraceParent,
		Labels: r.Labels, Endpoint: endpoint, Attempt: attempt, EnqueuedAt: r.EnqueuedAt}
}

// startPush tells the tracer of an attempt about to be made.
func (o *Outbox) startPush(r *Record, cfg StreamConfig) (string, func(Attempt)) {
	t := o.cfg.Hooks.Trace
	if t == nil {
		return "", func(Attempt) {}
	}
	return t.StartPush(deliveryOf(r, cfg.EndpointURL, r.AttemptCount+1))
}

// tracePolled reports the records of one poll step.
func (o *Outbox) tracePolled(ctx context.Context, step string, rs []*Record) {
	t := o.cfg.Hooks.Trace
	if t == nil || len(rs) == 0 {
		return
	}
	ds := make([]Delivery, len(rs))
	for i, r := range rs {
		ds[i] = deliveryOf(r, "", r.AttemptCount)
	}
	t.Polled(ctx, step, ds)
}

// traceHold reports the SETs queued on a stream as held for reason,
// skipping the first skip (the head being retried names itself in its
// push spans).
func (o *Outbox) traceHold(st *streamState, reason string, until time.Time, lastErr string, skip int) {
	t := o.cfg.Hooks.Trace
	if t == nil {
		return
	}
	batch, _, err := o.loadAfter(st.id, nil, maxHeldReported+skip)
	if err != nil {
		o.log.Debug("outbox trace hold: load queue", slog.String("stream_id", st.id), slog.Any("err", err))
		return
	}
	if len(batch) <= skip {
		return
	}
	h := Hold{StreamID: st.id, Reason: reason, Until: until, LastError: lastErr, HeadJTI: batch[0].rec.JTI}
	st.mu.Lock()
	endpoint := st.cfg.EndpointURL
	st.mu.Unlock()
	for i, p := range batch[skip:] {
		d := deliveryOf(p.rec, endpoint, p.rec.AttemptCount)
		d.Ahead = skip + i
		h.Waiting = append(h.Waiting, d)
	}
	t.Held(h)
}

// holdOnEnqueue reports newly queued SETs that will wait because their
// stream is paused or backing off. ahead holds, per new record, the SETs
// queued before it.
func (o *Outbox) holdOnEnqueue(fresh map[string][]Delivery) {
	t := o.cfg.Hooks.Trace
	if t == nil {
		return
	}
	now := o.now()
	for id, ds := range fresh {
		st := o.stream(id)
		if st == nil {
			continue
		}
		st.mu.Lock()
		status, until, lastErr, endpoint := st.cfg.Status, st.until, st.lastErr, st.cfg.EndpointURL
		st.mu.Unlock()
		h := Hold{StreamID: id, Waiting: ds}
		switch {
		case status == StatusPaused:
			h.Reason = HoldPaused
		case until.After(now):
			h.Reason, h.Until, h.LastError = HoldBackoff, until, lastErr
		default:
			continue
		}
		for i := range h.Waiting {
			h.Waiting[i].Endpoint = endpoint
		}
		t.Held(h)
	}
}
