package outbox

import (
	"testing"
	"time"
)

// TestGatherLingersOnlyUnderLoad: a lone outcome is committed at once;
// after a batch of several (a backlog), the committer waits for the next
// outcomes instead of spending an fsync on each, up to its batch cap, and
// stops waiting when the pipeline closes.
func TestGatherLingersOnlyUnderLoad(t *testing.T) {
	mk := func(n int) []*pending {
		out := make([]*pending, n)
		for i := range out {
			out[i] = &pending{rec: &Record{Seq: uint64(i)}}
		}
		return out
	}
	// A generous linger: the sends below come long before it runs out.
	g := newGatherer(time.Minute)
	results := make(chan *pending, 64)
	ps := mk(40)

	// Idle before: the first outcome alone, no waiting.
	if b := g.gather(ps[0], results); len(b) != 1 {
		t.Fatalf("first batch %d outcomes, want 1", len(b))
	}
	// Two waiting at once: taken together (no linger needed).
	results <- ps[2]
	if b := g.gather(ps[1], results); len(b) != 2 {
		t.Fatalf("second batch %d, want 2", len(b))
	}
	// Busy now: outcomes arriving one by one are gathered up to the cap.
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for _, p := range ps[4 : 4+commitLingerBatch] { // one more than fits
			time.Sleep(time.Millisecond)
			results <- p
		}
	}()
	if b := g.gather(ps[3], results); len(b) != commitLingerBatch {
		t.Fatalf("busy batch %d, want the cap %d", len(b), commitLingerBatch)
	}
	<-sent
	// The outcome past the cap waits for more, busy as the gatherer is,
	// until the pipeline closes: that ends the wait at once.
	close(results)
	done := make(chan int)
	go func() { done <- len(g.gather(<-results, results)) }()
	select {
	case n := <-done:
		if n != 1 {
			t.Fatalf("batch at close %d, want 1", n)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("gather kept waiting after the pipeline closed")
	}

	// With the linger running out, a busy gather returns what it has.
	g = newGatherer(5 * time.Millisecond)
	g.busy = true
	r2 := make(chan *pending)
	if b := g.gather(ps[0], r2); len(b) != 1 {
		t.Fatalf("expired linger batch %d, want 1", len(b))
	}
	if g.busy {
		t.Error("a batch of one left the gatherer busy")
	}
}
