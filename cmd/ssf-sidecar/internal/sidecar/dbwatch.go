package sidecar

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
)

// dbWatch watches a database that replicas share while the sidecar runs:
// it pings every interval, and while the database does not answer, the SSF
// routes answer 503 with Retry-After and /healthz says so. The proxy keeps
// serving authentik throughout; tapped requests whose journal cannot be
// written are counted as misses by the tap. It recovers in place.
type dbWatch struct {
	ping  func(context.Context) error
	every time.Duration
	log   *slog.Logger
	down  atomic.Pointer[error] // nil: up
}

func newDBWatch(ping func(context.Context) error, every time.Duration, log *slog.Logger) *dbWatch {
	return &dbWatch{ping: ping, every: every, log: log}
}

// err is why the database is considered down, or nil.
func (w *dbWatch) err() error {
	if p := w.down.Load(); p != nil {
		return *p
	}
	return nil
}

// check pings once and records the outcome, logging changes.
func (w *dbWatch) check(ctx context.Context) {
	pctx, cancel := context.WithTimeout(ctx, max(w.every, time.Second))
	err := w.ping(pctx)
	cancel()
	if ctx.Err() != nil {
		return
	}
	was := w.err()
	if err != nil {
		err = errors.New("database unreachable: " + err.Error())
		w.down.Store(&err)
		if was == nil {
			w.log.Error("database unreachable: SSF routes answer 503 until it is back; authentik is still served", slog.Any("error", err))
		}
		return
	}
	w.down.Store(nil)
	if was != nil {
		w.log.Warn("database reachable again: SSF routes answer again")
	}
}

// run checks every interval until ctx ends.
func (w *dbWatch) run(ctx context.Context) error {
	t := time.NewTicker(w.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			w.check(ctx)
		}
	}
}

// guard answers 503 in place of h while the database is down.
func (w *dbWatch) guard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if w.err() != nil {
			serveUnavailable(rw, r, w.every)
			return
		}
		h.ServeHTTP(rw, r)
	})
}
