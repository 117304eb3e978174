// Package sidecar is the assembled ssf-sidecar: the store, the signing
// keys, the outbox, the transmitter, the tap, the proxy in front of
// authentik and the admin server, wired from a Config.
//
// Build makes a Sidecar and Run serves it until its context ends, then
// shuts it down in order (see Run). With WithDegradedStart a sidecar whose
// store cannot be opened still starts: it proxies authentik, answers the
// SSF routes 503, and stands by, retrying the store until it opens, when
// the full core is switched in behind the running listeners.
//
// The command (package main) keeps the flags, the verbs and the wiring;
// the demo and the system tests build a Sidecar through this package.
package sidecar

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// core is the part that needs the store: the sidecar itself, or, for one
// that started degraded, the core built once the store opened (nil before).
func (a *Sidecar) core() *Sidecar {
	if a.degraded != nil {
		return a.degraded.live.Load()
	}
	return a
}

// Config is the configuration the sidecar was built with.
func (a *Sidecar) Config() Config { return a.cfg }

// Degraded reports whether the sidecar started without its store and has
// not opened it yet.
func (a *Sidecar) Degraded() bool { return a.core() == nil }

// Store is the store (nil while degraded).
func (a *Sidecar) Store() *outbox.Store {
	if c := a.core(); c != nil {
		return c.store
	}
	return nil
}

// Keys are the signing keys (nil while degraded).
func (a *Sidecar) Keys() *ssf.Keys {
	if c := a.core(); c != nil {
		return c.keys
	}
	return nil
}

// Outbox is the delivery outbox (nil while degraded).
func (a *Sidecar) Outbox() *outbox.Outbox {
	if c := a.core(); c != nil {
		return c.outbox
	}
	return nil
}

// Transmitter is the SSF transmitter (nil while degraded).
func (a *Sidecar) Transmitter() *ssf.Transmitter {
	if c := a.core(); c != nil {
		return c.tx
	}
	return nil
}

// Tap is the tap that turns authentik's traffic and events into signals
// (nil while degraded).
func (a *Sidecar) Tap() *tap.Tap {
	if c := a.core(); c != nil {
		return c.tap
	}
	return nil
}

// Proxy is the reverse proxy in front of authentik; its Ready channel
// closes once it listens.
func (a *Sidecar) Proxy() *proxy.Server { return a.proxy }

// TracerProvider is what the sidecar traces into (nil: tracing is off).
func (a *Sidecar) TracerProvider() trace.TracerProvider { return a.tracing.Provider }

// AdminToken is the admin API's bearer token in force ("" : loopback only).
func (a *Sidecar) AdminToken() string { return a.live.AdminToken() }

// Ready is the readiness check of /readyz: nil once both listeners are up.
func (a *Sidecar) Ready() error { return a.ready() }

// AdminHandler is the admin server's handler: /healthz, /readyz,
// /metrics, the admin API and the dashboard.
func (a *Sidecar) AdminHandler() http.Handler {
	if a.degraded != nil {
		return a.degraded.admin
	}
	return a.adminHandler
}

// ServeInProcess makes the admin API of a sidecar that is never Run (the
// offline commands on a stopped sidecar's data dir) count its front as up,
// and returns the admin handler.
func (a *Sidecar) ServeInProcess() http.Handler {
	close(a.proxyReady)
	return a.AdminHandler()
}

// Close releases what Build opened for a sidecar that is never Run: the
// store and the trace pipeline. Run does this itself.
func (a *Sidecar) Close(ctx context.Context) error {
	var err error
	if s := a.Store(); s != nil {
		err = s.Close()
	}
	_ = a.tracing.Shutdown(context.WithoutCancel(ctx))
	return err
}

// Reload reads the configuration again, as POST /admin/reload does; it
// fails for a sidecar built without WithLive.
func (a *Sidecar) Reload(why string) (any, error) { return a.live.Reload(why) }
