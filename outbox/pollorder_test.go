package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// docOrderSets decodes an RFC 8936 poll response the way a receiver that
// takes the first key as the oldest does: the jtis of "sets" in document
// order, and the members present at the top level.
func docOrderSets(t testing.TB, body []byte) (jtis []string, top map[string]json.RawMessage) {
	t.Helper()
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatalf("poll response is not a JSON object: %v: %s", err, body)
	}
	dec := json.NewDecoder(bytes.NewReader(top["sets"]))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("sets is not an object: %s", top["sets"])
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		jtis = append(jtis, tok.(string))
		var v string
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("sets[%v] is not a string: %v", tok, err)
		}
	}
	return jtis, top
}

// TestPollSetsInQueueOrder: every poll response writes "sets" oldest
// first, whatever the jtis look like (here they sort the other way), and
// writes moreAvailable only when it is true.
func TestPollSetsInQueueOrder(t *testing.T) {
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
	h.pollStream("p")
	var queued []string
	for i := range 12 {
		// Descending and unrelated to the queue order.
		jti := fmt.Sprintf("%c-%02d", 'z'-i, 50-i*3)
		queued = append(queued, jti)
		h.enqueue(makeSET("p", jti))
	}
	poll := func(body string) ([]string, map[string]json.RawMessage) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ob.ServePoll(rec, httptest.NewRequest(http.MethodPost, "/poll/p", strings.NewReader(body)), "p", 4096)
		if rec.Code != http.StatusOK {
			t.Fatalf("poll: %d %s", rec.Code, rec.Body)
		}
		return docOrderSets(t, rec.Body.Bytes())
	}
	got, top := poll(`{"returnImmediately":true,"maxEvents":5}`)
	if !slices.Equal(got, queued[:5]) {
		t.Fatalf("first poll in document order %v, want %v", got, queued[:5])
	}
	if string(top["moreAvailable"]) != "true" {
		t.Errorf("moreAvailable = %s, want true", top["moreAvailable"])
	}
	got, _ = poll(`{"returnImmediately":true,"maxEvents":100,"ack":` + mustJSON(queued[:5]) + `}`)
	if !slices.Equal(got, queued[5:]) {
		t.Fatalf("second poll in document order %v, want %v", got, queued[5:])
	}
	got, top = poll(`{"returnImmediately":true,"maxEvents":0,"ack":` + mustJSON(queued[5:]) + `}`)
	if len(got) != 0 {
		t.Fatalf("ack-only poll handed out %v", got)
	}
	if _, ok := top["moreAvailable"]; ok {
		t.Errorf("moreAvailable written when false: %v", top)
	}

	// The type's own encoding follows Order too.
	resp := PollResponse{Sets: map[string]string{"b": "2", "a": "1", "c": "3"}, Order: []string{"c", "a"}}
	b, err := json.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != `{"sets":{"c":"3","a":"1","b":"2"}}` {
		t.Errorf("encoded %s", b)
	}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestHeadSETsKeepTheirOrder: head SETs go ahead of every tail SET but keep
// the order they were queued in, so a pause announced and then a resume
// announced reach a poll receiver as pause, resume, then the held SETs.
func TestHeadSETsKeepTheirOrder(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	h.pollStream("p")
	h.enqueue(makeSET("p", "held-1"), makeSET("p", "held-2"))
	if err := h.ob.SetStream(ctx, StreamConfig{ID: "p", Method: MethodPoll, Status: StatusPaused}); err != nil {
		t.Fatal(err)
	}
	paused := makeSET("p", "paused")
	paused.Head, paused.Announce = true, true
	h.enqueue(paused)
	// Paused: only the announcement, which the receiver does not ack.
	resp, err := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if err != nil || !slices.Equal(resp.Order, []string{"paused"}) {
		t.Fatalf("paused poll %v %v", resp.Order, err)
	}
	resumed := makeSET("p", "resumed")
	resumed.Head = true
	h.enqueue(resumed)
	if err := h.ob.SetStream(ctx, StreamConfig{ID: "p", Method: MethodPoll, Status: StatusEnabled}); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Minute)
	want := []string{"paused", "resumed", "held-1", "held-2"}
	resp, err = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if err != nil || !slices.Equal(resp.Order, want) {
		t.Fatalf("after resume %v %v, want %v", resp.Order, err, want)
	}
	// Once the head is empty, a new head SET still goes before the tail,
	// and the order survives a restart.
	h.enqueue(makeSET("p", "later"))
	if _, err := h.ob.Poll(ctx, "p", PollRequest{Ack: want, MaxEvents: intp(0)}); err != nil {
		t.Fatal(err)
	}
	first, second := makeSET("p", "head-a"), makeSET("p", "head-b")
	first.Head, second.Head = true, true
	h.enqueue(first)
	h.enqueue(second)
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	resp, err = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if want := []string{"head-a", "head-b", "later"}; err != nil || !slices.Equal(resp.Order, want) {
		t.Fatalf("second round %v %v, want %v", resp.Order, err, want)
	}
}

// TestSupersedeReplacesUnsentSET: a Supersede SET drops the previous one of
// its event type on the stream while that one was never handed out; one
// under a poll lease stays (the receiver has it and may acknowledge it).
// The replaced SET is counted as dropped, and the rule survives a restart.
func TestSupersedeReplacesUnsentSET(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	h.pollStream("p")
	sup := func(jti string) SET {
		s := makeSET("p", jti)
		s.Supersede = true
		return s
	}
	h.enqueue(sup("v1"))
	resp, err := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if err != nil || !slices.Equal(resp.Order, []string{"v1"}) {
		t.Fatalf("first poll %v %v", resp.Order, err)
	}
	h.enqueue(sup("v2"))             // v1 is leased: it stays
	h.enqueue(makeSET("p", "plain")) // not a Supersede SET: untouched
	h.reopen(func(c *Config) { c.SweepInterval = noSweep; c.LeaseTimeout = time.Minute })
	h.enqueue(sup("v3")) // v2 was never handed out: replaced
	clock.Advance(time.Minute)
	resp, err = h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if want := []string{"v1", "plain", "v3"}; err != nil || !slices.Equal(resp.Order, want) {
		t.Fatalf("after supersede %v %v, want %v", resp.Order, err, want)
	}
	if _, err := h.ob.Poll(ctx, "p", PollRequest{Ack: resp.Order, MaxEvents: intp(0)}); err != nil {
		t.Fatal(err)
	}
	st, err := h.ob.Stats(ctx, "p")
	if err != nil || st.Backlog != 0 || st.Delivered != 3 {
		t.Errorf("stats %+v %v, want backlog 0, delivered 3", st, err)
	}
	if st.Dropped != 1 {
		t.Errorf("dropped %d, want the superseded SET", st.Dropped)
	}
}
