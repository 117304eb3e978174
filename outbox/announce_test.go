package outbox

import (
	"bytes"
	"context"
	"os"
	"slices"
	"testing"
	"time"
)

// TestAnnounceBeforeDeliveryStops: the stream-updated SET announcing a pause
// or a disable (Announce, at the head) still reaches the receiver — pushed,
// or handed out to a poll — while everything else is held (paused) or
// discarded (disabled); a restart does not lose it.
func TestAnnounceBeforeDeliveryStops(t *testing.T) {
	ctx := context.Background()
	rc := newReceiver(t, nil)
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	set := func(id string, m Method, s Status) {
		t.Helper()
		cfg := StreamConfig{ID: id, Method: m, Status: s}
		if m == MethodPush {
			cfg.EndpointURL = rc.srv.URL
		}
		if err := h.ob.SetStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	announce := func(stream, jti string) SET {
		s := makeSET(stream, jti)
		s.Head, s.Announce = true, true
		return s
	}

	// Push, paused: the announcement goes out, the rest is held until
	// enabled, then delivered in order.
	set("push", MethodPush, StatusPaused)
	h.enqueue(makeSET("push", "held-1"), makeSET("push", "held-2"))
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	h.enqueue(announce("push", "paused-announce"))
	rc.waitFor(t, 1, 10*time.Second)
	eventually(t, 10*time.Second, "the announcement recorded as delivered", func() bool {
		st, _ := h.ob.Stats(ctx, "push")
		return st.Backlog == 2
	})
	if got := rc.accepted(); !slices.Equal(got, []string{"paused-announce"}) {
		t.Fatalf("paused push delivered %v, want only the announcement", got)
	}
	set("push", MethodPush, StatusEnabled)
	eventually(t, 10*time.Second, "the held SETs after enable", func() bool { return len(rc.accepted()) >= 3 })
	if got := rc.accepted(); !slices.Equal(got, []string{"paused-announce", "held-1", "held-2"}) {
		t.Errorf("after enable: %v", got)
	}

	// Push, disabled: the queue is discarded except the announcement, which
	// is delivered. The stream is paused first so that the dispatcher
	// cannot deliver dropped-1 before the disable lands.
	set("push", MethodPush, StatusPaused)
	h.enqueue(makeSET("push", "dropped-1"), announce("push", "disabled-announce"))
	set("push", MethodPush, StatusDisabled)
	eventually(t, 10*time.Second, "the disable announcement", func() bool {
		return slices.Contains(rc.accepted(), "disabled-announce")
	})
	// The receiver's 202 comes before the outbox records the delivery.
	eventually(t, 10*time.Second, "an empty queue after the disable announcement", func() bool {
		st, _ := h.ob.Stats(ctx, "push")
		return st.Backlog == 0
	})
	if slices.Contains(rc.accepted(), "dropped-1") {
		t.Error("a SET queued before the disable was delivered")
	}

	// Poll, paused: a poll hands out the announcement only.
	set("poll", MethodPoll, StatusEnabled)
	h.enqueue(makeSET("poll", "p-held"))
	set("poll", MethodPoll, StatusPaused)
	h.enqueue(announce("poll", "p-announce"))
	resp, err := h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true})
	if err != nil || !slices.Equal(sortedKeys(resp.Sets), []string{"p-announce"}) || resp.MoreAvailable {
		t.Fatalf("paused poll = %v more=%v, %v; want the announcement only", sortedKeys(resp.Sets), resp.MoreAvailable, err)
	}
	resp, _ = h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true, Ack: []string{"p-announce"}})
	if len(resp.Sets) != 0 {
		t.Errorf("paused poll after ack = %v", sortedKeys(resp.Sets))
	}
	set("poll", MethodPoll, StatusEnabled)
	resp, _ = h.ob.Poll(ctx, "poll", PollRequest{ReturnImmediately: true})
	if !slices.Equal(sortedKeys(resp.Sets), []string{"p-held"}) {
		t.Errorf("enabled poll = %v", sortedKeys(resp.Sets))
	}
}

// TestAuthorizationHeaderNotStored: a push stream's authorization header is
// used for delivery but never written to the bbolt file; after a restart
// the stream's owner registers it again.
func TestAuthorizationHeaderNotStored(t *testing.T) {
	const secret = "Bearer never-on-disk-7f3a91c2"
	rc := newReceiver(t, nil)
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, secret)
	h.enqueue(makeSET("s", "one"))
	got := rc.waitFor(t, 1, 10*time.Second)
	if a := got[0].Header.Get("Authorization"); a != secret {
		t.Fatalf("Authorization %q, want the configured header", a)
	}
	path := h.path
	h.close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("never-on-disk-7f3a91c2")) {
		t.Error("the bbolt file holds the authorization header")
	}
	if !bytes.Contains(raw, []byte(rc.srv.URL)) {
		t.Error("the bbolt file does not even hold the endpoint: the scan proves nothing")
	}
}
