package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// cli runs the binary's entry point and returns exit code and output.
func cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestCLIAgainstRunningSidecar drives every admin subcommand against a
// running sidecar's admin API, in tables and in JSON.
func TestCLIAgainstRunningSidecar(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	admin := []string{"--admin-url", w.AdminURL}

	code, out, errs := cli(t, append([]string{"streams", "list"}, admin...)...)
	if code != exitOK || !strings.Contains(out, id) || !strings.Contains(out, "push-rx") || !strings.Contains(out, "enabled") {
		t.Fatalf("streams list: %d\n%s%s", code, out, errs)
	}
	code, out, _ = cli(t, append([]string{"streams", "list", "--json"}, admin...)...)
	var streams []ssf.Stream
	if code != exitOK || json.Unmarshal([]byte(out), &streams) != nil || len(streams) != 1 || streams[0].ID != id {
		t.Fatalf("streams list --json: %d %s", code, out)
	}
	code, out, _ = cli(t, append([]string{"streams", "pause", id, "--reason", "maintenance"}, admin...)...)
	if code != exitOK || !strings.Contains(out, "paused") {
		t.Fatalf("pause: %d %s", code, out)
	}
	code, out, _ = cli(t, append([]string{"streams", "show", id}, admin...)...)
	if code != exitOK || !strings.Contains(out, "paused (maintenance)") || !strings.Contains(out, "backlog") {
		t.Fatalf("show: %d %s", code, out)
	}
	if code, out, _ = cli(t, append([]string{"streams", "resume", id}, admin...)...); code != exitOK || !strings.Contains(out, "enabled") {
		t.Fatalf("resume: %d %s", code, out)
	}
	if code, _, _ = cli(t, append([]string{"streams", "verify", id, "--state", "cli-probe"}, admin...)...); code != exitOK {
		t.Fatalf("verify: %d", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !hasState(w.Receiver.Received(), "cli-probe") {
		if time.Now().After(deadline) {
			t.Fatal("the verification SET asked for by the CLI never arrived")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code, out, _ = cli(t, append([]string{"outbox", "stats"}, admin...)...); code != exitOK || !strings.Contains(out, id) {
		t.Fatalf("outbox stats: %d %s", code, out)
	}
	if code, out, _ = cli(t, append([]string{"outbox", "dlq", id}, admin...)...); code != exitOK || !strings.Contains(out, "JTI") {
		t.Fatalf("outbox dlq: %d %s", code, out)
	}
	if code, out, _ = cli(t, append([]string{"outbox", "replay", id, "--all"}, admin...)...); code != exitOK || !strings.Contains(out, "replayed 0") {
		t.Fatalf("outbox replay: %d %s", code, out)
	}
	code, out, _ = cli(t, append([]string{"keys", "list"}, admin...)...)
	if code != exitOK || !strings.Contains(out, "RS256") {
		t.Fatalf("keys list: %d %s", code, out)
	}
	before := w.Sidecar.Keys().CurrentKID()
	if code, out, _ = cli(t, append([]string{"keys", "rotate"}, admin...)...); code != exitOK || w.Sidecar.Keys().CurrentKID() == before {
		t.Fatalf("keys rotate: %d %s", code, out)
	}
	// Exit codes that mean something.
	if code, _, _ = cli(t, append([]string{"streams", "show", "no-such-stream"}, admin...)...); code != exitNotFound {
		t.Errorf("unknown stream: exit %d, want %d", code, exitNotFound)
	}
	if code, _, _ = cli(t, "streams", "list", "--admin-url", "http://127.0.0.1:1"); code != exitNoServer {
		t.Errorf("unreachable admin API: exit %d, want %d", code, exitNoServer)
	}
	if code, _, _ = cli(t, "streams", "frobnicate"); code != exitUsage {
		t.Errorf("unknown verb: exit %d, want %d", code, exitUsage)
	}
	if code, _, _ = cli(t, append([]string{"streams", "delete", id}, admin...)...); code != exitOK {
		t.Fatalf("delete: %d", code)
	}
	if code, _, _ = cli(t, append([]string{"streams", "show", id}, admin...)...); code != exitNotFound {
		t.Errorf("deleted stream still shown")
	}
}

func hasState(sets []receivedSET, state string) bool {
	for _, s := range sets {
		if s.Event == "verification" && eventBody(s)["state"] == state {
			return true
		}
	}
	return false
}

func TestCLIRefusedWithoutToken(t *testing.T) {
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Mutate: func(c *sidecar.Config) { c.AdminToken = "the-admin-token-123" }})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if code, _, _ := cli(t, "streams", "list", "--admin-url", w.AdminURL, "--admin-token", "wrong"); code != exitAuth {
		t.Errorf("wrong token: exit %d, want %d", code, exitAuth)
	}
	if code, _, errs := cli(t, "streams", "list", "--admin-url", w.AdminURL, "--admin-token", "the-admin-token-123"); code != exitOK {
		t.Errorf("right token: exit %d %s", code, errs)
	}
}

// TestReceiversCheckProbe validates a receivers file and probes the push
// endpoints of its receivers' streams through the running sidecar: an
// endpoint answering 202 passes, one answering 500 fails the command.
func TestReceiversCheckProbe(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "receivers.yaml")
	os.WriteFile(file, []byte("receivers:\n  - name: push-rx\n    tokens: [\""+demoReceiverToken+"\"]\n"), 0o600)
	code, out, errs := cli(t, "receivers", "check", "--receivers", file, "--probe", "--admin-url", w.AdminURL)
	if code != exitOK || !strings.Contains(out, "delivered") || !strings.Contains(out, "202") {
		t.Fatalf("probe of a healthy endpoint: %d\n%s%s", code, out, errs)
	}

	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusInternalServerError) }))
	defer broken.Close()
	status, body := w.call(t, demoReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery": map[string]any{"method": ssf.MethodPushURN, "endpoint_url": broken.URL}, "events_requested": []string{ssf.EventSessionRevoked}})
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, body)
	}
	code, out, _ = cli(t, "receivers", "check", "--receivers", file, "--probe", "--timeout", "5s", "--admin-url", w.AdminURL)
	if code == exitOK || !strings.Contains(out, "500") {
		t.Fatalf("probe of a failing endpoint: exit %d\n%s", code, out)
	}

	// An invalid file is a configuration error, without probing.
	os.WriteFile(file, []byte("receivers:\n  - name: a\n    subject_format: fax\n"), 0o600)
	if code, _, errs = cli(t, "receivers", "check", file); code != exitConfig || !strings.Contains(errs, "fax") {
		t.Fatalf("invalid file: exit %d %s", code, errs)
	}
}

// TestCLIOnStoppedDataDir reads a stopped sidecar's data dir directly, and
// refuses to while the sidecar holds it or for commands that issue SETs.
func TestCLIOnStoppedDataDir(t *testing.T) {
	dir := t.TempDir()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: dir, Receivers: systemReceivers()})
	if err != nil {
		t.Fatal(err)
	}
	id, err := w.CreatePushStream(context.Background(), []string{ssf.EventSessionRevoked})
	if err != nil {
		w.Close()
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(context.Background(), 1, 10*time.Second); err != nil {
		w.Close()
		t.Fatal(err)
	}
	t.Setenv("SSF_ISSUER", w.Front+"/ssf")
	// While the sidecar runs, the file is held: the CLI says to use the API.
	code, _, errs := cli(t, "streams", "list", "--data-dir", dir)
	if code == exitOK || !strings.Contains(errs, "still running") {
		t.Errorf("opening a held data dir: exit %d %s", code, errs)
	}
	w.Close()

	code, out, errs := cli(t, "streams", "list", "--data-dir", dir)
	if code != exitOK || !strings.Contains(out, id) {
		t.Fatalf("offline streams list: %d\n%s%s", code, out, errs)
	}
	code, out, _ = cli(t, "outbox", "stats", "--json", "--data-dir", dir)
	if code != exitOK || !strings.Contains(out, `"delivered": 1`) {
		t.Fatalf("offline outbox stats: %d\n%s", code, out)
	}
	if code, out, _ = cli(t, "keys", "list", "--data-dir", dir); code != exitOK || !strings.Contains(out, "RS256") {
		t.Fatalf("offline keys list: %d %s", code, out)
	}
	if code, _, errs = cli(t, "streams", "pause", id, "--data-dir", dir); code != exitUsage || !strings.Contains(errs, "running sidecar") {
		t.Errorf("offline pause must be refused: exit %d %s", code, errs)
	}
	if code, _, _ = cli(t, "streams", "list", "--data-dir", t.TempDir()); code != exitNotFound {
		t.Errorf("empty data dir: exit %d, want %d", code, exitNotFound)
	}
}
