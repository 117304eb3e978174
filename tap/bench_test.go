package tap

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
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
				tp.Match(r.Method, r.Host, r.URL.Path)
			}
		})
	}
}

// BenchmarkProxiedRequest compares, through the test proxy and the
// simulated authentik, an untapped API call with tapped ones (trust check,
// look-ups, two durable journal writes, classification off the hot path).
func BenchmarkProxiedRequest(b *testing.B) {
	for _, bc := range []struct {
		name, method, path, body string
		noTap                    bool
	}{
		{"users-me-untapped", "GET", "/api/v3/core/users/me/", "", false},
		{"patch-user-tap-off", "PATCH", "/api/v3/core/users/%d/", `{"name":"Bench"}`, true},
		{"patch-user-tapped", "PATCH", "/api/v3/core/users/%d/", `{"name":"Bench"}`, false},
		{"session-delete-tap-off", "DELETE", "/api/v3/core/authenticated_sessions/%s/", "", true},
		{"session-delete-tapped", "DELETE", "/api/v3/core/authenticated_sessions/%s/", "", false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			e := newEnv(b, envOpts{mutate: func(c *Config) { c.RatePerIP = 1e9; c.RateBurst = 1 << 30 }})
			alice := e.user("alice")
			e.proxy.noTap = bc.noTap
			client := &http.Client{}
			b.ResetTimer()
			// (b.Loop here trips an internal compiler error in go1.26.8)
			for range b.N {
				path := bc.path
				switch {
				case strings.Contains(path, "%d"):
					path = fmt.Sprintf(path, alice.PK)
				case strings.Contains(path, "%s"):
					b.StopTimer()
					s, _ := e.session(alice.PK)
					b.StartTimer()
					path = fmt.Sprintf(path, s.UUID)
				}
				req, _ := http.NewRequest(bc.method, e.front.URL+path, strings.NewReader(bc.body))
				req.Header.Set("Authorization", "Bearer "+e.ak.AdminToken())
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
}
