package sidecar

import (
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
)

// TestOTelErrorsGoToTheStructuredLog: the SDK's errors reach the JSON log
// as records of their own, at most one per interval with the rest counted,
// and without a URL's user information.
func TestOTelErrorsGoToTheStructuredLog(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewJSONHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return buf.Write(p)
	}), nil))
	h := newOTelErrorLog(log, 10*time.Second)
	now := time.Date(2026, 12, 2, 1, 0, 0, 0, time.UTC)
	h.now = func() time.Time { return now }
	otel.SetErrorHandler(h)
	for range 3 {
		otel.Handle(errors.New(`traces export: Post "http://user:pw-SECRET@127.0.0.1:4999/v1/traces": connection refused`))
	}
	now = now.Add(11 * time.Second)
	otel.Handle(errors.New("traces export: context deadline exceeded"))
	mu.Lock()
	out := buf.String()
	mu.Unlock()
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d records, want 2:\n%s", len(lines), out)
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first["msg"] != "tracing: export failed" || first["suppressed"] != float64(0) || second["suppressed"] != float64(2) {
		t.Errorf("records %v / %v", first, second)
	}
	if strings.Contains(out, "pw-SECRET") || !strings.Contains(out, "//***@127.0.0.1") {
		t.Errorf("user information not redacted: %s", out)
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
