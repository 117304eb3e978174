package proxy

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
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

// TestNonCanonicalPathsOfClaimedRoutesRefused: a path that cleans to an SSF
// route or a tapped one, spelled otherwise, is refused before it reaches
// the upstream (a receiver's token would go to authentik, a tapped action
// past the tap); other non-canonical paths pass as before.
func TestNonCanonicalPathsOfClaimedRoutesRefused(t *testing.T) {
	for _, lane := range []bool{true, false} {
		t.Run(map[bool]string{true: "lane", false: "net-http"}[lane], func(t *testing.T) {
			up, got := countingUpstream(t)
			ssf := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
			obs := &recordingObserver{match: func(_, _, path string) bool {
				return path == "/api/v3/core/authenticated_sessions/x/"
			}}
			s, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), DisableFastPath: !lane,
				SSF: ssf, SSFPrefixes: []string{"/ssf/"}, Observer: obs})
			addr := s.Addr().String()
			for _, target := range []string{
				"//ssf/streams", "/./ssf/streams", "/ssf//streams", "/x/../ssf/streams", "/%73sf/streams",
				"/ssf%2Fstreams", "/ssf/./streams", "/ssf/streams/.",
				"//api/v3/core/authenticated_sessions/x/", "/api/v3/core/./authenticated_sessions/x/",
				"/api/v3/core//authenticated_sessions/x/", "/api/v3/core/authenticated_sessions/x/.",
			} {
				for _, method := range []string{"GET", "POST", "DELETE"} {
					resp, _ := rawRoundTrip(t, addr, method+" "+target+" HTTP/1.1\r\nHost: "+addr+
						"\r\nAuthorization: Bearer receiver-token\r\nContent-Length: 0\r\n\r\n")
					if resp.StatusCode != http.StatusBadRequest {
						t.Errorf("%s %s: status %d, want 400", method, target, resp.StatusCode)
					}
				}
			}
			if g := got(); len(g) != 0 {
				t.Fatalf("upstream received: %q", g)
			}
			for _, target := range []string{"//static/dist/a.js", "/static/./a.js", "/api/v3/%78/",
				"/api/v3/core/authenticated_sessions/%78/"} { // escapes reach the observer decoded
				resp, _ := rawRoundTrip(t, addr, "GET "+target+" HTTP/1.1\r\nHost: "+addr+"\r\n\r\n")
				if resp.StatusCode != http.StatusNoContent {
					t.Errorf("GET %s: status %d, want it proxied", target, resp.StatusCode)
				}
			}
			if resp, _ := rawRoundTrip(t, addr, "GET /ssf/streams HTTP/1.1\r\nHost: "+addr+"\r\n\r\n"); resp.StatusCode != http.StatusTeapot {
				t.Errorf("canonical SSF path: %d", resp.StatusCode)
			}
		})
	}
}

// TestAmbiguousFramingRefused: a request declaring its body both by
// Content-Length and Transfer-Encoding, or with an obs-folded
// Content-Length or Transfer-Encoding, is answered 400 and the connection
// closed; neither it nor a request pipelined after it reaches the upstream.
func TestAmbiguousFramingRefused(t *testing.T) {
	for _, fast := range []bool{true, false} {
		t.Run(map[bool]string{true: "lane", false: "net-http"}[fast], func(t *testing.T) { testAmbiguousFraming(t, fast) })
	}
}

func testAmbiguousFraming(t *testing.T, fast bool) {
	up, got := countingUpstream(t)
	s, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), DisableFastPath: !fast})
	addr := s.Addr().String()
	const smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, req := range []string{
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled,
		"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\n" + smuggled,
		"POST /a HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\r\n\r\n" + smuggled,
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc" + smuggled,
		"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" + smuggled,
	} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, req)
		all, _ := io.ReadAll(c) // returns once the proxy closes
		c.Close()
		if !strings.HasPrefix(string(all), "HTTP/1.1 400 ") || strings.Count(string(all), "HTTP/1.1 ") != 1 {
			t.Errorf("%q: answered %q, want one 400 and a close", req, all)
		}
	}
	if g := got(); len(g) != 0 {
		t.Errorf("upstream received %q", g)
	}
}

// TestFieldPolicyOneTable: the lane's field classes and net/http's
// hop-by-hop and protected fields are the ones lane.FieldPolicy names, and no
// other field is special to either.
func TestFieldPolicyOneTable(t *testing.T) {
	hop := map[string]bool{}
	for _, k := range hopHeaders {
		hop[k] = true
	}
	ordinary := lane.Classify([]byte("Cookie"))
	for _, f := range lane.FieldPolicy {
		for _, spelling := range []string{f.Name, strings.ToLower(f.Name), strings.ToUpper(f.Name)} {
			if got := lane.Classify([]byte(spelling)); got != f.Kind || got == ordinary {
				t.Errorf("lane classifies %s as %d, policy says %d", spelling, got, f.Kind)
			}
		}
		if hop[f.Name] != f.Hop {
			t.Errorf("net/http removes %s: %v, policy says %v", f.Name, hop[f.Name], f.Hop)
		}
		if protectedHeader(f.Name) != f.Protected {
			t.Errorf("net/http protects %s: %v, policy says %v", f.Name, protectedHeader(f.Name), f.Protected)
		}
	}
	for _, other := range []string{"Cookie", "Authorization", "X-Forwarded-Port", "Content-Type", "Tee", "Hosts"} {
		if lane.Classify([]byte(other)) != ordinary || protectedHeader(other) || hop[other] {
			t.Errorf("%s is special to one path but not in the policy", other)
		}
	}
}
