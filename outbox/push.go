package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// outcome of one push attempt.
type outcome int

const (
	outDelivered outcome = iota // 2xx
	outDead                     // permanent receiver error: dead letter, go on
	outRetry                    // back the stream off
)

// pushResult is what one attempt produced.
type pushResult struct {
	out        outcome
	status     int
	latency    time.Duration
	retryAfter time.Duration
	err        string
	at         time.Time
}

// permanentErrs are RFC 8935 error codes for which re-sending the same SET
// cannot help: the SET goes to the dead letter and the stream goes on.
var permanentErrs = map[string]bool{
	"invalid_request":  true,
	"invalid_issuer":   true,
	"invalid_audience": true,
	"invalid_state":    true, // SSF verification state mismatch
}

// post makes one push attempt, sending traceParent (when not empty) so
// a traced receiver continues the SET's trace.
func (o *Outbox) post(ctx context.Context, cfg StreamConfig, compact, traceParent string) pushResult {
	start := o.now()
	ctx, cancel := context.WithTimeout(ctx, o.cfg.PushTimeout)
	defer cancel()
	res := pushResult{at: start}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, cfg.EndpointURL, strings.NewReader(compact))
	if err != nil {
		res.out, res.err = outRetry, "request: "+err.Error()
		return res
	}
	req.Header.Set("Content-Type", "application/secevent+jwt")
	req.Header.Set("Accept", "application/json")
	if cfg.AuthorizationHeader != "" {
		req.Header.Set("Authorization", cfg.AuthorizationHeader)
	}
	if traceParent != "" {
		req.Header.Set("Traceparent", traceParent)
	}
	resp, err := o.client.Do(req)
	res.latency = o.now().Sub(start)
	if err != nil {
		res.out, res.err = outRetry, redactURLError(err)
		return res
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<10))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // keep-alive
	res.status = resp.StatusCode
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		res.out = outDelivered
	case resp.StatusCode == http.StatusBadRequest:
		code, desc, perr := ParsePushError(body)
		res.out = outRetry
		if perr != nil {
			res.err = "400 without an RFC 8935 error body"
			break
		}
		res.err = code
		if desc != "" {
			res.err += ": " + desc
		}
		if permanentErrs[code] {
			res.out = outDead
		}
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable:
		res.out = outRetry
		res.err = resp.Status
		res.retryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), o.now())
	default:
		res.out = outRetry
		res.err = resp.Status
	}
	return res
}

// redactURLError drops the URL from a client error (it may carry a
// receiver's path secrets) and keeps the cause.
func redactURLError(err error) string {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				return "timeout: " + inner.Error()
			}
			return inner.Error()
		}
	}
	return err.Error()
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 when absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0
		}
		if n > 1<<31 {
			n = 1 << 31
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// ParsePushError reads an RFC 8935 §2.3 error body: a JSON object with a
// string "err" (required, non-empty) and an optional string "description".
func ParsePushError(body []byte) (code, description string, err error) {
	var v struct {
		Err         *string `json:"err"`
		Description *string `json:"description"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&v); err != nil {
		return "", "", fmt.Errorf("outbox: push error body: %w", err)
	}
	if dec.More() {
		return "", "", errors.New("outbox: push error body: trailing data")
	}
	if v.Err == nil || *v.Err == "" {
		return "", "", errors.New(`outbox: push error body: missing "err"`)
	}
	if v.Description != nil {
		description = *v.Description
	}
	return *v.Err, description, nil
}

// backoff is the wait after the n-th consecutive failure: 1s doubling,
// ±25% jitter, capped at MaxBackoff.
func (o *Outbox) backoff(n int) time.Duration {
	d := time.Second
	for i := 1; i < n && d < o.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, o.cfg.MaxBackoff)
	j := rand.Float64()
	if o.cfg.Jitter != nil {
		j = o.cfg.Jitter()
	}
	d = time.Duration(float64(d) * (0.75 + 0.5*j))
	if d > o.cfg.MaxBackoff {
		d = o.cfg.MaxBackoff
	}
	return d
}

// fail records a failed attempt: the stream backs off as a whole; after
// PauseAfter of continuous failure the Reporter hears of it, once.
func (o *Outbox) fail(st *streamState, r pushResult) {
	now := o.now()
	st.mu.Lock()
	st.failures++
	if st.failingSince.IsZero() {
		st.failingSince = r.at
		if st.failingSince.IsZero() {
			st.failingSince = now
		}
	}
	d := o.backoff(st.failures)
	if r.retryAfter > d {
		d = min(r.retryAfter, o.cfg.MaxBackoff)
	}
	st.until = now.Add(d)
	st.lastErr = r.err
	st.lastErrAt = now
	report := !st.reported && o.cfg.Reporter != nil && now.Sub(st.failingSince) >= o.cfg.PauseAfter
	if report {
		st.reported = true
	}
	since, until, lastErr := st.failingSince, st.until, st.lastErr
	st.mu.Unlock()
	o.log.Warn("outbox push failed", slog.String("stream_id", st.id), slog.String("err", r.err),
		slog.Int("status", r.status), slog.Time("retry_at", until))
	if h := o.cfg.Hooks.OnBackoff; h != nil {
		h(st.id, until, lastErr)
	}
	o.traceHold(st, HoldBackoff, until, lastErr, 1)
	if report {
		// Asynchronously: the transmitter calls back into SetStream and
		// Enqueue, which must not wait on this dispatcher. Only the holder
		// of the stream's dispatch lease reports (fenced like an outcome).
		token := st.token.Load()
		go func() {
			if err := o.store.Fence(dispatchLeaseName(st.id), token); err != nil {
				if errors.Is(err, ErrFenced) {
					o.refused(st, err)
					return
				}
				// The store cannot be read: report anyway rather than
				// leave a failing stream unreported.
				o.log.Error("outbox pause report: lease check", slog.String("stream_id", st.id), slog.Any("err", err))
			}
			o.cfg.Reporter.StreamFailing(context.WithoutCancel(o.runCtxOrBackground()), st.id, since, lastErr)
		}()
	}
}

func (o *Outbox) succeed(st *streamState, r pushResult) {
	st.mu.Lock()
	st.failures = 0
	st.failingSince = time.Time{}
	st.until = time.Time{}
	st.reported = false
	if r.out == outDelivered {
		st.lastSuccess = o.now()
	} else {
		st.lastErr, st.lastErrAt = r.err, o.now()
	}
	st.mu.Unlock()
}

func (o *Outbox) runCtxOrBackground() context.Context {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.runCtx != nil {
		return o.runCtx
	}
	return context.Background()
}

func attemptOf(r pushResult) Attempt {
	a := Attempt{Time: r.at, StatusCode: r.status, Latency: r.latency, Error: r.err}
	switch r.out {
	case outDelivered:
		a.Outcome = "delivered"
	case outDead:
		a.Outcome = "dead"
	default:
		a.Outcome = "retry"
	}
	return a
}

// abortedAttempt is an attempt cut short by shutdown or by a sibling's
// failure; it is not recorded and the SET stays queued.
func abortedAttempt(r pushResult) Attempt {
	a := attemptOf(r)
	a.Outcome = "aborted"
	return a
}

// commitBatch records the attempts of a batch in one transaction:
// delivered and dead-lettered SETs leave the queue. token is the dispatch
// lease's fencing token: a stale one is refused with a *FenceError and
// nothing is recorded.
func (o *Outbox) commitBatch(st *streamState, token uint64, batch []*pending) error {
	tried := batch
	now := o.now()
	var delivered, dead []*Record
	var stored streamMeta // as this transaction found it, to adopt
	found := false
	err := o.store.update(context.Background(), func(tx kv.Tx) error {
		delivered, dead, found = delivered[:0], dead[:0], false
		// fail and succeed ran before the batch reached here: its last
		// error and the failing run are recorded with the outcomes they
		// come from, read in the transaction so a SetStream that ended the
		// run before it is not undone by it.
		st.mu.Lock()
		lastErr, lastErrAt := st.lastErr, st.lastErrAt
		failing := failingState{Since: st.failingSince, Until: st.until, Failures: st.failures, Reported: st.reported}
		known, knownGen := st.cfg, st.gen
		st.mu.Unlock()
		m, err := getMeta(tx, st.id)
		if err != nil || m == nil {
			return err // stream deleted meanwhile: nothing to record
		}
		found = true
		// Changed through another replica since this dispatcher last
		// looked: the attempts made are recorded (they reached the
		// receiver, or failed, under the old configuration), the stream
		// is adopted after the commit, and a change that ended the
		// backoff keeps the failing run it stored.
		keepFailing := m.Gen > knownGen && retryNow(known, m.Config)
		if err := checkFence(tx, dispatchLeaseName(st.id), token); err != nil {
			return err
		}
		q := tx.Bucket(bktQueue)
		for _, p := range tried {
			if v := q.Get(seqKey(st.id, p.rec.Seq)); string(v) != p.rec.JTI {
				continue // discarded meanwhile
			}
			// The pipeline loaded the record after the previous outcomes
			// were committed, so it is current; copy it because this
			// function may run twice.
			rc := *p.rec
			rc.Attempts = slices.Clone(p.rec.Attempts)
			r := &rc
			r.addAttempt(attemptOf(p.res))
			switch p.res.out {
			case outDelivered:
				if err := o.markDelivered(tx, m, r, now); err != nil {
					return err
				}
				if p.res.status != http.StatusAccepted {
					m.Non202++
				}
				m.LastSuccess = now
				delivered = append(delivered, r)
			case outDead:
				if err := o.markDead(tx, m, r, now, "receiver: "+p.res.err); err != nil {
					return err
				}
				dead = append(dead, r)
			default:
				if err := putRecord(tx, r); err != nil {
					return err
				}
			}
		}
		if lastErr != "" && lastErrAt.After(m.LastErrorAt) {
			m.LastError, m.LastErrorAt = lastErr, lastErrAt
		}
		if !keepFailing {
			m.Failing = failing
		}
		stored = *m
		return putMeta(tx, m)
	})
	if err != nil {
		return err
	}
	if found {
		o.adopt(st, &stored)
	} else {
		o.adopt(st, nil)
	}
	o.afterDelivery(delivered, dead, now)
	return nil
}

func (o *Outbox) afterDelivery(delivered, dead []*Record, now time.Time) {
	for _, r := range delivered {
		if h := o.cfg.Hooks.OnDelivered; h != nil {
			h(r.StreamID, r.JTI, now.Sub(r.EnqueuedAt))
		}
	}
	for _, r := range dead {
		o.log.Warn("outbox dead letter", slog.String("stream_id", r.StreamID), slog.String("jti", r.JTI),
			slog.String("reason", r.Reason))
		if h := o.cfg.Hooks.OnDeadLetter; h != nil {
			h(r.StreamID, r.JTI, r.Reason)
		}
	}
}

// markDelivered takes r out of the queue as delivered.
func (o *Outbox) markDelivered(tx kv.Tx, m *streamMeta, r *Record, now time.Time) error {
	if err := unqueue(tx, seqKey(r.StreamID, r.Seq)); err != nil {
		return err
	}
	r.State = StateDelivered
	r.DeliveredAt = now
	m.Queued--
	m.Delivered++
	if err := tx.Bucket(bktExpiry).Put(expiryKey(now.Add(o.cfg.DeliveredRetention), expRecord, r.JTI), nil); err != nil {
		return err
	}
	return putRecord(tx, r)
}

// markDead takes r out of the queue into the dead letter.
func (o *Outbox) markDead(tx kv.Tx, m *streamMeta, r *Record, now time.Time, reason string) error {
	k := seqKey(r.StreamID, r.Seq)
	if err := unqueue(tx, k); err != nil {
		return err
	}
	if err := tx.Bucket(bktDead).Put(k, []byte(r.JTI)); err != nil {
		return err
	}
	r.State = StateDead
	r.DeadAt = now
	r.Reason = reason
	m.Queued--
	m.Dead++
	if err := tx.Bucket(bktExpiry).Put(expiryKey(now.Add(o.cfg.Retention), expRecord, r.JTI), nil); err != nil {
		return err
	}
	return putRecord(tx, r)
}

// unqueue removes a SET's queue entry and its poll hand-out lease.
func unqueue(tx kv.Tx, k []byte) error {
	if err := tx.Bucket(bktQueue).Delete(k); err != nil {
		return err
	}
	return tx.Bucket(bktPolled).Delete(k)
}
