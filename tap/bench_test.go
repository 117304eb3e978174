package tap

import (
	"net/http/httptest"
	"testing"
	"time"
)

// BenchmarkMatch compares Match on the paths every proxied request takes
// (static assets, untapped API calls) with a tapped path.
func BenchmarkMatch(b *testing.B) {
	tp := &Tap{flows: newFlows(), flowKick: make(chan struct{}, 1), cfg: Config{Clock: time.Now},
		unknownSlugs: newCache[string, struct{}](8, time.Minute, time.Now)}
	for _, bc := range []struct{ name, method, path string }{
		{"untapped-static", "GET", "/static/dist/poly.js"},
		{"untapped-api", "GET", "/api/v3/core/users/me/"},
		{"tapped-session-delete", "DELETE", "/api/v3/core/authenticated_sessions/0b7c9a6e-8f8e-4c4e-9d3b-1f1b7c5a2e11/"},
		{"tapped-logout", "GET", "/api/v3/flows/executor/default-invalidation-flow/"},
		{"untapped-login-flow", "POST", "/api/v3/flows/executor/default-authentication-flow/"},
	} {
		r := httptest.NewRequest(bc.method, bc.path, nil)
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				tp.Match(r)
			}
		})
	}
}
