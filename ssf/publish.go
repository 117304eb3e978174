package ssf

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

var tracer = otel.Tracer("github.com/ssf-sidecar/ssf-sidecar/ssf")

// startPublishSpan starts the span of one Publish, as a child of the
// request that caused the signal when its traceparent is known, and
// returns the traceparent the SETs carry (this span's, or the signal's
// when no tracer is installed).
func startPublishSpan(ctx context.Context, s tap.Signal) (context.Context, trace.Span, string) {
	tc := propagation.TraceContext{}
	if s.TraceParent != "" && !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = tc.Extract(ctx, propagation.MapCarrier{"traceparent": s.TraceParent})
	}
	ctx, span := tracer.Start(ctx, "ssf.publish", trace.WithAttributes(
		attribute.String("ssf.signal.id", s.ID), attribute.String("ssf.signal.kind", string(s.Kind)),
		attribute.String("ssf.signal.source", string(s.Source))))
	carrier := propagation.MapCarrier{}
	tc.Inject(ctx, carrier)
	tp := carrier["traceparent"]
	if tp == "" {
		tp = s.TraceParent
	}
	return ctx, span, tp
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// setClaims is the claims set of every SET this transmitter builds: never
// sub, never exp, exactly one event. iat is when the SET was signed: the
// outbox signs at hand-out, and Keys.Sign sets it then, so a SET retried
// after a long outage is not refused as old by a receiver with a maximum
// SET age; the value written here at enqueue is replaced. toe (RFC 8417
// §2.2) is when the event happened and never changes, like the jti.
type setClaims struct {
	Iss    string                    `json:"iss"`
	Aud    string                    `json:"aud"`
	Iat    int64                     `json:"iat"`
	Toe    int64                     `json:"toe,omitempty"`
	Jti    string                    `json:"jti"`
	Txn    string                    `json:"txn,omitempty"`
	SubID  Subject                   `json:"sub_id"`
	Events map[string]map[string]any `json:"events"`
}

// buildSET builds one SET for a stream. key is the idempotency key (empty:
// the jti); toe is when the event happened (zero: now).
func (t *Transmitter) buildSET(rec StreamRecord, eventType string, body map[string]any, subj Subject, txn, key string, toe time.Time) (outbox.SET, error) {
	jti := t.cfg.NewID()
	now := t.cfg.Clock()
	if toe.IsZero() {
		toe = now
	}
	if txn == "" {
		txn = jti
	}
	if body == nil {
		body = map[string]any{}
	}
	claims := setClaims{Iss: t.cfg.Issuer, Aud: rec.Audience, Iat: now.Unix(), Toe: toe.Unix(), Jti: jti, Txn: txn,
		SubID: subj, Events: map[string]map[string]any{eventType: body}}
	b, err := json.Marshal(claims)
	if err != nil {
		return outbox.SET{}, fmt.Errorf("encode SET claims: %w", err)
	}
	return outbox.SET{StreamID: rec.ID, JTI: jti, Key: key, EventType: eventType, Claims: b}, nil
}

func (t *Transmitter) enqueueVerification(ctx context.Context, rec StreamRecord, state *string) error {
	body := map[string]any{}
	if state != nil {
		body["state"] = *state
	}
	set, err := t.buildSET(rec, EventVerification, body, OpaqueSubject(rec.ID), "", "", time.Time{})
	if err != nil {
		return err
	}
	set.Labels = map[string]string{"source": "verification", "receiver": rec.Receiver}
	set.TraceParent = traceSET(ctx, set, "")
	// A verification still waiting to be handed out when the receiver asks
	// again is replaced: receivers (and the conformance suite) take the
	// first verification they read as the answer to their latest request.
	set.Supersede = true
	if err := t.enqueueTraced(ctx, []outbox.SET{set}, nil); err != nil {
		return fmt.Errorf("queue verification for %s: %w", rec.ID, err)
	}
	t.log.InfoContext(ctx, "verification queued", slog.String("stream_id", rec.ID), slog.String("jti", set.JTI))
	return nil
}

func (t *Transmitter) enqueueStreamUpdated(ctx context.Context, rec StreamRecord) error {
	body := map[string]any{"status": rec.Status}
	if rec.Reason != "" {
		body["reason"] = rec.Reason
	}
	set, err := t.buildSET(rec, EventStreamUpdated, body, OpaqueSubject(rec.ID), "", "", time.Time{})
	if err != nil {
		return err
	}
	set.Head = true
	// A pause or disable is announced before delivery stops (SSF 1.0
	// §8.1.5): the outbox delivers announcements past its status gate, in
	// the order they were made, ahead of the SETs the stream holds. So is
	// a resume, which is queued while the stream is still paused.
	set.Announce = true
	set.Labels = map[string]string{"source": "transmitter", "receiver": rec.Receiver}
	set.TraceParent = traceSET(ctx, set, "")
	if err := t.enqueueTraced(ctx, []outbox.SET{set}, nil); err != nil {
		return fmt.Errorf("queue stream-updated for %s: %w", rec.ID, err)
	}
	t.log.InfoContext(ctx, "stream-updated queued", slog.String("stream_id", rec.ID), slog.String("jti", set.JTI),
		slog.String("status", rec.Status))
	return nil
}

// Publish builds one SET per stream that wants the signal (enabled or
// paused, the event type delivered, the subject included) and enqueues them
// with the signal's marks — always, even when no stream wants it, so the
// marks commit. It returns Enqueue's error.
func (t *Transmitter) Publish(ctx context.Context, s tap.Signal) (err error) {
	ctx, span, traceParent := startPublishSpan(ctx, s)
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "enqueue failed")
		}
		span.End()
	}()
	marks := make([]outbox.Mark, len(s.Marks))
	for i, m := range s.Marks {
		marks[i] = outbox.Mark{Bucket: m.Bucket, Key: m.Key, Value: m.Value, Delete: m.Delete,
			Fence: outbox.Fence(m.Fence), IfValue: m.IfValue, Expect: m.Expect}
	}
	eventType, body, known := eventBody(s)
	if !known {
		t.log.WarnContext(ctx, "signal of an unknown kind: no SET", slog.String("kind", string(s.Kind)), slog.String("signal", s.ID))
	}
	txn := s.RequestID
	if txn == "" {
		txn = s.ID
	}
	// The read lock keeps streams from being deleted between choosing them
	// and enqueueing their SETs.
	t.mu.RLock()
	defer t.mu.RUnlock()
	var sets []outbox.SET
	// why records, on the publish span, why a stream got no SET (or got
	// one it will not be sent yet): stream id, receiver name and a fixed
	// reason, nothing of the subject.
	recording := span.IsRecording()
	why := func(st *streamState, event, reason string) {
		if recording {
			span.AddEvent(event, trace.WithAttributes(attribute.String(attrStreamID, st.rec.ID),
				attribute.String(attrReceiver, st.rec.Receiver), attribute.String("ssf.reason", reason)))
		}
	}
	if !known && recording {
		span.AddEvent("ssf.signal.unmapped", trace.WithAttributes(attribute.String("ssf.reason", "no event type for this signal kind")))
	}
	if known {
		for _, st := range t.sortedStreams() {
			switch {
			case st.rec.Status == StatusDisabled:
				why(st, evSkipped, "stream disabled")
				continue
			case !slices.Contains(delivered(st.rec.EventsRequested), eventType):
				why(st, evSkipped, "event type not requested")
				continue
			}
			r, ok := t.receiver(st.rec.Receiver)
			if !ok {
				why(st, evSkipped, "receiver not configured")
				continue
			}
			if !st.wants(matchSubject(r, s)) {
				why(st, evSkipped, "subject not included")
				continue
			}
			subj, ok := subjectFor(r, s)
			if !ok {
				why(st, evSkipped, "signal lacks the "+r.SubjectFormat+" identifier the receiver needs")
				t.log.WarnContext(ctx, "signal lacks the identifier the receiver's subject format needs",
					slog.String("stream_id", st.rec.ID), slog.String("format", r.SubjectFormat), slog.String("signal", s.ID))
				continue
			}
			if st.rec.Status == StatusPaused {
				why(st, evHeld, "stream paused: the SET is queued and sent on resume")
			}
			b := body
			if r.Profile == ProfileLegacy {
				b = make(map[string]any, len(body)+1)
				for k, v := range body {
					b[k] = v
				}
				b["subject"] = subj
			}
			set, err := t.buildSET(st.rec, eventType, b, subj, txn, s.ID+"/"+st.rec.ID, s.Time)
			if err != nil {
				return err
			}
			set.Labels = map[string]string{"source": string(s.Source), "initiator": initiator(s), "kind": string(s.Kind),
				"receiver": st.rec.Receiver}
			set.TraceParent = traceSET(ctx, set, traceParent)
			sets = append(sets, set)
		}
	}
	span.SetAttributes(attribute.Int("ssf.sets", len(sets)))
	if err := t.enqueueTraced(ctx, sets, marks); err != nil {
		return fmt.Errorf("enqueue SETs of signal %s: %w", s.ID, err)
	}
	for _, set := range sets {
		t.log.DebugContext(ctx, "SET queued", slog.String("stream_id", set.StreamID), slog.String("jti", set.JTI),
			slog.String("event", set.EventType))
	}
	return nil
}

// StreamFailing pauses a push stream that has failed since `since`, with a
// reason, and queues a stream-updated SET at its head (outbox.FailureReporter).
func (t *Transmitter) StreamFailing(ctx context.Context, streamID string, since time.Time, lastErr string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.streams[streamID]
	if !ok || st.rec.Status != StatusEnabled {
		return
	}
	reason := fmt.Sprintf("paused by the transmitter: deliveries failing since %s", since.UTC().Format(time.RFC3339))
	if _, err := t.setStatusLocked(ctx, st, StatusPaused, reason, true); err != nil {
		t.log.ErrorContext(ctx, "cannot pause failing stream", slog.String("stream_id", streamID), slog.Any("error", err))
		return
	}
	t.log.WarnContext(ctx, "stream paused: deliveries failing", slog.String("stream_id", streamID),
		slog.Time("since", since), slog.String("last_error", lastErr))
}
