package proxy

import (
	"context"
	"io"
	"net/http"
	"sync"
)

// captureChunk is one Read result handed from the pump to the reader.
type captureChunk struct {
	b   []byte
	err error
}

// captured is the result of capture: the first bytes of a body, and a reader
// that yields the whole body again, captured part first.
type captured struct {
	prefix []byte
	rest   io.ReadCloser
}

// capture reads the first limit bytes of body, stopping early at EOF, on a
// read error, or when ctx is done — so a slow peer cannot hold the exchange
// past the observer's bound. Reads run in a pump goroutine; a read still in
// flight when capture returns is handed to the returned reader, never lost.
// closeSrc says whether closing the returned reader closes body (true for
// upstream responses; request bodies belong to the server).
func capture(ctx context.Context, body io.ReadCloser, limit int, closeSrc bool) captured {
	if body == nil || body == http.NoBody || limit <= 0 {
		return captured{rest: body}
	}
	ch := make(chan captureChunk, 1)
	stop := make(chan struct{})
	abandon := make(chan struct{})
	go pump(body, ch, stop, abandon, limit)

	var pending []byte
	var srcErr error
	open := true
loop:
	for len(pending) < limit && srcErr == nil {
		select {
		case c, ok := <-ch:
			if !ok {
				open = false
				break loop
			}
			pending = append(pending, c.b...)
			srcErr = c.err
		case <-ctx.Done():
			break loop
		}
	}
	close(stop)
	n := min(len(pending), limit)
	prefix := make([]byte, n)
	copy(prefix, pending[:n])
	r := &prefixReader{pending: pending, err: srcErr, src: body, closeSrc: closeSrc, abandon: abandon}
	if open && srcErr == nil {
		r.ch = ch
	}
	return captured{prefix: prefix, rest: r}
}

// pump reads body until stop is closed (checked between reads), an error, or
// the reader is abandoned.
func pump(body io.Reader, ch chan<- captureChunk, stop, abandon <-chan struct{}, limit int) {
	defer close(ch)
	size := min(limit, 32<<10)
	for {
		buf := make([]byte, size)
		n, err := body.Read(buf)
		select {
		case ch <- captureChunk{b: buf[:n], err: err}:
		case <-abandon:
			return
		}
		if err != nil {
			return
		}
		select {
		case <-stop:
			return
		default:
		}
	}
}

// prefixReader replays the bytes capture already read, then whatever the
// pump still delivers, then reads the source directly.
type prefixReader struct {
	pending  []byte
	err      error
	ch       <-chan captureChunk
	src      io.ReadCloser
	closeSrc bool
	abandon  chan struct{}
	once     sync.Once
}

func (p *prefixReader) Read(b []byte) (int, error) {
	for {
		if len(p.pending) > 0 {
			n := copy(b, p.pending)
			p.pending = p.pending[n:]
			return n, nil
		}
		if p.err != nil {
			return 0, p.err
		}
		if p.ch == nil {
			return p.src.Read(b)
		}
		c, ok := <-p.ch
		if !ok {
			p.ch = nil
			continue
		}
		p.pending, p.err = c.b, c.err
	}
}

func (p *prefixReader) Close() error {
	p.once.Do(func() { close(p.abandon) })
	if p.closeSrc {
		return p.src.Close()
	}
	return nil
}
