package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"time"
)

// offlineCommands may run directly on a stopped sidecar's data dir: they read,
// or change only what the outbox holds. Anything that would issue a SET
// (pause, resume, verify, delete, key rotation) needs the running sidecar,
// whose issuer and receivers are known.
var offlineCommands = map[string]bool{
	"streams list": true, "streams show": true,
	"outbox stats": true, "outbox dlq": true, "outbox replay": true, "outbox purge": true,
	"keys list": true,
}

// handlerTransport serves requests with an in-process handler, as a
// loopback peer.
type handlerTransport struct{ h http.Handler }

func (t handlerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.RemoteAddr = "127.0.0.1:1"
	rec := httptest.NewRecorder()
	t.h.ServeHTTP(rec, r)
	return rec.Result(), nil
}

// offlineClient opens a stopped sidecar's data dir and returns an admin
// client served in process by the same admin API, and a function that
// closes the store.
func offlineClient(ctx context.Context, command, dataDir string) (*adminClient, func(), error) {
	if !offlineCommands[command] {
		return nil, nil, usageError{fmt.Sprintf("%s needs the running sidecar (it issues a SET or changes streams): use --admin-url instead of --data-dir", command)}
	}
	db := filepath.Join(dataDir, "ssf-sidecar.db")
	if _, err := os.Stat(db); errors.Is(err, fs.ErrNotExist) {
		return nil, nil, exitError{exitNotFound, fmt.Errorf("no sidecar data in %s (expected %s)", dataDir, db)}
	}
	cfg, _, err := resolve(map[string]string{}, os.Getenv)
	if err != nil {
		return nil, nil, exitError{exitConfig, err}
	}
	cfg.DataDir = dataDir
	if cfg.Upstream == "" {
		cfg.Upstream = "http://127.0.0.1:1" // never contacted: nothing runs
	}
	cfg.AdminToken = ""
	// Nothing is delivered offline: streams whose endpoints the service was
	// allowed to use must load even without the service's flags.
	cfg.AllowPrivateEndpoints = true
	openCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	a, err := sidecar.Build(openCtx, cfg.Config, nil, slog.New(slog.DiscardHandler), sidecarOptions()...)
	if err != nil {
		return nil, nil, exitError{exitFailure, fmt.Errorf("cannot open %s (is the sidecar still running? then use the admin API): %w", dataDir, err)}
	}
	admin := a.ServeInProcess()
	closeFn := func() { _ = a.Close(ctx) }
	return &adminClient{base: "http://127.0.0.1", http: &http.Client{Transport: handlerTransport{admin}}}, closeFn, nil
}
