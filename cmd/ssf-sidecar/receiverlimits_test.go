package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
)

// TestMinVerificationIntervalSetting: --min-verification-interval and
// SSF_MIN_VERIFICATION_INTERVAL set the interval (default 5s), outside 1s
// to 2m it is refused, and the value reaches the stream configuration a
// receiver reads.
func TestMinVerificationIntervalSetting(t *testing.T) {
	c, _, err := resolveArgs(t, nil, nil)
	if err != nil || c.MinVerification != 5*time.Second {
		t.Fatalf("default %v %v", c.MinVerification, err)
	}
	c, _, err = resolveArgs(t, nil, map[string]string{"SSF_MIN_VERIFICATION_INTERVAL": "3s"})
	if err != nil || c.MinVerification != 3*time.Second {
		t.Fatalf("env %v %v", c.MinVerification, err)
	}
	c, _, err = resolveArgs(t, []string{"--min-verification-interval", "7s"}, map[string]string{"SSF_MIN_VERIFICATION_INTERVAL": "3s"})
	if err != nil || c.MinVerification != 7*time.Second {
		t.Fatalf("flag %v %v", c.MinVerification, err)
	}
	for _, bad := range []string{"500ms", "3m"} {
		c, _, err := resolveArgs(t, []string{"--min-verification-interval", bad, "--upstream", "http://ak:9000"}, nil)
		if err == nil {
			err = c.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), "--min-verification-interval") {
			t.Errorf("%s: %v", bad, err)
		}
	}

	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
		Mutate: func(c *sidecar.Config) { c.MinVerification = 3 * time.Second; c.AuthentikToken = "" }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	code, body := w.call(t, pollReceiverToken, "POST", "/ssf/streams", map[string]any{})
	var s struct {
		StreamID                string `json:"stream_id"`
		MinVerificationInterval int    `json:"min_verification_interval"`
	}
	if err := json.Unmarshal(body, &s); err != nil || code != 201 || s.MinVerificationInterval != 3 {
		t.Fatalf("create: %d %s", code, body)
	}
	for i, want := range []int{204, 429} {
		if code, body := w.call(t, pollReceiverToken, "POST", "/ssf/verify", map[string]any{"stream_id": s.StreamID}); code != want {
			t.Errorf("verification %d: %d %s, want %d", i+1, code, body, want)
		}
	}
}

// TestReceiversCheckMaxStreams: `receivers check` shows each receiver's
// max_streams and refuses one below 1.
func TestReceiversCheckMaxStreams(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("receivers:\n  - name: single\n    tokens: [single-token-0123456789]\n    max_streams: 1\n  - name: plain\n    tokens: [plain-token-0123456789]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"receivers", "check", good}, &out, &errb); code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "MAX STREAMS") || !strings.Contains(out.String(), "default") {
		t.Errorf("output:\n%s", out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"receivers", "check", "--json", good}, &out, &errb); code != exitOK {
		t.Fatalf("json exit %d: %s", code, errb.String())
	}
	var rows []map[string]any
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 2 || rows[0]["max_streams"] != float64(1) {
		t.Errorf("json %s %v", out.String(), err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("receivers:\n  - name: none\n    tokens: [none-token-0123456789]\n    max_streams: 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	errb.Reset()
	code := run(context.Background(), []string{"receivers", "check", bad}, &out, &errb)
	if code != exitConfig || !strings.Contains(out.String()+errb.String(), `receiver "none": max_streams 0`) {
		t.Errorf("max_streams 0: exit %d: %s%s", code, out.String(), errb.String())
	}
}
