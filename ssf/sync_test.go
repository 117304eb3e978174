package ssf

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// TestSyncStreamsAcrossReplicas: a second transmitter on the same store
// (another replica) learns of a stream created, paused and deleted on the
// first at its next SyncStreams, and registers each change with its own
// queue.
func TestSyncStreamsAcrossReplicas(t *testing.T) {
	h := newHarness(t)
	ob2, tr2 := h.secondReplica(t)
	srv2 := httptest.NewServer(tr2.Handler())
	defer srv2.Close()
	get := func(id string) int {
		req, _ := http.NewRequest(http.MethodGet, srv2.URL+"/ssf/streams?stream_id="+id, nil)
		req.Header.Set("Authorization", "Bearer acme-manage-token")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ctx := context.Background()

	w := h.create("acme-manage-token", map[string]any{"events_requested": []string{EventSessionRevoked}})
	if code := get(w.StreamID); code != http.StatusNotFound {
		t.Fatalf("second replica before sync: %d, want 404", code)
	}
	if err := tr2.SyncStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if code := get(w.StreamID); code != http.StatusOK {
		t.Fatalf("second replica after sync: %d, want 200", code)
	}
	if st, err := ob2.Stats(ctx, w.StreamID); err != nil || st.Status != outbox.StatusEnabled {
		t.Fatalf("second replica's queue: %+v, %v", st, err)
	}

	r := h.do("POST", "/ssf/status", "acme-manage-token", map[string]any{"stream_id": w.StreamID, "status": "paused"})
	if r.status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	if err := tr2.SyncStreams(ctx); err != nil {
		t.Fatal(err)
	}
	tr2.mu.RLock()
	status := tr2.streams[w.StreamID].rec.Status
	tr2.mu.RUnlock()
	if status != "paused" {
		t.Fatalf("second replica's stream status after sync = %q", status)
	}

	if r := h.do("DELETE", "/ssf/streams?stream_id="+w.StreamID, "acme-manage-token", nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if err := tr2.SyncStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if code := get(w.StreamID); code != http.StatusNotFound {
		t.Fatalf("second replica after the delete synced: %d, want 404", code)
	}
	if _, err := ob2.Stats(ctx, w.StreamID); !errors.Is(err, outbox.ErrUnknownStream) {
		t.Fatalf("second replica's queue still has the stream: %v", err)
	}
}

// TestSyncStreamsLeavesLocalChangeAlone: a sync round that overlaps a
// local change applies nothing (it would apply what it read before the
// change); the next round converges on the store.
func TestSyncStreamsLeavesLocalChangeAlone(t *testing.T) {
	h := newHarness(t)
	w := h.create("acme-manage-token", map[string]any{"events_requested": []string{EventSessionRevoked}})
	h.tr.syncHook = func() {
		h.tr.mu.Lock()
		delete(h.tr.streams, w.StreamID) // a local change under way
		h.tr.mu.Unlock()
	}
	if err := h.tr.SyncStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.tr.mu.RLock()
	_, back := h.tr.streams[w.StreamID]
	h.tr.mu.RUnlock()
	if back {
		t.Fatal("a sync round overlapping a local change applied what it had read before it")
	}
	h.tr.syncHook = nil
	if err := h.tr.SyncStreams(context.Background()); err != nil {
		t.Fatal(err)
	}
	h.tr.mu.RLock()
	_, back = h.tr.streams[w.StreamID]
	h.tr.mu.RUnlock()
	if !back {
		t.Fatal("the next sync round did not converge on the store")
	}
}

// TestSyncStreamsKeepsNewerQueueConfig: a sync round on a second replica
// that read a stream's record before the stream was paused on the first
// registers the stream with its queue as the store has it (paused), and
// does not write the older, enabled configuration back over the pause;
// told by its queue of the change (StreamChanged), the second replica
// reads the records again at once.
func TestSyncStreamsKeepsNewerQueueConfig(t *testing.T) {
	h := newHarness(t)
	ob2, tr2 := h.secondReplica(t)
	ctx := context.Background()
	w := h.create("acme-manage-token", map[string]any{"events_requested": []string{EventSessionRevoked}})
	tr2.syncHook = func() {
		tr2.syncHook = nil
		r := h.do("POST", "/ssf/status", "acme-manage-token", map[string]any{"stream_id": w.StreamID, "status": "paused"})
		if r.status != http.StatusOK {
			t.Errorf("pause: %d %s", r.status, r.body)
		}
	}
	if err := tr2.SyncStreams(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := h.ob.Stats(ctx, w.StreamID); err != nil || st.Status != outbox.StatusPaused {
		t.Fatalf("the shared queue after the other replica's stale sync: %+v, %v; want paused", st, err)
	}
	if c, _ := ob2.StreamConfig(w.StreamID); c.Status != outbox.StatusPaused {
		t.Fatalf("the second replica's queue delivers the stream as %q, want paused", c.Status)
	}
	tr2.StreamChanged(w.StreamID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		tr2.mu.RLock()
		status := tr2.streams[w.StreamID].rec.Status
		tr2.mu.RUnlock()
		if status == StatusPaused {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("second replica's record after StreamChanged = %q, want paused", status)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// secondReplica is a second transmitter, with a queue of its own, on the
// harness's store: another replica.
func (h *harness) secondReplica(t *testing.T) (*outbox.Outbox, *Transmitter) {
	t.Helper()
	ob2, err := outbox.New(outbox.Config{Store: h.store, Signer: h.keys, Clock: h.clock.Now, After: h.clock.After})
	if err != nil {
		t.Fatal(err)
	}
	cfg2 := h.cfg
	cfg2.Queue, cfg2.Store = ob2, nil
	tr2, err := New(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	return ob2, tr2
}
