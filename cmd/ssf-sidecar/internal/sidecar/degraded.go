package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// A sidecar whose data dir or store cannot be opened (read-only file
// system, wrong owner, ...) still starts: it is the only way in to
// authentik. While degraded it proxies everything unchanged, counts every
// tapped request as a miss (nothing is acknowledged that is not stored),
// answers the SSF routes 503, reports the store on /healthz, and keeps
// trying to open the store: 1 s doubling to 30 s, sooner (but at most once
// a second) when someone looks at /healthz, so an operator who fixed the
// disk sees the result at once. Once it opens, the full sidecar is built
// and swapped in behind the running listeners: no listener restarts, no
// dropped connections.

// Retry policy for opening the store while degraded.
const (
	degradedFirstRetry = time.Second
	degradedMaxRetry   = 30 * time.Second
	// degradedMinGap spaces attempts that /healthz asks for early.
	degradedMinGap = time.Second
	// degradedMissLogEvery bounds the "tapped request not observed" warning.
	degradedMissLogEvery = time.Minute
)

// degraded is the state of a sidecar started without its store.
type degraded struct {
	front     *Sidecar
	receivers []ssf.Receiver
	up        *url.URL

	// ssf, admin and observer are what the running proxy and admin server
	// use; recovery points them at the full sidecar.
	ssf      *swapHandler
	admin    *swapHandler
	observer *swapObserver

	// live is the full sidecar once the store opened (nil before).
	live atomic.Pointer[Sidecar]
	// cause is the latest reason the store could not be opened.
	cause atomic.Pointer[storeError]
	// retryIn is the current wait between attempts (for Retry-After).
	retryIn atomic.Int64
	since   time.Time
	misses  atomic.Uint64
	missLog *logLimiter
	kick    chan struct{}

	first, max, minGap time.Duration
	after              func(time.Duration) <-chan time.Time
}

// newDegraded builds the degraded front: the swappable SSF handler, admin
// handler and observer, and the route matcher that tells which requests
// would have been observed.
func newDegraded(a *Sidecar, receivers []ssf.Receiver, cause *storeError) (*degraded, error) {
	up, _ := url.Parse(a.cfg.Upstream)
	// A tap that is never run, over a store that refuses everything: only
	// its Match (method and path) is used.
	matcher, err := tap.New(tap.Config{Upstream: up, KV: unavailableKV{}, Publisher: tap.PublisherFunc(
		func(context.Context, tap.Signal) error { return errStoreUnavailable })})
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	d := &degraded{front: a, receivers: receivers, up: up, since: a.clock(),
		kick: make(chan struct{}, 1), first: degradedFirstRetry, max: degradedMaxRetry, minGap: degradedMinGap,
		after:   time.After,
		missLog: &logLimiter{every: degradedMissLogEvery, clock: a.clock}}
	d.cause.Store(cause)
	d.retryIn.Store(int64(d.first))
	d.ssf = newSwapHandler(http.HandlerFunc(d.serveSSF))
	d.admin = newSwapHandler(d.adminHandler())
	d.observer = newSwapObserver(storeDownObserver{match: matcher.Match, missed: d.missed})
	return d, nil
}

// errStoreUnavailable is what the degraded sidecar's placeholders answer.
var errStoreUnavailable = errors.New("the store is unavailable")

// unavailableKV is the matcher tap's store: empty, and refusing writes.
type unavailableKV struct{}

func (unavailableKV) Commit(context.Context, []tap.Mark) error { return errStoreUnavailable }
func (unavailableKV) Get(string, []byte) ([]byte, error)       { return nil, errStoreUnavailable }
func (unavailableKV) Scan(string, []byte, func(k, v []byte) error) error {
	return nil
}

// isDiskError reports whether err is the file system refusing: the kind of
// failure that degrades the start instead of failing it.
func isDiskError(err error) bool {
	return errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) ||
		errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EIO)
}

// detail is the /healthz store detail: what failed, and what to do.
func (d *degraded) detail() string {
	c := d.cause.Load()
	return fmt.Sprintf("%v (since %s): no SETs are issued and tapped requests are counted as misses. "+
		"To fix: %s. The sidecar retries on its own (next within %s) and recovers without a restart",
		c, d.since.UTC().Format(time.RFC3339), storeFix(c), time.Duration(d.retryIn.Load()))
}

// logStart says once, at error level, why the sidecar runs degraded.
func (d *degraded) logStart() {
	c := d.cause.Load()
	d.front.logger.Error("store unavailable: serving authentik WITHOUT observing it until the store opens",
		slog.String("data_dir", c.Dir), slog.Any("error", c.Err),
		slog.Int("uid", os.Geteuid()),
		slog.String("fix", storeFix(c)))
}

// missed counts one tapped request that went by unobserved.
func (d *degraded) missed(r *http.Request) {
	d.misses.Add(1)
	if n, ok := d.missLog.allow(); ok {
		d.front.logger.Warn("tapped request not observed: the store is unavailable",
			slog.String("reason", "store_unavailable"), slog.String("request_id", r.Header.Get("X-Request-Id")),
			slog.String("method", r.Method), slog.String("path", r.URL.Path), slog.Uint64("suppressed", n))
	}
}

// tapStats feeds /metrics: the live tap's statistics plus the misses
// counted while degraded, so the counter never goes back.
func (d *degraded) tapStats() tap.Stats {
	var s tap.Stats
	if l := d.live.Load(); l != nil {
		s = l.tap.Stats()
	}
	s.Misses += d.misses.Load()
	return s
}

// limitFailures feeds /metrics: nothing until the store is open.
func (d *degraded) limitFailures() int64 {
	if l := d.live.Load(); l != nil {
		return l.tx.ManagementLimitFailures()
	}
	return 0
}

// storeHealthy feeds /metrics: unavailable until the store is open.
func (d *degraded) storeHealthy() error {
	if l := d.live.Load(); l != nil {
		return l.store.Healthy()
	}
	return errStoreUnavailable
}

// signingKeys feeds /metrics: none until the store (and with it the
// generated keys) is open.
func (d *degraded) signingKeys() []ssf.KeyInfo {
	if l := d.live.Load(); l != nil {
		return l.keys.List()
	}
	return nil
}

// outboxStats feeds /metrics: nothing until the store is open.
func (d *degraded) outboxStats(ctx context.Context) ([]outbox.StreamStats, error) {
	if l := d.live.Load(); l != nil {
		return l.outbox.AllStats(ctx)
	}
	return nil, nil
}

// askRetry asks for an attempt sooner than the backoff (an operator or a
// probe looking at /healthz after fixing the disk).
func (d *degraded) askRetry() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// run retries opening the store with backoff until it opens or ctx ends.
// When it opens, start runs the new core's components and the running
// proxy and admin server are switched over to it.
func (d *degraded) run(ctx context.Context, start func(live *Sidecar)) {
	delay := d.first
	for {
		d.retryIn.Store(int64(delay))
		if !d.wait(ctx, delay) {
			return
		}
		live := &Sidecar{cfg: d.front.cfg, logger: d.front.logger, proxyReady: d.front.proxyReady, clock: d.front.clock,
			httpClient: d.front.httpClient, tracing: d.front.tracing, metrics: d.front.metrics,
			deliveries: d.front.deliveries, parent: d.front, live: d.front.live, reloadable: d.front.reloadable,
			version: d.front.version, sealKeys: d.front.sealKeys}
		err := live.buildCore(ctx, d.front.live.Receivers())
		if err == nil {
			if ctx.Err() != nil {
				live.store.Close()
				return
			}
			start(live)
			d.live.Store(live)
			d.ssf.Store(live.ssfHandler())
			d.observer.Store(live.tap)
			d.admin.Store(live.adminHandler)
			d.front.logger.Warn("store opened: the sidecar is fully up again (SSF routes answer, tapped requests are observed)",
				slog.String("data_dir", d.front.cfg.DataDir), slog.Duration("degraded_for", d.front.clock().Sub(d.since)),
				slog.Uint64("missed", d.misses.Load()))
			return
		}
		var se *storeError
		if !errors.As(err, &se) {
			se = &storeError{Dir: d.front.cfg.DataDir, Err: err}
		}
		if prev := d.cause.Swap(se); prev == nil || prev.Error() != se.Error() {
			d.front.logger.Error("store still unavailable", slog.String("data_dir", se.Dir), slog.Any("error", se.Err), slog.String("fix", storeFix(se)))
		} else {
			d.front.logger.Debug("store still unavailable", slog.String("data_dir", se.Dir), slog.Any("error", se.Err))
		}
		delay = min(delay*2, d.max)
	}
}

// wait sleeps delay, or less when a retry was asked for, but at least
// minGap; false when ctx ended.
func (d *degraded) wait(ctx context.Context, delay time.Duration) bool {
	gap := min(d.minGap, delay)
	select {
	case <-ctx.Done():
		return false
	case <-d.after(gap):
	}
	if delay <= gap {
		return true
	}
	select {
	case <-ctx.Done():
		return false
	case <-d.after(delay - gap):
	case <-d.kick:
	}
	return true
}

// serveSSF answers every SSF route while the store is unavailable: 503 in
// the transmitter's error shape, with Retry-After. The reason stays on the
// admin side: receivers are told only to come back.
func (d *degraded) serveSSF(w http.ResponseWriter, r *http.Request) {
	serveUnavailable(w, r, time.Duration(d.retryIn.Load()))
}

// serveUnavailable is the SSF answer while the store cannot be used: 503
// with Retry-After (whole seconds, at least 1).
func serveUnavailable(w http.ResponseWriter, r *http.Request, retry time.Duration) {
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	secs := int((retry + time.Second - 1) / time.Second)
	h.Set("Retry-After", strconv.Itoa(max(secs, 1)))
	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, map[string]string{
		"err": "temporarily_unavailable", "description": "the transmitter is starting up or its store is unavailable; retry later"})
}

// adminHandler serves the admin listener while degraded: ready (the
// listeners are up and authentik is reachable through them), a /healthz
// of status "degraded" (200, as ever) with the store's detail, metrics, and
// 503 for the admin API.
func (d *degraded) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := d.front.ready(); err != nil {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "not ready", "error": err.Error()})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "mode": "degraded",
			"detail": "proxying authentik; the store is unavailable (see /healthz)"})
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		d.askRetry()
		type result struct {
			Status string `json:"status"`
			Error  string `json:"error,omitempty"`
		}
		checks := map[string]result{"store": {Status: "failing", Error: d.detail()}}
		ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
		defer cancel()
		if err := upstreamHealth(ctx, d.front.httpClient, d.up); err != nil {
			checks["upstream"] = result{Status: "failing", Error: err.Error()}
		} else {
			checks["upstream"] = result{Status: "ok"}
		}
		// 200, as the full sidecar's /healthz: the process is alive and
		// serving authentik, and a liveness probe restarting it would take
		// the only way in to authentik down. The body says what is wrong.
		writeJSON(w, http.StatusOK, struct {
			Status string            `json:"status"`
			Mode   string            `json:"mode"`
			Checks map[string]result `json:"checks"`
		}{Status: "degraded", Mode: "degraded", Checks: checks})
	})
	mux.Handle("GET /metrics", d.front.metrics)
	mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "store_unavailable",
			"description": "the store is unavailable, so the admin API is too; see /healthz"})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// storeDownObserver stands in for the tap while the store is unavailable:
// it matches what the tap matches and counts each authenticated tapped
// request as missed, acknowledging nothing.
type storeDownObserver struct {
	match  func(method, host, path string) bool
	missed func(*http.Request)
}

func (o storeDownObserver) Match(method, host, path string) bool { return o.match(method, host, path) }

func (o storeDownObserver) Before(_ context.Context, r *http.Request, _ []byte) any {
	// The tap's matches outside the API are logout hints (a redirect to the
	// invalidation flow), not actions: the executor call that follows is.
	if !strings.HasPrefix(r.URL.Path, "/api/v3/") {
		return nil
	}
	// Like the tap, an anonymous request changes nothing in authentik.
	if r.Header.Get("Authorization") == "" {
		if _, err := r.Cookie(tap.SessionCookieName); err != nil {
			return nil
		}
	}
	o.missed(r)
	return nil
}

func (storeDownObserver) After(context.Context, any, *http.Request, int, http.Header, []byte) {}

// swapHandler is an http.Handler whose target can be replaced while it
// serves; requests in flight finish on the handler they started with.
type swapHandler struct{ h atomic.Pointer[http.Handler] }

func newSwapHandler(h http.Handler) *swapHandler {
	s := &swapHandler{}
	s.Store(h)
	return s
}

// Store makes h serve every request from now on.
func (s *swapHandler) Store(h http.Handler) { s.h.Store(&h) }

func (s *swapHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	(*s.h.Load()).ServeHTTP(w, r)
}

// swapObserver is a proxy.Observer whose target can be replaced while the
// proxy runs. An exchange's After goes to the observer its Before ran on,
// even when the target changed in between.
type swapObserver struct{ cur atomic.Pointer[observerRef] }

type observerRef struct{ proxy.Observer }

// swappedState carries the observer an exchange started on.
type swappedState struct {
	obs   proxy.Observer
	state any
}

func newSwapObserver(o proxy.Observer) *swapObserver {
	s := &swapObserver{}
	s.Store(o)
	return s
}

// Store makes o observe every exchange that starts from now on.
func (s *swapObserver) Store(o proxy.Observer) { s.cur.Store(&observerRef{o}) }

func (s *swapObserver) Match(method, host, path string) bool {
	return s.cur.Load().Match(method, host, path)
}

func (s *swapObserver) Before(ctx context.Context, r *http.Request, body []byte) any {
	o := s.cur.Load().Observer
	return swappedState{obs: o, state: o.Before(ctx, r, body)}
}

func (s *swapObserver) After(ctx context.Context, state any, r *http.Request, status int, header http.Header, body []byte) {
	if st, ok := state.(swappedState); ok {
		st.obs.After(ctx, st.state, r, status, header, body)
		return
	}
	// Before overran its bound: the proxy hands over no state.
	s.cur.Load().After(ctx, nil, r, status, header, body)
}

// logLimiter lets one log line through per period and counts the rest.
type logLimiter struct {
	every time.Duration
	clock func() time.Time

	mu         sync.Mutex
	last       time.Time
	suppressed uint64
}

// allow reports whether to log now, with how many were held back since the
// last line that was let through.
func (l *logLimiter) allow() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return 0, false
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return n, true
}
