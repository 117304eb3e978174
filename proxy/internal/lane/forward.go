package lane

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// forward carries one parsed request to the upstream and the answer back.
// It reports whether the client connection may serve another request.
func (l *Lane) forward(lc *laneConn) (keep bool) {
	cfg := &l.cfg
	var start time.Time
	if cfg.OnRequest != nil {
		start = cfg.Now()
	}
	l.stats.Proxied.Add(1)
	l.stats.Lane.Add(1)
	status, keep := l.exchange(lc)
	if cfg.OnRequest != nil {
		cfg.OnRequest("proxy", status, cfg.Now().Sub(start))
	}
	return keep
}

func (l *Lane) exchange(lc *laneConn) (status int, keep bool) {
	h := l.client
	var pc *h1Conn
	for attempt := 0; ; attempt++ {
		var err error
		pc, err = h.get(context.Background())
		if err != nil {
			return l.fail(lc, err)
		}
		h.armHeaderDeadline(pc)
		l.writeRequest(pc.bw, lc)
		if err = pc.bw.Flush(); err != nil {
			pc.c.Close()
			if pc.reused && attempt == 0 {
				continue // the upstream closed the idle connection: GET and HEAD may be sent again
			}
			return l.fail(lc, err)
		}
		lc.watch(pc.c)
		pc.lr.left = h.maxHeaderBytes
		err = readResponseHead(pc.br, &lc.rbuf, &lc.resp)
		pc.lr.left = -1
		if lc.unwatch() {
			pc.c.Close()
			l.stats.ClientGone.Add(1)
			l.log.Debug("client went away before the upstream answered", "path", string(lc.req.path))
			return 499, false
		}
		if err != nil {
			pc.c.Close()
			stale := pc.reused && attempt == 0 && len(lc.rbuf) == 0 &&
				(errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || IsConnReset(err))
			if stale {
				continue
			}
			return l.fail(lc, err)
		}
		break
	}
	resp := &lc.resp
	noBody := lc.req.head || resp.status == http.StatusNoContent || resp.status == http.StatusNotModified
	framed := noBody || resp.chunked || resp.contentLength >= 0
	// The header deadline must not cut a body short; it is left in place
	// when the body is already buffered (the next request re-arms it).
	if !pc.armed.IsZero() && !noBody && (!framed || resp.contentLength < 0 || int64(pc.br.Buffered()) < resp.contentLength) {
		_ = pc.c.SetReadDeadline(time.Time{})
		pc.armed = time.Time{}
	}
	l.writeResponseHead(lc, noBody, framed)

	var err error
	switch {
	case noBody:
	case resp.chunked:
		err = copyChunked(lc.bw, pc.br)
	case resp.contentLength >= 0:
		err = copyLength(lc.bw, pc.br, resp.contentLength, isStreaming(resp.fields))
	default:
		err = copyUntilClose(lc.bw, pc.br)
	}
	if err == nil {
		err = lc.bw.Flush()
		if err != nil {
			err = errors.Join(ErrClientWrite, err)
		}
	}
	if err != nil {
		pc.c.Close()
		if errors.Is(err, ErrClientWrite) {
			l.stats.ClientGone.Add(1)
			l.log.Debug("client went away during the response", "path", string(lc.req.path))
		} else {
			l.stats.UpstreamErrors.Add(1)
			l.log.Warn("upstream response body failed", "path", string(lc.req.path), "error", err)
			_ = lc.bw.Flush() // what did arrive, then the cut
		}
		// The status line is out: closing the connection is the only way to
		// tell the client the message is incomplete.
		return resp.status, false
	}
	if framed && !resp.close {
		h.put(pc)
	} else {
		pc.c.Close()
	}
	return resp.status, true
}

// writeRequest writes the request head for the upstream: the client's
// request line and fields as they came (Connection removed), with
// X-Forwarded-* set by ForwardedPolicy, as forwarded.apply does for
// net/http's path.
func (l *Lane) writeRequest(bw *bufio.Writer, lc *laneConn) {
	r := &lc.req
	if r.head {
		bw.WriteString("HEAD ")
	} else {
		bw.WriteString("GET ")
	}
	bw.WriteString(l.cfg.BaseRawPath)
	bw.Write(r.target)
	bw.WriteString(" HTTP/1.1\r\n")
	trusted := b2i(lc.trusted)
	var came uint32 // the kinds of the fields that came, by ForwardedPolicy
	for _, f := range r.fields {
		if f.kind == fConnection {
			continue
		}
		switch xfByKind[trusted][f.kind] {
		case XFDrop, XFSet, XFAppend:
			continue // written below, if at all
		case XFDefault:
			came |= 1 << f.kind
		}
		bw.Write(f.name)
		bw.WriteString(": ")
		bw.Write(f.value)
		bw.WriteString("\r\n")
	}
	for i := range ForwardedPolicy {
		p := &ForwardedPolicy[i]
		act := XFActionFor(p.Untrusted, p.Trusted, lc.trusted)
		switch act {
		case XFSet, XFAppend:
		case XFDefault:
			if came&(1<<p.Kind) != 0 {
				continue
			}
		default:
			continue
		}
		bw.WriteString(p.Name)
		bw.WriteString(": ")
		if act == XFAppend {
			for _, f := range r.fields {
				if f.kind == p.Kind {
					bw.Write(f.value)
					bw.WriteString(", ")
				}
			}
		}
		switch p.Value {
		case XFPeer:
			bw.WriteString(lc.ip)
		case XFProto:
			bw.WriteString("http") // the lane serves plain-HTTP listeners only
		case XFHost:
			bw.Write(r.host)
		}
		bw.WriteString("\r\n")
	}
	bw.WriteString("\r\n")
}

// readResponseHead reads a response head into *buf and parses it, skipping
// interim (1xx) responses. A 101 is an error: the lane never asks for one.
func readResponseHead(br *bufio.Reader, buf *[]byte, h *respHead) error {
	for {
		*buf = (*buf)[:0]
		for {
			line, err := br.ReadSlice('\n')
			*buf = append(*buf, line...)
			if errors.Is(err, bufio.ErrBufferFull) {
				continue
			}
			if err != nil {
				if err == io.EOF && len(*buf) > 0 {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
			if len(line) == 1 || len(line) == 2 && line[0] == '\r' {
				if len(*buf) > len(line) {
					break
				}
				return errBadResponse // a blank line where the status line belongs
			}
		}
		if err := parseResponseHead(*buf, h); err != nil {
			return err
		}
		switch {
		case h.status == http.StatusSwitchingProtocols:
			return errors.New("proxy: unexpected 101 from upstream")
		case h.status < 200:
			continue // 100 Continue, 103 Early Hints: read the final answer
		}
		return nil
	}
}

// writeResponseHead writes the upstream's status and fields to the client,
// hop-by-hop fields removed and the framing re-declared.
func (l *Lane) writeResponseHead(lc *laneConn, noBody, framed bool) {
	resp, bw := &lc.resp, lc.bw
	bw.WriteString("HTTP/1.1 ")
	var code [3]byte
	code[0], code[1], code[2] = byte('0'+resp.status/100), byte('0'+resp.status/10%10), byte('0'+resp.status%10)
	bw.Write(code[:])
	bw.WriteByte(' ')
	bw.Write(resp.reason)
	bw.WriteString("\r\n")
	lc.names = connectionNames(resp.fields, lc.names[:0])
	wroteLength := false
	for _, f := range resp.fields {
		switch f.kind {
		case fConnection, fTransferEncoding:
			continue
		case fHop:
			// Trailer announces the trailers a chunked body passes on.
			if !(resp.chunked && !noBody && asciiEqualFold(f.name, "trailer")) {
				continue
			}
		case fContentLength:
			if resp.chunked || wroteLength {
				continue
			}
			wroteLength = true
		case fOther:
			if named(lc.names, f.name) {
				continue
			}
		}
		bw.Write(f.name)
		bw.WriteString(": ")
		bw.Write(f.value)
		bw.WriteString("\r\n")
	}
	if !noBody && (resp.chunked || !framed) {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	bw.WriteString("\r\n")
}

func named(names [][]byte, name []byte) bool {
	for _, n := range names {
		if bytes.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// isStreaming reports an event stream, which is flushed as it arrives even
// with a Content-Length.
func isStreaming(fields []field) bool {
	for _, f := range fields {
		if len(f.name) == 12 && asciiEqualFold(f.name, "content-type") {
			const es = "text/event-stream"
			return len(f.value) >= len(es) && asciiEqualFold(f.value[:len(es)], es)
		}
	}
	return false
}

// copyLength copies exactly n body bytes, passing on whatever has arrived
// (flushed at once when flush is set) rather than waiting for full buffers.
func copyLength(w *bufio.Writer, r *bufio.Reader, n int64, flush bool) error {
	for n > 0 {
		if r.Buffered() == 0 {
			if _, err := r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				return err
			}
		}
		b, _ := r.Peek(int(min(n, int64(r.Buffered()))))
		if _, werr := w.Write(b); werr != nil {
			return errors.Join(ErrClientWrite, werr)
		}
		_, _ = r.Discard(len(b))
		n -= int64(len(b))
		if flush {
			if werr := w.Flush(); werr != nil {
				return errors.Join(ErrClientWrite, werr)
			}
		}
	}
	return nil
}

var errBadChunk = errors.New("proxy: malformed chunked body from upstream")

// copyChunked passes a chunked body on as it is, chunk by chunk, flushing
// after each, and checks every size line and delimiter so that nothing the
// upstream sends can end the message early or run into the next one.
func copyChunked(w *bufio.Writer, r *bufio.Reader) error {
	for {
		line, err := readBoundedLine(r)
		if err != nil {
			return err
		}
		size, ok := chunkSize(line)
		if !ok {
			return errBadChunk
		}
		if _, err := w.Write(line); err != nil {
			return errors.Join(ErrClientWrite, err)
		}
		if size == 0 {
			break
		}
		if err := copyLength(w, r, size, false); err != nil {
			return err
		}
		end, err := readBoundedLine(r)
		if err != nil {
			return err
		}
		if len(end) != 2 || end[0] != '\r' {
			return errBadChunk
		}
		if _, err := w.Write(end); err != nil {
			return errors.Join(ErrClientWrite, err)
		}
		if err := w.Flush(); err != nil {
			return errors.Join(ErrClientWrite, err)
		}
	}
	// Trailer fields, then the empty line.
	for n := 0; ; n++ {
		line, err := readBoundedLine(r)
		if err != nil {
			return err
		}
		if len(line) < 2 || line[len(line)-2] != '\r' || n > 64 {
			return errBadChunk
		}
		body := line[:len(line)-2]
		if len(body) > 0 {
			colon := bytes.IndexByte(body, ':')
			if colon <= 0 || !validValue(body[colon+1:]) {
				return errBadChunk
			}
			for _, c := range body[:colon] {
				if !tchar[c] {
					return errBadChunk
				}
			}
		}
		if _, err := w.Write(line); err != nil {
			return errors.Join(ErrClientWrite, err)
		}
		if len(body) == 0 {
			return nil
		}
	}
}

// readBoundedLine returns the next line with its CRLF (valid until the next
// read), refusing lines longer than the reader's buffer.
func readBoundedLine(r *bufio.Reader) ([]byte, error) {
	line, err := r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) {
		return nil, errBadChunk
	}
	if errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return line, err
}

// chunkSize parses a chunk-size line ("1a;ext=v\r\n").
func chunkSize(line []byte) (int64, bool) {
	if len(line) < 3 || line[len(line)-2] != '\r' {
		return 0, false
	}
	line = line[:len(line)-2]
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		if !validValue(line[i:]) {
			return 0, false
		}
		line = line[:i]
	}
	line = trimOWS(line)
	if len(line) == 0 || len(line) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case '0' <= c && c <= '9':
			d = c - '0'
		case 'a' <= c && c <= 'f':
			d = c - 'a' + 10
		case 'A' <= c && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}

// bufPool holds copy buffers for bodies delimited by the upstream's close.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// ErrClientWrite marks an error writing to the client (the client went
// away), as opposed to one reading from the upstream.
var ErrClientWrite = errors.New("proxy: writing to client failed")

// copyUntilClose passes on a body delimited by the upstream closing the
// connection, as chunks, so the client connection stays usable.
func copyUntilClose(w *bufio.Writer, r *bufio.Reader) error {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := r.Read(buf)
		if n > 0 {
			w.WriteString(strconv.FormatInt(int64(n), 16))
			w.WriteString("\r\n")
			w.Write(buf[:n])
			w.WriteString("\r\n")
			if ferr := w.Flush(); ferr != nil {
				return errors.Join(ErrClientWrite, ferr)
			}
		}
		if err == io.EOF {
			_, _ = w.WriteString("0\r\n\r\n")
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// fail answers the client 502 or 504 for an upstream that could not be
// reached or did not answer in time.
func (l *Lane) fail(lc *laneConn, err error) (int, bool) {
	status := UpstreamFailure(l.stats, err)
	method := http.MethodGet
	if lc.req.head {
		method = http.MethodHead
	}
	l.log.Warn("upstream request failed", "method", method, "path", string(lc.req.path), "status", status, "error", err)
	body := FailureBody(status)
	bw := lc.bw
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteString(" " + http.StatusText(status) + "\r\n")
	for _, f := range FailureFields {
		bw.WriteString(f[0] + ": " + f[1] + "\r\n")
	}
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n\r\n")
	if !lc.req.head {
		bw.WriteString(body)
	}
	if bw.Flush() != nil {
		return status, false
	}
	return status, true
}

// watch starts a timer that, when the upstream takes longer than
// watchDelay, watches the client connection for a disconnect and then
// aborts the upstream exchange (as net/http's request context would).
func (lc *laneConn) watch(upstream net.Conn) {
	lc.watched = upstream
	lc.stopWatch.Store(false)
	lc.gone.Store(false)
	if lc.timer == nil {
		lc.timer = time.AfterFunc(watchDelay, lc.watchClient)
	} else {
		lc.timer.Reset(watchDelay)
	}
}

func (lc *laneConn) watchClient() {
	defer func() { lc.watchDone <- struct{}{} }()
	if lc.stopWatch.Load() {
		return
	}
	_, err := lc.br.Peek(1)
	var ne net.Error
	if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
		lc.gone.Store(true)
		_ = lc.watched.SetDeadline(aLongTimeAgo)
	}
}

// unwatch ends the watch and reports whether the client went away.
func (lc *laneConn) unwatch() (gone bool) {
	if lc.timer.Stop() {
		return false
	}
	lc.stopWatch.Store(true)
	_ = lc.c.SetReadDeadline(aLongTimeAgo)
	<-lc.watchDone
	lc.armed = time.Time{} // the idle deadline is set again before the next read
	_ = lc.c.SetReadDeadline(time.Time{})
	return lc.gone.Load()
}
