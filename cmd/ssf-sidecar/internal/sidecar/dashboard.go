package sidecar

import (
	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf/admin"
)

// setupDashboard returns the dashboard's routes (mounted behind the admin
// API's protection) and the outbox callbacks that feed its live view. It
// runs before the outbox and the transmitter exist, so they are looked up
// when a request comes. The dashboard ends its live connections itself
// when the admin server shuts down.
func (a *Sidecar) setupDashboard() (func(*echo.Group), outbox.Hooks) {
	cfg := admin.DashboardConfig{
		Transmitter: func() admin.Transmitter {
			if a.tx == nil {
				return nil
			}
			return a.tx
		},
		Outbox: func() admin.Outbox {
			if a.outbox == nil {
				return nil
			}
			return a.outbox
		},
		TraceURL: a.cfg.TraceURL,
		Clock:    a.clock,
		Logger:   a.logger.With("component", "dashboard"),
	}
	d, err := admin.NewDashboard(cfg)
	if err != nil && cfg.TraceURL != "" {
		a.logger.Warn("dashboard: --trace-url ignored", "err", err)
		cfg.TraceURL = ""
		d, err = admin.NewDashboard(cfg)
	}
	if err != nil {
		a.logger.Error("dashboard disabled", "err", err)
		return nil, outbox.Hooks{}
	}
	return d.Routes, d.Hooks()
}
