package sidecar

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
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/ssf/admin"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Sidecar is the whole sidecar, wired: one store, the keys, the outbox, the
// transmitter, the tap, the proxy and the admin server. Build makes one,
// Run serves it until its context ends.
type Sidecar struct {
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
	// version is the build's version, for logs, metrics and traces.
	version string
	// sealKeys gives the keys that seal secrets kept in a shared database.
	sealKeys func(Config) (SealKeys, error)

	// tracing is the trace pipeline (Provider nil: off); metrics feeds /metrics.
	tracing    *Tracing
	metrics    *sidecarMetrics
	deliveries *deliveryTracer

	// degradedOK lets Build start without the store (serve); degraded
	// is set when it did. parent is the front sidecar a late-built core
	// belongs to (its listeners answer readiness).
	degradedOK bool
	degraded   *degraded
	parent     *Sidecar

	// dbWatch watches a shared database while running (nil with bbolt).
	dbWatch *dbWatch
	// live holds what a reload changes: receivers and the admin token;
	// reloadable says it was given (WithLive), so reloads are on.
	live       Live
	reloadable bool
}

// Live is what a reload changes while the sidecar runs: the receivers and
// the admin token. The command implements it over its flags, environment
// and config file.
type Live interface {
	// AdminToken is the admin API's bearer token in force.
	AdminToken() string
	// Receivers are the receivers in force.
	Receivers() []ssf.Receiver
	// SetApply makes every reload hand its receivers to apply.
	SetApply(apply func([]ssf.Receiver) ssf.ReceiverChange)
	// Reload reads the configuration again; what it returns is the admin
	// API's answer to POST /admin/reload.
	Reload(why string) (any, error)
	// Watch reloads on SIGHUP and when the files change, until ctx ends.
	Watch(ctx context.Context)
}

// staticLive is the Live of a sidecar built without WithLive: the
// receivers and the admin token it was built with, and no reloads.
type staticLive struct {
	token     string
	receivers []ssf.Receiver
}

func (l staticLive) AdminToken() string                             { return l.token }
func (l staticLive) Receivers() []ssf.Receiver                      { return l.receivers }
func (staticLive) SetApply(func([]ssf.Receiver) ssf.ReceiverChange) {}
func (staticLive) Reload(string) (any, error)                       { return nil, errors.New("reload is off") }
func (staticLive) Watch(ctx context.Context)                        { <-ctx.Done() }

// SealKeys are the keys that seal secrets kept in a shared database, each
// derived for its use from the operator's encryption key.
type SealKeys struct {
	StreamSecrets []byte // push streams' authorization_header
	SigningKeys   []byte // the private signing keys
	// The same of the encryption key being rotated out (nil without one):
	// what is sealed under them is still opened.
	PreviousStreamSecrets, PreviousSigningKeys []byte
}

// Option adjusts how Build wires the sidecar.
type Option func(*Sidecar)

// WithLive makes the sidecar follow reloads of l (serve): the admin token
// and receivers come from it, and POST /admin/reload and SIGHUP reload it.
func WithLive(l Live) Option { return func(a *Sidecar) { a.live, a.reloadable = l, true } }

// WithTracerProvider makes the sidecar trace into tp instead of setting up
// the SDK from the OTEL_* variables; the caller owns tp's shutdown.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(a *Sidecar) { a.tracing = &Tracing{Provider: tp} }
}

// WithDegradedStart lets Build start degraded when the data dir or the
// store cannot be opened, instead of failing (serve).
func WithDegradedStart() Option { return func(a *Sidecar) { a.degradedOK = true } }

// WithSealKeys gives the keys that seal secrets in a shared database
// (required with Config.DatabaseURL); f is asked each time the store is
// opened and its error fails that opening.
func WithSealKeys(f func(Config) (SealKeys, error)) Option {
	return func(a *Sidecar) { a.sealKeys = f }
}

// WithVersion names the build's version in logs, metrics and traces
// (default "dev").
func WithVersion(v string) Option { return func(a *Sidecar) { a.version = v } }

// storeKV adapts the outbox store to the tap's persistence interface.
type storeKV struct{ s *outbox.Store }

func (k storeKV) Commit(ctx context.Context, marks []tap.Mark) error {
	out := make([]outbox.Mark, len(marks))
	for i, m := range marks {
		out[i] = outbox.Mark{Bucket: m.Bucket, Key: m.Key, Value: m.Value, Delete: m.Delete,
			Fence: outbox.Fence(m.Fence), IfValue: m.IfValue, Expect: m.Expect}
	}
	return k.s.Commit(ctx, out)
}

func (k storeKV) Get(bucket string, key []byte) ([]byte, error) { return k.s.Get(bucket, key) }

func (k storeKV) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	return k.s.Scan(bucket, prefix, fn)
}

// Build opens the store and builds every component. Nothing listens yet.
//
// With WithDegradedStart, a data dir or store that cannot be opened does not
// fail the build: the sidecar starts degraded (see degraded.go), proxying
// authentik without observing it, and opens the store later.
func Build(ctx context.Context, cfg Config, receivers []ssf.Receiver, logger *slog.Logger, opts ...Option) (_ *Sidecar, err error) {
	a := &Sidecar{cfg: cfg, logger: logger, proxyReady: make(chan struct{}), clock: time.Now,
		httpClient: &http.Client{Timeout: 10 * time.Second}, version: "dev"}
	for _, o := range opts {
		o(a)
	}
	if a.live == nil {
		a.live = staticLive{token: cfg.AdminToken, receivers: receivers}
	}
	if a.tracing == nil {
		if a.tracing, err = SetupTracing(ctx, a.version); err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
		if a.tracing.Provider != nil {
			otel.SetErrorHandler(newOTelErrorLog(logger.With("component", "tracing"), 10*time.Second))
			logger.Info("tracing on", "endpoint", redactEndpoint(a.tracing.Endpoint), "protocol", a.tracing.Protocol)
		}
	}
	defer func() {
		if err != nil {
			_ = a.tracing.Shutdown(context.WithoutCancel(ctx))
		}
	}()
	a.metrics = newSidecarMetrics()
	a.metrics.version, a.metrics.log = a.version, logger.With("component", "metrics")
	a.deliveries = newDeliveryTracer(a.tracing.Provider, logger.With("component", "delivery"), cfg.TracePropagation)
	up, _ := url.Parse(cfg.Upstream)

	var ssfHandler http.Handler
	var ssfPrefixes []string
	var observer proxy.Observer
	if err := a.buildCore(ctx, receivers); err != nil {
		var se *storeError
		if !a.degradedOK || !errors.As(err, &se) {
			return nil, err
		}
		if a.degraded, err = newDegraded(a, receivers, se); err != nil {
			return nil, err
		}
		ssfHandler, ssfPrefixes, observer = a.degraded.ssf, ssf.PrefixesFor(cfg.Issuer), a.degraded.observer
	} else {
		defer func() {
			if err != nil {
				a.store.Close()
			}
		}()
		ssfHandler, ssfPrefixes, observer = a.ssfHandler(), a.tx.Prefixes(), a.tap
	}
	a.proxy, err = proxy.New(proxy.Config{
		Listen: cfg.Listen, Upstream: up, TrustedProxies: cfg.TrustedProxies,
		SSF: ssfHandler, SSFPrefixes: ssfPrefixes, Observer: observer,
		TLSCertFile: cfg.TLSCert, TLSKeyFile: cfg.TLSKey, Logger: logger.With("component", "proxy"), MaxConns: cfg.MaxConnections,
		OnRequest: a.metrics.onRequest, OnObserverMiss: a.metrics.onObserverMiss, TracerProvider: a.tracing.Provider, TraceAllRoutes: cfg.TraceAllRoutes, PropagateTrace: cfg.TracePropagation,
	})
	if err != nil {
		return nil, prefixed("proxy", err)
	}
	a.metrics.proxyStats = a.proxy.Stats
	if a.degraded != nil {
		a.adminHandler = a.degraded.admin
		a.metrics.tapStats, a.metrics.outboxStats = a.degraded.tapStats, a.degraded.outboxStats
		a.metrics.limitFailures = a.degraded.limitFailures
		a.metrics.storeHealthy, a.metrics.signingKeys = a.degraded.storeHealthy, a.degraded.signingKeys
	} else {
		a.metrics.tapStats, a.metrics.outboxStats = a.tap.Stats, a.outbox.AllStats
		a.metrics.limitFailures = a.tx.ManagementLimitFailures
		a.metrics.storeHealthy, a.metrics.signingKeys = a.store.Healthy, a.keys.List
	}
	return a, nil
}

// prefixed wraps err with "what: " unless its message says so already.
func prefixed(what string, err error) error {
	if strings.HasPrefix(err.Error(), what+": ") {
		return err
	}
	return fmt.Errorf("%s: %w", what, err)
}

// storeError is a failure to create or open the data dir or the store in
// it: the one start-up failure that degrades instead of exiting.
type storeError struct {
	Dir string // the data dir
	Err error
}

func (e *storeError) Error() string { return fmt.Sprintf("open store in %s: %v", e.Dir, e.Err) }
func (e *storeError) Unwrap() error { return e.Err }

// buildCore opens the store and builds everything that needs it: keys,
// outbox, transmitter, tap and the admin handler. It sets a's fields only;
// on failure whatever it opened is closed again.
func (a *Sidecar) buildCore(ctx context.Context, receivers []ssf.Receiver) (err error) {
	cfg, logger := a.cfg, a.logger
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return &storeError{Dir: cfg.DataDir, Err: fmt.Errorf("create data dir: %w", err)}
	}
	// Tighten, never widen: a data dir an operator made read-only stays so.
	if st, err := os.Stat(cfg.DataDir); err == nil && st.Mode().Perm()&0o077 != 0 {
		_ = os.Chmod(cfg.DataDir, st.Mode().Perm()&0o700)
	}
	store, notifier, seal, err := a.openStore(ctx)
	if err != nil {
		return err
	}
	if p, ok := store.Backend().(interface{ Ping(context.Context) error }); ok && cfg.DatabaseURL != "" {
		a.dbWatch = newDBWatch(p.Ping, dbCheckEvery, logger.With("component", "database"))
	}
	defer func() {
		if err != nil {
			store.Close()
			a.dbWatch = nil
		}
	}()
	if cfg.DatabaseURL == "" {
		// A restore that brought back the store without its key files is
		// found before anything is generated next to sealed data.
		problems, err := ssf.CheckRestore(store, cfg.DataDir, len(cfg.SigningKeys) > 0, cfg.KeyOverlap, a.clock())
		if err != nil {
			return fmt.Errorf("check data dir: %w", err)
		}
		if !problems.OK() {
			return &storeError{Dir: cfg.DataDir, Err: &restoreError{dir: cfg.DataDir, problems: problems}}
		}
	}
	sealKey := seal.StreamSecrets
	keys, err := ssf.NewKeys(ctx, ssf.KeyConfig{Files: cfg.SigningKeys, DataDir: cfg.DataDir, KV: store, Seal: seal.SigningKeys,
		PreviousSeal: seal.PreviousSigningKeys, Overlap: cfg.KeyOverlap, Activation: keyActivation(cfg), Logger: logger.With("component", "keys")})
	if err != nil {
		if isDiskError(err) {
			return &storeError{Dir: cfg.DataDir, Err: prefixed("signing keys", err)}
		}
		return prefixed("signing keys", err)
	}
	if sealKey == nil {
		if sealKey, err = ssf.LoadOrCreateSealKey(cfg.DataDir); err != nil {
			return &storeError{Dir: cfg.DataDir, Err: fmt.Errorf("stream secrets key: %w", err)}
		}
	}
	// From here on the fields are set: the dashboard looks them up lazily.
	a.store, a.keys = store, keys
	defer func() {
		if err != nil {
			a.store, a.keys, a.outbox, a.tx, a.tap, a.adminHandler = nil, nil, nil, nil, nil, nil
		}
	}()
	// The transmitter and the outbox refer to each other (the outbox reports
	// failing streams, the transmitter enqueues); reporter breaks the knot.
	rep := &reporter{}
	dashExtra, dashHooks := a.setupDashboard()
	a.outbox, err = outbox.New(outbox.Config{
		Store: a.store, Signer: a.keys, Reporter: rep, Notifier: notifier, Logger: logger.With("component", "outbox"),
		Hooks:                 combineHooks(dashHooks, a.metrics.hooks(), a.deliveries.hooks()),
		AllowPrivateEndpoints: cfg.AllowPrivateEndpoints,
		PushTimeout:           cfg.PushTimeout, MaxBackoff: cfg.MaxBackoff, PauseAfter: cfg.PauseAfter,
		Retention: cfg.Retention, DeliveredRetention: cfg.DeliveredRetention, LeaseTTL: cfg.LeaseTTL,
	})
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	streams, err := ssf.NewSealedStreamStore(a.store, sealKey, seal.PreviousStreamSecrets)
	if err != nil {
		return err
	}
	a.tx, err = ssf.New(ssf.Config{
		Store:  streams,
		Issuer: cfg.Issuer, Receivers: receivers, OAuthIssuer: cfg.OAuthIssuer,
		DefaultSubjects: cfg.DefaultSubjects, AllowPrivateEndpoints: cfg.AllowPrivateEndpoints,
		MaxBody: cfg.MaxBody, MinVerificationInterval: cfg.MinVerification, KV: a.store, Queue: a.outbox, Keys: a.keys,
		Logger: logger.With("component", "ssf"), HTTPClient: a.httpClient,
		OnSETIssued: a.metrics.onSETIssued, OnVerificationRequest: a.metrics.onVerification,
	})
	if err != nil {
		return fmt.Errorf("transmitter: %w", err)
	}
	rep.tx = a.tx
	a.live.SetApply(a.tx.SetReceivers)
	up, _ := url.Parse(cfg.Upstream)
	leases, err := outbox.NewStoreLeases(outbox.LeaseConfig{Store: a.store, Clock: a.clock})
	if err != nil {
		return fmt.Errorf("leases: %w", err)
	}
	a.tap, err = tap.New(tap.Config{
		Upstream: up, Token: cfg.AuthentikToken, SecretKey: cfg.AuthentikSecretKey,
		PollInterval: cfg.PollInterval, Backfill: cfg.Backfill, PollerLease: pollerLease{leases}, PollerLeaseTTL: cfg.LeaseTTL, DirectoryRecheck: tapRecheck(cfg.DirectoryRecheck),
		KV: storeKV{a.store}, Publisher: a.tx, HTTPClient: a.httpClient, Logger: logger, // the tap names itself
	})
	if err != nil {
		return fmt.Errorf("tap: %w", err)
	}
	a.adminHandler, err = admin.New(admin.Config{
		TokenFunc: a.live.AdminToken, AllowedHosts: adminHosts(cfg), Reload: a.reloadFunc(),
		Transmitter: a.tx, Keys: a.keys, Outbox: a.outbox,
		Ready: a.ready, Health: a.healthChecks(up), Logger: logger.With("component", "admin"),
		Extra: dashExtra, Metrics: a.metrics,
	})
	if err != nil {
		return fmt.Errorf("admin: %w", err)
	}
	return nil
}

// dbCheckEvery is how often a shared database is pinged while running.
const dbCheckEvery = 2 * time.Second

// ssfHandler is the transmitter's handler, answering 503 while a shared
// database is unreachable.
func (a *Sidecar) ssfHandler() http.Handler {
	if a.dbWatch != nil {
		return a.dbWatch.guard(a.tx.Handler())
	}
	return a.tx.Handler()
}

// sharedRefresh is how often replicas sharing a database read the streams
// again, so a stream change made on one is used by all.
const sharedRefresh = 5 * time.Second

// keyRefresh is how often replicas sharing a database read the signing
// keys again, and SharedKeyActivation how long a rotated-in key is only
// published before it signs: every replica has read and published it
// (within keyRefresh, with slack for a slow read) before any signs with
// it, and all of them sign with it within 5 s of the rotation.
const (
	keyRefresh          = time.Second
	SharedKeyActivation = 4 * time.Second
)

// keyActivation is the signing keys' activation delay: one process
// publishes and signs from the same memory, so its new key signs at once.
func keyActivation(cfg Config) time.Duration {
	if cfg.DatabaseURL == "" {
		return 0
	}
	return SharedKeyActivation
}

// openStore opens the backend the configuration names: PostgreSQL with
// --database-url (its notifier wakes the other replicas; the stream-secret
// and signing-key seal keys are derived from the operator's encryption
// key, and so are those of the key being rotated out), else the bbolt
// file in the data dir (no seal keys: the seal key file and generated key
// files live in the data dir). A nil notifier means the in-process one.
func (a *Sidecar) openStore(ctx context.Context) (store *outbox.Store, notifier outbox.Notifier, seal SealKeys, err error) {
	cfg := a.cfg
	if cfg.DatabaseURL != "" {
		if a.sealKeys == nil {
			return nil, nil, seal, errors.New("--database-url needs an encryption key for the secrets it stores")
		}
		if seal, err = a.sealKeys(cfg); err != nil {
			return nil, nil, seal, err
		}
		octx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		db, err := pgstore.Open(octx, pgstore.Options{URL: cfg.DatabaseURL, Schema: cfg.DatabaseSchema,
			Logger: a.logger.With("component", "database")})
		if err != nil {
			return nil, nil, seal, &storeError{Dir: "database schema " + cfg.DatabaseSchema, Err: err}
		}
		store := outbox.NewStore(db, outbox.StoreOptions{Logger: a.logger.With("component", "store")})
		return store, db.Notifier(), seal, nil
	}
	dbPath := filepath.Join(cfg.DataDir, DBFile)
	store, err = outbox.Open(dbPath, outbox.StoreOptions{})
	if err != nil {
		return nil, nil, seal, &storeError{Dir: cfg.DataDir, Err: ExplainOpenError(dbPath, err)}
	}
	return store, nil, seal, nil
}

// adminHosts are the Host names the admin API accepts besides the built-in
// ones: --admin-hosts and the name in --admin-listen.
func adminHosts(cfg Config) []string {
	hosts := append([]string(nil), cfg.AdminHosts...)
	if h, _, err := net.SplitHostPort(cfg.AdminListen); err == nil && h != "" {
		hosts = append(hosts, h)
	}
	return hosts
}

// reloadFunc is the admin API's POST /admin/reload (nil: reload is off,
// as in the demo and the offline CLI).
func (a *Sidecar) reloadFunc() func(context.Context) (any, error) {
	if !a.reloadable {
		return nil
	}
	return func(context.Context) (any, error) { return a.live.Reload("admin API") }
}

// reporter forwards the outbox's failing-stream reports to the transmitter.
type reporter struct{ tx *ssf.Transmitter }

func (r *reporter) StreamFailing(ctx context.Context, id string, since time.Time, lastErr string) {
	if r.tx != nil {
		r.tx.StreamFailing(ctx, id, since, lastErr)
	}
}

func (a *Sidecar) ready() error {
	if a.parent != nil {
		return a.parent.ready()
	}
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

func (a *Sidecar) healthChecks(up *url.URL) []admin.Check {
	return []admin.Check{
		{Name: "store", Run: func(context.Context) error {
			if a.dbWatch != nil {
				if err := a.dbWatch.err(); err != nil {
					return err
				}
			}
			return a.store.Healthy()
		}},
		{Name: "keys", Run: func(ctx context.Context) error {
			if len(a.keys.List()) == 0 {
				return errors.New("no signing key")
			}
			return nil
		}},
		{Name: "upstream", Run: func(ctx context.Context) error { return upstreamHealth(ctx, a.httpClient, up) }},
		{Name: "poller", Run: func(context.Context) error {
			return pollerHealth(a.cfg.AuthentikToken != "", a.tap.Stats(), a.cfg.PollInterval)
		}},
	}
}

// upstreamHealth is the upstream check of /healthz: authentik answers below 500.
func upstreamHealth(ctx context.Context, client *http.Client, up *url.URL) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, up.String(), nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("authentik unreachable: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode >= 500 {
		return fmt.Errorf("authentik answered %d", resp.StatusCode)
	}
	return nil
}

// Run starts every component and serves until ctx ends, then shuts down
// in this order, each step once the one before has finished:
//
//  1. stop accepting: the proxy closes its listener and drains the
//     exchanges in flight, so every tapped request is journaled or counted
//     as a miss (the admin listener closes at the same time);
//  2. stop the tap: the event-API poller and the reconciliation end, so
//     nothing new is enqueued;
//  3. stop delivery: the outbox finishes the attempts in flight, and the
//     shared-state refreshers and the database watch end;
//  4. close the store;
//  5. flush the spans the shutdown produced.
//
// A sidecar that started degraded runs the same steps over the core it
// built once the store opened, and skips those of what never started.
// Each step is logged at debug level; Run returns the first component's
// error, nil after a clean stop.
func (a *Sidecar) Run(ctx context.Context) error {
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
	taps := &stage{}
	start := func(core *Sidecar) {
		g.Go(func() error { return core.outbox.Run(deliveryCtx) })
		taps.Go(g, func() error { return core.tap.Run(tapCtx) })
		if core.cfg.DatabaseURL != "" {
			g.Go(func() error { return core.keys.RunRefresh(deliveryCtx, keyRefresh) })
			g.Go(func() error { return core.tx.RunSync(deliveryCtx, sharedRefresh) })
		}
		if core.dbWatch != nil {
			g.Go(func() error { return core.dbWatch.run(deliveryCtx) })
		}
	}
	if a.degraded == nil {
		start(a)
	} else {
		// Started without the store: stand by, trying to open it; once it
		// opens, its core runs under the same contexts and shutdown order.
		g.Go(func() error { a.degraded.run(gctx, start); return nil })
	}
	if a.reloadable {
		g.Go(func() error { a.live.Watch(gctx); return nil })
	}
	g.Go(func() error {
		close(a.proxyReady)
		err := a.proxy.Run(gctx)
		a.logger.Debug("shutdown: the proxy stopped accepting and drained its exchanges")
		// The front is closed and drained: the tap finishes, then delivery.
		taps.stop(stopTap)
		a.logger.Debug("shutdown: the tap stopped")
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
	// "started" only once both listeners are bound: a port in use fails
	// the start without claiming it.
	g.Go(func() error {
		select {
		case <-a.proxy.Ready():
		case <-gctx.Done():
			return nil
		}
		listen := a.cfg.Listen
		if addr := a.proxy.Addr(); addr != nil {
			listen = addr.String()
		}
		a.logger.Info("ssf-sidecar started", "listen", listen, "admin", ln.Addr().String(),
			"upstream", WithoutPassword(a.cfg.Upstream), "issuer", WithoutPassword(a.cfg.Issuer), "version", a.version)
		if a.degraded != nil {
			a.degraded.logStart()
		}
		// Say at once when authentik cannot be reached, not only at the
		// first 502.
		uctx, ucancel := context.WithTimeout(gctx, 5*time.Second)
		defer ucancel()
		up, _ := url.Parse(a.cfg.Upstream)
		if err := upstreamHealth(uctx, a.httpClient, up); err != nil && gctx.Err() == nil {
			a.logger.Warn("authentik is not answering yet: requests get 502 until it does (see /healthz)",
				slog.String("upstream", WithoutPassword(a.cfg.Upstream)), slog.String("error", err.Error()))
		}
		return nil
	})
	err = g.Wait()
	a.logger.Debug("shutdown: delivery stopped")
	store := a.store
	if a.degraded != nil {
		store = nil
		if live := a.degraded.live.Load(); live != nil {
			store = live.store
		}
	}
	if store != nil {
		if cerr := store.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	a.logger.Debug("shutdown: the store is closed")
	// Delivery has stopped: flush the spans it produced.
	fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
	if terr := a.tracing.Shutdown(fctx); terr != nil {
		a.logger.Warn("tracing: flush at shutdown", "error", terr)
	}
	fcancel()
	a.logger.Debug("shutdown: done")
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// tapRecheck maps --directory-recheck to the tap's setting, where 0 means
// its default and a negative value turns the re-check off.
func tapRecheck(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// stage is a set of goroutines stopped together: stop cancels them and
// waits until all have returned; one started after stop does not run.
type stage struct {
	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
}

// Go runs f in g as part of the stage, unless the stage has stopped.
func (s *stage) Go(g *errgroup.Group, f func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.wg.Add(1)
	g.Go(func() error {
		defer s.wg.Done()
		return f()
	})
}

// stop calls cancel and waits for the stage's goroutines.
func (s *stage) stop(cancel func()) {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
	cancel()
	s.wg.Wait()
}
