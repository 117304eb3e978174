package outbox

import (
	"context"
	"net/http"
	"slices"
	"testing"
	"time"
)

// TestEndpointMovedThroughAnotherReplica: replica B moves a push stream
// to a new endpoint with new credentials while replica A holds the
// stream's lease. A, which cannot read the new credentials from the
// store, sends nothing — not to the old endpoint, not to the new one with
// the old credentials — until the stream's owner registers the stream on
// A again (AdoptStream); then A delivers to the new endpoint with the new
// credentials.
func TestEndpointMovedThroughAnotherReplica(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier()
	oldRx := newReceiver(t, nil)
	newRx := newReceiver(t, nil)
	a := newReplica(t, st, clock, "replica-a", notifier, nil)
	b := newReplica(t, st, clock, "replica-b", notifier, nil)
	ctx := context.Background()
	old := StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: oldRx.srv.URL, AuthorizationHeader: "Bearer old"}
	if err := a.ob.SetStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := a.ob.Enqueue(ctx, []SET{makeSET("s", "x1")}, nil); err != nil {
		t.Fatal(err)
	}
	oldRx.waitFor(t, 1, 10*time.Second) // A holds the lease now
	if err := b.ob.SetStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	moved := StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: newRx.srv.URL, AuthorizationHeader: "Bearer new"}
	if err := b.ob.SetStream(ctx, moved); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "A takes the new endpoint", func() bool {
		c, _ := a.ob.StreamConfig("s")
		return c.EndpointURL == moved.EndpointURL
	})
	if err := b.ob.Enqueue(ctx, []SET{makeSET("s", "x2")}, nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // room for a wrongful push
	if got := oldRx.accepted(); !slices.Equal(got, []string{"x1"}) {
		t.Fatalf("the old endpoint got %v after the move, want [x1]", got)
	}
	if got := newRx.accepted(); len(got) != 0 {
		t.Fatalf("the new endpoint got %v before A knew its credentials", got)
	}
	if err := a.ob.AdoptStream(ctx, moved); err != nil {
		t.Fatal(err)
	}
	d := newRx.waitFor(t, 1, 10*time.Second)
	if d[0].JTI != "x2" || d[0].Header.Get("Authorization") != "Bearer new" {
		t.Fatalf("the new endpoint got %s with %q, want x2 with the new credentials", d[0].JTI, d[0].Header.Get("Authorization"))
	}
}

// TestDeletedThroughAnotherReplica: replica B deletes a push stream while
// replica A has an attempt in flight and more SETs of it loaded; once A
// has heard of it, only the attempt in flight reaches the receiver.
func TestDeletedThroughAnotherReplica(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier()
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	rx := newReceiver(t, func(n int, _ *http.Request, w http.ResponseWriter) {
		if n == 1 {
			arrived <- struct{}{}
			<-release
		}
		w.WriteHeader(http.StatusAccepted)
	})
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	ctx := context.Background()
	cfg := StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: rx.srv.URL}
	a := newReplica(t, st, clock, "replica-a", notifier, nil)
	if err := a.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	var sets []SET
	for _, j := range jtis("d", 10) {
		sets = append(sets, makeSET("s", j))
	}
	if err := a.ob.Enqueue(ctx, sets, nil); err != nil {
		t.Fatal(err)
	}
	<-arrived
	b := newReplica(t, st, clock, "replica-b", notifier, nil)
	if err := b.ob.DeleteStream(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "A hears of the delete", func() bool {
		c, ok := a.ob.StreamConfig("s")
		return ok && c.Status == StatusDisabled
	})
	close(release)
	rx.waitFor(t, 1, 10*time.Second)
	time.Sleep(200 * time.Millisecond) // room for a wrongful push
	if got := rx.accepted(); len(got) != 1 {
		t.Fatalf("the receiver got %v after the delete, want the one in flight", got)
	}
}

// TestPollPausedThroughAnotherReplica: a poll stream paused through
// replica B hands nothing out through replica A, which has not heard of
// the pause, but the pause's announcement; resumed through B, A hands the
// held SETs out.
func TestPollPausedThroughAnotherReplica(t *testing.T) {
	clock := newFakeClock()
	st := sharedStore(t)
	notifier := NewLocalNotifier()
	a := newReplica(t, st, clock, "replica-a", notifier, nil)
	b := newReplica(t, st, clock, "replica-b", notifier, nil)
	ctx := context.Background()
	cfg := StreamConfig{ID: "p", Method: MethodPoll, Status: StatusEnabled}
	for _, r := range []*replica{a, b} {
		if err := r.ob.SetStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
	paused := cfg
	paused.Status = StatusPaused
	ann := makeSET("p", "announced")
	ann.Head, ann.Announce = true, true
	if err := b.ob.Enqueue(ctx, []SET{makeSET("p", "held"), ann}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.ob.SetStream(ctx, paused); err != nil {
		t.Fatal(err)
	}
	handOut := func() []string {
		t.Helper()
		resp, err := a.ob.Poll(ctx, "p", PollRequest{ReturnImmediately: true})
		if err != nil {
			t.Fatal(err)
		}
		return sortedKeys(resp.Sets)
	}
	if got := handOut(); !slices.Equal(got, []string{"announced"}) {
		t.Fatalf("replica A handed out %v while the stream was paused through B, want [announced]", got)
	}
	if err := b.ob.SetStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if got := handOut(); !slices.Equal(got, []string{"held"}) {
		t.Fatalf("replica A handed out %v after the resume through B, want [held]", got)
	}
}
