package proxy

import (
	"context"
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
