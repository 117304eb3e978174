package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// PollRequest is an RFC 8936 poll request.
type PollRequest struct {
	// MaxEvents caps the SETs returned; nil means no limit from the
	// receiver (the outbox still caps), 0 acknowledges only.
	MaxEvents *int
	// ReturnImmediately false asks for a long poll.
	ReturnImmediately bool
	// Ack lists jtis the receiver has processed.
	Ack []string
	// SetErrs lists jtis the receiver rejected, with the reason.
	SetErrs map[string]SetErr
}

// SetErr is a receiver's error for one SET (RFC 8936 §2.2).
type SetErr struct {
	Err         string `json:"err"`
	Description string `json:"description"`
}

// PollResponse is the RFC 8936 poll response; Sets is keyed by jti.
//
// Receivers read the members of "sets" in document order and take the
// first as the oldest, so the JSON form writes them in Order (queue order,
// oldest first) followed by any jti of Sets that Order does not list, in
// sorted order. moreAvailable is written only when true (RFC 8936 §2.4
// lets it be omitted when false, and some receivers fail to decode a
// false one).
type PollResponse struct {
	Sets          map[string]string `json:"sets"`
	MoreAvailable bool              `json:"moreAvailable,omitempty"`
	// Order lists the jtis of Sets in queue order, oldest first.
	Order []string `json:"-"`
}

// MarshalJSON writes sets in queue order (see PollResponse).
func (r PollResponse) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"sets":{`)
	n := 0
	write := func(jti string) error {
		k, err := json.Marshal(jti)
		if err != nil {
			return err
		}
		v, err := json.Marshal(r.Sets[jti])
		if err != nil {
			return err
		}
		if n > 0 {
			b.WriteByte(',')
		}
		n++
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
		return nil
	}
	seen := make(map[string]bool, len(r.Order))
	for _, jti := range r.Order {
		if _, ok := r.Sets[jti]; !ok || seen[jti] {
			continue
		}
		seen[jti] = true
		if err := write(jti); err != nil {
			return nil, err
		}
	}
	if len(seen) < len(r.Sets) {
		rest := make([]string, 0, len(r.Sets)-len(seen))
		for jti := range r.Sets {
			if !seen[jti] {
				rest = append(rest, jti)
			}
		}
		slices.Sort(rest)
		for _, jti := range rest {
			if err := write(jti); err != nil {
				return nil, err
			}
		}
	}
	b.WriteByte('}')
	if r.MoreAvailable {
		b.WriteString(`,"moreAvailable":true`)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// PollRequestError is a malformed poll request (HTTP 400); Field names the
// member at fault when there is one.
type PollRequestError struct {
	Field string
	Msg   string
}

func (e *PollRequestError) Error() string {
	if e.Field == "" {
		return "invalid poll request: " + e.Msg
	}
	return "invalid poll request: " + e.Field + ": " + e.Msg
}

// maxPollAcks bounds the ack and setErrs lists of one request.
const maxPollAcks = 10000

// maxLeases bounds the SETs under an unexpired hand-out lease on one
// stream, so a receiver that polls without acknowledging cannot make every
// poll walk past an ever longer run of leased SETs.
var maxLeases = 20000 // a variable for tests

// DecodePollRequest reads an RFC 8936 poll request of at most limit bytes.
// An empty body is an empty request (a short poll would then be a long
// one). Unknown members are ignored. Errors are *PollRequestError.
func DecodePollRequest(r io.Reader, limit int64) (PollRequest, error) {
	var req PollRequest
	if limit <= 0 {
		limit = 64 << 10
	}
	body, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return req, &PollRequestError{Msg: "reading body: " + err.Error()}
	}
	if int64(len(body)) > limit {
		return req, &PollRequestError{Msg: fmt.Sprintf("body larger than %d bytes", limit)}
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return req, nil
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&raw); err != nil {
		return req, &PollRequestError{Msg: "body is not a JSON object: " + err.Error()}
	}
	if raw == nil {
		return req, &PollRequestError{Msg: "body is not a JSON object"}
	}
	if _, err := dec.Token(); err != io.EOF {
		return req, &PollRequestError{Msg: "trailing data after the JSON object"}
	}
	if v, ok := raw["maxEvents"]; ok {
		var n json.Number
		d := json.NewDecoder(bytes.NewReader(v))
		d.UseNumber()
		if err := d.Decode(&n); err != nil {
			return req, &PollRequestError{Field: "maxEvents", Msg: "must be a non-negative integer"}
		}
		i, err := n.Int64()
		if err != nil || i < 0 || i > 1<<31-1 {
			return req, &PollRequestError{Field: "maxEvents", Msg: "must be a non-negative integer"}
		}
		m := int(i)
		req.MaxEvents = &m
	}
	if v, ok := raw["returnImmediately"]; ok {
		if err := json.Unmarshal(v, &req.ReturnImmediately); err != nil || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
			return req, &PollRequestError{Field: "returnImmediately", Msg: "must be a boolean"}
		}
	}
	if v, ok := raw["ack"]; ok {
		if err := json.Unmarshal(v, &req.Ack); err != nil {
			return req, &PollRequestError{Field: "ack", Msg: "must be an array of strings"}
		}
		if len(req.Ack) > maxPollAcks {
			return req, &PollRequestError{Field: "ack", Msg: fmt.Sprintf("more than %d entries", maxPollAcks)}
		}
		for _, j := range req.Ack {
			if j == "" {
				return req, &PollRequestError{Field: "ack", Msg: "empty jti"}
			}
		}
	}
	if v, ok := raw["setErrs"]; ok {
		var m map[string]json.RawMessage
		if err := json.Unmarshal(v, &m); err != nil {
			return req, &PollRequestError{Field: "setErrs", Msg: "must be an object keyed by jti"}
		}
		if len(m) > maxPollAcks {
			return req, &PollRequestError{Field: "setErrs", Msg: fmt.Sprintf("more than %d entries", maxPollAcks)}
		}
		req.SetErrs = make(map[string]SetErr, len(m))
		for jti, ev := range m {
			var e struct {
				Err         *string `json:"err"`
				Description *string `json:"description"`
			}
			if jti == "" {
				return req, &PollRequestError{Field: "setErrs", Msg: "empty jti"}
			}
			if err := json.Unmarshal(ev, &e); err != nil || e.Err == nil || *e.Err == "" {
				return req, &PollRequestError{Field: "setErrs." + truncate(jti, 64), Msg: `must be an object with a non-empty string "err"`}
			}
			se := SetErr{Err: *e.Err}
			if e.Description != nil {
				se.Description = *e.Description
			}
			req.SetErrs[jti] = se
		}
	}
	return req, nil
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// Poll answers an RFC 8936 poll on a poll stream: it records the acks and
// errors, then hands out up to maxEvents SETs not under lease, signed now.
// Without returnImmediately it waits up to MaxLongPoll for a SET. A paused
// or disabled stream answers with no SETs. Acknowledgements are durable
// before Poll returns.
func (o *Outbox) Poll(ctx context.Context, streamID string, req PollRequest) (PollResponse, error) {
	resp := PollResponse{Sets: map[string]string{}}
	st := o.stream(streamID)
	if st == nil {
		return resp, ErrUnknownStream
	}
	st.mu.Lock()
	method := st.cfg.Method
	st.mu.Unlock()
	if method != MethodPoll {
		return resp, ErrNotPoll
	}
	limit := o.cfg.MaxPollEvents
	if req.MaxEvents != nil && *req.MaxEvents < limit {
		limit = *req.MaxEvents // 0: acknowledge only
	}
	acks := len(req.Ack) > 0 || len(req.SetErrs) > 0
	if limit == 0 && !acks {
		return resp, nil
	}
	deadline := o.now().Add(o.cfg.MaxLongPoll)
	for first := true; ; first = false {
		wake := o.cfg.Notifier.Wait(streamID)
		var look pollPick
		var err error
		if first && acks {
			// The acks and the hand-out that follows them share one write.
			look, err = o.acknowledge(ctx, st, req.Ack, req.SetErrs, limit)
		} else {
			look, err = o.lease(ctx, st, limit)
		}
		if err != nil || limit == 0 {
			return resp, err
		}
		if len(look.picked) > 0 {
			return o.handOut(ctx, st, look.picked, look.more)
		}
		more, nextLease := look.more, look.nextIn
		now := o.now()
		if req.ReturnImmediately || !now.Before(deadline) {
			// more: SETs wait behind the lease bound.
			resp.MoreAvailable = more
			return resp, nil
		}
		// Wake when the first lease ends (measured on the lease clock, so
		// as a duration) to hand its SET out again.
		wait := deadline.Sub(now)
		if nextLease > 0 && nextLease < wait {
			wait = max(nextLease, time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return resp, nil // the receiver went away; nothing was handed out
		case <-wake:
		case <-o.cfg.After(wait):
		}
		if o.stream(streamID) != st {
			return resp, ErrUnknownStream
		}
	}
}

// handOut signs the leased SETs in parallel.
func (o *Outbox) handOut(ctx context.Context, st *streamState, picked []*Record, more bool) (PollResponse, error) {
	resp := PollResponse{Sets: make(map[string]string, len(picked)), MoreAvailable: more}
	compact := make([]string, len(picked))
	errs := make([]error, len(picked))
	var wg sync.WaitGroup
	for i, r := range picked {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &pending{rec: r}
			o.signOne(ctx, p)
			compact[i], errs[i] = p.compact, p.signErr
		}()
	}
	wg.Wait()
	var failed error
	var unsent []*Record
	for i, r := range picked {
		if errs[i] != nil {
			unsent = append(unsent, r)
			failed = errs[i]
			continue
		}
		resp.Sets[r.JTI] = compact[i]
		resp.Order = append(resp.Order, r.JTI)
	}
	if len(unsent) > 0 {
		if err := o.unlease(context.WithoutCancel(ctx), st.id, unsent); err != nil {
			// They come back when their leases end.
			o.log.Error("outbox poll: end the leases of unsigned SETs", slog.String("stream_id", st.id), slog.Any("err", err))
		}
	}
	if len(resp.Sets) == 0 && failed != nil {
		return PollResponse{Sets: map[string]string{}}, fmt.Errorf("outbox: sign: %w", failed)
	}
	if failed != nil {
		o.log.Error("outbox sign for poll", slog.String("stream_id", st.id), slog.Any("err", failed))
		resp.MoreAvailable = true
	}
	if o.cfg.Hooks.Trace != nil {
		out := make([]*Record, 0, len(resp.Sets))
		for _, r := range picked {
			if _, ok := resp.Sets[r.JTI]; ok {
				out = append(out, r)
			}
		}
		o.tracePolled(ctx, "handed_out", out)
	}
	return resp, nil
}

// acknowledge records acks (delivered) and setErrs (dead letter) of a poll
// stream durably. Unknown jtis and jtis of other streams are ignored. In
// the same transaction it leases up to limit SETs for the poll, as lease
// does (0: none).
func (o *Outbox) acknowledge(ctx context.Context, st *streamState, acks []string, setErrs map[string]SetErr, limit int) (pollPick, error) {
	now := o.now()
	onlyAnnounce := o.onlyAnnounce(st)
	var delivered, dead []*Record
	var got pollPick
	prefetch := make([]kv.BucketKey, 0, len(acks)+len(setErrs)+1)
	prefetch = append(prefetch, kv.BucketKey{Bucket: bktStreams, Key: []byte(st.id)})
	for _, jti := range acks {
		prefetch = append(prefetch, kv.BucketKey{Bucket: bktSets, Key: []byte(jti)})
	}
	for jti := range setErrs {
		prefetch = append(prefetch, kv.BucketKey{Bucket: bktSets, Key: []byte(jti)})
	}
	err := o.store.updatePrefetch(ctx, prefetch, func(tx kv.Tx) error {
		delivered, dead, got = delivered[:0], dead[:0], pollPick{}
		m, err := getMeta(tx, st.id)
		if err != nil {
			return err
		}
		if m == nil {
			return ErrUnknownStream
		}
		for _, jti := range acks {
			r, err := getRecord(tx, jti)
			if err != nil {
				return err
			}
			if r == nil || r.StreamID != st.id || r.State != StateQueued {
				continue
			}
			r.addAttempt(Attempt{Time: now, Outcome: "acked"})
			if err := o.markDelivered(tx, m, r, now); err != nil {
				return err
			}
			m.LastSuccess = now
			delivered = append(delivered, r)
		}
		for jti, se := range setErrs {
			r, err := getRecord(tx, jti)
			if err != nil {
				return err
			}
			if r == nil || r.StreamID != st.id || r.State != StateQueued {
				continue
			}
			reason := "receiver: " + se.Err
			if se.Description != "" {
				reason += ": " + truncate(se.Description, 256)
			}
			r.addAttempt(Attempt{Time: now, Outcome: "set_err", Error: truncate(reason, 300)})
			if err := o.markDead(tx, m, r, now, truncate(reason, 300)); err != nil {
				return err
			}
			dead = append(dead, r)
		}
		if err := putMeta(tx, m); err != nil {
			return err
		}
		if limit == 0 {
			return nil
		}
		if got, err = o.pickPoll(tx, st.id, limit, onlyAnnounce); err != nil {
			return err
		}
		return o.putLeases(tx, st.id, got.picked)
	})
	if err != nil {
		return pollPick{}, err
	}
	if len(delivered) > 0 {
		st.mu.Lock()
		st.lastSuccess = now
		st.mu.Unlock()
	}
	o.afterDelivery(delivered, dead, now)
	o.tracePolled(ctx, "acked", delivered)
	o.tracePolled(ctx, "set_err", dead)
	return got, nil
}

// ServePoll is an http.Handler body for a stream's poll endpoint, for a
// caller that has already authenticated the request and checked that the
// caller owns the stream: it decodes the RFC 8936 request (at most
// maxBody bytes), polls, and writes the JSON response — 400 for a
// malformed request, 404 for an unknown stream, 500 otherwise.
func (o *Outbox) ServePoll(w http.ResponseWriter, r *http.Request, streamID string, maxBody int64) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	req, err := DecodePollRequest(r.Body, maxBody)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"err": "invalid_request", "description": err.Error()})
		return
	}
	resp, err := o.Poll(r.Context(), streamID, req)
	switch {
	case errors.Is(err, ErrUnknownStream), errors.Is(err, ErrNotPoll):
		writeJSON(w, http.StatusNotFound, map[string]string{"err": "not_found", "description": "no such poll stream"})
	case err != nil:
		o.log.Error("outbox poll", slog.String("stream_id", streamID), slog.Any("err", err))
		writeJSON(w, http.StatusInternalServerError, map[string]string{"err": "internal_error", "description": "poll failed"})
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
