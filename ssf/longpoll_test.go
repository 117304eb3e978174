package ssf

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestLongPollsCappedPerReceiver: a receiver with MaxLongPollsPerReceiver
// long polls waiting gets its next long poll answered at once (no SETs),
// while another receiver can still wait; once one returns, a slot frees.
func TestLongPollsCappedPerReceiver(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxLongPollsPerReceiver = 2 })
	w := h.create(acmeTok, map[string]any{}) // poll delivery by default
	if !strings.Contains(w.Delivery.EndpointURL, "/poll") {
		t.Fatalf("stream is not a poll stream: %+v", w.Delivery)
	}
	h.pollAll(acmeTok, w) // lease whatever creation queued, so the long polls wait
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	longPoll := func(ctx context.Context) (int, error) {
		req, _ := http.NewRequestWithContext(ctx, "POST", w.Delivery.EndpointURL, strings.NewReader(`{"maxEvents":1}`))
		req.Header.Set("Authorization", "Bearer "+acmeTok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	waiting := func() int {
		h.tr.longPolls.mu.Lock()
		defer h.tr.longPolls.mu.Unlock()
		return h.tr.longPolls.n["acme"]
	}
	for range 2 {
		go longPoll(ctx) //nolint:errcheck // cancelled at the end
	}
	// Until both wait (or, should the count not move, for a moment).
	deadline := time.Now().Add(10 * time.Second)
	for start := time.Now(); waiting() < 2 && (waiting() > 0 || time.Since(start) < time.Second); {
		if time.Now().After(deadline) {
			t.Fatalf("%d long polls waiting, want 2", waiting())
		}
		time.Sleep(5 * time.Millisecond)
	}
	done := make(chan int, 1)
	go func() {
		st, _ := longPoll(ctx)
		done <- st
	}()
	select {
	case st := <-done:
		if st != http.StatusOK {
			t.Errorf("over the cap: status %d, want 200 at once", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a long poll over the receiver's cap was left waiting")
	}
	cancel()
	deadline = time.Now().Add(10 * time.Second)
	for waiting() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d long polls still counted after their clients left", waiting())
		}
		time.Sleep(5 * time.Millisecond)
	}
}
