package proxy

import (
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
)

// upgrade completes a protocol switch (WebSocket): it hands the client the
// upstream's 101, then splices the two connections until either side closes.
func (p *forwarder) upgrade(w http.ResponseWriter, r *http.Request, out *http.Request, resp *http.Response) int {
	backend, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return p.fail(w, r, out, errors.New("proxy: 101 response body is not writable"))
	}
	want := out.Header.Get("Upgrade")
	got := resp.Header.Get("Upgrade")
	if want == "" || !strings.EqualFold(want, got) {
		backend.Close()
		return p.fail(w, r, out, errors.New("proxy: upstream switched to a protocol the client did not ask for"))
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		backend.Close()
		p.log.Warn("cannot take over the client connection for an upgrade", "request_id", requestID(r), "error", err)
		return p.fail(w, r, out, err)
	}
	// From here on the connection carries the new protocol: the framing
	// check under net/http (lane.FramingConn) stops following it.
	if fc, ok := conn.(interface{ Tunnel() }); ok {
		fc.Tunnel()
	}
	p.stats.upgrades.Add(1)
	id := p.upgrades.add(conn, backend)
	defer p.upgrades.remove(id)
	defer conn.Close()
	defer backend.Close()

	// Write the 101 with the upstream's headers (hop-by-hop removed, the
	// upgrade pair restored).
	h := resp.Header.Clone()
	removeHopByHop(h)
	h["Connection"] = []string{"Upgrade"}
	h["Upgrade"] = []string{got}
	resp.Header = h
	resp.Body = nil
	if err := resp.Write(brw); err != nil {
		return http.StatusSwitchingProtocols
	}
	if err := brw.Flush(); err != nil {
		return http.StatusSwitchingProtocols
	}

	errc := make(chan error, 2)
	go spliceCopy(errc, backend, brw.Reader) // bytes the client sent already sit in brw
	go spliceCopy(errc, conn, backend)
	<-errc
	return http.StatusSwitchingProtocols
}

func spliceCopy(errc chan<- error, dst io.Writer, src io.Reader) {
	bp := bufPool.Get().(*[]byte)
	_, err := io.CopyBuffer(dst, src, *bp)
	bufPool.Put(bp)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	errc <- err
}

// connSet tracks hijacked connections, which http.Server.Shutdown does not
// see, so that Run can close them once the drain is over.
type connSet struct {
	mu    sync.Mutex
	next  uint64
	conns map[uint64][2]io.Closer
}

func newConnSet() *connSet { return &connSet{conns: map[uint64][2]io.Closer{}} }

func (s *connSet) add(client net.Conn, backend io.Closer) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	s.conns[s.next] = [2]io.Closer{client, backend}
	return s.next
}

func (s *connSet) remove(id uint64) {
	s.mu.Lock()
	delete(s.conns, id)
	s.mu.Unlock()
}

// closeAll closes every tracked connection and reports how many there were.
func (s *connSet) closeAll() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.conns)
	for id, c := range s.conns {
		c[0].Close()
		c[1].Close()
		delete(s.conns, id)
	}
	return n
}
