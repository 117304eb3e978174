package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// h1Client is the hot path for the common case: an idempotent request (GET,
// HEAD, OPTIONS, TRACE) without a body or protocol switch to a plain-HTTP
// upstream — static assets, API reads, the UI's polling. The handler goroutine writes the
// request and reads the response on a pooled keep-alive connection itself,
// with no hand-off to per-connection reader and writer goroutines as
// http.Transport does; on a small machine those hand-offs are a large part of
// a proxied request's cost. Without a reader goroutine it cannot notice an
// idle connection closed by the upstream before reusing it, so it carries
// only requests that are safe to retry on a fresh connection when that
// happens. Everything else (bodies, other methods, upgrades, https
// upstreams) goes through http.Transport.
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

func newH1Client(cfg Config) *h1Client {
	return &h1Client{
		addr:              hostPort(cfg.Upstream.Host, "80"),
		dialer:            net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second},
		respHeaderTimeout: cfg.ResponseHeaderTimeout,
		maxHeaderBytes:    int64(cfg.MaxHeaderBytes) + 4096,
		maxIdle:           cfg.MaxIdleConnsPerHost,
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

// roundTrip sends a bodyless idempotent request. One that fails on a reused
// connection the upstream had already closed is retried once on a fresh
// connection, as http.Transport does for these methods.
func (h *h1Client) roundTrip(out *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, retry, err := h.try(out)
		if err == nil || !retry || attempt > 0 || !idempotent(out.Method) {
			return resp, err
		}
	}
}

func idempotent(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

// errTimeoutHeaders reports the response-header timeout; it is a net.Error
// with Timeout() so that the caller answers 504.
type timeoutError struct{ msg string }

func (e timeoutError) Error() string   { return e.msg }
func (e timeoutError) Timeout() bool   { return true }
func (e timeoutError) Temporary() bool { return true }

func (h *h1Client) try(out *http.Request) (resp *http.Response, retry bool, err error) {
	ctx := out.Context()
	pc, err := h.get(ctx)
	if err != nil {
		return nil, false, err
	}
	// A departed client aborts the exchange by poisoning the deadline.
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(aLongTimeAgo) })
	fail := func(err error) (*http.Response, bool, error) {
		stop()
		pc.c.Close()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return nil, false, ctxErr
		}
		return nil, false, err
	}
	h.armHeaderDeadline(pc)
	if err := out.Write(pc.bw); err != nil {
		return fail(err)
	}
	if err := pc.bw.Flush(); err != nil {
		r, _, e := fail(err)
		return r, pc.reused && ctx.Err() == nil, e
	}
	pc.lr.left = h.maxHeaderBytes
	for {
		resp, err = http.ReadResponse(pc.br, out)
		if err != nil {
			stale := pc.reused && ctx.Err() == nil && pc.br.Buffered() == 0 &&
				(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err))
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() && ctx.Err() == nil {
				err = timeoutError{"proxy: timeout awaiting upstream response headers"}
			}
			r, _, e := fail(err)
			return r, stale, e
		}
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			resp.Body.Close()
			continue // interim response (100 Continue, 103 Early Hints): read the final one
		}
		break
	}
	pc.lr.left = -1
	// The header deadline must not cut the body short. When the whole body
	// is already buffered no further read can hit it, and the next request
	// on this connection re-arms it anyway, so the (costly) reset is skipped.
	if !pc.armed.IsZero() && (resp.ContentLength < 0 || int64(pc.br.Buffered()) < resp.ContentLength) {
		_ = pc.c.SetReadDeadline(time.Time{})
		pc.armed = time.Time{}
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// Not asked for: the fast path never sends Upgrade.
		resp.Body.Close()
		return fail(fmt.Errorf("proxy: unexpected 101 from upstream"))
	}
	if resp.Body == http.NoBody {
		h.release(pc, stop, !resp.Close)
		return resp, false, nil
	}
	resp.Body = &h1Body{rc: resp.Body, pc: pc, h: h, stop: stop, keep: !resp.Close}
	return resp, false, nil
}

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

// release returns pc to the pool when the exchange ended cleanly, or closes it.
func (h *h1Client) release(pc *h1Conn, stop func() bool, keep bool) {
	if stop() && keep {
		h.put(pc)
		return
	}
	pc.c.Close()
}

func isConnReset(err error) bool {
	return errors.Is(err, syscall.ECONNRESET)
}

// h1Body hands the connection back once the response body was read to its
// end, and closes it if the body is abandoned half way.
type h1Body struct {
	rc   io.ReadCloser
	pc   *h1Conn
	h    *h1Client
	stop func() bool
	keep bool
	eof  bool
	done bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
	}
	return n, err
}

func (b *h1Body) Close() error {
	if b.done {
		return nil
	}
	b.done = true
	err := b.rc.Close()
	b.h.release(b.pc, b.stop, b.keep && b.eof)
	return err
}
