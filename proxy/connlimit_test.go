package proxy

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// TestConnectionCap: with MaxConns open, a new connection is closed at
// once and counted; once one closes, new clients are served again.
func TestConnectionCap(t *testing.T) {
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), MaxConns: 3})
	addr := s.Addr().String()
	var held []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	waitFor(t, "a refused connection", func() bool {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return false
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = c.Read(make([]byte, 1))
		return err == io.EOF || lane.IsConnReset(err)
	})
	if s.Stats().ConnsRefused == 0 {
		t.Error("refused connections not counted")
	}
	held[0].Close()
	waitFor(t, "a slot to free", func() bool {
		resp, err := http.Get(base + "/after")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	for _, c := range held[1:] {
		c.Close()
	}
}

// TestSilentConnectionClosedAtHeaderTimeout: a connection that never sends
// a byte is closed after ReadHeaderTimeout, not held for IdleTimeout, on
// the lane's listener and on net/http's.
func TestSilentConnectionClosedAtHeaderTimeout(t *testing.T) {
	for _, fast := range []bool{true, false} {
		up := reflectUpstream(t)
		s, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), DisableFastPath: !fast,
			ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: time.Hour})
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, err = c.Read(make([]byte, 1))
		c.Close()
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("fast path %v: a silent connection was still open after 20 s", fast)
		}
	}
}
