package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// revokeThroughProxy issues a session in the simulated authentik and deletes
// it through the sidecar with the admin token (an action only the traffic
// sees); it returns the session's uuid and the proxy's status.
func revokeThroughProxy(t *testing.T, w *demoWorld, userPK int) (string, int) {
	t.Helper()
	se, _, err := w.AK.IssueSession(userPK)
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodDelete, w.Front+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", nil)
	req.Header.Set("Authorization", "Bearer "+w.AK.AdminToken())
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("delete session through the proxy: %v", err)
	}
	resp.Body.Close()
	return se.UUID, resp.StatusCode
}

// sessionOrder lists the session ids of session-revoked SETs in order of
// first arrival.
func sessionOrder(sets []receivedSET) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range sets {
		if s.Event != "session-revoked" {
			continue
		}
		id := sessionOf(s.Claims)
		if !seen[id] {
			seen[id] = true
			out = append(out, id)
		}
	}
	return out
}

// chaosReceiver fails every push in turn with 500, a hang past the push
// timeout, a reset connection, 429 with Retry-After and a slow read, until
// healed; then it hands the SET to a verifying receiver.
type chaosReceiver struct {
	inner    *demoReceiver
	failing  atomic.Bool
	attempts atomic.Int64
	modes    sync.Map // mode name → count
	stop     chan struct{}
}

func (c *chaosReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c.attempts.Add(1)
	if !c.failing.Load() {
		c.inner.ServeHTTP(w, r)
		return
	}
	modes := []string{"500", "hang", "reset", "429", "slow-read"}
	mode := modes[int(c.attempts.Load())%len(modes)]
	n, _ := c.modes.LoadOrStore(mode, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	switch mode {
	case "500":
		http.Error(w, "boom", http.StatusInternalServerError)
	case "hang":
		select {
		case <-r.Context().Done():
		case <-c.stop:
		}
	case "reset":
		hj, ok := w.(http.Hijacker)
		if !ok {
			panic("no hijacker")
		}
		conn, _, _ := hj.Hijack()
		conn.Close()
	case "429":
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusTooManyRequests)
	case "slow-read":
		buf := make([]byte, 1)
		for {
			if _, err := r.Body.Read(buf); err != nil {
				break
			}
			select {
			case <-r.Context().Done():
				return
			case <-c.stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
		select {
		case <-r.Context().Done():
		case <-c.stop:
		}
	}
}

// TestSystemReceiverFailsEveryWayThenRecovers: one push receiver fails in
// every way in turn while another is healthy. The healthy stream gets every
// SET while the other still fails; after recovery the failing stream gets
// every SET, each once, in the same order.
func TestSystemReceiverFailsEveryWayThenRecovers(t *testing.T) {
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Mutate: func(c *sidecar.Config) { c.PushTimeout = time.Second; c.MaxBackoff = time.Second }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	inner, err := startDemoReceiver(w.Front+"/ssf/jwks.json", w.Front+"/ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer inner.Close()
	chaos := &chaosReceiver{inner: inner, stop: make(chan struct{})}
	chaos.failing.Store(true)
	chaosSrv := httptest.NewServer(chaos)
	defer chaosSrv.Close()
	defer close(chaos.stop)
	for _, url := range []string{w.Receiver.URL(), chaosSrv.URL + "/events"} {
		if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": []string{ssf.EventSessionRevoked},
			"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": url}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "erin", Email: "erin@example.com", Password: "erin-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	var want []string
	for i := 0; i < n; i++ {
		id, code := revokeThroughProxy(t, w, u.PK)
		if code != http.StatusNoContent {
			t.Fatalf("delete %d: %d", i, code)
		}
		want = append(want, id)
	}
	// The healthy stream is not held up by the failing one.
	deadline := time.Now().Add(20 * time.Second)
	for len(sessionOrder(w.Receiver.Received())) < n {
		if time.Now().After(deadline) {
			t.Fatalf("healthy receiver got %d of %d while the other failed", len(sessionOrder(w.Receiver.Received())), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Let the failing receiver go through every mode at least once.
	for {
		all := true
		for _, m := range []string{"500", "hang", "reset", "429", "slow-read"} {
			if _, ok := chaos.modes.Load(m); !ok {
				all = false
			}
		}
		if all {
			break
		}
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatalf("the failing receiver was not tried in every mode (%d attempts)", chaos.attempts.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := len(sessionOrder(inner.Received())); got != 0 {
		t.Fatalf("%d SETs accepted while failing", got)
	}
	chaos.failing.Store(false)
	deadline = time.Now().Add(30 * time.Second)
	for len(sessionOrder(inner.Received())) < n {
		if time.Now().After(deadline) {
			t.Fatalf("recovered receiver got %d of %d", len(sessionOrder(inner.Received())), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := sessionOrder(inner.Received()); !slices.Equal(got, want) {
		t.Errorf("recovered stream order\n got %v\nwant %v", got, want)
	}
	if got := sessionOrder(w.Receiver.Received()); !slices.Equal(got, want) {
		t.Errorf("healthy stream order\n got %v\nwant %v", got, want)
	}
	jtis := map[string]int{}
	for _, s := range inner.Received() {
		jtis[s.JTI]++
	}
	for jti, c := range jtis {
		if c > 1 {
			t.Errorf("jti %s accepted %d times by the recovered receiver", jti, c)
		}
	}
}

// TestSystemAuthentikDownSlowRestarting: with authentik down the proxy
// answers 502 at once, /readyz stays ready and /healthz says why; slow,
// the proxy waits and tapped actions still become SETs; restarted, it
// serves again without a sidecar restart, and the event-API poller catches
// up on what happened meanwhile: each change once.
func TestSystemAuthentikDownSlowRestarting(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"events_requested": []string{ssf.EventSessionRevoked, ssf.EventCredentialChange},
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL()}}, nil); err != nil {
		t.Fatal(err)
	}
	u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "frank", Email: "frank@example.com", Password: "frank-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(base, path string) (int, []byte) {
		t.Helper()
		resp, err := client.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	w.settle(t)
	base := len(w.Receiver.Received())

	// Down.
	if err := w.AK.Close(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(w.Front, "/if/flow/default-authentication-flow/"); code != http.StatusBadGateway {
		t.Errorf("authentik down: proxy answered %d, want 502", code)
	}
	if code, _ := get(w.AdminURL, "/readyz"); code != http.StatusOK {
		t.Errorf("authentik down: /readyz %d, want 200 (the sidecar is the only way in)", code)
	}
	_, hb := get(w.AdminURL, "/healthz")
	var health struct {
		Status string `json:"status"`
		Checks map[string]struct {
			Status, Error string
		} `json:"checks"`
	}
	if err := json.Unmarshal(hb, &health); err != nil {
		t.Fatal(err)
	}
	if health.Status != "degraded" || health.Checks["upstream"].Status != "failing" || health.Checks["upstream"].Error == "" {
		t.Errorf("authentik down: /healthz %s", hb)
	}
	// Changes only the event API sees, made while the sidecar cannot read it.
	for i := 0; i < 2; i++ {
		if err := w.AK.SystemSetPassword(u.PK, "frank-new-password", "source_sync"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond) // a few failed polls
	// Restarting: back on the same address, no sidecar restart.
	if err := w.AK.Restart(); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(w.Front, "/if/flow/default-authentication-flow/"); code >= 500 {
		t.Errorf("authentik back: proxy answered %d", code)
	}
	// Slow: every request takes a while; a tapped action still completes and
	// becomes a SET.
	w.AK.SetDelay(300 * time.Millisecond)
	id, code := revokeThroughProxy(t, w, u.PK)
	w.AK.SetDelay(0)
	if code != http.StatusNoContent {
		t.Fatalf("slow authentik: delete %d", code)
	}
	w.settle(t)
	var creds, revoked int
	for _, s := range w.Receiver.Received()[base:] {
		switch s.Event {
		case "credential-change":
			creds++
		case "session-revoked":
			if sessionOf(s.Claims) == id {
				revoked++
			}
		}
	}
	if creds != 2 || revoked != 1 {
		t.Errorf("after down/slow/restart: %d credential-change (want 2), %d session-revoked for the slow delete (want 1)", creds, revoked)
	}
}

// streamUpdates lists the statuses of the stream-updated SETs received, in
// order.
func streamUpdates(sets []receivedSET) []string {
	var out []string
	for _, s := range sets {
		if s.Event != "stream-updated" {
			continue
		}
		ev, _ := s.Claims["events"].(map[string]any)
		for _, b := range ev {
			m, _ := b.(map[string]any)
			st, _ := m["status"].(string)
			out = append(out, st)
		}
	}
	return out
}

// TestSystemPauseAnnouncedBeforeHold: an operator pauses a push stream
// through the admin API; the receiver hears of it at once while the session
// revoked meanwhile is held; on resume it gets the held SET and the
// announcement of the resume; a disable is announced too.
func TestSystemPauseAnnouncedBeforeHold(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "hana", Email: "hana@example.com", Password: "hana-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	admin := func(action string) {
		t.Helper()
		resp, err := http.Post(w.AdminURL+"/admin/streams/"+id+"/"+action, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("admin %s: %d", action, resp.StatusCode)
		}
	}
	waitUpdates := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !slices.Equal(streamUpdates(w.Receiver.Received()), want) {
			if time.Now().After(deadline) {
				t.Fatalf("stream-updated statuses %v, want %v", streamUpdates(w.Receiver.Received()), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	admin("pause")
	waitUpdates("paused")
	held, code := revokeThroughProxy(t, w, u.PK)
	if code != http.StatusNoContent {
		t.Fatalf("delete: %d", code)
	}
	// The revocation is queued and held: it shows in the backlog, not at
	// the receiver.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := w.Sidecar.Outbox().Stats(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if st.Backlog == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backlog %d, want the held revocation", st.Backlog)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := sessionOrder(w.Receiver.Received()); len(got) != 0 {
		t.Fatalf("paused stream delivered %v", got)
	}
	admin("resume")
	waitUpdates("paused", "enabled")
	deadline = time.Now().Add(10 * time.Second)
	for !slices.Equal(sessionOrder(w.Receiver.Received()), []string{held}) {
		if time.Now().After(deadline) {
			t.Fatalf("after resume: %v, want the held revocation", sessionOrder(w.Receiver.Received()))
		}
		time.Sleep(10 * time.Millisecond)
	}
	admin("disable")
	waitUpdates("paused", "enabled", "disabled")
}
