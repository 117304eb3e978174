package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"

	"github.com/labstack/echo/v4"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

func (t *Transmitter) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = t.errorHandler
	e.Use(nameServerSpan)
	e.GET(t.discoveryPath, t.discovery)
	e.GET(t.base+"/jwks.json", t.jwks)
	e.POST(t.base+"/streams", t.createStream)
	e.GET(t.base+"/streams", t.readStream)
	e.PATCH(t.base+"/streams", t.updateStream)
	e.PUT(t.base+"/streams", t.replaceStream)
	e.DELETE(t.base+"/streams", t.deleteStream)
	e.GET(t.base+"/status", t.getStatus)
	e.POST(t.base+"/status", t.postStatus)
	e.POST(t.base+`/subjects\:add`, t.addSubject)
	e.POST(t.base+`/subjects\:remove`, t.removeSubject)
	e.POST(t.base+"/verify", t.verify)
	e.POST(t.base+"/poll/:id", t.poll)
	return e
}

// readBody reads the request body, up to MaxBody (413 beyond).
// authenticatedRequest is every management handler's start: the caller
// with the scope, the body within the size limit, decoded (400 naming the
// problem otherwise).
func authenticatedRequest[T any](t *Transmitter, c echo.Context, scope string, decode func([]byte) (T, error)) (principal, T, error) {
	var zero T
	p, err := t.authenticate(c, scope)
	if err != nil {
		return p, zero, err
	}
	body, err := t.readBody(c)
	if err != nil {
		return p, zero, err
	}
	req, err := decode(body)
	if err != nil {
		return p, zero, badRequest("%s", err.Error())
	}
	return p, req, nil
}

func (t *Transmitter) readBody(c echo.Context) ([]byte, error) {
	r := c.Request()
	if r.ContentLength > t.cfg.MaxBody {
		return nil, tooLarge(t.cfg.MaxBody)
	}
	b, err := io.ReadAll(http.MaxBytesReader(c.Response(), r.Body, t.cfg.MaxBody))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, tooLarge(t.cfg.MaxBody)
	}
	if err != nil {
		return nil, badRequest("cannot read the request body")
	}
	return b, nil
}

func noStore(c echo.Context) { c.Response().Header().Set("Cache-Control", "no-store") }

func (t *Transmitter) discovery(c echo.Context) error {
	m := map[string]any{
		"spec_version":               "1_0",
		"issuer":                     t.cfg.Issuer,
		"jwks_uri":                   t.endpoint("/jwks.json"),
		"delivery_methods_supported": []string{MethodPushURN, MethodPollURN},
		"configuration_endpoint":     t.endpoint("/streams"),
		"status_endpoint":            t.endpoint("/status"),
		"add_subject_endpoint":       t.endpoint("/subjects:add"),
		"remove_subject_endpoint":    t.endpoint("/subjects:remove"),
		"verification_endpoint":      t.endpoint("/verify"),
		"default_subjects":           t.cfg.DefaultSubjects,
	}
	if t.oauth != nil {
		m["authorization_schemes"] = []map[string]string{{"spec_urn": "urn:ietf:rfc:6749"}, {"spec_urn": "urn:ietf:rfc:6750"}}
	} else {
		m["authorization_schemes"] = []map[string]string{{"spec_urn": "urn:ietf:rfc:6750"}}
	}
	return c.JSON(http.StatusOK, m)
}

func (t *Transmitter) jwks(c echo.Context) error {
	c.Response().Header().Set("Cache-Control", "max-age=300")
	return c.Blob(http.StatusOK, "application/jwk-set+json", t.cfg.Keys.JWKS())
}

// ownStream returns the receiver's stream (404 for unknown and for other
// receivers' streams alike). Callers hold t.mu.
func (t *Transmitter) ownStream(p principal, id string) (*streamState, error) {
	if id == "" {
		return nil, badRequest("stream_id is required")
	}
	st, ok := t.streams[id]
	if !ok || st.rec.Receiver != p.receiver.Name {
		return nil, notFound()
	}
	return st, nil
}

func (t *Transmitter) createStream(c echo.Context) error {
	p, req, err := authenticatedRequest(t, c, ScopeManage, decodeStreamRequest)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.cfg.Clock()
	rec := StreamRecord{ID: t.cfg.NewID(), Receiver: p.receiver.Name, Audience: p.receiver.Audience,
		Status: StatusEnabled, DefaultSubjects: t.cfg.DefaultSubjects, Created: now, Updated: now}
	rec.EventsRequested = slices.Clone(SupportedEvents)
	if req.HasEvents {
		rec.EventsRequested = req.EventsRequested
	}
	if req.Description != nil {
		rec.Description = truncate(*req.Description, t.cfg.DescriptionLimit)
	}
	if err := t.applyDelivery(&rec, req.Delivery, p.receiver, true, false); err != nil {
		return err
	}
	if err := t.checkCreateAllowed(p.receiver, rec); err != nil {
		return err
	}
	if err := t.saveStream(ctx, rec); err != nil {
		return err
	}
	t.streams[rec.ID] = &streamState{rec: rec}
	t.log.InfoContext(ctx, "stream created", slog.String("stream_id", rec.ID), slog.String("receiver", rec.Receiver),
		slog.String("method", rec.Method), slog.String("request_id", requestID(c)))
	// An unsolicited verification (no state) proves a push endpoint end to
	// end. A poll receiver reaches the transmitter itself, and one queued
	// ahead of the verification it asks for would be the first SET it
	// polls, which receivers (and the OpenID conformance suite) take for
	// the answer to their request: poll streams get none.
	if rec.push() {
		if err := t.enqueueVerification(ctx, rec, nil); err != nil {
			t.log.WarnContext(ctx, "cannot queue the initial verification", slog.String("stream_id", rec.ID), slog.Any("error", err))
		}
	}
	noStore(c)
	return c.JSON(http.StatusCreated, t.wire(rec))
}

// checkCreateAllowed refuses a create with 409 when the receiver already
// has a stream identical to rec (same delivery method and endpoint, events
// requested, aud and description), or has as many streams as it may. The
// description names the stream that exists (the identical one, or with a
// cap of one the receiver's only stream), so a receiver can carry on with
// it. Callers hold t.mu.
func (t *Transmitter) checkCreateAllowed(r *Receiver, rec StreamRecord) error {
	limit := t.cfg.MaxStreamsPerReceiver
	if r.MaxStreams > 0 {
		limit = r.MaxStreams
	}
	var own []StreamRecord
	for _, st := range t.sortedStreams() {
		if st.rec.Receiver == r.Name {
			own = append(own, st.rec)
		}
	}
	for _, o := range own {
		if sameStreamConfig(o, rec) {
			return &apiError{Status: http.StatusConflict, Code: "stream_exists",
				Desc: fmt.Sprintf("an identical stream exists: stream_id %s", o.ID)}
		}
	}
	if len(own) >= limit {
		desc := fmt.Sprintf("a receiver may have at most %d streams", limit)
		if limit == 1 {
			desc = fmt.Sprintf("this receiver may have one stream, and has it: stream_id %s", own[0].ID)
		}
		return &apiError{Status: http.StatusConflict, Code: "too_many_streams", Desc: desc}
	}
	return nil
}

// sameStreamConfig reports whether a create asking for b would make a
// stream identical to a: same delivery method and (for push) endpoint,
// same events requested (in any order), same aud and description. A poll
// stream's endpoint is the transmitter's own, so the method decides.
func sameStreamConfig(a, b StreamRecord) bool {
	if a.Method != b.Method || a.Audience != b.Audience || a.Description != b.Description {
		return false
	}
	if a.push() && a.EndpointURL != b.EndpointURL {
		return false
	}
	x, y := slices.Clone(a.EventsRequested), slices.Clone(b.EventsRequested)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(slices.Compact(x), slices.Compact(y))
}

// applyDelivery validates and applies a delivery request. On create a
// missing delivery means poll. keepAuth keeps the push authorization header
// when the request omits it and the method is unchanged (PATCH).
func (t *Transmitter) applyDelivery(rec *StreamRecord, d *deliveryRequest, r *Receiver, create, keepAuth bool) error {
	if d == nil {
		if !create {
			return nil
		}
		d = &deliveryRequest{Method: MethodPollURN}
	}
	switch {
	case d.Method == MethodPollURN:
		if !create && rec.Method == MethodPollURN && d.EndpointURL != "" && d.EndpointURL != rec.EndpointURL {
			return badRequest("delivery.endpoint_url of a poll stream is supplied by the transmitter and may only be sent with its current value")
		}
		rec.Method, rec.EndpointURL, rec.AuthorizationHeader = MethodPollURN, t.pollURL(rec.ID), ""
	case d.Method == MethodPushURN || (d.Method == MethodRISCPush && r.Profile == ProfileLegacy):
		if d.EndpointURL == "" {
			return badRequest("delivery.endpoint_url is required for push delivery")
		}
		if err := outbox.CheckEndpointURL(d.EndpointURL, t.cfg.AllowPrivateEndpoints); err != nil {
			return badRequest("delivery.endpoint_url is not acceptable: %s", err.Error())
		}
		keep := keepAuth && rec.Method == d.Method && d.AuthorizationHeader == nil
		rec.Method, rec.EndpointURL = d.Method, d.EndpointURL
		if !keep {
			rec.AuthorizationHeader = ""
			if d.AuthorizationHeader != nil {
				rec.AuthorizationHeader = *d.AuthorizationHeader
			}
		}
	default:
		return badRequest("delivery.method %q is not supported (use %s or %s)", d.Method, MethodPushURN, MethodPollURN)
	}
	return nil
}

// saveStream persists the stream and tells the queue.
func (t *Transmitter) saveStream(ctx context.Context, rec StreamRecord) error {
	// The queue first: it may still refuse the endpoint, and nothing may be
	// persisted that the queue does not know.
	if err := t.cfg.Queue.SetStream(ctx, rec.outboxConfig()); err != nil {
		if errors.Is(err, outbox.ErrForbiddenDestination) {
			return badRequest("delivery.endpoint_url is not acceptable: %s", err.Error())
		}
		return fmt.Errorf("queue: set stream %s: %w", rec.ID, err)
	}
	return t.store.PutStream(ctx, rec)
}

func (t *Transmitter) readStream(c echo.Context) error {
	p, err := t.authenticate(c, ScopeRead)
	if err != nil {
		return err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	noStore(c)
	if c.Request().URL.Query().Has("stream_id") {
		st, err := t.ownStream(p, c.QueryParam("stream_id"))
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, t.wire(st.rec))
	}
	out := []streamWire{}
	for _, st := range t.sortedStreams() {
		if st.rec.Receiver == p.receiver.Name {
			out = append(out, t.wire(st.rec))
		}
	}
	return c.JSON(http.StatusOK, out)
}

func (t *Transmitter) sortedStreams() []*streamState {
	out := make([]*streamState, 0, len(t.streams))
	for _, st := range t.streams {
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b *streamState) int {
		if c := a.rec.Created.Compare(b.rec.Created); c != 0 {
			return c
		}
		return compareStrings(a.rec.ID, b.rec.ID)
	})
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (t *Transmitter) updateStream(c echo.Context) error  { return t.changeStream(c, false) }
func (t *Transmitter) replaceStream(c echo.Context) error { return t.changeStream(c, true) }

// changeStream is PATCH (replace false) and PUT (replace true).
func (t *Transmitter) changeStream(c echo.Context, replace bool) error {
	p, req, err := authenticatedRequest(t, c, ScopeManage, decodeStreamRequest)
	if err != nil {
		return err
	}
	if req.StreamID == "" {
		return badRequest("stream_id is required in the body")
	}
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.ownStream(p, req.StreamID)
	if err != nil {
		return err
	}
	if err := checkTransmitterFields(req, t.wire(st.rec)); err != nil {
		return badRequest("%s", err.Error())
	}
	rec := st.rec
	if replace {
		if req.Delivery == nil {
			return badRequest("delivery is required when replacing a stream")
		}
		rec.EventsRequested = []string{}
		rec.Description = ""
	}
	if req.HasEvents {
		rec.EventsRequested = req.EventsRequested
	}
	if req.Description != nil {
		rec.Description = truncate(*req.Description, t.cfg.DescriptionLimit)
	}
	if err := t.applyDelivery(&rec, req.Delivery, p.receiver, false, !replace); err != nil {
		return err
	}
	rec.Updated = t.cfg.Clock()
	if err := t.saveStream(ctx, rec); err != nil {
		return err
	}
	st.rec = rec
	t.log.InfoContext(ctx, "stream updated", slog.String("stream_id", rec.ID), slog.Bool("replace", replace),
		slog.String("request_id", requestID(c)))
	noStore(c)
	return c.JSON(http.StatusOK, t.wire(rec))
}

func (t *Transmitter) deleteStream(c echo.Context) error {
	p, err := t.authenticate(c, ScopeManage)
	if err != nil {
		return err
	}
	id := c.QueryParam("stream_id")
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, err := t.ownStream(p, id); err != nil {
		return err
	}
	if err := t.removeStreamLocked(ctx, id); err != nil {
		return err
	}
	t.log.InfoContext(ctx, "stream deleted", slog.String("stream_id", id), slog.String("request_id", requestID(c)))
	noStore(c)
	return c.NoContent(http.StatusNoContent)
}

func (t *Transmitter) removeStreamLocked(ctx context.Context, id string) error {
	if err := t.cfg.Queue.DeleteStream(ctx, id); err != nil {
		return fmt.Errorf("queue: delete stream %s: %w", id, err)
	}
	if err := t.store.DeleteStream(ctx, id); err != nil {
		return err
	}
	delete(t.streams, id)
	return nil
}

type statusWire struct {
	StreamID string `json:"stream_id"`
	Status   string `json:"status"`
	Reason   string `json:"reason,omitempty"`
}

func (t *Transmitter) getStatus(c echo.Context) error {
	p, err := t.authenticate(c, ScopeRead)
	if err != nil {
		return err
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	st, err := t.ownStream(p, c.QueryParam("stream_id"))
	if err != nil {
		return err
	}
	noStore(c)
	return c.JSON(http.StatusOK, statusWire{StreamID: st.rec.ID, Status: st.rec.Status, Reason: st.rec.Reason})
}

// decodeStatusRequest parses a status update body.
func decodeStatusRequest(body []byte) (statusWire, error) {
	var raw map[string]json.RawMessage
	var s statusWire
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return s, errors.New("body must be a JSON object")
	}
	if v, ok := raw["stream_id"]; ok && json.Unmarshal(v, &s.StreamID) != nil {
		return s, errors.New("stream_id must be a string")
	}
	if err := json.Unmarshal(raw["status"], &s.Status); err != nil {
		return s, errors.New("status is required and must be a string")
	}
	switch s.Status {
	case StatusEnabled, StatusPaused, StatusDisabled:
	default:
		return s, fmt.Errorf("status %q is not one of enabled, paused, disabled", s.Status)
	}
	if v, ok := raw["reason"]; ok && string(v) != "null" && json.Unmarshal(v, &s.Reason) != nil {
		return s, errors.New("reason must be a string")
	}
	return s, nil
}

func (t *Transmitter) postStatus(c echo.Context) error {
	p, req, err := authenticatedRequest(t, c, ScopeManage, decodeStatusRequest)
	if err != nil {
		return err
	}
	if q := c.QueryParam("stream_id"); q != "" {
		if req.StreamID != "" && req.StreamID != q {
			return badRequest("stream_id differs between the body and the query")
		}
		req.StreamID = q
	}
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.ownStream(p, req.StreamID)
	if err != nil {
		return err
	}
	rec, err := t.setStatusLocked(ctx, st, req.Status, truncate(req.Reason, t.cfg.DescriptionLimit), false)
	if err != nil {
		return err
	}
	t.log.InfoContext(ctx, "stream status set by receiver", slog.String("stream_id", rec.ID), slog.String("status", rec.Status),
		slog.String("request_id", requestID(c)))
	noStore(c)
	return c.JSON(http.StatusOK, statusWire{StreamID: rec.ID, Status: rec.Status, Reason: rec.Reason})
}

// setStatusLocked changes a stream's status. announce queues a
// stream-updated SET (status changes the transmitter or an operator makes):
// at the head of the queue, behind any earlier announcement still queued,
// and ahead of everything the stream holds. Leaving enabled, it is queued
// before the queue stops (an announcement still goes out while paused or
// disabled). Resuming a paused stream, it is queued while the stream is
// still paused, so the queue starts again with it and the held SETs follow
// it in order. Re-enabling a disabled stream (whose queue was discarded,
// and which takes no SETs) it is queued once the stream is enabled.
func (t *Transmitter) setStatusLocked(ctx context.Context, st *streamState, status, reason string, announce bool) (StreamRecord, error) {
	rec := st.rec
	prev := rec.Status
	rec.Status, rec.Reason, rec.Updated = status, reason, t.cfg.Clock()
	early := announce && (status != StatusEnabled || prev == StatusPaused)
	if early {
		if err := t.enqueueStreamUpdated(ctx, rec); err != nil {
			return rec, err
		}
	}
	if err := t.saveStream(ctx, rec); err != nil {
		return rec, err
	}
	st.rec = rec
	if announce && !early {
		if err := t.enqueueStreamUpdated(ctx, rec); err != nil {
			return rec, err
		}
	}
	return rec, nil
}
