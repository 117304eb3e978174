package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// Server is the HTTP front: an echo server whose router tells the SSF
// prefixes from everything else, which goes to the proxy core.
type Server struct {
	cfg      Config
	log      *slog.Logger
	echo     *echo.Echo
	root     http.Handler
	fwd      *forwarder
	stats    counters
	upgrades *connSet

	ready   chan struct{}
	addrMu  sync.Mutex
	addr    net.Addr
	running atomic.Bool
}

// New validates cfg and builds a Server. Nothing listens until Run.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, upgrades: newConnSet(), ready: make(chan struct{})}
	s.fwd = newForwarder(cfg, &s.stats, s.upgrades)

	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.Logger.SetOutput(discard{})
	proxyHandler := func(c echo.Context) error {
		s.fwd.ServeHTTP(c.Response(), c.Request())
		return nil
	}
	// Every path the SSF prefixes do not claim is proxied, whatever the
	// method: RouteNotFound catches paths, and the SSF routes are registered
	// for every method.
	e.RouteNotFound("/*", proxyHandler)
	if cfg.SSF != nil {
		ssf := func(c echo.Context) error {
			s.stats.ssf.Add(1)
			var start = cfg.Now()
			r := c.Request()
			var span trace.Span
			if s.fwd.tr != nil {
				r, span = s.fwd.tr.start(r, "ssf")
			}
			cfg.SSF.ServeHTTP(c.Response(), r)
			if span != nil {
				endSpan(span, "ssf", c.Response().Status)
			}
			if cfg.OnRequest != nil {
				cfg.OnRequest("ssf", c.Response().Status, cfg.Now().Sub(start))
			}
			return nil
		}
		for _, p := range cfg.SSFPrefixes {
			base := strings.TrimSuffix(p, "/")
			e.Any(base, ssf)
			e.Any(base+"/*", ssf)
		}
	}
	s.echo = e
	s.root = http.HandlerFunc(s.serveRoot)
	return s, nil
}

// serveRoot refuses CONNECT (the sidecar is no forward proxy: a tunnel
// through it would bypass everything) and every request the forwarding
// policy refuses (see refuseRequest); all else goes to echo. ("OPTIONS *"
// never gets here: net/http answers it itself.)
func (s *Server) serveRoot(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		w.Header()["Allow"] = []string{"GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"}
		http.Error(w, "CONNECT is not supported", http.StatusMethodNotAllowed)
		return
	}
	if reason := refuseRequest(r); reason != "" {
		s.refuse(w, r, reason)
		return
	}
	if s.shadowsClaimedRoute(r) {
		s.refuse(w, r, "non-canonical path of an SSF or tapped route")
		return
	}
	s.echo.ServeHTTP(w, r)
}

type discard struct{}

func (discard) Write(b []byte) (int, error) { return len(b), nil }

// Handler returns the server's root handler (echo behind a CONNECT guard),
// for use with httptest.
func (s *Server) Handler() http.Handler { return s.root }

// Ready is closed once Run is listening; Addr is valid from then on.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Addr is the actual listen address once Run has started listening (useful
// with ":0"), nil before.
func (s *Server) Addr() net.Addr {
	s.addrMu.Lock()
	defer s.addrMu.Unlock()
	return s.addr
}

// Run listens on cfg.Listen and serves until ctx is done, then stops taking
// new connections and drains in-flight requests within ShutdownTimeout;
// requests still running then are cut, and upgraded (WebSocket) connections
// are closed. It returns nil after a clean drain.
func (s *Server) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("proxy: Run called twice")
	}
	tcpLn, err := net.Listen("tcp", s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("proxy: listen on %s: %w", s.cfg.Listen, err)
	}
	var ln net.Listener = newLimitListener(tcpLn, s.cfg.MaxConns, &s.stats.connsRefused)
	srv := &http.Server{
		Handler:           s.root,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	tlsOn := s.cfg.TLSCertFile != ""
	if tlsOn {
		cert, err := tls.LoadX509KeyPair(s.cfg.TLSCertFile, s.cfg.TLSKeyFile)
		if err != nil {
			ln.Close()
			return fmt.Errorf("proxy: load TLS key pair: %w", err)
		}
		srv.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
			NextProtos:   []string{"h2", "http/1.1"},
		}
	}
	s.addrMu.Lock()
	s.addr = ln.Addr()
	s.addrMu.Unlock()
	close(s.ready)
	s.log.Info("proxy listening", "addr", ln.Addr().String(), "upstream", s.cfg.Upstream.Redacted(), "tls", tlsOn)

	// net/http serves only connections handed to it, each HTTP/1.x one with
	// the framing check on (lane.NewFramingConn). The lane reads every
	// plain-HTTP connection first and hands over those it does not carry
	// itself (with the fast path off it carries none); on TLS, serveTLS
	// does the handshakes.
	errc := make(chan error, 2)
	handoff := lane.NewListener(ln.Addr())
	front := func() error { return nil }
	var ln2 *lane.Lane
	hsCtx, stopHandshakes := context.WithCancel(context.WithoutCancel(ctx))
	defer stopHandshakes()
	if tlsOn {
		// A copy: net/http's HTTP/2 set-up edits srv.TLSConfig in Serve.
		cfg := srv.TLSConfig.Clone()
		front = func() error { return s.serveTLS(hsCtx, ln, cfg, handoff) }
	} else {
		ln2 = lane.New(s.laneConfig(), &s.stats.Counters, handoff)
		front = func() error { return ln2.Serve(ln) }
	}
	go func() { errc <- srv.Serve(handoff) }()
	go func() {
		if err := front(); err != nil {
			errc <- err
		}
	}()

	select {
	case err := <-errc:
		ln.Close()
		stopHandshakes()
		if ln2 != nil {
			ln2.BeginShutdown()
		}
		srv.Close()
		s.upgrades.closeAll()
		return fmt.Errorf("proxy: serve: %w", err)
	case <-ctx.Done():
	}

	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
	defer cancel()
	s.log.Info("proxy draining", "timeout", s.cfg.ShutdownTimeout)
	ln.Close()
	stopHandshakes()
	if ln2 != nil {
		ln2.BeginShutdown()
	}
	err = srv.Shutdown(sctx)
	if ln2 != nil {
		err = errors.Join(err, ln2.Wait(sctx))
	}
	n := s.upgrades.closeAll()
	if ln2 != nil {
		ln2.CloseIdle()
	}
	if err != nil {
		srv.Close()
		s.fwd.closeIdle()
		return fmt.Errorf("proxy: drain did not finish within %s: %w", s.cfg.ShutdownTimeout, err)
	}
	s.fwd.closeIdle()
	<-errc
	s.log.Info("proxy stopped", "upgraded_conns_closed", n)
	return nil
}

// laneOn reports whether the proxy's own HTTP/1.1 lane serves the
// listener: plain HTTP to clients and upstream, the fast path not turned
// off, and no span wanted for every proxied request.
func (s *Server) laneOn() bool {
	return s.fwd.fast && (s.fwd.tr == nil || !s.fwd.tr.all)
}

// laneConfig is the lane's part of the configuration.
func (s *Server) laneConfig() lane.Config {
	c := &s.cfg
	lc := lane.Config{
		Upstream: c.Upstream.Host, BaseRawPath: s.fwd.baseRawPath,
		DialTimeout: DefaultDialTimeout, ResponseHeaderTimeout: c.ResponseHeaderTimeout,
		MaxHeaderBytes: c.MaxHeaderBytes, MaxIdleConns: c.MaxIdleConnsPerHost,
		ReadHeaderTimeout: c.ReadHeaderTimeout, IdleTimeout: c.IdleTimeout,
		Trusted: s.fwd.fwd.isTrusted, Logger: s.log, OnRequest: c.OnRequest, Now: c.Now,
		Carry: s.laneOn(),
	}
	if c.SSF != nil {
		lc.SSFPrefixes = c.SSFPrefixes
	}
	if c.Observer != nil {
		lc.Observer = c.Observer
	}
	return lc
}
