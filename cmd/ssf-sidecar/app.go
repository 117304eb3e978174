package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/ssf/admin"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// app is the whole sidecar, wired: one store, the keys, the outbox, the
// transmitter, the tap, the proxy and the admin server.
type app struct {
	cfg    Config
	logger *slog.Logger

	store  *outbox.Store
	keys   *ssf.Keys
	outbox *outbox.Outbox
	tx     *ssf.Transmitter
	tap    *tap.Tap
	proxy  *proxy.Server

	adminHandler http.Handler
	adminLn      net.Listener
	proxyReady   chan struct{}

	// httpClient is used for look-ups against authentik and OAuth discovery.
	httpClient *http.Client
	clock      func() time.Time

	// tracing is the trace pipeline (Provider nil: off); metrics feeds /metrics.
	tracing *tracing
	metrics *sidecarMetrics
}

// appOption adjusts how buildApp wires the sidecar (tests and the demo).
type appOption func(*app)

// withTracerProvider makes the app trace into tp instead of setting up the
// SDK from the OTEL_* variables; the caller owns tp's shutdown.
func withTracerProvider(tp trace.TracerProvider) appOption {
	return func(a *app) { a.tracing = &tracing{Provider: tp} }
}

// storeKV adapts the outbox store to the tap's persistence interface.
type storeKV struct{ s *outbox.Store }

func (k storeKV) Commit(ctx context.Context, marks []tap.Mark) error {
	out := make([]outbox.Mark, len(marks))
	for i, m := range marks {
		out[i] = outbox.Mark{Bucket: m.Bucket, Key: m.Key, Value: m.Value, Delete: m.Delete}
	}
	return k.s.Commit(ctx, out)
}

func (k storeKV) Get(bucket string, key []byte) ([]byte, error) { return k.s.Get(bucket, key) }

func (k storeKV) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	return k.s.Scan(bucket, prefix, fn)
}

// checkDeep runs the checks that need the other packages: key files and
// the receivers file. It reports every problem at once.
func checkDeep(c Config) ([]ssf.Receiver, error) {
	var errs []error
	if len(c.SigningKeys) > 0 {
		if err := (ssf.KeyConfig{Files: c.SigningKeys, DataDir: c.DataDir}).Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--signing-key: %w", err))
		}
	}
	var receivers []ssf.Receiver
	if c.Receivers != "" {
		r, err := ssf.LoadReceivers(c.Receivers)
		if err != nil {
			errs = append(errs, fmt.Errorf("--receivers: %w", err))
		}
		receivers = r
	}
	return receivers, errors.Join(errs...)
}

// buildApp opens the store and builds every component. Nothing listens yet.
func buildApp(ctx context.Context, cfg Config, receivers []ssf.Receiver, logger *slog.Logger, opts ...appOption) (_ *app, err error) {
	a := &app{cfg: cfg, logger: logger, proxyReady: make(chan struct{}), clock: time.Now,
		httpClient: &http.Client{Timeout: 10 * time.Second}}
	for _, o := range opts {
		o(a)
	}
	if a.tracing == nil {
		if a.tracing, err = setupTracing(ctx, buildVersion()); err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		if a.tracing.Provider != nil {
			logger.Info("tracing on", "endpoint", redactEndpoint(a.tracing.Endpoint), "protocol", a.tracing.Protocol)
		}
	}
	defer func() {
		if err != nil {
			_ = a.tracing.Shutdown(context.WithoutCancel(ctx))
		}
	}()
	a.metrics = newSidecarMetrics()
	a.metrics.version, a.metrics.log = buildVersion(), logger.With("component", "metrics")
	deliveries := newDeliveryTracer(a.tracing.Provider, logger.With("component", "delivery"))
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	_ = os.Chmod(cfg.DataDir, 0o700)
	a.store, err = outbox.Open(filepath.Join(cfg.DataDir, "ssf-sidecar.db"), outbox.StoreOptions{})
	if err != nil {
		return nil, fmt.Errorf("open store in %s: %w", cfg.DataDir, err)
	}
	defer func() {
		if err != nil {
			a.store.Close()
		}
	}()
	a.keys, err = ssf.NewKeys(ctx, ssf.KeyConfig{Files: cfg.SigningKeys, DataDir: cfg.DataDir, KV: a.store,
		Overlap: cfg.KeyOverlap, Logger: logger.With("component", "keys")})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	// The transmitter and the outbox refer to each other (the outbox reports
	// failing streams, the transmitter enqueues); reporter breaks the knot.
	rep := &reporter{}
	dashExtra, dashHooks := a.setupDashboard()
	a.outbox, err = outbox.New(outbox.Config{
		Store: a.store, Signer: a.keys, Reporter: rep, Logger: logger.With("component", "outbox"),
		Hooks:                 combineHooks(dashHooks, a.metrics.hooks(), deliveries.hooks()),
		AllowPrivateEndpoints: cfg.AllowPrivateEndpoints,
		PushTimeout:           cfg.PushTimeout, MaxBackoff: cfg.MaxBackoff, PauseAfter: cfg.PauseAfter,
		Retention: cfg.Retention, DeliveredRetention: cfg.DeliveredRetention,
	})
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	sealKey, err := ssf.LoadOrCreateSealKey(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("stream secrets key: %w", err)
	}
	streams, err := ssf.NewSealedStreamStore(a.store, sealKey)
	if err != nil {
		return nil, err
	}
	a.tx, err = ssf.New(ssf.Config{
		Store:  streams,
		Issuer: cfg.Issuer, Receivers: receivers, OAuthIssuer: cfg.OAuthIssuer,
		DefaultSubjects: cfg.DefaultSubjects, AllowPrivateEndpoints: cfg.AllowPrivateEndpoints,
		MaxBody: cfg.MaxBody, KV: a.store, Queue: a.outbox, Keys: a.keys,
		Logger: logger.With("component", "ssf"), HTTPClient: a.httpClient,
		OnSETIssued: a.metrics.onSETIssued, OnVerificationRequest: a.metrics.onVerification,
	})
	if err != nil {
		return nil, fmt.Errorf("transmitter: %w", err)
	}
	rep.tx = a.tx
	up, _ := url.Parse(cfg.Upstream)
	a.tap, err = tap.New(tap.Config{
		Upstream: up, Token: cfg.AuthentikToken, SecretKey: cfg.AuthentikSecretKey,
		PollInterval: cfg.PollInterval, Backfill: cfg.Backfill,
		KV: storeKV{a.store}, Publisher: a.tx, HTTPClient: a.httpClient, Logger: logger.With("component", "tap"),
	})
	if err != nil {
		return nil, fmt.Errorf("tap: %w", err)
	}
	a.proxy, err = proxy.New(proxy.Config{
		Listen: cfg.Listen, Upstream: up, TrustedProxies: cfg.TrustedProxies,
		SSF: a.tx.Handler(), SSFPrefixes: a.tx.Prefixes(), Observer: a.tap,
		TLSCertFile: cfg.TLSCert, TLSKeyFile: cfg.TLSKey, Logger: logger.With("component", "proxy"),
		OnRequest: a.metrics.onRequest, OnObserverMiss: a.metrics.onObserverMiss, TracerProvider: a.tracing.Provider, TraceAllRoutes: cfg.TraceAllRoutes,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	a.adminHandler, err = admin.New(admin.Config{
		Token: cfg.AdminToken, Transmitter: a.tx, Keys: a.keys, Outbox: a.outbox,
		Ready: a.ready, Health: a.healthChecks(up), Logger: logger.With("component", "admin"),
		Extra: dashExtra, Metrics: a.metrics,
	})
	if err != nil {
		return nil, fmt.Errorf("admin: %w", err)
	}
	a.metrics.proxyStats, a.metrics.tapStats, a.metrics.outboxStats = a.proxy.Stats, a.tap.Stats, a.outbox.AllStats
	return a, nil
}

// reporter forwards the outbox's failing-stream reports to the transmitter.
type reporter struct{ tx *ssf.Transmitter }

func (r *reporter) StreamFailing(ctx context.Context, id string, since time.Time, lastErr string) {
	if r.tx != nil {
		r.tx.StreamFailing(ctx, id, since, lastErr)
	}
}

func (a *app) ready() error {
	select {
	case <-a.proxyReady:
	default:
		return errors.New("listeners are not up yet")
	}
	if a.adminLn == nil {
		return errors.New("admin listener is not up")
	}
	return nil
}

func (a *app) healthChecks(up *url.URL) []admin.Check {
	return []admin.Check{
		{Name: "store", Run: func(context.Context) error { return a.store.Healthy() }},
		{Name: "keys", Run: func(ctx context.Context) error {
			if len(a.keys.List()) == 0 {
				return errors.New("no signing key")
			}
			return nil
		}},
		{Name: "upstream", Run: func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.String(), nil)
			if err != nil {
				return err
			}
			resp, err := a.httpClient.Do(req)
			if err != nil {
				return fmt.Errorf("authentik unreachable: %w", err)
			}
			resp.Body.Close()
			if resp.StatusCode >= 500 {
				return fmt.Errorf("authentik answered %d", resp.StatusCode)
			}
			return nil
		}},
		{Name: "poller", Run: func(context.Context) error {
			return pollerHealth(a.cfg.AuthentikToken != "", a.tap.Stats(), a.cfg.PollInterval)
		}},
	}
}

// run starts every component and blocks until ctx ends, then shuts down in
// order: stop taking traffic, let the tap finish, stop delivery, close the
// store.
func (a *app) run(ctx context.Context) error {
	ln, err := net.Listen("tcp", a.cfg.AdminListen)
	if err != nil {
		return fmt.Errorf("admin listener %s: %w", a.cfg.AdminListen, err)
	}
	a.adminLn = ln
	adminSrv := &http.Server{Handler: a.adminHandler, ReadHeaderTimeout: 10 * time.Second}

	g, gctx := errgroup.WithContext(ctx)
	deliveryCtx, stopDelivery := context.WithCancel(context.Background())
	tapCtx, stopTap := context.WithCancel(context.Background())
	defer stopDelivery()
	defer stopTap()

	g.Go(func() error { return a.outbox.Run(deliveryCtx) })
	g.Go(func() error { return a.tap.Run(tapCtx) })
	g.Go(func() error {
		close(a.proxyReady)
		err := a.proxy.Run(gctx)
		// The front is closed and drained: the tap may finish, then delivery.
		stopTap()
		stopDelivery()
		return err
	})
	g.Go(func() error {
		err := adminSrv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return adminSrv.Shutdown(sctx)
	})
	a.logger.Info("ssf-sidecar started", "listen", a.cfg.Listen, "admin", ln.Addr().String(),
		"upstream", a.cfg.Upstream, "issuer", a.cfg.Issuer, "version", buildVersion())
	err = g.Wait()
	if cerr := a.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	// Delivery has stopped: flush the spans it produced.
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if terr := a.tracing.Shutdown(fctx); terr != nil {
		a.logger.Warn("tracing: flush at shutdown", "error", terr)
	}
	fcancel()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}
