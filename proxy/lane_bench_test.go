package proxy

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// BenchmarkLane compares a round trip through a running proxy's listener
// with its lane (GET, carried by the lane), with the fast path off (every
// request through net/http's path), and with the upstream directly, over
// loopback with keep-alive.
func BenchmarkLane(b *testing.B) {
	up, u := benchUpstream(b)
	addrs := map[string]string{"direct": up.Listener.Addr().String()}
	for _, fast := range []bool{true, false} {
		s, err := New(Config{Listen: "127.0.0.1:0", Upstream: u, DisableFastPath: !fast, ShutdownTimeout: time.Second})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() { _ = s.Run(ctx) }()
		<-s.Ready()
		name := "lane"
		if !fast {
			name = "net-http"
		}
		addrs[name] = s.Addr().String()
	}
	for _, name := range []string{"direct", "lane", "net-http"} {
		b.Run(name, func(b *testing.B) { benchGets(b, "http://"+addrs[name]+"/api/v3/core/users/me/") })
	}
}

// BenchmarkConnPaths measures round trips on the connections net/http
// serves, over loopback with keep-alive: small POSTs and chunked PUTs on a
// plain connection the lane handed over, and GETs over TLS with HTTP/1.1
// and with HTTP/2.
func BenchmarkConnPaths(b *testing.B) {
	_, u := benchUpstream(b)
	certFile, keyFile, pool := selfSigned(b)
	start := func(cfg Config) string {
		cfg.Listen, cfg.Upstream, cfg.ShutdownTimeout = "127.0.0.1:0", u, time.Second
		s, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		b.Cleanup(cancel)
		go func() { _ = s.Run(ctx) }()
		<-s.Ready()
		return s.Addr().String()
	}
	plain := start(Config{})
	secure := start(Config{TLSCertFile: certFile, TLSKeyFile: keyFile})
	body := strings.Repeat("x", 64)
	for _, c := range []struct {
		name, method, url string
		h2, chunked       bool
	}{
		{name: "plain-post", method: "POST", url: "http://" + plain},
		{name: "plain-chunked-put", method: "PUT", url: "http://" + plain, chunked: true},
		{name: "tls-h1-get", method: "GET", url: "https://" + secure},
		{name: "tls-h2-get", method: "GET", url: "https://" + secure, h2: true},
	} {
		b.Run(c.name, func(b *testing.B) {
			tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true,
				TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: c.h2}
			benchRequests(b, tr, func() *http.Request {
				var rb io.Reader
				if c.method != http.MethodGet {
					rb = strings.NewReader(body)
					if c.chunked {
						rb = io.MultiReader(rb) // hides the length
					}
				}
				req, _ := http.NewRequest(c.method, c.url+"/api/v3/core/users/me/", rb)
				return req
			})
		})
	}
}
