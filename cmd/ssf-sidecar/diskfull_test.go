//go:build linux

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestDiskFull runs the sidecar as a child process whose files may not grow
// past a small size (RLIMIT_FSIZE: what a full disk looks like to the
// process) and drives session deletes through it until the store cannot
// take more. The proxy keeps serving authentik, /readyz stays ready,
// /healthz and the logs say why, the misses are counted, and every SET a
// receiver got is for a delete authentik completed.
func TestDiskFull(t *testing.T) {
	ak, err := authentiktest.Start(authentiktest.Config{SecretKey: "disk-full-authentik-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	u, err := ak.AddUser(authentiktest.UserSpec{Username: "gina", Email: "gina@example.com", Password: "gina-password-1"})
	if err != nil {
		t.Fatal(err)
	}
	listen, adminListen := listenAddrs(t)
	dir := t.TempDir()
	rig := &crashRig{t: t, logDir: dir, front: "http://" + listen, admin: "http://" + adminListen,
		client: &http.Client{Timeout: 10 * time.Second}}
	const pushTok = "disk-push-receiver-token-0123456789"
	rxFile := filepath.Join(dir, "receivers.yaml")
	if err := os.WriteFile(rxFile, []byte("receivers:\n  - name: push-rx\n    tokens: [\""+pushTok+"\"]\n    subject_format: complex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rx, err := startDemoReceiver(rig.front+"/ssf/jwks.json", rig.front+"/ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	const limit = 256 << 10
	rig.env = append(os.Environ(), crashChildEnv+"=1", fmt.Sprintf("SSF_CRASH_TEST_FSIZE=%d", limit),
		"SSF_LISTEN="+listen, "SSF_ADMIN_LISTEN="+adminListen, "SSF_UPSTREAM="+ak.URL(),
		"SSF_ISSUER="+rig.front+"/ssf", "SSF_DATA_DIR="+filepath.Join(dir, "data"), "SSF_AUTHENTIK_TOKEN="+ak.AdminToken(),
		"SSF_AUTHENTIK_SECRET_KEY="+ak.SecretKey(), "SSF_ALLOW_PRIVATE_ENDPOINTS=true", "SSF_TRUSTED_PROXIES=127.0.0.1/32",
		"SSF_POLL_INTERVAL=200ms", "SSF_RECEIVERS="+rxFile, "SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=warn", "OTEL_TRACES_EXPORTER=none")
	rig.start()
	defer rig.stop()
	code, body, err := rig.ssf(pushTok, http.MethodPost, "/ssf/streams", map[string]any{
		"events_requested": []string{"https://schemas.openid.net/secevent/caep/event-type/session-revoked"},
		"delivery":         map[string]any{"method": "urn:ietf:rfc:8935", "endpoint_url": rx.URL()}})
	if err != nil || code != http.StatusCreated {
		t.Fatalf("push stream: %d %s %v", code, body, err)
	}
	deleted := map[string]bool{}
	full := false
	for i := 0; i < 3000 && !full; i++ {
		se, _, err := ak.IssueSession(u.PK)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest(http.MethodDelete, rig.front+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", nil)
		req.Header.Set("Authorization", "Bearer "+ak.AdminToken())
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.1.%d.%d", i>>8&255, i&255))
		resp, err := rig.client.Do(req)
		if err != nil {
			t.Fatalf("delete %d through the proxy: %v", i, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusNoContent {
			t.Fatalf("delete %d: the proxy answered %d while the disk filled", i, resp.StatusCode)
		}
		deleted[se.UUID] = true
		if i%50 == 49 && rig.misses() > 0 {
			full = true
		}
	}
	if !full {
		t.Fatalf("no miss counted after %d deletes with files limited to %d bytes", len(deleted), limit)
	}
	// Still serving authentik and ready; health says why.
	if resp, err := rig.client.Get(rig.front + "/if/flow/default-authentication-flow/"); err != nil || resp.StatusCode >= 500 {
		t.Errorf("proxy with a full disk: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err := rig.client.Get(rig.admin + "/readyz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz with a full disk: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	resp, err = rig.client.Get(rig.admin + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var health struct {
		Status string `json:"status"`
		Checks map[string]struct{ Status, Error string }
	}
	_ = json.Unmarshal(hb, &health)
	if health.Checks["store"].Status != "failing" || !strings.Contains(health.Checks["store"].Error, "too large") {
		t.Errorf("/healthz with a full disk does not say why: %s", hb)
	}
	// Nothing acknowledged that did not happen.
	for _, s := range rx.Received() {
		if s.Event == "session-revoked" && !deleted[sessionOf(s.Claims)] {
			t.Errorf("SET for a session that was not deleted: %s", sessionOf(s.Claims))
		}
	}
	if !rig.stop() {
		t.Error("the sidecar did not shut down within 15 s of SIGTERM with a full disk")
	}
	logs, _ := os.ReadFile(filepath.Join(dir, "life-01.log"))
	if !strings.Contains(string(logs), "file too large") {
		t.Errorf("the logs do not say why:\n%.2000s", logs)
	}
	t.Logf("%d deletes, %d SETs delivered", len(deleted), len(rx.Received()))
}
