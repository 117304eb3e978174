package proxy

import (
	"net"
	"sync"
	"sync/atomic"
)

// limitListener caps the client connections open at once. Over the cap, a
// new connection is accepted and closed at once (counted), so that a flood
// of idle connections costs no file descriptors beyond the cap and
// newcomers learn at once instead of waiting in the kernel's queue.
type limitListener struct {
	net.Listener
	sem     chan struct{}
	refused *atomic.Uint64
}

func newLimitListener(ln net.Listener, max int, refused *atomic.Uint64) *limitListener {
	return &limitListener{Listener: ln, sem: make(chan struct{}, max), refused: refused}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.sem <- struct{}{}:
			return &limitConn{Conn: c, release: func() { <-l.sem }}, nil
		default:
			l.refused.Add(1)
			c.Close()
		}
	}
}

// limitConn gives its slot back when closed (once).
type limitConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}

// CloseWrite lets net/http half-close the connection as it does a TCP one.
func (c *limitConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
