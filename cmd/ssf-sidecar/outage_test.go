//go:build linux

package main

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// Phases of TestSystemDatabaseRestartUnderLoad.
const (
	phaseOpen      int32 = iota // receiver accepts, database up
	phaseHeld                   // receiver answers 503, database up: a backlog builds
	phaseDown                   // database gone (every connection dropped, new ones refused)
	phaseDownKnown              // database gone, and /healthz says so
	phaseRecovered              // database back, receiver accepts again
)

// TestSystemDatabaseRestartUnderLoad: admins revoke sessions through the
// sidecar without pause while its PostgreSQL restarts (every connection
// dropped mid-transaction, new ones refused for a few seconds). Every
// revocation the tap journaled — answered, and not counted as a miss —
// reaches the push receiver with one jti, repeated only by a push whose
// outcome the outage kept from being committed; the ones during the
// outage are counted as misses while authentik still ends the sessions;
// the backlog queued behind a refusing receiver before the restart is
// delivered afterwards with its original jtis in stream order; /healthz
// and the SSF routes say so while the database is away and recover in
// place.
func TestSystemDatabaseRestartUnderLoad(t *testing.T) {
	dbURL, schema, fwd := forwardedDatabase(t)
	logs := &requestLog{}
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		PollInterval: 100 * time.Millisecond, Logger: slog.New(logs), Mutate: func(c *sidecar.Config) {
			c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = dbURL, schema, testEncryptionKey
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	rx := &heldReceiver{verify: w.Receiver.Verify}
	srv := httptest.NewServer(rx)
	t.Cleanup(srv.Close)
	var st struct {
		StreamID string `json:"stream_id"`
	}
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": srv.URL + "/events"},
		"events_requested": []string{ssf.EventSessionRevoked},
	}, &st); err != nil {
		t.Fatal(err)
	}
	if !eventually(20*time.Second, func() bool { return len(rx.received()) >= 1 }) {
		t.Fatal("the verification SET did not arrive")
	}

	load := &revocationLoad{ak: w.AK, front: w.Front, client: &http.Client{Timeout: 20 * time.Second}}
	for i := range 8 {
		u, err := w.AK.AddUser(authentiktest.UserSpec{Username: fmt.Sprintf("rev%d", i), Email: fmt.Sprintf("rev%d@example.com", i), Password: "initial-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		load.users = append(load.users, u)
	}
	stop := make(chan struct{})
	var workers sync.WaitGroup
	for range workerCount {
		workers.Add(1)
		go func() { defer workers.Done(); load.run(stop) }()
	}
	stopped := false
	stopLoad := func() {
		if !stopped {
			stopped = true
			close(stop)
			workers.Wait()
		}
	}
	t.Cleanup(stopLoad)
	waitAcked := func(phase int32, n int) {
		t.Helper()
		if !eventually(30*time.Second, func() bool { return load.acked(phase) >= n }) {
			t.Fatalf("only %d revocations answered within phase %d", load.acked(phase), phase)
		}
	}

	waitAcked(phaseOpen, 10)
	rx.hold(true)
	load.phase.Store(phaseHeld)
	waitAcked(phaseHeld, 10)
	// The backlog the restart comes upon: session-revoked SETs queued
	// behind the refusing receiver.
	var backlog []outbox.Record
	if !eventually(20*time.Second, func() bool {
		h, err := w.Sidecar.Outbox().History(ctx, st.StreamID, 1000)
		if err != nil {
			t.Fatal(err)
		}
		backlog = backlog[:0]
		for _, r := range h {
			if r.State == outbox.StateQueued && strings.Contains(r.EventType, "session-revoked") {
				backlog = append(backlog, r)
			}
		}
		return len(backlog) >= 5
	}) {
		t.Fatalf("%d SETs queued behind the refusing receiver, want 5 or more", len(backlog))
	}
	slices.SortFunc(backlog, func(a, b outbox.Record) int { return cmp.Compare(a.Seq, b.Seq) })
	missesBefore := tapMisses(t, w.AdminURL)

	// The restart: every connection dropped, whatever it was doing, and
	// new ones refused. The phase moves first, so that a request answered
	// in phaseHeld had its outcome journaled before the cut.
	load.phase.Store(phaseDown)
	cutAt := time.Now()
	fwd.cut(true)
	if !eventually(20*time.Second, func() bool {
		_, body := health(w.AdminURL)
		return strings.Contains(body, "database unreachable")
	}) {
		t.Fatal("/healthz never said the database is unreachable")
	}
	if code, body := health(w.AdminURL); !strings.Contains(body, `"degraded"`) || !strings.Contains(body, "database unreachable") {
		t.Errorf("/healthz while the database is away: %d %s", code, body)
	}
	if code, retry := ssfStatus(t, w.Front, st.StreamID); code != http.StatusServiceUnavailable || retry == "" {
		t.Errorf("SSF route while the database is away: %d, Retry-After %q; want 503 with Retry-After", code, retry)
	}
	// Revocations sent once the outage showed: the sidecar cannot journal
	// them.
	load.phase.Store(phaseDownKnown)
	waitAcked(phaseDownKnown, 6)
	time.Sleep(time.Until(cutAt.Add(3 * time.Second))) // down a few seconds, as a restart is
	fwd.cut(false)
	recoveredAt := time.Now()
	load.phase.Store(phaseRecovered)
	rx.hold(false)
	if !eventually(30*time.Second, func() bool {
		code, body := health(w.AdminURL)
		return code == http.StatusOK && strings.Contains(body, `"status":"ok"`)
	}) {
		code, body := health(w.AdminURL)
		t.Fatalf("/healthz after the database came back: %d %s", code, body)
	}
	if !eventually(20*time.Second, func() bool { code, _ := ssfStatus(t, w.Front, st.StreamID); return code == http.StatusOK }) {
		t.Fatal("the SSF routes did not answer again after the database came back")
	}
	waitAcked(phaseRecovered, 10)
	stopLoad()

	// (2) The outage: counted as misses, served by authentik all the same.
	revs := load.all()
	missed := logs.requestIDs()
	var during int
	for _, r := range revs {
		if r.start != phaseDownKnown || r.end != phaseDownKnown || !r.acked {
			continue
		}
		during++
		if !missed[r.reqID] {
			t.Errorf("revocation %s during the outage was not counted as a miss", r.reqID)
		}
		if _, ok := w.AK.Session(r.uuid); ok {
			t.Errorf("session %s still exists in authentik after its revocation during the outage", r.uuid)
		}
	}
	if missesAfter := tapMisses(t, w.AdminURL); missesAfter < missesBefore+float64(during) {
		t.Errorf("ssf_sidecar_tap_misses_total went from %v to %v over %d revocations during the outage", missesBefore, missesAfter, during)
	}

	// (1) Everything journaled arrives. A request in flight when the
	// connections dropped may have had its intent journaled and its
	// outcome not: that is a miss too (the tap names the intent, not the
	// request, and reconciles it after the open-intent grace, longer than
	// this test), so those few are left out; each worker has at most one.
	alias := map[string]string{}
	var want []phasedRevocation
	straddled := 0
	for _, r := range revs {
		alias[r.uuid], alias[r.hash] = r.uuid, r.uuid
		switch {
		case !r.acked || missed[r.reqID]:
		case r.start < phaseDown && r.end >= phaseDown:
			straddled++
		default:
			want = append(want, r)
		}
	}
	if straddled > workerCount {
		t.Errorf("%d revocations in flight at the restart from %d workers", straddled, workerCount)
	}
	arrived := func(got []rxDelivery) map[string]bool {
		m := map[string]bool{}
		for _, d := range got {
			if d.Event == "session-revoked" {
				m[sessionKey(alias, d.receivedSET)] = true
			}
		}
		return m
	}
	if !eventually(40*time.Second, func() bool {
		m := arrived(rx.received())
		return !slices.ContainsFunc(want, func(r phasedRevocation) bool { return !m[r.uuid] })
	}) {
		m := arrived(rx.received())
		lost := 0
		for _, r := range want {
			if !m[r.uuid] {
				lost++
				if lost <= 5 {
					t.Logf("lost: %s (session %s), sent in phase %d, answered in phase %d", r.reqID, r.uuid, r.start, r.end)
				}
			}
		}
		t.Errorf("%d of %d journaled revocations never reached the receiver", lost, len(want))
	}
	time.Sleep(time.Second) // room for a late duplicate
	got := rx.received()
	tally := tallyJTIs(got, "session-revoked", func(s receivedSET) string { return sessionKey(alias, s) })
	for session, jtis := range tally {
		if len(jtis) > 1 {
			t.Errorf("session %s revoked once, its SET issued %d times: %v", session, len(jtis), jtis)
		}
	}
	// Repeats only of a push whose outcome the outage kept from commit.
	first := map[string]time.Time{}
	for _, d := range got {
		prev, seen := first[d.JTI]
		if !seen {
			first[d.JTI] = d.At
			continue
		}
		if prev.Before(cutAt.Add(-redeliveryWindow)) || prev.After(recoveredAt.Add(redeliveryWindow)) {
			t.Errorf("%s %s delivered again %v after a first delivery the outage does not explain",
				d.Event, d.JTI, d.At.Sub(prev).Round(time.Millisecond))
		}
	}

	// (3) The backlog: every SET of it, with its jti, in stream order.
	order := map[string]int{}
	for i, d := range got {
		if _, ok := order[d.JTI]; !ok {
			order[d.JTI] = i
		}
	}
	last := -1
	for _, r := range backlog {
		i, ok := order[r.JTI]
		if !ok {
			t.Errorf("SET %s (seq %d), queued before the restart, was never delivered", r.JTI, r.Seq)
			continue
		}
		if i < last {
			t.Errorf("SET %s (seq %d) delivered before an earlier SET of its stream", r.JTI, r.Seq)
		}
		last = i
	}
	if rx.rejected() != 0 {
		t.Errorf("the receiver rejected %d SETs", rx.rejected())
	}
	t.Logf("%d revocations: %d journaled, %d during the outage; backlog of %d at the restart; %d deliveries",
		len(revs), len(want), during, len(backlog), len(got))
}

// workerCount is how many revocations are in flight at once.
const workerCount = 3

// revocationLoad revokes sessions through the sidecar until stopped,
// recording each with the phase it started and ended in.
type revocationLoad struct {
	ak     *authentiktest.Server
	front  string
	client *http.Client
	users  []authentiktest.User
	phase  atomic.Int32
	seq    atomic.Int64

	mu   sync.Mutex
	done []phasedRevocation
}

type phasedRevocation struct {
	revocation
	reqID      string
	start, end int32
}

func (l *revocationLoad) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		n := l.seq.Add(1)
		se, _, err := l.ak.IssueSession(l.users[n%int64(len(l.users))].PK)
		if err != nil {
			continue
		}
		h := sha256.Sum256([]byte(se.SID))
		r := phasedRevocation{revocation: revocation{uuid: se.UUID, hash: hex.EncodeToString(h[:])},
			reqID: fmt.Sprintf("outage-rev-%d", n), start: l.phase.Load()}
		req, _ := http.NewRequest(http.MethodDelete, l.front+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", nil)
		req.Header.Set("Authorization", "Bearer "+l.ak.AdminToken())
		req.Header.Set("X-Request-Id", r.reqID)
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255))
		if resp, err := l.client.Do(req); err == nil {
			resp.Body.Close()
			r.acked = resp.StatusCode == http.StatusNoContent
		}
		r.end = l.phase.Load()
		l.mu.Lock()
		l.done = append(l.done, r)
		l.mu.Unlock()
	}
}

// acked is how many answered revocations started and ended in phase.
func (l *revocationLoad) acked(phase int32) int {
	n := 0
	for _, r := range l.all() {
		if r.acked && r.start == phase && r.end == phase {
			n++
		}
	}
	return n
}

func (l *revocationLoad) all() []phasedRevocation {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.done)
}

// heldReceiver is a push receiver that answers 503 while held, and
// otherwise verifies and records each SET.
type heldReceiver struct {
	verify func(context.Context, string) (receivedSET, error)
	held   atomic.Bool

	mu  sync.Mutex
	got []rxDelivery
	bad int
}

func (h *heldReceiver) hold(on bool) { h.held.Store(on) }

func (h *heldReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if h.held.Load() {
		http.Error(w, "held", http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		return
	}
	set, err := h.verify(req.Context(), string(body))
	h.mu.Lock()
	defer h.mu.Unlock()
	if err != nil {
		h.bad++
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	h.got = append(h.got, rxDelivery{receivedSET: set, At: time.Now()})
	w.WriteHeader(http.StatusAccepted)
}

func (h *heldReceiver) received() []rxDelivery {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

func (h *heldReceiver) rejected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bad
}

// requestLog is a log handler that keeps the request ids named by warnings:
// the tap names the request of every tapped action it could not journal.
type requestLog struct {
	mu  sync.Mutex
	ids map[string]bool
}

func (l *requestLog) Enabled(_ context.Context, level slog.Level) bool {
	return level >= slog.LevelWarn
}

func (l *requestLog) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "request_id" && a.Value.String() != "" {
			l.mu.Lock()
			if l.ids == nil {
				l.ids = map[string]bool{}
			}
			l.ids[a.Value.String()] = true
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func (l *requestLog) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *requestLog) WithGroup(string) slog.Handler      { return l }

func (l *requestLog) requestIDs() map[string]bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.ids))
	for k := range l.ids {
		out[k] = true
	}
	return out
}

// health is the sidecar's /healthz answer.
func health(admin string) (int, string) {
	resp, err := http.Get(admin + "/healthz")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// ssfStatus reads a stream's configuration through the SSF API: the status
// and the Retry-After header.
func ssfStatus(t *testing.T, front, id string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, front+"/ssf/streams?stream_id="+id, nil)
	req.Header.Set("Authorization", "Bearer "+demoReceiverToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After")
}

// tapMisses reads ssf_sidecar_tap_misses_total from /metrics.
func tapMisses(t *testing.T, admin string) float64 {
	t.Helper()
	r := &crashRig{t: t, admin: admin, client: http.DefaultClient}
	return r.metric("ssf_sidecar_tap_misses_total")
}
