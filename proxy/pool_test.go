package proxy

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestPooledConnectionWithUnreadBytesNotReused: an upstream that sends more
// than the message framing allows (a body on a HEAD, 204 or 304 answer, or
// bytes past Content-Length, at once or a little later) must not have those
// bytes read as the answer to the next client's request: the connection is
// closed instead of pooled, on the lane and on net/http's fast path.
func TestPooledConnectionWithUnreadBytesNotReused(t *testing.T) {
	const injected = "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Injected: yes\r\n\r\nINJECTED!!!\n"
	modes := map[string][]string{
		"/mode/headbody": {fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(injected), injected)},
		"/mode/204body":  {"HTTP/1.1 204 No Content\r\n\r\n" + injected},
		"/mode/304body":  {"HTTP/1.1 304 Not Modified\r\n\r\n" + injected},
		"/mode/extra":    {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" + injected},
		"/mode/late":     {"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", injected},
		"/mode/latehead": {fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", len(injected)), injected},
	}
	for _, path := range []string{"/mode/headbody", "/mode/204body", "/mode/304body", "/mode/extra", "/mode/late", "/mode/latehead"} {
		for _, handoff := range []bool{false, true} {
			name := path + "/lane"
			if handoff {
				name = path + "/net-http"
			}
			t.Run(name, func(t *testing.T) {
				addr, _, _ := scriptedUpstream(t, func(_, _ int, r *http.Request) string {
					if parts, ok := modes[r.URL.Path]; ok {
						return strings.Join(parts, pauseMark)
					}
					b := "ok " + r.URL.Path
					return fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(b), b)
				})
				_, base := startProxy(t, Config{Upstream: mustURL(t, "http://"+addr)})
				client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1}}
				do := func(method, p string) (*http.Response, string) {
					req, _ := http.NewRequest(method, base+p, nil)
					if handoff {
						req.Header["X_Under"] = []string{"1"} // the lane hands such heads to net/http
					}
					resp, err := client.Do(req)
					if err != nil {
						t.Fatalf("%s %s: %v", method, p, err)
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					return resp, string(b)
				}
				method := http.MethodGet
				if strings.HasPrefix(path, "/mode/head") || path == "/mode/latehead" {
					method = http.MethodHead
				}
				do(method, path)
				time.Sleep(50 * time.Millisecond) // let a late surplus land
				for i := range 3 {
					p := fmt.Sprintf("/victim-%d", i)
					resp, body := do(http.MethodGet, p)
					if body != "ok "+p || resp.Header.Get("X-Injected") != "" {
						t.Fatalf("%s got %d %q (X-Injected %q): another exchange's bytes", p, resp.StatusCode, body, resp.Header.Get("X-Injected"))
					}
				}
			})
		}
	}
}
