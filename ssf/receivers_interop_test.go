package ssf

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Behaviour third-party receivers depend on, beyond the conformance suite.

// claimsOfCompact decodes the claims of a compact SET (no verification).
func claimsOfCompact(t testing.TB, compact string) map[string]any {
	t.Helper()
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		t.Fatalf("not a compact JWS: %q", compact)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// eventOf returns the single event's type and body.
func eventOf(c map[string]any) (string, map[string]any) {
	for k, v := range c["events"].(map[string]any) {
		b, _ := v.(map[string]any)
		return k, b
	}
	return "", nil
}

// TestResumeAnnouncedBeforeHeldSETs: when an operator resumes a paused
// stream, the stream-updated SET saying "enabled" comes before the SETs the
// pause held, and after the "paused" one, so a receiver that ignores events
// while it believes the stream paused drops none. Poll: the pause
// announcement was handed out and not acknowledged, and the next poll
// lists paused, enabled, then the held SETs in document order.
func TestResumeAnnouncedBeforeHeldSETs(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked}})
	if _, err := h.tr.AdminSetStatus(t.Context(), w.StreamID, StatusPaused, "maintenance"); err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"held-1", "held-2"} {
		h.clock.Advance(time.Second)
		if err := h.tr.Publish(t.Context(), tap.Signal{ID: id, Kind: tap.KindSessionRevoked, Subject: alice,
			SessionHash: strings.Repeat("a", 63) + string(rune('0'+i)), Time: h.clock.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	r := h.do("POST", w.Delivery.EndpointURL, acmeTok, `{"returnImmediately":true}`)
	order, _ := docOrder(t, r.body)
	if len(order) != 1 {
		t.Fatalf("paused stream handed out %d SETs, want its announcement", len(order))
	}
	if _, err := h.tr.AdminSetStatus(t.Context(), w.StreamID, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(2 * time.Minute) // the announcement's lease ends
	r = h.do("POST", w.Delivery.EndpointURL, acmeTok, `{"returnImmediately":true}`)
	order, _ = docOrder(t, r.body)
	var pr outbox.PollResponse
	r.json(t, &pr)
	var got []string
	for _, jti := range order {
		d := h.checkSET(pr.Sets[jti], acmeAud)
		switch d.Type {
		case EventStreamUpdated:
			got = append(got, d.Event["status"].(string))
		case EventSessionRevoked:
			got = append(got, "event")
		default:
			got = append(got, d.Type)
		}
	}
	if want := []string{"paused", "enabled", "event", "event"}; !slices.Equal(got, want) {
		t.Fatalf("after resume %v, want %v", got, want)
	}

	// Push: the receiver sees paused, enabled, then the held SETs.
	hp := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
	hp.runOutbox()
	rx := newSuitePushReceiver(t)
	pw := hp.create(acmeTok, map[string]any{"events_requested": []string{EventSessionRevoked},
		"delivery": map[string]string{"method": MethodPushURN, "endpoint_url": rx.srv.URL + "/events"}})
	rx.next(t) // the verification sent at creation
	if _, err := hp.tr.AdminSetStatus(t.Context(), pw.StreamID, StatusPaused, "maintenance"); err != nil {
		t.Fatal(err)
	}
	got = nil
	announce := func(p pushed) {
		typ, ev := eventOf(claimsOfCompact(t, p.body))
		if typ == EventStreamUpdated {
			got = append(got, ev["status"].(string))
		} else {
			got = append(got, "event")
		}
	}
	announce(rx.next(t))
	for _, id := range []string{"p-1", "p-2", "p-3"} {
		if err := hp.tr.Publish(t.Context(), tap.Signal{ID: id, Kind: tap.KindSessionRevoked, Subject: alice, Time: hp.clock.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hp.tr.AdminSetStatus(t.Context(), pw.StreamID, StatusEnabled, ""); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		announce(rx.next(t))
	}
	if want := []string{"paused", "enabled", "event", "event", "event"}; !slices.Equal(got, want) {
		t.Fatalf("push receiver got %v, want %v", got, want)
	}
}

// simClock is a simulated clock whose timers fire when it is advanced.
type simClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []simTimer
}

type simTimer struct {
	at time.Time
	ch chan time.Time
}

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *simClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, simTimer{at: c.now.Add(d), ch: ch})
	return ch
}

// step waits (in real time) for a timer, moves the clock to the earliest
// one (at most to limit) and fires every timer that is due.
func (c *simClock) step(t testing.TB, limit time.Time) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		if len(c.timers) > 0 {
			break
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatal("nothing waits on the simulated clock")
		}
		time.Sleep(time.Millisecond)
	}
	defer c.mu.Unlock()
	next := c.timers[0].at
	for _, tm := range c.timers {
		if tm.at.Before(next) {
			next = tm.at
		}
	}
	if next.After(limit) {
		next = limit
	}
	if next.After(c.now) {
		c.now = next
	}
	kept := c.timers[:0]
	for _, tm := range c.timers {
		if tm.at.After(c.now) {
			kept = append(kept, tm)
			continue
		}
		tm.ch <- c.now
	}
	c.timers = kept
}

// TestReceiverMaxSETAgeAfterOutage: a push receiver that refuses SETs
// whose iat is more than five minutes old (400 invalid_request, which the
// sidecar cannot fix by retrying, so it would dead-letter them) is down for
// an hour of simulated time. Afterwards it gets every SET, each once, none
// dead-lettered: iat is the time of signing, the time of the event stays
// in toe and event_timestamp, and the jti is the one it always had.
func TestReceiverMaxSETAgeAfterOutage(t *testing.T) {
	clock := &simClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	start := clock.Now()
	const maxAge = 5 * time.Minute
	var mu sync.Mutex
	down := true
	attempts := 0
	got := map[string]map[string]any{} // jti → claims
	var order []string
	rx := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		defer mu.Unlock()
		attempts++
		if down {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		c := claimsOfCompact(t, string(b))
		iat := time.Unix(int64(c["iat"].(float64)), 0)
		if now := clock.Now(); now.Sub(iat) > maxAge || iat.After(now) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"err":"invalid_request","description":"SET older than 5 minutes"}`))
			return
		}
		jti := c["jti"].(string)
		if _, dup := got[jti]; !dup {
			order = append(order, jti)
		}
		got[jti] = c
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rx.Close()

	store, err := outbox.Open(filepath.Join(t.TempDir(), "db"), outbox.StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	keys, err := NewKeys(context.Background(), KeyConfig{Files: []string{testKeyFile(t)}, Clock: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(outbox.Config{Store: store, Signer: keys, AllowPrivateEndpoints: true,
		Clock: clock.Now, After: clock.After, Jitter: func() float64 { return 0.5 }, MaxBackoff: 5 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := ParseReceivers([]byte(testReceivers))
	tr, err := New(Config{Issuer: "https://tr.example/ssf", Receivers: rs, KV: store, Queue: ob, Keys: keys,
		Clock: clock.Now, AllowPrivateEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	rec := serve(tr, "POST", "/ssf/streams", acmeTok, `{"events_requested":["`+EventSessionRevoked+`","`+EventCredentialChange+`"],"delivery":{"method":"urn:ietf:rfc:8935","endpoint_url":"`+rx.URL+`/events"}}`)
	if rec.Code != 201 {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var w streamWire
	_ = json.Unmarshal(rec.Body.Bytes(), &w)
	signals := []tap.Signal{
		{ID: "sig-1", Kind: tap.KindSessionRevoked, Subject: alice, Time: start.Add(-2 * time.Second)},
		{ID: "sig-2", Kind: tap.KindPasswordChanged, Subject: alice, Time: start.Add(-time.Second)},
		{ID: "sig-3", Kind: tap.KindSessionRevoked, Subject: alice, Time: start},
	}
	for _, s := range signals {
		if err := tr.Publish(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// An hour of outage, on the simulated clock.
	for clock.Now().Before(start.Add(time.Hour)) {
		clock.step(t, start.Add(time.Hour))
	}
	mu.Lock()
	down = false
	failedAttempts := attempts
	mu.Unlock()
	if failedAttempts < 5 {
		t.Fatalf("only %d attempts during the outage: the test did not exercise retries", failedAttempts)
	}
	const want = 4 // the verification at creation and the three events
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == want {
			break
		}
		if time.Now().After(deadline) {
			dl, _ := ob.DeadLetters(ctx, w.StreamID, 0)
			t.Fatalf("receiver has %d of %d SETs after the outage; dead letter: %+v", n, want, dl)
		}
		// Give the posts in flight real time before the clock moves on, and
		// move it in small steps: a request takes milliseconds, not minutes.
		time.Sleep(50 * time.Millisecond)
		clock.step(t, clock.Now().Add(10*time.Second))
	}
	dl, err := ob.DeadLetters(ctx, w.StreamID, 0)
	if err != nil || len(dl) != 0 {
		t.Fatalf("dead letters %+v %v", dl, err)
	}
	mu.Lock()
	defer mu.Unlock()
	var events int
	for i, jti := range order {
		c := got[jti]
		if c["jti"] != jti {
			t.Errorf("jti changed: %v", c["jti"])
		}
		iat := int64(c["iat"].(float64))
		// Signed for the attempt that got through, at the end of the
		// outage (the receiver itself refused anything older than maxAge).
		if iat < start.Add(time.Hour-maxAge).Unix() {
			t.Errorf("SET %d: iat %d is not the signing time after the outage", i, iat)
		}
		typ, ev := eventOf(c)
		if typ == EventVerification {
			continue
		}
		s := signals[events]
		events++
		if toe, _ := c["toe"].(float64); int64(toe) != s.Time.Unix() {
			t.Errorf("SET %d: toe %v, want the event time %d", i, c["toe"], s.Time.Unix())
		}
		if ts, _ := ev["event_timestamp"].(float64); int64(ts) != s.Time.Unix() {
			t.Errorf("SET %d: event_timestamp %v, want %d", i, ev["event_timestamp"], s.Time.Unix())
		}
	}
	if events != 3 {
		t.Errorf("%d events delivered, want 3", events)
	}
}
