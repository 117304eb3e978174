package lane

import (
	"net"
	"testing"
	"time"
)

// TestFastPathPoolShrinks: connections idle past the idle timeout are
// closed, from the bottom of the pool, as later requests come in.
func TestFastPathPoolShrinks(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // holds the connections open, as an idle upstream does
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	h := newH1Client(&Config{Upstream: ln.Addr().String(), DialTimeout: 5 * time.Second, MaxIdleConns: 100, ResponseHeaderTimeout: time.Minute})
	now := time.Unix(1000, 0)
	h.now = func() time.Time { return now }
	// Open three connections at once, then return them to the pool.
	var conns []*h1Conn
	for range 3 {
		pc, err := h.get(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, pc)
	}
	for _, pc := range conns {
		h.put(pc)
	}
	if len(h.idle) != 3 {
		t.Fatalf("idle %d", len(h.idle))
	}
	now = now.Add(h.idleTimeout + time.Second)
	for i := range 3 {
		pc, err := h.get(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		h.put(pc)
		if i == 0 && len(h.idle) != 1 {
			// one stale dropped from the bottom, the top one found stale and
			// closed, a fresh one dialled and returned
			t.Errorf("after first request: idle %d", len(h.idle))
		}
	}
	h.closeIdle()
	if len(h.idle) != 0 {
		t.Errorf("idle after closeIdle: %d", len(h.idle))
	}
}
