package lane

import (
	"bufio"
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// h1Client is the lane's pool of keep-alive connections to a plain-HTTP
// upstream. The lane writes each request and reads the response on the
// client connection's own goroutine, with no hand-off to per-connection
// reader and writer goroutines as http.Transport does; on a small machine
// those hand-offs are a large part of a Proxied request's cost. Without a
// reader goroutine it cannot notice an idle connection closed by the
// upstream before reusing it, so the lane carries only GET and HEAD, which
// are safe to send again on a fresh connection when that happens (and an
// idle connection is peeked at before reuse, see hasUnreadBytes).
// Everything net/http serves goes through http.Transport.
type h1Client struct {
	addr              string
	dialer            net.Dialer
	respHeaderTimeout time.Duration
	maxHeaderBytes    int64
	maxIdle           int
	idleTimeout       time.Duration
	// now is the clock for idle bookkeeping (tests move it); deadlines use
	// the real clock, as the kernel does.
	now func() time.Time

	mu   sync.Mutex
	idle []*h1Conn // LIFO: the most recently used connection is the warmest
}

type h1Conn struct {
	c        net.Conn
	lr       limitedConnReader
	br       *bufio.Reader
	bw       *bufio.Writer
	lastUsed time.Time
	reused   bool
	// armed is the read deadline currently set on c (zero: none).
	armed time.Time
}

// limitedConnReader caps how much the response head may take (the header
// limit); once the head is read the cap is lifted.
type limitedConnReader struct {
	c    net.Conn
	left int64 // < 0: unlimited
}

var errHeaderTooLarge = errors.New("proxy: upstream response headers too large")

func (l *limitedConnReader) Read(p []byte) (int, error) {
	if l.left == 0 {
		return 0, errHeaderTooLarge
	}
	if l.left > 0 && int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.c.Read(p)
	if l.left > 0 {
		l.left -= int64(n)
	}
	return n, err
}

func newH1Client(cfg *Config) *h1Client {
	return &h1Client{
		addr:              hostPort(cfg.Upstream, "80"),
		dialer:            net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second},
		respHeaderTimeout: cfg.ResponseHeaderTimeout,
		maxHeaderBytes:    int64(cfg.MaxHeaderBytes) + 4096,
		maxIdle:           cfg.MaxIdleConns,
		idleTimeout:       30 * time.Second,
		now:               time.Now,
	}
}

func hostPort(host, defPort string) string {
	if _, _, err := net.SplitHostPort(host); err == nil {
		return host
	}
	return net.JoinHostPort(host, defPort)
}

// get returns an idle connection that has not been idle too long, or dials.
func (h *h1Client) get(ctx context.Context) (*h1Conn, error) {
	now := h.now()
	h.mu.Lock()
	// The bottom of the LIFO stack is the longest idle: drop one stale
	// connection from there per call, so that a pool grown in a burst
	// shrinks again instead of holding sockets the upstream has closed.
	if n := len(h.idle); n > 1 && now.Sub(h.idle[0].lastUsed) >= h.idleTimeout {
		stale := h.idle[0]
		copy(h.idle, h.idle[1:])
		h.idle[n-1] = nil
		h.idle = h.idle[:n-1]
		stale.c.Close()
	}
	for n := len(h.idle); n > 0; n = len(h.idle) {
		pc := h.idle[n-1]
		h.idle[n-1] = nil
		h.idle = h.idle[:n-1]
		if now.Sub(pc.lastUsed) < h.idleTimeout {
			h.mu.Unlock()
			// Bytes that arrived while the connection sat idle (a body
			// past its framing, sent late) belong to no request: drop it.
			if hasUnreadBytes(pc.c) {
				pc.c.Close()
				h.mu.Lock()
				continue
			}
			pc.reused = true
			return pc, nil
		}
		pc.c.Close()
	}
	h.mu.Unlock()
	c, err := h.dialer.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		return nil, err
	}
	pc := &h1Conn{c: c}
	pc.lr.c = c
	pc.br = bufio.NewReaderSize(&pc.lr, 16<<10)
	pc.bw = bufio.NewWriterSize(c, 8<<10)
	return pc, nil
}

// put pools pc after a complete exchange, unless bytes beyond the message
// are already buffered: those would be read as the next client's answer
// (net/http and nginx close such a connection too).
func (h *h1Client) put(pc *h1Conn) {
	if pc.br.Buffered() > 0 {
		pc.c.Close()
		return
	}
	pc.lastUsed = h.now()
	h.mu.Lock()
	if len(h.idle) < h.maxIdle {
		h.idle = append(h.idle, pc)
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	pc.c.Close()
}

// closeIdle closes every pooled connection.
func (h *h1Client) closeIdle() {
	h.mu.Lock()
	idle := h.idle
	h.idle = nil
	h.mu.Unlock()
	for _, pc := range idle {
		pc.c.Close()
	}
}

var aLongTimeAgo = time.Unix(1, 0)

// armHeaderDeadline makes sure a read deadline of about ResponseHeaderTimeout
// is set before the request is written. Setting a deadline is one of the
// larger costs per request, so one that is still within a small slack of the
// wanted time (a tenth of the timeout, at most a second) is kept.
func (h *h1Client) armHeaderDeadline(pc *h1Conn) {
	if h.respHeaderTimeout <= 0 {
		return
	}
	want := time.Now().Add(h.respHeaderTimeout)
	slack := min(time.Second, h.respHeaderTimeout/10)
	if !pc.armed.IsZero() && want.Sub(pc.armed) <= slack {
		return
	}
	_ = pc.c.SetReadDeadline(want)
	pc.armed = want
}

// IsConnReset reports a connection reset by the peer.
func IsConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}
