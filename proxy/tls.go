package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// serveTLS accepts from ln and does each TLS handshake itself, so that
// every HTTP/1.1 connection reaches net/http with the framing check on
// (lane.NewFramingConn, which also gives net/http the TLS state for
// Request.TLS). A connection that chose h2 by ALPN goes to net/http as the
// *tls.Conn its HTTP/2 server takes; HTTP/2 frames its messages itself.
// Handshakes have ReadHeaderTimeout, as net/http gives them, and end with
// ctx.
func (s *Server) serveTLS(ctx context.Context, ln net.Listener, cfg *tls.Config, to *lane.Listener) error {
	never := func() bool { return false }
	return lane.Accept(ln, s.log, never, func(c net.Conn) { go s.handshake(ctx, c, cfg, to) })
}

func (s *Server) handshake(ctx context.Context, c net.Conn, cfg *tls.Config, to *lane.Listener) {
	if d := s.cfg.ReadHeaderTimeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	tc := tls.Server(c, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		// A client speaking plain HTTP to the TLS port is told so, as
		// net/http tells it.
		var re tls.RecordHeaderError
		if errors.As(err, &re) && re.Conn != nil && looksLikeHTTP(re.RecordHeader) {
			_ = re.Conn.SetWriteDeadline(time.Now().Add(time.Second))
			_, _ = io.WriteString(re.Conn, "HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
		}
		s.log.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "error", err)
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == "h2" {
		to.Deliver(tc)
		return
	}
	to.Deliver(lane.NewFramingConn(tc, &s.stats.Counters, s.log))
}

// looksLikeHTTP reports whether the first bytes of a TLS record header are
// those of an HTTP request.
func looksLikeHTTP(hdr [5]byte) bool {
	switch string(hdr[:]) {
	case "GET /", "HEAD ", "POST ", "PUT /", "OPTIO":
		return true
	}
	return false
}
