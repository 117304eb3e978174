package sidecar_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demoreceiver"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/testkit"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestSidecarFromOutsideMain builds the sidecar as a system test would,
// through this package alone: in front of a simulated authentik, a user's
// logout through the proxy reaches a receiver as one verified
// session-revoked SET; cancelling Run's context then shuts down in the
// documented order and leaves the store closed (its file lock released).
func TestSidecarFromOutsideMain(t *testing.T) {
	ak, err := authentiktest.Start(authentiktest.Config{SecretKey: "system-test-secret-key"})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	listen, adminListen := testkit.ListenAddrs(t)
	front, dataDir := "http://"+listen, t.TempDir()
	const token = "system-test-receiver-token-0123456789"
	cfg := sidecar.Config{
		Listen: listen, AdminListen: adminListen, Upstream: ak.URL(), Issuer: front + "/ssf", DataDir: dataDir,
		AuthentikToken: ak.AdminToken(), AuthentikSecretKey: ak.SecretKey(), AllowPrivateEndpoints: true,
		PollInterval: 100 * time.Millisecond, DirectoryRecheck: time.Hour, DefaultSubjects: "ALL", MaxBody: 64 << 10,
		Retention: time.Hour, DeliveredRetention: time.Hour, PushTimeout: 5 * time.Second, MaxBackoff: time.Second,
		PauseAfter: time.Hour, KeyOverlap: time.Hour,
	}
	receivers := []ssf.Receiver{{Name: "system", Audience: "https://receiver.system.example/",
		SubjectFormat: ssf.SubjectFormatComplex, Profile: ssf.ProfileSSF, RequireScopes: true,
		Tokens: []ssf.Token{{Value: token, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}}}
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))

	s, err := sidecar.Build(context.Background(), cfg, receivers, logger,
		sidecar.WithTracerProvider(noop.NewTracerProvider()), sidecar.WithVersion("system-test"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitFor(t, "the sidecar to answer ready", func() bool {
		resp, err := http.Get("http://" + adminListen + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	waitFor(t, "the event-API poller's first read", func() bool { return s.Tap().Stats().Polls > 0 })

	rx, err := demoreceiver.Start(front+"/ssf/jwks.json", cfg.Issuer)
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	body, _ := json.Marshal(map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": rx.URL()},
		"events_requested": []string{ssf.EventSessionRevoked},
	})
	req, _ := http.NewRequest(http.MethodPost, front+"/ssf/streams", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("create stream: %d", resp.StatusCode)
	}

	// One action end to end: a login and a logout through the proxy.
	if _, err := ak.AddUser(authentiktest.UserSpec{Username: "erin", Email: "erin@example.com", Password: "erin-password-1"}); err != nil {
		t.Fatal(err)
	}
	browser, err := authentiktest.Login(ctx, front, ak.Flows().Authentication, "erin", "erin-password-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authentiktest.RunFlow(ctx, browser, front, ak.Flows().Invalidation, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the session-revoked SET", func() bool {
		for _, set := range rx.Received() {
			if set.Event == "session-revoked" && set.Initiator == "user" {
				return true
			}
		}
		return false
	})
	if n := rx.Rejected(); n != 0 {
		t.Fatalf("the receiver rejected %d SETs", n)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30 s of its context ending")
	}
	out := logs.String()
	last := -1
	for _, step := range []string{
		"shutdown: the proxy stopped accepting",
		"shutdown: the tap stopped",
		"shutdown: delivery stopped",
		"shutdown: the store is closed",
		"shutdown: done",
	} {
		i := strings.Index(out, step)
		if i < 0 || i < last {
			t.Fatalf("shutdown step %q missing or out of order (at %d, previous at %d):\n%s", step, i, last, out)
		}
		last = i
	}
	if _, err := s.Store().Get("streams", []byte("x")); err == nil {
		t.Error("the store still answers after Run returned")
	}
	// The bbolt file's lock is free: the store is closed, not merely idle.
	again, err := outbox.Open(filepath.Join(dataDir, sidecar.DBFile), outbox.StoreOptions{OpenTimeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("reopen the store after Run: %v", err)
	}
	again.Close()
}

// waitFor polls cond until it holds, failing the test after 15 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
