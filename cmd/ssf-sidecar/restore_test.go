package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// backedUpDataDir runs the sidecar once on a fresh data dir with a push
// stream holding an authorization_header, and returns the stopped dir and
// the stream id.
func backedUpDataDir(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: dir, Receivers: systemReceivers()})
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		StreamID string `json:"stream_id"`
	}
	_, err = w.SSFCall(context.Background(), http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL(), "authorization_header": "Bearer push-secret-of-the-receiver-000000"},
		"events_requested": []string{ssf.EventSessionRevoked},
	}, &st)
	w.Close()
	if err != nil || st.StreamID == "" {
		t.Fatalf("create stream: %v", err)
	}
	return dir, st.StreamID
}

// restoreOnly copies the named files (globs) of src into a new dir.
func restoreOnly(t *testing.T, src string, globs ...string) string {
	t.Helper()
	dst := t.TempDir()
	for _, g := range globs {
		m, _ := filepath.Glob(filepath.Join(src, g))
		for _, f := range m {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dst
}

// servingSidecar is `serve` run in process, in front of a plain upstream.
type servingSidecar struct {
	front, admin string
	logs         *syncBuffer
	cancel       context.CancelFunc
	done         chan int
}

func startServe(t *testing.T, env map[string]string, args ...string) *servingSidecar {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "authentik answered "+r.URL.Path)
	}))
	t.Cleanup(up.Close)
	listen, admin := listenAddrs(t)
	for _, o := range options {
		t.Setenv(o.env, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &servingSidecar{front: "http://" + listen, admin: "http://" + admin, logs: &syncBuffer{}, cancel: cancel, done: make(chan int, 1)}
	all := append([]string{"serve", "--upstream", up.URL, "--listen", listen, "--admin-listen", admin, "--log-format", "text",
		"--issuer", "http://" + listen + "/ssf", "--allow-private-endpoints"}, args...)
	go func() { s.done <- run(ctx, all, io.Discard, s.logs) }()
	t.Cleanup(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case code := <-s.done:
			t.Fatalf("serve exited with %d at start:\n%s", code, s.logs.String())
		default:
		}
		if resp, err := http.Get(s.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready within 20 s:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var stopOnce sync.Map

func (s *servingSidecar) stop() {
	if _, done := stopOnce.LoadOrStore(s, true); done {
		return
	}
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
	}
}

func (s *servingSidecar) get(t *testing.T, url string) (int, string) {
	t.Helper()
	return getBody(t, url)
}

// health returns /healthz's status and the store check's text.
func (s *servingSidecar) health(t *testing.T) (string, string) {
	t.Helper()
	_, body := s.get(t, s.admin+"/healthz")
	var h struct {
		Status string `json:"status"`
		Checks map[string]struct {
			Status string `json:"status"`
			Error  string `json:"error"`
		} `json:"checks"`
	}
	_ = json.Unmarshal([]byte(body), &h)
	return h.Status, h.Checks["store"].Error
}

func (s *servingSidecar) waitHealthy(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, detail := s.health(t)
		if st != "degraded" && st != "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %s after 30 s: %s\n%s", st, detail, s.logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestPartialRestoreKeepsProxying: a data dir restored without its key
// files keeps authentik reachable, says on /healthz and in the log exactly
// what is missing and how to fix it, never generates a seal key next to
// sealed data, and recovers without a restart once the files are back.
func TestPartialRestoreKeepsProxying(t *testing.T) {
	src, id := backedUpDataDir(t)

	t.Run("database only", func(t *testing.T) {
		dir := restoreOnly(t, src, sidecar.DBFile)
		s := startServe(t, nil, "--data-dir", dir)
		if code, body := s.get(t, s.front+"/if/flow/x/"); code != 200 || body != "authentik answered /if/flow/x/" {
			t.Fatalf("authentik not proxied: %d %s", code, body)
		}
		st, detail := s.health(t)
		pems, _ := filepath.Glob(filepath.Join(src, "signing-key-*.pem"))
		if st != "degraded" || !strings.Contains(detail, "the current signing key file "+filepath.Base(pems[0])) ||
			!strings.Contains(detail, ssf.SecretKeyFile+" is missing") || !strings.Contains(detail, id) ||
			!strings.Contains(detail, "from the same backup") || !strings.Contains(detail, "ssf-sidecar repair --data-dir "+dir) {
			t.Fatalf("healthz %s does not say what is missing and what to do: %s", st, detail)
		}
		if !strings.Contains(s.logs.String(), "ssf-sidecar repair") {
			t.Fatalf("the log does not say how to fix it:\n%s", s.logs.String())
		}
		if _, err := os.Stat(filepath.Join(dir, ssf.SecretKeyFile)); err == nil {
			t.Fatal("a new stream-secrets.key was generated next to sealed data")
		}
		if m, _ := filepath.Glob(filepath.Join(dir, "signing-key-*.pem")); len(m) > 0 {
			t.Fatalf("a signing key was generated before the restore was complete: %v", m)
		}
		// The rest of the backup arrives: the sidecar recovers on its own.
		for _, f := range append(pems, filepath.Join(src, ssf.SecretKeyFile)) {
			b, _ := os.ReadFile(f)
			os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o600)
		}
		s.waitHealthy(t)
		code, body := s.get(t, s.admin+"/admin/streams/"+id)
		if code != 200 || !strings.Contains(body, `"status":"enabled"`) || !strings.Contains(body, `"has_authorization_header":true`) {
			t.Fatalf("stream after recovery: %d %s", code, body)
		}
	})

	t.Run("stream-secrets.key lost, repaired offline", func(t *testing.T) {
		dir := restoreOnly(t, src, sidecar.DBFile, "signing-key-*.pem")
		s := startServe(t, nil, "--data-dir", dir)
		if code, _ := s.get(t, s.front+"/api/v3/core/users/"); code != 200 {
			t.Fatalf("authentik not proxied: %d", code)
		}
		_, detail := s.health(t)
		if !strings.Contains(detail, ssf.SecretKeyFile+" is missing") || strings.Contains(detail, "signing key file") ||
			!strings.Contains(detail, "--drop-lost-secrets") {
			t.Fatalf("healthz: %s", detail)
		}
		// The dry run reports and fails; it changes nothing.
		code, out, errs := runCLI(t, nil, "repair", "--data-dir", dir)
		if code != exitFailure || !strings.Contains(out, ssf.SecretKeyFile+" is missing") || !strings.Contains(out, id) {
			t.Fatalf("repair (dry run): exit %d\n%s%s", code, out, errs)
		}
		if _, err := os.Stat(filepath.Join(dir, ssf.SecretKeyFile)); err == nil {
			t.Fatal("the dry run created a key")
		}
		code, out, errs = runCLI(t, nil, "repair", "--data-dir", dir, "--drop-lost-secrets")
		if code != exitOK || !strings.Contains(out, "dropped the push secret of stream "+id) {
			t.Fatalf("repair: exit %d\n%s%s", code, out, errs)
		}
		// The degraded sidecar picks the repaired dir up without a restart.
		s.waitHealthy(t)
		code, body := s.get(t, s.admin+"/admin/streams/"+id)
		if code != 200 || !strings.Contains(body, `"status":"paused"`) || !strings.Contains(body, "lost in a restore") ||
			strings.Contains(body, `"has_authorization_header":true`) {
			t.Fatalf("stream after repair: %d %s", code, body)
		}
		if strings.Contains(s.logs.String(), "push-secret-of-the-receiver") {
			t.Fatal("the push secret was logged")
		}
	})

	t.Run("stream-secrets.key damaged", func(t *testing.T) {
		dir := restoreOnly(t, src, sidecar.DBFile, "signing-key-*.pem")
		os.WriteFile(filepath.Join(dir, ssf.SecretKeyFile), []byte("short"), 0o600)
		s := startServe(t, nil, "--data-dir", dir)
		if _, detail := s.health(t); !strings.Contains(detail, "does not open the push secrets") || !strings.Contains(detail, id) {
			t.Fatalf("healthz: %s", detail)
		}
		code, out, errs := runCLI(t, nil, "repair", "--data-dir", dir, "--drop-lost-secrets")
		if code != exitOK || !strings.Contains(out, "moved the unusable") || !strings.Contains(out, "created a new") {
			t.Fatalf("repair: exit %d\n%s%s", code, out, errs)
		}
		s.waitHealthy(t)
	})

	t.Run("signing keys lost, forgotten offline", func(t *testing.T) {
		dir := restoreOnly(t, src, sidecar.DBFile, ssf.SecretKeyFile)
		code, out, _ := runCLI(t, nil, "repair", "--data-dir", dir, "--json")
		if code != exitFailure || !strings.Contains(out, `"current": true`) {
			t.Fatalf("repair --json: exit %d\n%s", code, out)
		}
		code, out, errs := runCLI(t, nil, "repair", "--data-dir", dir, "--forget-missing-keys")
		if code != exitOK || !strings.Contains(out, "forgot signing key") {
			t.Fatalf("repair: exit %d\n%s%s", code, out, errs)
		}
		s := startServe(t, nil, "--data-dir", dir)
		s.waitHealthy(t)
		if m, _ := filepath.Glob(filepath.Join(dir, "signing-key-*.pem")); len(m) != 1 {
			t.Fatalf("a new signing key is expected: %v", m)
		}
	})
}

// TestSecondSidecarOnHeldDataDir: the second sidecar says another process
// holds the store, names it, and gives the right fix.
func TestSecondSidecarOnHeldDataDir(t *testing.T) {
	dir := t.TempDir()
	first := startServe(t, nil, "--data-dir", dir)
	first.waitHealthy(t)
	second := startServe(t, nil, "--data-dir", dir)
	st, detail := second.health(t)
	if st != "degraded" || !strings.Contains(detail, "is locked by another process") || !strings.Contains(detail, "another sidecar running on this data dir") ||
		!strings.Contains(detail, "two sidecars cannot share a data dir") || strings.Contains(detail, "writable") {
		t.Fatalf("healthz %s: %s", st, detail)
	}
	if !strings.Contains(second.logs.String(), "locked by another process") {
		t.Fatalf("log:\n%s", second.logs.String())
	}
	// The first one stops: the second takes over without a restart.
	first.stop()
	second.waitHealthy(t)
}
