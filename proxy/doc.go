// Package proxy is the HTTP front of ssf-sidecar: an echo server that answers
// the SSF routes itself, forwards every other request to authentik untouched,
// and hands the exchanges an observer marked as interesting to that observer.
// It knows HTTP only — nothing of authentik or SSF.
package proxy
