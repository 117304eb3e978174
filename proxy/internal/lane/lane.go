// Package lane is the proxy's own HTTP/1.1 server for the bulk of authentik's
// traffic: GET and HEAD requests without a body on plain-HTTP listeners
// (static assets, API reads, the UI's polling). It reads each request head
// itself and, when the request is of the narrow form parseRequestHead
// accepts and no SSF route or observer claims it, writes it to a pooled
// upstream connection and streams the answer back, all on the client
// connection's own goroutine. This skips what net/http's server does per
// request (request and response objects, header maps, a background reader,
// a context) on both sides of the proxy.
//
// The first request the lane does not carry — any other method, a body, an
// upgrade, an unusual header, a claimed route — hands the connection, with
// the bytes already read, to the net/http server, which serves it (and the
// rest of the connection) exactly as it would have without the lane. So the
// lane never answers a malformed request itself: it only passes on what it
// understands completely. A handed-over connection carries the framing
// check (framing.go) on every request net/http reads from it.
//
// The package also holds the forwarding policy (policy.go) that the lane
// and the proxy's net/http path both apply, and the framing check, which
// the proxy also puts on its TLS connections.
package lane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Lane is the lane of one plain-HTTP listener.
type Lane struct {
	cfg     Config
	log     *slog.Logger
	client  *h1Client
	stats   *Counters
	handoff *Listener
	ssf     [][]byte // SSF route bases, without a trailing slash

	mu      sync.Mutex
	conns   map[*laneConn]struct{}
	closing bool
	wg      sync.WaitGroup
}

// Matcher is the observer's part the lane asks: whether it wants a
// request (those go to net/http).
type Matcher interface {
	Match(method, host, path string) bool
}

// Config is what the lane takes from the proxy's configuration.
type Config struct {
	// Upstream is the plain-HTTP upstream's host[:port]; BaseRawPath its
	// path without a trailing slash, put before every request target.
	Upstream, BaseRawPath string
	DialTimeout           time.Duration
	ResponseHeaderTimeout time.Duration
	MaxHeaderBytes        int
	MaxIdleConns          int // idle upstream connections kept
	// ReadHeaderTimeout is a new connection's time for its first request
	// head (and any head's, once it has begun); IdleTimeout the wait
	// between requests.
	ReadHeaderTimeout, IdleTimeout time.Duration
	SSFPrefixes                    []string // routes the SSF handler serves
	Observer                       Matcher  // nil: none
	Trusted                        func(ip string) bool
	Logger                         *slog.Logger
	OnRequest                      func(class string, status int, d time.Duration)
	Now                            func() time.Time
	// Carry is false when every request is to go to net/http (fast path
	// off, or a span wanted for every request): the lane then hands each
	// connection over at its first head, under the framing check.
	Carry bool
}

// Counters are the proxy's request counters the lane adds to.
type Counters struct {
	Proxied, Lane, ClientErrors, ClientGone atomic.Uint64
	UpstreamErrors, UpstreamTimeouts        atomic.Uint64
}

// watchDelay is how long an upstream may take before the lane starts
// watching the client for a disconnect (fast answers never pay for it).
const watchDelay = 100 * time.Millisecond

// New returns a lane that hands the connections it does not carry to
// handoff.
func New(cfg Config, stats *Counters, handoff *Listener) *Lane {
	l := &Lane{cfg: cfg, log: cfg.Logger, stats: stats, handoff: handoff, conns: map[*laneConn]struct{}{}}
	if l.cfg.Trusted == nil {
		l.cfg.Trusted = func(string) bool { return false }
	}
	if cfg.Carry {
		l.client = newH1Client(&l.cfg)
	}
	for _, p := range cfg.SSFPrefixes {
		l.ssf = append(l.ssf, bytes.TrimSuffix([]byte(p), []byte("/")))
	}
	return l
}

// laneConn is one client connection served by the lane.
type laneConn struct {
	c       net.Conn
	br      *bufio.Reader
	bw      *bufio.Writer
	ip      string
	remote  string // RemoteAddr, for the observer's view
	trusted bool
	idle    bool // waiting for a request (guarded by lane.mu)

	// armed is the read deadline set on c (zero: none or unknown).
	armed time.Time

	hbuf  []byte // the request head, copied out of br
	req   reqHead
	resp  respHead
	rbuf  []byte   // the upstream response head
	names [][]byte // Connection-named response fields

	// Client watch while the upstream works (see watch).
	timer     *time.Timer
	watched   net.Conn
	stopWatch atomic.Bool
	gone      atomic.Bool
	watchDone chan struct{}
}

// Serve accepts from ln until it is closed.
func (l *Lane) Serve(ln net.Listener) error {
	closing := func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.closing
	}
	return Accept(ln, l.log, closing, func(c net.Conn) {
		lc := &laneConn{c: c}
		if !l.track(lc) {
			c.Close()
			return
		}
		go l.serveConn(lc)
	})
}

// Accept calls serve with each connection ln yields until ln is closed (or
// closing reports true). A failing Accept (out of file descriptors and the
// like) is retried after a pause that grows to a second, as net/http does.
func Accept(ln net.Listener, log *slog.Logger, closing func() bool, serve func(net.Conn)) error {
	var backoff time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if closing() || errors.Is(err, net.ErrClosed) {
				return nil
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			log.Warn("proxy: accept failed; retrying", "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		serve(c)
	}
}

func (l *Lane) track(lc *laneConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closing {
		return false
	}
	l.conns[lc] = struct{}{}
	l.wg.Add(1)
	return true
}

func (l *Lane) untrack(lc *laneConn) {
	l.mu.Lock()
	delete(l.conns, lc)
	l.mu.Unlock()
	l.wg.Done()
}

// setIdle marks lc idle (shutdown may close it) or busy; it reports whether
// the lane is shutting down.
func (l *Lane) setIdle(lc *laneConn, idle bool) (closing bool) {
	l.mu.Lock()
	lc.idle = idle
	closing = l.closing
	l.mu.Unlock()
	return closing
}

// BeginShutdown stops the lane taking new requests: idle connections are
// closed now, busy ones after their current exchange.
func (l *Lane) BeginShutdown() {
	l.mu.Lock()
	l.closing = true
	for lc := range l.conns {
		if lc.idle {
			lc.c.Close()
		}
	}
	l.mu.Unlock()
}

// Wait waits for the lane's connections to finish their exchanges; when ctx
// ends first, the rest are closed.
func (l *Lane) Wait(ctx context.Context) error {
	done := make(chan struct{})
	go func() { l.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	for lc := range l.conns {
		lc.c.Close()
	}
	l.mu.Unlock()
	<-done
	return ctx.Err()
}

func (l *Lane) serveConn(lc *laneConn) {
	defer l.untrack(lc)
	lc.br = bufio.NewReaderSize(lc.c, 4<<10)
	lc.bw = bufio.NewWriterSize(lc.c, 4<<10)
	lc.remote = lc.c.RemoteAddr().String()
	lc.ip = PeerIP(lc.remote)
	lc.trusted = l.cfg.Trusted(lc.ip)
	lc.watchDone = make(chan struct{}, 1)
	cfg := &l.cfg
	// A new connection has ReadHeaderTimeout for its first byte, as
	// net/http gives it; the longer IdleTimeout is for waits between
	// requests.
	wait := cfg.ReadHeaderTimeout
	for first := true; ; first = false {
		if !first {
			wait = cfg.IdleTimeout
		}
		if lc.br.Buffered() == 0 {
			lc.armRead(time.Now().Add(wait))
			if l.setIdle(lc, true) {
				lc.c.Close()
				return
			}
			_, err := lc.br.Peek(1)
			closing := l.setIdle(lc, false)
			if err != nil || closing && lc.br.Buffered() == 0 {
				lc.c.Close()
				return
			}
		}
		head, ok, err := lc.readHead(cfg.ReadHeaderTimeout)
		if err != nil {
			lc.c.Close() // timeout or the client left half way: as net/http, just close
			return
		}
		if ok {
			// A copy: the reader's buffer moves under the client watch.
			lc.hbuf = append(lc.hbuf[:0], head...)
		}
		if !ok || !parseRequestHead(lc.hbuf, &lc.req) || l.claimed(lc) {
			l.handOff(lc)
			return
		}
		_, _ = lc.br.Discard(len(head))
		keep := l.forward(lc)
		l.mu.Lock()
		closing := l.closing
		l.mu.Unlock()
		if !keep || lc.req.close || closing {
			lc.c.Close()
			return
		}
	}
}

// armRead sets the client read deadline to about t, skipping the (costly)
// call when the one in place is within a second of it.
func (lc *laneConn) armRead(t time.Time) {
	if !lc.armed.IsZero() {
		if d := t.Sub(lc.armed); d > -time.Second && d < time.Second {
			return
		}
	}
	_ = lc.c.SetReadDeadline(t)
	lc.armed = t
}

// readHead waits until the buffer holds a whole request head and returns it
// (not consumed). ok is false when the head is not of the lane's form as far
// as framing goes (bare LF line ends, larger than the buffer).
func (lc *laneConn) readHead(timeout time.Duration) (head []byte, ok bool, err error) {
	armed := false
	for {
		b, _ := lc.br.Peek(lc.br.Buffered())
		if i := bytes.Index(b, []byte("\r\n\r\n")); i >= 0 {
			b = b[:i+4]
			return b, bareLF(b) < 0, nil
		}
		if bareLF(b) >= 0 || len(b) >= lc.br.Size() {
			return nil, false, nil
		}
		if !armed {
			// The rest of the head is late: from now on it has ReadHeaderTimeout.
			lc.armRead(time.Now().Add(timeout))
			armed = true
		}
		if _, err := lc.br.Peek(len(b) + 1); err != nil {
			return nil, false, err
		}
	}
}

// bareLF returns the index of a LF not preceded by CR, or -1.
func bareLF(b []byte) int {
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		if i+j == 0 || b[i+j-1] != '\r' {
			return i + j
		}
		i += j + 1
	}
}

// claimed reports whether an SSF route or the observer wants the request:
// those go through net/http and the forwarder's full path.
func (l *Lane) claimed(lc *laneConn) bool {
	if !l.cfg.Carry {
		return true
	}
	path := lc.req.path
	if NonCanonical(path) {
		return true // net/http's path checks whether it shadows an SSF or tapped route
	}
	for _, base := range l.ssf {
		if bytes.HasPrefix(path, base) && (len(path) == len(base) || path[len(base)] == '/') {
			return true
		}
	}
	if l.cfg.Observer == nil {
		return false
	}
	method := http.MethodGet
	if lc.req.head {
		method = http.MethodHead
	}
	return l.cfg.Observer.Match(method, string(lc.req.host), string(path))
}

// handOff gives the connection and what was read of it to net/http, with
// the framing check on every request from this one on (see framing.go).
func (l *Lane) handOff(lc *laneConn) {
	lc.armed = time.Time{}
	_ = lc.c.SetReadDeadline(time.Time{}) // net/http sets its own
	l.handoff.Deliver(NewFramingConn(&handoffConn{Conn: lc.c, br: lc.br}, l.stats, l.log))
}

// handoffConn is a client connection whose first bytes sit in br.
type handoffConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *handoffConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http half-close the connection as it does its own.
func (c *handoffConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Listener is the listener net/http serves: it yields the connections
// the lane hands over.
type Listener struct {
	addr net.Addr
	ch   chan net.Conn
	once sync.Once
	done chan struct{}
}

// NewListener returns a Listener that reports addr.
func NewListener(addr net.Addr) *Listener {
	return &Listener{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

// Deliver hands c to the server accepting from l, or closes it once l is
// closed.
func (l *Listener) Deliver(c net.Conn) {
	select {
	case l.ch <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *Listener) Addr() net.Addr { return l.addr }

// CloseIdle drops the idle upstream connections.
func (l *Lane) CloseIdle() {
	if l.client != nil {
		l.client.closeIdle()
	}
}

// PeerIP returns the IP part of a RemoteAddr ("1.2.3.4:5", "[::1]:5"),
// without any zone.
func PeerIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	return host
}
