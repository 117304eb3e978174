//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// nobody is the account the sidecar child runs as when the test runs as
// root (root ignores directory modes, so a read-only dir would not be).
const nobodyID = 65534

// roRunner runs the sidecar child as a user the data dir can refuse: as
// nobody, from a copy of the test binary it may execute, when the test is
// root; as the test's own user otherwise.
type roRunner struct {
	t    *testing.T
	base string // a 0755 dir the child may traverse
	bin  string
	cred *syscall.Credential
}

func newRORunner(t *testing.T) *roRunner {
	t.Helper()
	base, err := os.MkdirTemp("", "ssf-readonly-")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	r := &roRunner{t: t, base: base, bin: exe}
	t.Cleanup(func() {
		// Undo any read-only modes first, or the removal fails for a non-root user.
		_ = filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				_ = os.Chmod(p, 0o700)
			}
			return nil
		})
		_ = os.RemoveAll(base)
	})
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		r.cred = &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
		r.bin = filepath.Join(base, "ssf-sidecar.test")
		if err := copyExecutable(exe, r.bin); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

func copyExecutable(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return os.Chmod(dst, 0o755)
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setWritable makes the data dir (and everything in it) writable by the
// child, or read-only for it.
func (r *roRunner) setWritable(dir string, writable bool) {
	r.t.Helper()
	dirMode, fileMode := os.FileMode(0o555), os.FileMode(0o444)
	if writable {
		dirMode, fileMode = 0o700, 0o600
	}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if r.cred != nil {
			if err := os.Chown(p, nobodyID, nobodyID); err != nil {
				return err
			}
		}
		if d.IsDir() {
			return os.Chmod(p, dirMode)
		}
		return os.Chmod(p, fileMode)
	})
	if err != nil {
		r.t.Fatal(err)
	}
}

// start is crashRig.start for a child run by this runner.
func (r *roRunner) start(rig *crashRig) {
	r.t.Helper()
	rig.lives++
	logf, err := os.Create(filepath.Join(rig.logDir, fmt.Sprintf("life-%02d.log", rig.lives)))
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(r.bin, "-test.run=^TestCrashChildProcess$")
	cmd.Env = rig.env
	cmd.Dir = r.base
	cmd.Stdout, cmd.Stderr = logf, logf
	if r.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: r.cred}
	}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait(); logf.Close() }()
	rig.child = c
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-c.done:
			rig.child = nil
			out, _ := os.ReadFile(logf.Name())
			r.t.Fatalf("life %d: the sidecar exited at start: %v\n%s", rig.lives, err, out)
		default:
		}
		if resp, err := rig.client.Get(rig.admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("life %d: not ready within 20 s", rig.lives)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopChild ends the child with SIGTERM and returns whether it exited
// within 15 s (else it is killed) and how.
func stopChild(rig *crashRig) (bool, error) {
	c := rig.child
	if c == nil {
		return true, nil
	}
	rig.child = nil
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-c.done:
		return true, err
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		return false, nil
	}
}

// roGet is one request and its whole answer.
func roGet(t *testing.T, client *http.Client, method, url, token string) (int, http.Header, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// TestReadOnlyDataDir starts the sidecar on a data dir it cannot write —
// a fresh one, and one holding a store from an earlier run — and checks
// that it serves authentik anyway: the proxy forwards unchanged, /readyz is
// ready, /healthz and the logs name the store problem, a tapped action is
// counted as a miss and nothing is acknowledged, the SSF routes answer 503.
// Once the dir is made writable the sidecar recovers in place: discovery
// answers, a receiver creates a stream and gets the SET for a session
// delete, /healthz is healthy. SIGTERM ends it cleanly, degraded or not.
func TestReadOnlyDataDir(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the sidecar as a child process")
	}
	for _, existing := range []bool{false, true} {
		name := "fresh"
		if existing {
			name = "existing-store"
		}
		t.Run(name, func(t *testing.T) { testReadOnlyDataDir(t, existing) })
	}
}

func testReadOnlyDataDir(t *testing.T, existing bool) {
	ak, err := authentiktest.Start(authentiktest.Config{SecretKey: "read-only-authentik-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	u, err := ak.AddUser(authentiktest.UserSpec{Username: "rita", Email: "rita@example.com", Password: "rita-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	// One login gives authentik's event log a newest record, the poller's
	// starting point (with none, /healthz reports the poller as far behind).
	if _, err := ak.Login("rita", "rita-password-1"); err != nil {
		t.Fatal(err)
	}
	runner := newRORunner(t)
	listen, adminListen := listenAddrs(t)
	logDir := t.TempDir()
	rig := &crashRig{t: t, logDir: logDir, front: "http://" + listen, admin: "http://" + adminListen,
		client: &http.Client{Timeout: 10 * time.Second}}
	defer stopChild(rig)
	const pushTok = "read-only-push-receiver-token-0123456789"
	rxFile := filepath.Join(runner.base, "receivers.yaml")
	if err := os.WriteFile(rxFile, []byte("receivers:\n  - name: push-rx\n    tokens: [\""+pushTok+"\"]\n    subject_format: complex\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(runner.base, "data")
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rig.env = append(os.Environ(), crashChildEnv+"=1",
		"SSF_LISTEN="+listen, "SSF_ADMIN_LISTEN="+adminListen, "SSF_UPSTREAM="+ak.URL(),
		"SSF_ISSUER="+rig.front+"/ssf", "SSF_DATA_DIR="+dataDir, "SSF_AUTHENTIK_TOKEN="+ak.AdminToken(),
		"SSF_AUTHENTIK_SECRET_KEY="+ak.SecretKey(), "SSF_ALLOW_PRIVATE_ENDPOINTS=true", "SSF_TRUSTED_PROXIES=127.0.0.1/32",
		"SSF_POLL_INTERVAL=200ms", "SSF_RECEIVERS="+rxFile, "SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=warn", "OTEL_TRACES_EXPORTER=none")
	newStream := func(rx *demoReceiver) string {
		t.Helper()
		code, body, err := rig.ssf(pushTok, http.MethodPost, "/ssf/streams", map[string]any{
			"events_requested": []string{"https://schemas.openid.net/secevent/caep/event-type/session-revoked"},
			"delivery":         map[string]any{"method": "urn:ietf:rfc:8935", "endpoint_url": rx.URL()}})
		if err != nil || code != http.StatusCreated {
			t.Fatalf("create a push stream: %d %s %v", code, body, err)
		}
		var st struct {
			ID string `json:"stream_id"`
		}
		_ = json.Unmarshal(body, &st)
		return st.ID
	}
	deleteSession := func() string {
		t.Helper()
		se, _, err := ak.IssueSession(u.PK)
		if err != nil {
			t.Fatal(err)
		}
		code, _, body := roGet(t, rig.client, http.MethodDelete, rig.front+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", ak.AdminToken())
		if code != http.StatusNoContent {
			t.Fatalf("session delete through the proxy: %d %s", code, body)
		}
		if code, _, _ := roGet(t, rig.client, http.MethodGet, ak.URL()+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", ak.AdminToken()); code != http.StatusNotFound {
			t.Fatalf("authentik still has the session the proxy deleted: %d", code)
		}
		return se.UUID
	}
	waitSET := func(rx *demoReceiver, session string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			for _, s := range rx.Received() {
				if s.Event == "session-revoked" && sessionOf(s.Claims) == session {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no session-revoked SET for %s within 10 s (got %d SETs)", session, len(rx.Received()))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_ = rx.WaitFor(ctx, len(rx.Received())+1, 100*time.Millisecond)
			cancel()
		}
	}

	// An earlier, normal run leaves a store with a stream in it.
	var oldRx *demoReceiver
	if existing {
		runner.setWritable(dataDir, true)
		oldRx, err = startDemoReceiver(rig.front+"/ssf/jwks.json", rig.front+"/ssf")
		if err != nil {
			t.Fatal(err)
		}
		defer oldRx.Close()
		runner.start(rig)
		newStream(oldRx)
		waitSET(oldRx, deleteSession())
		if ok, err := stopChild(rig); !ok || err != nil {
			t.Fatalf("normal run: shutdown %v (in time: %v)", err, ok)
		}
	}
	runner.setWritable(dataDir, false)

	// Degraded: authentik is served, nothing is acknowledged.
	runner.start(rig)
	code, _, body := roGet(t, rig.client, http.MethodGet, rig.admin+"/readyz", "")
	if code != http.StatusOK || !strings.Contains(string(body), "degraded") {
		t.Errorf("/readyz degraded: %d %s", code, body)
	}
	code, _, body = roGet(t, rig.client, http.MethodGet, rig.admin+"/healthz", "")
	var h roHealth
	_ = json.Unmarshal(body, &h)
	if code != http.StatusOK || h.Status != "degraded" || h.Checks["store"].Status != "failing" ||
		!strings.Contains(h.Checks["store"].Error, dataDir) || !strings.Contains(h.Checks["store"].Error, "permission denied") ||
		!strings.Contains(h.Checks["store"].Error, "writable") {
		t.Errorf("/healthz degraded does not name the store problem: %d %s", code, body)
	}
	se, _, err := ak.IssueSession(u.PK)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/api/v3/core/users/me/", "/api/v3/core/authenticated_sessions/" + se.UUID + "/", "/if/flow/default-authentication-flow/"} {
		pc, ph, pb := roGet(t, rig.client, http.MethodGet, rig.front+p, ak.AdminToken())
		dc, dh, db := roGet(t, rig.client, http.MethodGet, ak.URL()+p, ak.AdminToken())
		if pc != dc || !bytes.Equal(pb, db) || ph.Get("Content-Type") != dh.Get("Content-Type") {
			t.Errorf("GET %s through the degraded proxy: %d %q %.200s; authentik: %d %q %.200s", p, pc, ph.Get("Content-Type"), pb, dc, dh.Get("Content-Type"), db)
		}
	}
	if m := rig.metric("ssf_sidecar_tap_misses_total"); m != 0 {
		t.Errorf("misses before any tapped request: %v", m)
	}
	deleteSession()
	if m := rig.metric("ssf_sidecar_tap_misses_total"); m != 1 {
		t.Errorf("a session delete while degraded counted %v misses, want 1", m)
	}
	for _, p := range []string{"/.well-known/ssf-configuration/ssf", "/ssf/jwks.json", "/ssf/streams"} {
		code, hdr, body := roGet(t, rig.client, http.MethodGet, rig.front+p, pushTok)
		var e struct{ Err, Description string }
		_ = json.Unmarshal(body, &e)
		ra, raErr := strconv.Atoi(hdr.Get("Retry-After"))
		if code != http.StatusServiceUnavailable || e.Err == "" || e.Description == "" || raErr != nil || ra < 1 {
			t.Errorf("GET %s degraded: %d Retry-After %q %s", p, code, hdr.Get("Retry-After"), body)
		}
		if strings.Contains(string(body), dataDir) {
			t.Errorf("GET %s degraded tells receivers the data dir: %s", p, body)
		}
	}
	logs, _ := os.ReadFile(filepath.Join(logDir, fmt.Sprintf("life-%02d.log", rig.lives)))
	if !strings.Contains(string(logs), "store unavailable") || !strings.Contains(string(logs), "permission denied") ||
		!strings.Contains(string(logs), "level=ERROR") {
		t.Errorf("the logs do not say why the sidecar is degraded:\n%.3000s", logs)
	}
	wantMisses := 1.0
	if existing {
		// SIGTERM while degraded ends the sidecar cleanly; then again, to recover.
		if ok, err := stopChild(rig); !ok || err != nil {
			t.Fatalf("degraded shutdown: %v (in time: %v)", err, ok)
		}
		runner.start(rig)
		wantMisses = 0
	}

	// The operator fixes the dir: the same process recovers in place.
	runner.setWritable(dataDir, true)
	deadline := time.Now().Add(15 * time.Second)
	for {
		code, _, body = roGet(t, rig.client, http.MethodGet, rig.admin+"/healthz", "")
		h = roHealth{}
		_ = json.Unmarshal(body, &h)
		if code == http.StatusOK && h.Status == "ok" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not healthy within 15 s of the dir becoming writable: %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _, body := roGet(t, rig.client, http.MethodGet, rig.front+"/.well-known/ssf-configuration/ssf", ""); code != http.StatusOK {
		t.Fatalf("discovery after recovery: %d %s", code, body)
	}
	if code, _, body := roGet(t, rig.client, http.MethodGet, rig.admin+"/readyz", ""); code != http.StatusOK || strings.Contains(string(body), "degraded") {
		t.Errorf("/readyz after recovery: %d %s", code, body)
	}
	rx, err := startDemoReceiver(rig.front+"/ssf/jwks.json", rig.front+"/ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	newStream(rx)
	session := deleteSession()
	waitSET(rx, session)
	if existing {
		waitSET(oldRx, session) // the stream from the earlier run survived
	}
	if m := rig.metric("ssf_sidecar_tap_misses_total"); m != wantMisses {
		t.Errorf("misses after recovery: %v, want the %v counted while degraded", m, wantMisses)
	}
	if ok, err := stopChild(rig); !ok || err != nil {
		t.Errorf("shutdown after recovery: %v (in time: %v)", err, ok)
	}
}
