package main

import (
	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// setupDashboard returns the dashboard's routes (mounted behind the admin
// API's protection) and the outbox callbacks that feed its live view.
func (a *app) setupDashboard() (func(*echo.Group), outbox.Hooks) {
	return nil, outbox.Hooks{}
}
