package outbox

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"
)

// recTracer records what the outbox tells its DeliveryTracer.
type recTracer struct {
	mu     sync.Mutex
	starts []Delivery
	ends   []Attempt
	sent   []string // traceparents handed back
	polled map[string][]string
	holds  []Hold
}

func newRecTracer() *recTracer { return &recTracer{polled: map[string][]string{}} }

func (r *recTracer) StartPush(d Delivery) (string, func(Attempt)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starts = append(r.starts, d)
	tp := fmt.Sprintf("00-4bf92f3577b34da6a3ce929d0e0e4736-%016x-01", len(r.starts))
	r.sent = append(r.sent, tp)
	return tp, func(a Attempt) {
		r.mu.Lock()
		r.ends = append(r.ends, a)
		r.mu.Unlock()
	}
}

func (r *recTracer) Polled(_ context.Context, step string, ds []Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range ds {
		r.polled[step] = append(r.polled[step], d.JTI+"@"+d.TraceParent)
	}
}

func (r *recTracer) Held(h Hold) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.holds = append(r.holds, h)
}

func (r *recTracer) snapshot() ([]Delivery, []Attempt, []string, []Hold) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.starts), slices.Clone(r.ends), slices.Clone(r.sent), slices.Clone(r.holds)
}

func tracedSET(stream, jti string) SET {
	s := makeSET(stream, jti)
	s.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	return s
}

func holdOf(hs []Hold, reason string) (Hold, bool) {
	for _, h := range hs {
		if h.Reason == reason {
			return h, true
		}
	}
	return Hold{}, false
}

func waitingOf(h Hold) []string {
	var out []string
	for _, d := range h.Waiting {
		out = append(out, fmt.Sprintf("%s+%d", d.JTI, d.Ahead))
	}
	return out
}

// TestPushTraced: each attempt is announced before it is made, with the
// store's attempt number (which goes on across a restart), the endpoint
// and the SET's traceparent; the receiver gets the traceparent the tracer
// chose; a backoff names the SETs waiting behind the head, and so does a
// SET queued while the stream backs off.
func TestPushTraced(t *testing.T) {
	clock := newFakeClock()
	rc := newReceiver(t, func(n int, _ *http.Request, w http.ResponseWriter) {
		if n <= 2 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	})
	tr := newRecTracer()
	mod := func(c *Config) { c.SweepInterval = noSweep; c.Hooks.Trace = tr }
	h := newHarness(t, clock, mod)
	h.pushStream("s", rc.srv.URL+"/events", "Bearer secret")
	h.enqueue(tracedSET("s", "a"), tracedSET("s", "b"), tracedSET("s", "c"))
	first := rc.waitFor(t, 1, 5*time.Second)[0]
	waitBackoff(t, clock)
	starts, ends, sent, holds := tr.snapshot()
	if first.Header.Get("Traceparent") != sent[0] {
		t.Errorf("receiver got traceparent %q, tracer chose %q", first.Header.Get("Traceparent"), sent[0])
	}
	if d := starts[0]; d.JTI != "a" || d.Attempt != 1 || d.Endpoint != rc.srv.URL+"/events" ||
		d.TraceParent != tracedSET("s", "a").TraceParent || d.Labels["source"] != "test" || d.EventType != eventVerify {
		t.Errorf("first attempt %+v", d)
	}
	eventually(t, 5*time.Second, "the first attempt's end", func() bool { _, e, _, _ := tr.snapshot(); return len(e) == 1 })
	_, ends, _, holds = tr.snapshot()
	if ends[0].Outcome != "retry" || ends[0].StatusCode != 503 {
		t.Errorf("first outcome %+v", ends[0])
	}
	hold, ok := holdOf(holds, HoldBackoff)
	if !ok || hold.HeadJTI != "a" || hold.Until.IsZero() || !slices.Equal(waitingOf(hold), []string{"b+1", "c+2"}) {
		t.Fatalf("backoff hold %+v (waiting %v)", hold, waitingOf(hold))
	}
	// Queued while backing off: held behind the three.
	h.enqueue(tracedSET("s", "d"))
	eventually(t, 5*time.Second, "the hold of d", func() bool { _, _, _, hs := tr.snapshot(); return len(hs) == 2 })
	_, _, _, holds = tr.snapshot()
	if d := holds[1]; d.Reason != HoldBackoff || !slices.Equal(waitingOf(d), []string{"d+3"}) {
		t.Errorf("hold at enqueue %+v", d)
	}

	// Restart: the next attempt of a is number 2, from the store.
	h.reopen(mod)
	eventually(t, 10*time.Second, "the four deliveries", func() bool {
		clock.Advance(time.Minute) // past whichever backoff is running
		return len(rc.accepted()) == 4
	})
	eventually(t, 5*time.Second, "all ends", func() bool { _, e, _, _ := tr.snapshot(); return len(e) >= 6 })
	starts, ends, _, _ = tr.snapshot()
	var nums []string
	for i, d := range starts {
		nums = append(nums, fmt.Sprintf("%s#%d:%s", d.JTI, d.Attempt, ends[i].Outcome))
	}
	if want := []string{"a#1:retry", "a#2:retry", "a#3:delivered", "b#1:delivered", "c#1:delivered", "d#1:delivered"}; !slices.Equal(nums, want) {
		t.Errorf("attempts %v, want %v", nums, want)
	}
}

// TestPollTraced: a poll's hand-out and acknowledgement are reported with
// each SET's traceparent, and pausing a stream names the SETs it holds.
func TestPollTraced(t *testing.T) {
	tr := newRecTracer()
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep; c.Hooks.Trace = tr })
	h.pollStream("p")
	h.enqueue(tracedSET("p", "x"), tracedSET("p", "y"))
	ctx := context.Background()
	resp, err := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
	if err != nil || len(resp.Sets) != 2 {
		t.Fatalf("poll: %v %v", resp, err)
	}
	if _, err := h.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true, Ack: []string{"x", "y"}}); err != nil {
		t.Fatal(err)
	}
	tp := tracedSET("p", "x").TraceParent
	tr.mu.Lock()
	handed, acked := slices.Sorted(slices.Values(tr.polled["handed_out"])), slices.Sorted(slices.Values(tr.polled["acked"]))
	tr.mu.Unlock()
	if want := []string{"x@" + tp, "y@" + tp}; !slices.Equal(handed, want) || !slices.Equal(acked, want) {
		t.Errorf("handed out %v, acked %v, want %v", handed, acked, want)
	}

	h.enqueue(tracedSET("p", "z"))
	if err := h.ob.SetStream(ctx, StreamConfig{ID: "p", Method: MethodPoll, Status: StatusPaused}); err != nil {
		t.Fatal(err)
	}
	h.enqueue(tracedSET("p", "w"))
	_, _, _, holds := tr.snapshot()
	var got []string
	for _, hd := range holds {
		if hd.Reason == HoldPaused {
			got = append(got, waitingOf(hd)...)
		}
	}
	if want := []string{"z+0", "w+1"}; !slices.Equal(got, want) {
		t.Errorf("paused holds %v, want %v", got, want)
	}
}
