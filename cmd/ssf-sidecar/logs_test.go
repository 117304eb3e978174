package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestLogsHoldNoSecrets captures every log record (JSON, debug level) of a
// scripted run plus streams with an authorization_header, one of them
// failing, and a logout whose session cookie is known; none of the planted
// secrets, cookies, tokens or SET bodies may appear. Records of requests
// and deliveries carry trace and span ids.
func TestLogsHoldNoSecrets(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := testTracerProvider(t, rec)
	buf := &syncBuffer{}
	logger := newLogger(buf, "json", "debug")
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Logger: logger, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	if _, err := runDemoScript(ctx, w, io.Discard, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	const authz = "Bearer planted-authorization-header-4f1e9c"
	const failingAuthz = "Bearer planted-failing-header-77aa01"
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "receiver down", http.StatusServiceUnavailable)
	}))
	defer failing.Close()
	n := len(w.Receiver.Received())
	for _, d := range []map[string]any{
		{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL(), "authorization_header": authz},
		{"method": ssf.MethodPushURN, "endpoint_url": failing.URL + "/events", "authorization_header": failingAuthz},
	} {
		if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{"delivery": d,
			"events_requested": []string{ssf.EventSessionRevoked}}, nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.SSFCall(ctx, http.MethodGet, "/ssf/streams", nil, nil); err != nil {
		t.Fatal(err)
	}
	// A logout whose cookie the test knows.
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "carol", Email: "carol@example.com", Password: "planted-password-carol-9"}); err != nil {
		t.Fatal(err)
	}
	cookie := w.logInAndOut(t, "carol", "planted-password-carol-9")
	if len(cookie) < 16 {
		t.Fatalf("session cookie %q", cookie)
	}
	// verification of the new push stream, then the logout on both push
	// streams that reach the receiver
	if err := w.Receiver.WaitFor(ctx, n+3, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// Wait until the failing stream's attempts were logged.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), `"outcome":"retry"`) {
		if time.Now().After(deadline) {
			t.Fatal("no failed push attempt logged")
		}
		time.Sleep(10 * time.Millisecond)
	}
	w.Close()

	logs := buf.String()
	secrets := map[string]string{
		"receiver token":          demoReceiverToken,
		"authentik admin token":   w.AK.AdminToken(),
		"authentik secret key":    w.AK.SecretKey(),
		"authorization_header":    strings.TrimPrefix(authz, "Bearer "),
		"failing stream's header": strings.TrimPrefix(failingAuthz, "Bearer "),
		"session cookie":          cookie,
		"password":                "planted-password-carol-9",
		"script password":         "alice-password-2",
	}
	for _, r := range w.Receiver.Received() {
		secrets["SET "+r.JTI] = r.Compact
		parts := strings.Split(r.Compact, ".")
		if len(parts) == 3 {
			secrets["SET body "+r.JTI] = parts[1]
			secrets["SET signature "+r.JTI] = parts[2]
		}
	}
	for what, s := range secrets {
		if s == "" {
			t.Fatalf("%s is empty: the test would prove nothing", what)
		}
		if strings.Contains(logs, s) {
			t.Errorf("the logs contain the %s", what)
		}
	}
	// Every line is JSON; push attempts and tap signals carry trace ids.
	var attempts, signals, traced int
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r map[string]any
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		if k := duplicateKey(sc.Bytes()); k != "" {
			t.Errorf("a log record has the key %q twice (strict JSON pipelines reject it): %s", k, sc.Text())
		}
		switch r["msg"] {
		case "push attempt":
			attempts++
			if r["stream_id"] == "" || r["jti"] == "" {
				t.Errorf("push attempt without stream or jti: %v", r)
			}
		case "tap: signal":
			signals++
		default:
			continue
		}
		if id, _ := r["trace_id"].(string); len(id) == 32 {
			if sid, _ := r["span_id"].(string); len(sid) == 16 {
				traced++
			}
		}
	}
	if attempts == 0 || signals == 0 || traced != attempts+signals {
		t.Errorf("%d push attempts and %d signals logged, %d with trace and span ids", attempts, signals, traced)
	}
}

// duplicateKey returns a key that occurs twice at the top level of the JSON
// object in line, or "".
func duplicateKey(line []byte) string {
	dec := json.NewDecoder(bytes.NewReader(line))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return ""
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return ""
		}
		k, _ := t.(string)
		if seen[k] {
			return k
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return ""
		}
	}
	return ""
}
