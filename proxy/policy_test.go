package proxy

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
)

// countingUpstream records the request targets it received.
func countingUpstream(t *testing.T) (*httptest.Server, func() []string) {
	t.Helper()
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Method+" "+r.RequestURI)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), got...)
	}
}

// TestRequestTargetForms: only origin-form, absolute-form with http(s) and
// asterisk-form for OPTIONS get past the proxy; every other form is refused
// with 400 before anything reaches the upstream, on the lane's listener and
// with the lane off.
func TestRequestTargetForms(t *testing.T) {
	for _, lane := range []bool{true, false} {
		name := "lane"
		if !lane {
			name = "net-http"
		}
		t.Run(name, func(t *testing.T) {
			up, got := countingUpstream(t)
			s, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), DisableFastPath: !lane})
			addr := s.Addr().String()
			refused := []string{
				"DELETE x:y:/api/v3/core/authenticated_sessions/5578be33-ae30-41cd-b977-f4f6d9594692/ HTTP/1.1",
				"GET x:y:/api/v3/flows/executor/default-invalidation-flow/?query= HTTP/1.1",
				"POST x:/api/v3/core/users/3/set_password/ HTTP/1.1",
				"DELETE mailto:/api/v3/authenticators/admin/totp/1/ HTTP/1.1",
				"GET * HTTP/1.1",
				"DELETE * HTTP/1.1",
				"GET ftp://h/api/v3/ HTTP/1.1",
				"GET http://u:p@h/api/v3/ HTTP/1.1",
				"GET y:/api/v3/ HTTP/1.1",
			}
			for _, line := range refused {
				resp, _ := rawRoundTrip(t, addr, line+"\r\nHost: "+addr+"\r\nContent-Length: 0\r\n\r\n")
				if resp.StatusCode != http.StatusBadRequest {
					t.Errorf("%q: status %d, want 400", line, resp.StatusCode)
				}
			}
			if g := got(); len(g) != 0 {
				t.Fatalf("upstream received refused targets: %q", g)
			}
			allowed := map[string]string{
				"DELETE /api/v3/core/authenticated_sessions/x/ HTTP/1.1": "DELETE /api/v3/core/authenticated_sessions/x/",
				"GET http://" + addr + "/api/v3/a?b=c HTTP/1.1":          "GET /api/v3/a?b=c",
				"GET https://other.example HTTP/1.1":                     "GET /",
			}
			for line, want := range allowed {
				resp, _ := rawRoundTrip(t, addr, line+"\r\nHost: "+addr+"\r\n\r\n")
				if resp.StatusCode != http.StatusNoContent {
					t.Errorf("%q: status %d, want 204", line, resp.StatusCode)
				}
				if g := got(); len(g) == 0 || g[len(g)-1] != want {
					t.Errorf("%q: upstream saw %q, want %q last", line, g, want)
				}
			}
			n := len(got())
			resp, _ := rawRoundTrip(t, addr, "OPTIONS * HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
			if resp.StatusCode != http.StatusOK || len(got()) != n {
				t.Errorf("OPTIONS *: status %d, upstream requests %d -> %d", resp.StatusCode, n, len(got()))
			}
			if strings.Contains(strings.Join(got(), "\n"), "y:") {
				t.Errorf("an opaque target reached the upstream: %q", got())
			}
		})
	}
}
