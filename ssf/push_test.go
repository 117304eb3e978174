package ssf

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

type pushed struct {
	auth, contentType, body string
}

// TestPushEndToEnd creates a push stream over HTTP, runs the real outbox,
// and checks the SETs the receiver gets: the unsolicited verification and a
// requested one, with the stream's authorization header, verified
// independently.
func TestPushEndToEnd(t *testing.T) {
	got := make(chan pushed, 16)
	rx := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- pushed{r.Header.Get("Authorization"), r.Header.Get("Content-Type"), string(b)}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rx.Close()

	dir := t.TempDir()
	store, err := outbox.Open(filepath.Join(dir, "db"), outbox.StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	keys, err := NewKeys(context.Background(), KeyConfig{Files: []string{testKeyFile(t)}})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(outbox.Config{Store: store, Signer: keys, AllowPrivateEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := ParseReceivers([]byte(testReceivers))
	srv := httptest.NewUnstartedServer(nil)
	issuer := "http://" + srv.Listener.Addr().String() + "/ssf"
	tr, err := New(Config{Issuer: issuer, Receivers: rs, KV: store, Queue: ob, Keys: keys, AllowPrivateEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	srv.Config.Handler = tr.Handler()
	srv.Start()
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	h := &harness{t: t, srv: srv, issuer: issuer, keys: keys, clock: &fakeClock{now: time.Now().Add(time.Hour)}}
	w := h.create(acmeTok, map[string]any{"delivery": map[string]string{
		"method": MethodPushURN, "endpoint_url": rx.URL + "/events", "authorization_header": "Bearer rx-secret"}})
	if r := h.do("POST", "/ssf/verify", acmeTok, map[string]any{"stream_id": w.StreamID, "state": "push-state"}); r.status != 204 {
		t.Fatalf("verify: %d %s", r.status, r.body)
	}
	var states []any
	deadline := time.After(30 * time.Second)
	for len(states) < 2 {
		select {
		case p := <-got:
			if p.auth != "Bearer rx-secret" || p.contentType != "application/secevent+jwt" {
				t.Errorf("push headers: auth %q content type %q", p.auth, p.contentType)
			}
			d := h.checkSET(p.body, acmeAud)
			h.independentVerify(p.body, acmeAud)
			if d.Type != EventVerification {
				t.Fatalf("pushed %s", d.Type)
			}
			states = append(states, d.Event["state"])
		case <-deadline:
			t.Fatalf("only %d SETs pushed", len(states))
		}
	}
	// In order: the unsolicited one (no state) first.
	if states[0] != nil || states[1] != "push-state" {
		t.Errorf("states %v", states)
	}
}

// TestFailingStreamPausedThroughOutbox wires the transmitter as the
// outbox's FailureReporter: a receiver that keeps failing gets its stream
// paused with a reason, and the stream-updated SET explaining it is the
// first thing delivered once the stream is enabled again.
func TestFailingStreamPausedThroughOutbox(t *testing.T) {
	var failing atomic.Bool
	failing.Store(true)
	got := make(chan pushed, 64)
	rx := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		b, _ := io.ReadAll(r.Body)
		got <- pushed{body: string(b)}
		w.WriteHeader(http.StatusAccepted)
	}))
	defer rx.Close()
	store, err := outbox.Open(filepath.Join(t.TempDir(), "db"), outbox.StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	keys := testKeys(t)
	rep := &lateReporter{}
	ob, err := outbox.New(outbox.Config{Store: store, Signer: keys, AllowPrivateEndpoints: true, Reporter: rep,
		PauseAfter: time.Millisecond, MaxBackoff: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rs, _ := ParseReceivers([]byte(testReceivers))
	tr, err := New(Config{Issuer: "https://tr.example/ssf", Receivers: rs, KV: store, Queue: ob, Keys: keys, AllowPrivateEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	rep.set(tr)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	rec := serve(tr, "POST", "/ssf/streams", acmeTok, `{"delivery":{"method":"urn:ietf:rfc:8935","endpoint_url":"`+rx.URL+`"}}`)
	if rec.Code != 201 {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var w streamWire
	_ = json.Unmarshal(rec.Body.Bytes(), &w)
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, _ := tr.AdminStream(context.Background(), w.StreamID)
		if s.Status == StatusPaused {
			if !strings.Contains(s.Reason, "failing since") {
				t.Errorf("reason %q", s.Reason)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("stream never paused")
		}
		time.Sleep(20 * time.Millisecond)
	}
	failing.Store(false)
	if rec := serve(tr, "POST", "/ssf/status", acmeTok, `{"stream_id":"`+w.StreamID+`","status":"enabled"}`); rec.Code != 200 {
		t.Fatalf("enable: %d", rec.Code)
	}
	select {
	case p := <-got:
		parts := strings.Split(p.body, ".")
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		if !strings.Contains(string(b), EventStreamUpdated) || !strings.Contains(string(b), `"status":"paused"`) {
			t.Errorf("first SET after re-enable: %s", b)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("nothing delivered after re-enable")
	}
}

// lateReporter lets the outbox be built before the transmitter.
type lateReporter struct {
	mu sync.Mutex
	tr *Transmitter
}

func (l *lateReporter) set(tr *Transmitter) { l.mu.Lock(); l.tr = tr; l.mu.Unlock() }

func (l *lateReporter) StreamFailing(ctx context.Context, id string, since time.Time, lastErr string) {
	l.mu.Lock()
	tr := l.tr
	l.mu.Unlock()
	if tr != nil {
		tr.StreamFailing(ctx, id, since, lastErr)
	}
}
