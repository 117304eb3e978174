package ssf

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

type subjectRequest struct {
	StreamID string
	Subject  Subject
	Verified bool
}

// decodeSubjectRequest parses an add / remove subject body.
func decodeSubjectRequest(body []byte) (subjectRequest, error) {
	var raw map[string]json.RawMessage
	req := subjectRequest{Verified: true}
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return req, errors.New("body must be a JSON object")
	}
	if err := json.Unmarshal(raw["stream_id"], &req.StreamID); err != nil || req.StreamID == "" {
		return req, errors.New("stream_id is required and must be a string")
	}
	s, ok := raw["subject"]
	if !ok || string(s) == "null" {
		return req, errors.New("subject is required")
	}
	subj, err := ParseSubject(s)
	if err != nil {
		return req, fmt.Errorf("subject: %w", err)
	}
	req.Subject = subj
	if v, ok := raw["verified"]; ok && string(v) != "null" {
		if err := json.Unmarshal(v, &req.Verified); err != nil {
			return req, errors.New("verified must be a boolean")
		}
	}
	return req, nil
}

func (t *Transmitter) addSubject(c echo.Context) error    { return t.changeSubject(c, true) }
func (t *Transmitter) removeSubject(c echo.Context) error { return t.changeSubject(c, false) }

// changeSubject answers the same whether or not the subject is known to the
// transmitter, so it reveals nothing about who exists.
func (t *Transmitter) changeSubject(c echo.Context, add bool) error {
	p, req, err := authenticatedRequest(t, c, ScopeManage, decodeSubjectRequest)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.ownStream(p, req.StreamID)
	if err != nil {
		return err
	}
	if req.Subject.Format == "opaque" && req.Subject.Fields["id"] == st.rec.ID && !add {
		return badRequest("the stream's own subject cannot be removed")
	}
	in, out := &st.removed, &st.added
	if add {
		in, out = &st.added, &st.removed
	}
	key := req.Subject.key()
	already := false
	for _, s := range *in {
		if s.key() == key {
			already = true
		}
	}
	if !already && len(st.added)+len(st.removed) >= t.cfg.MaxSubjectsPerStream {
		return &apiError{Status: http.StatusTooManyRequests, Code: "too_many_subjects",
			Desc: fmt.Sprintf("a stream may list at most %d subjects", t.cfg.MaxSubjectsPerStream)}
	}
	if err := t.store.SetSubject(ctx, st.rec.ID, req.Subject, add); err != nil {
		return err
	}
	if !already {
		*in = append(*in, req.Subject)
	}
	kept := (*out)[:0]
	for _, s := range *out {
		if s.key() != key {
			kept = append(kept, s)
		}
	}
	*out = kept
	t.log.InfoContext(ctx, "stream subjects changed", slog.String("stream_id", st.rec.ID), slog.Bool("added", add),
		slog.String("format", req.Subject.Format), slog.String("request_id", requestID(c)))
	noStore(c)
	if add {
		return c.NoContent(http.StatusOK)
	}
	return c.NoContent(http.StatusNoContent)
}

// wants reports whether the stream's subjects include subj: with default
// subjects ALL, unless it matches a removed subject; with NONE, only when
// it matches an added one.
func (st *streamState) wants(subj Subject) bool {
	if st.rec.DefaultSubjects == "NONE" {
		for _, a := range st.added {
			if a.Matches(subj) {
				return true
			}
		}
		return false
	}
	for _, r := range st.removed {
		if r.Matches(subj) {
			return false
		}
	}
	return true
}

type verifyRequest struct {
	StreamID string
	State    *string
}

// decodeVerifyRequest parses a verification request body.
func decodeVerifyRequest(body []byte) (verifyRequest, error) {
	var raw map[string]json.RawMessage
	var req verifyRequest
	if err := json.Unmarshal(body, &raw); err != nil || raw == nil {
		return req, errors.New("body must be a JSON object")
	}
	if err := json.Unmarshal(raw["stream_id"], &req.StreamID); err != nil || req.StreamID == "" {
		return req, errors.New("stream_id is required and must be a string")
	}
	if v, ok := raw["state"]; ok && string(v) != "null" {
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return req, errors.New("state must be a string")
		}
		if len(s) > 1024 {
			return req, errors.New("state is longer than 1024 bytes")
		}
		req.State = &s
	}
	return req, nil
}

func (t *Transmitter) verify(c echo.Context) error {
	p, req, err := authenticatedRequest(t, c, ScopeManage, decodeVerifyRequest)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	t.mu.Lock()
	defer t.mu.Unlock()
	st, err := t.ownStream(p, req.StreamID)
	if err != nil {
		return err
	}
	now := t.cfg.Clock()
	wait, err := claimVerification(ctx, t.cfg.KV, st.rec.ID, st.rec.LastVerification, now, t.cfg.MinVerificationInterval-VerificationSlack)
	if err != nil {
		return err
	}
	if wait > 0 {
		if h := t.cfg.OnVerificationRequest; h != nil {
			h(st.rec.ID, false)
		}
		return &apiError{Status: http.StatusTooManyRequests, Code: "too_many_requests",
			Desc:       "verification requested more often than min_verification_interval",
			RetryAfter: int(math.Ceil(wait.Seconds()))}
	}
	rec := st.rec
	rec.LastVerification = now
	if err := t.store.PutStream(ctx, rec); err != nil {
		return err
	}
	st.rec = rec
	if err := t.enqueueVerification(ctx, rec, req.State); err != nil {
		return err
	}
	if h := t.cfg.OnVerificationRequest; h != nil {
		h(rec.ID, true)
	}
	noStore(c)
	return c.NoContent(http.StatusNoContent)
}

// poll answers an RFC 8936 poll request on the stream's own poll URL.
func (t *Transmitter) poll(c echo.Context) error {
	p, err := t.authenticate(c, scopePoll)
	if err != nil {
		return err
	}
	id := c.Param("id")
	t.mu.RLock()
	st, err := t.ownStream(p, id)
	var receiver string
	if err == nil && st.rec.push() {
		err = notFound()
	} else if err == nil {
		receiver = st.rec.Receiver
	}
	t.mu.RUnlock()
	if err != nil {
		return err
	}
	body, err := t.readBody(c)
	if err != nil {
		return err
	}
	req, err := outbox.DecodePollRequest(bytesReader(body), t.cfg.MaxBody)
	if err != nil {
		return badRequest("%s", err.Error())
	}
	if !req.ReturnImmediately {
		if t.longPolls.acquire(p.receiver.Name) {
			defer t.longPolls.release(p.receiver.Name)
		} else {
			req.ReturnImmediately = true // over the receiver's long-poll cap: answer now
		}
	}
	pctx, span := startPollSpan(c.Request().Context(), id, receiver)
	defer span.End()
	resp, err := t.cfg.Queue.Poll(pctx, id, req)
	endPollSpan(span, req, resp)
	if err != nil {
		span.RecordError(err)
		if errors.Is(err, outbox.ErrUnknownStream) || errors.Is(err, outbox.ErrNotPoll) {
			return notFound()
		}
		return fmt.Errorf("poll %s: %w", id, err)
	}
	if resp.Sets == nil {
		resp.Sets = map[string]string{}
	}
	noStore(c)
	c.Response().Header().Set("X-SSF-Poll-Count", strconv.Itoa(len(resp.Sets)))
	return c.JSON(http.StatusOK, resp)
}
