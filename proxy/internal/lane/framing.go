package lane

import (
	"bytes"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
)

// This file is the framing check of every HTTP/1.x connection net/http
// serves: a plain one once the lane has handed it over, and every TLS one
// that did not choose h2. net/http (Go 1.26) reads a request with both
// Content-Length and Transfer-Encoding as chunked, and unfolds an
// obs-folded Content-Length; a front proxy may read either differently, so
// such a request is refused with 400 and the connection closed, as nginx
// does (RFC 9112 sections 5.2 and 6.1).
//
// The check sits under net/http, on the bytes it reads, and follows each
// request's framing the way net/http does (the head's end, then a
// Content-Length count or the chunked coding up to its trailer section), so
// that it knows where every request head starts. Nothing is held back: bytes
// go on to net/http as they arrive. When a head turns out ambiguous, the
// check stops at that byte, before the head's end, and gives net/http a NUL
// and a line end instead of the rest: a header line net/http refuses
// ("400 Bad Request", "Connection: close", and the connection closed)
// without forwarding anything. The stop is passed as a byte and not as a
// read error because net/http reads a byte in the background while it
// serves the request before (to notice a client leaving); an error there
// would cancel that request. So the answers to the pipelined requests
// before the refused one are all sent, in order.
//
// Where the check reads a body more strictly than net/http would (a chunk
// line it does not accept, a trailer section over 4 KiB or with bare LF line
// ends), net/http's body read fails with the check's error, the forwarder
// answers 400, and net/http closes the connection after any request body
// error. Where net/http refuses what the check accepts, net/http closes too.
// So the two never go on reading the same stream with different ideas of
// where a request starts. After a 101 the check steps aside (Tunnel).

// framingError is why the check stopped a connection.
type framingError string

func (e framingError) Error() string { return "proxy: " + string(e) }

// The errors the check stops on. The refusals (ambiguous framing) are logged
// and counted as client errors; the others net/http or the forwarder report.
var (
	errCLAndTE         = framingError("ambiguous message framing: Content-Length with Transfer-Encoding")
	errFolded          = framingError("ambiguous message framing: obs-folded Content-Length or Transfer-Encoding")
	errTEInOldHTTP     = framingError("ambiguous message framing: Transfer-Encoding in a request that is not HTTP/1.1")
	errBadCL           = framingError("ambiguous message framing: invalid Content-Length, or an overlong framing field")
	errUnsupportedT    = framingError("unsupported transfer coding") // net/http answers 501 itself
	errBadRequestChunk = framingError("malformed chunked request body")
)

// IsFramingError reports whether err is (or wraps) the framing check's
// stop of a connection.
func IsFramingError(err error) bool {
	var fe framingError
	return errors.As(err, &fe)
}

func refusal(err error) bool {
	for _, r := range [...]error{errCLAndTE, errFolded, errTEInOldHTTP, errBadCL} {
		if errors.Is(err, r) {
			return true
		}
	}
	return false
}

type framingState uint8

const (
	fsRequestLine framingState = iota // in a request line
	fsLineStart                       // at the start of a header line
	fsHeadCR                          // after a CR at the start of a header line
	fsName                            // in a field name
	fsValue                           // in the value of Content-Length or Transfer-Encoding
	fsSkip                            // in any other line, up to its LF
	fsBody                            // in a Content-Length body
	fsChunkSize                       // in a chunk-size line's hex digits
	fsChunkSpace                      // in white space after the chunk size
	fsChunkExt                        // in a chunk extension
	fsChunkLF                         // after the CR of a chunk-size line
	fsChunkData                       // in chunk data
	fsChunkDataCR                     // after chunk data, before its CR
	fsChunkDataLF                     // after chunk data and its CR
	fsTrailerNext                     // at the start of a trailer line (or of the empty line)
	fsTrailerLine                     // in a trailer line
	fsTrailerLF                       // after a trailer line's CR
	fsTrailerEnd                      // after the CR of the trailer section's empty line
	fsStopped                         // the check stopped the connection
)

const (
	kindOther uint8 = iota
	kindCL
	kindTE
)

// Limits on the parts of a message the check reads that net/http bounds by
// its 4 KiB read buffer: a chunk-size line (with its CRLF) and the trailer
// section (with its final CRLF).
const (
	maxChunkLine  = 4096
	maxTrailerLen = 4096
	maxValue      = 64 // a Content-Length or Transfer-Encoding value; longer ones are refused
)

// framer follows the framing of a stream of HTTP/1.x requests.
type framer struct {
	st framingState

	// The head being read.
	tail      [9]byte // the request line's last bytes, for its version
	tailN     int
	http11    bool // the request line ends in HTTP/1.1
	name      [len("transfer-encoding") + 1]byte
	nameN     int
	nameLong  bool
	kind      uint8 // of the field being read
	prev      uint8 // kind of the last field line, for obs-fold
	value     [maxValue + 1]byte
	valueN    int
	cl        int64 // -1: no Content-Length
	badValue  error // an invalid Content-Length just read
	teFields  int
	teChunked bool
	remain    uint64 // bytes left of a Content-Length body, a chunk, or its size being read
	hexDigits int
	lineLen   int // bytes of the chunk-size line or trailer section so far

	// messages counts the requests read to their end, for tests.
	messages int
}

// feed follows b, the next bytes of the stream. It returns how many of them
// may go on to net/http: all of them, or, with err set, those before the
// byte at which the check stopped the connection.
func (f *framer) feed(b []byte) (n int, err error) {
	i := 0
	for i < len(b) {
		switch f.st {
		case fsRequestLine:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				f.keepTail(b[i:])
				i = len(b)
				continue
			}
			f.keepTail(b[i : i+j])
			i += j + 1
			t := f.tail[:f.tailN]
			if len(t) > 0 && t[len(t)-1] == '\r' {
				t = t[:len(t)-1]
			}
			f.http11 = bytes.HasSuffix(t, []byte("HTTP/1.1"))
			f.cl, f.teFields, f.teChunked, f.prev, f.badValue = -1, 0, false, kindOther, nil
			f.st = fsLineStart
		case fsLineStart:
			if c := b[i]; c != ' ' && c != '\t' && f.badValue != nil {
				// The bad value was not continued on a folded line.
				return f.stop(i, f.badValue)
			}
			switch b[i] {
			case '\n':
				i++
				if err := f.endHead(); err != nil {
					return i, err
				}
			case '\r':
				i++
				f.st = fsHeadCR
			case ' ', '\t':
				if f.prev != kindOther {
					return f.stop(i, errFolded)
				}
				f.st = fsSkip
			default:
				f.nameN, f.nameLong = 0, false
				f.st = fsName
			}
		case fsHeadCR:
			if b[i] == '\n' {
				i++
				if err := f.endHead(); err != nil {
					return i, err
				}
				continue
			}
			// A line that starts with a CR but is not empty: net/http
			// refuses it; it names no framing field.
			f.prev = kindOther
			f.st = fsSkip
		case fsName:
			for i < len(b) && f.st == fsName {
				c := b[i]
				switch c {
				case ':':
					f.kind = f.classify()
					if err := f.fieldBegins(); err != nil {
						return f.stop(i, err)
					}
				case '\n':
					f.prev = kindOther // a line without a colon: net/http refuses it
					f.st = fsLineStart
				default:
					if f.nameN < len(f.name) {
						f.name[f.nameN] = c
						f.nameN++
					} else {
						f.nameLong = true
					}
				}
				i++
			}
		case fsValue:
			for i < len(b) && f.st == fsValue {
				c := b[i]
				if c == '\n' {
					if err := f.fieldEnds(); err != nil {
						return f.stop(i, err)
					}
				} else if f.valueN < len(f.value) {
					f.value[f.valueN] = c
					f.valueN++
				} else {
					return f.stop(i, errBadCL) // far longer than any real value
				}
				i++
			}
		case fsSkip:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				i = len(b)
				continue
			}
			i += j + 1
			f.st = fsLineStart
		case fsBody, fsChunkData:
			k := uint64(len(b) - i)
			if k > f.remain {
				k = f.remain
			}
			i += int(k)
			f.remain -= k
			if f.remain == 0 {
				if f.st == fsBody {
					f.nextRequest()
				} else {
					f.st = fsChunkDataCR
				}
			}
		default:
			// The chunked coding's lines, a byte at a time.
			if err := f.chunkByte(b[i]); err != nil {
				return f.stop(i, err)
			}
			i++
		}
	}
	return len(b), nil
}

func (f *framer) stop(i int, err error) (int, error) {
	f.st = fsStopped
	return i, err
}

// nextRequest is called at the end of a request: the next byte starts
// another.
func (f *framer) nextRequest() {
	f.st, f.tailN, f.remain = fsRequestLine, 0, 0
	f.messages++
}

// keepTail keeps the last bytes of the request line read so far.
func (f *framer) keepTail(s []byte) {
	if len(s) > len(f.tail) {
		s = s[len(s)-len(f.tail):]
	}
	for _, c := range s {
		if f.tailN == len(f.tail) {
			copy(f.tail[:], f.tail[1:])
			f.tailN--
		}
		f.tail[f.tailN] = c
		f.tailN++
	}
}

// classify names the field whose name ends at a colon. White space before
// the colon, which net/http refuses, counts as part of the name here, so
// that "Content-Length :" is treated as Content-Length.
func (f *framer) classify() uint8 {
	if f.nameLong {
		return kindOther
	}
	name := f.name[:f.nameN]
	for len(name) > 0 && (name[len(name)-1] == ' ' || name[len(name)-1] == '\t') {
		name = name[:len(name)-1]
	}
	switch {
	case asciiEqualFold(name, "content-length"):
		return kindCL
	case asciiEqualFold(name, "transfer-encoding"):
		return kindTE
	}
	return kindOther
}

// fieldBegins is called at the colon of a field line.
func (f *framer) fieldBegins() error {
	switch f.kind {
	case kindOther:
		f.prev = kindOther
		f.st = fsSkip
		return nil
	case kindCL:
		if f.teFields > 0 {
			return errCLAndTE
		}
	case kindTE:
		if f.cl >= 0 {
			return errCLAndTE
		}
		if !f.http11 {
			// net/http ignores Transfer-Encoding in HTTP/1.0 and would read
			// a chunked body as the next request (RFC 9112 section 6.1).
			return errTEInOldHTTP
		}
	}
	f.valueN = 0
	f.st = fsValue
	return nil
}

// fieldEnds is called at the LF of a Content-Length or Transfer-Encoding
// line.
func (f *framer) fieldEnds() error {
	v := f.value[:f.valueN]
	if len(v) > 0 && v[len(v)-1] == '\r' {
		v = v[:len(v)-1]
	}
	v = trimOWS(v)
	switch f.kind {
	case kindCL:
		n, ok := parseLength(v)
		if !ok || f.cl >= 0 && f.cl != n {
			// Refused at the next line's start, unless that folds it.
			f.badValue = errBadCL
		}
		f.cl = n
	case kindTE:
		f.teFields++
		f.teChunked = f.teFields == 1 && asciiEqualFold(v, "chunked")
	}
	f.prev = f.kind
	f.st = fsLineStart
	return nil
}

// parseLength parses a Content-Length value as net/http accepts it: decimal
// digits only, below 2^63.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := int64(c - '0')
		if n > (1<<63-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// endHead is called after the empty line that ends a head: the body's
// framing follows from it.
func (f *framer) endHead() error {
	switch {
	case f.teFields > 0 && f.cl >= 0:
		return errCLAndTE
	case f.teFields > 0 && !f.teChunked:
		// net/http answers 501 and closes; nothing after the head matters.
		f.st = fsStopped
		return errUnsupportedT
	case f.teFields > 0:
		f.st, f.remain, f.hexDigits, f.lineLen = fsChunkSize, 0, 0, 0
	case f.cl > 0:
		f.st, f.remain = fsBody, uint64(f.cl)
	default:
		f.nextRequest()
	}
	return nil
}

// chunkByte follows the chunked coding's lines as net/http's chunked
// reader and trailer reader accept them: a chunk-size line is hex digits
// (16 at most), then either white space or a ";" extension without CR, then
// CRLF, 4 KiB at most; chunk data is followed by CRLF; the trailer section
// is lines ending in CRLF (no bare LF), ending at an empty line, 4 KiB at
// most.
func (f *framer) chunkByte(c byte) error {
	switch f.st {
	case fsChunkSize, fsChunkSpace, fsChunkExt, fsChunkLF:
		f.lineLen++
		if f.lineLen > maxChunkLine {
			return errBadRequestChunk
		}
	case fsTrailerNext, fsTrailerLine, fsTrailerLF, fsTrailerEnd:
		f.lineLen++
		if f.lineLen > maxTrailerLen {
			return errBadRequestChunk
		}
	}
	switch f.st {
	case fsChunkSize:
		switch {
		case isHex(c):
			if f.hexDigits == 16 {
				return errBadRequestChunk
			}
			f.hexDigits++
			f.remain = f.remain<<4 | uint64(unhex(c))
		case f.hexDigits == 0:
			return errBadRequestChunk
		case c == ';':
			f.st = fsChunkExt
		case c == ' ' || c == '\t':
			f.st = fsChunkSpace
		case c == '\r':
			f.st = fsChunkLF
		default:
			return errBadRequestChunk
		}
	case fsChunkSpace:
		switch c {
		case ' ', '\t':
		case '\r':
			f.st = fsChunkLF
		default:
			return errBadRequestChunk // "5 ;x" and "5 x" are no sizes to net/http
		}
	case fsChunkExt:
		switch c {
		case '\r':
			f.st = fsChunkLF
		case '\n':
			return errBadRequestChunk
		}
	case fsChunkLF:
		if c != '\n' {
			return errBadRequestChunk
		}
		f.lineLen = 0
		if f.remain == 0 {
			f.st = fsTrailerNext // the last chunk
		} else {
			f.st = fsChunkData
		}
	case fsChunkDataCR:
		return f.expect(c, '\r', fsChunkDataLF)
	case fsChunkDataLF:
		f.remain, f.hexDigits, f.lineLen = 0, 0, 0
		return f.expect(c, '\n', fsChunkSize)
	case fsTrailerNext:
		switch c {
		case '\r':
			f.st = fsTrailerEnd
		case '\n':
			return errBadRequestChunk
		default:
			f.st = fsTrailerLine
		}
	case fsTrailerLine:
		switch c {
		case '\r':
			f.st = fsTrailerLF
		case '\n':
			return errBadRequestChunk
		}
	case fsTrailerLF:
		return f.expect(c, '\n', fsTrailerNext)
	case fsTrailerEnd:
		if err := f.expect(c, '\n', fsRequestLine); err != nil {
			return err
		}
		f.nextRequest()
	}
	return nil
}

// expect moves on to next if c is want.
func (f *framer) expect(c, want byte, next framingState) error {
	if c != want {
		return errBadRequestChunk
	}
	f.st = next
	return nil
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// FramingConn is a client connection that net/http serves as HTTP/1.x,
// with the framing check on what net/http reads from it.
type FramingConn struct {
	net.Conn
	f       framer
	err     error  // set once the check stopped the connection
	poison  []byte // what net/http reads after a refusal, before err
	held    []byte // bytes read after the stop, passed on only after a Tunnel
	tunnel  atomic.Bool
	refused func(err error)
}

// refusedLine ends a refused head for net/http: a field line without a
// colon, which it answers 400 (whatever part of the head came before: the
// stop is always at a field name's colon, at a line's start, or in a value).
const refusedLine = "\x00\r\n"

// tlsFramingConn is a FramingConn over TLS. net/http sets Request.TLS from
// ConnectionState for a connection that is not a *tls.Conn itself.
type tlsFramingConn struct {
	*FramingConn
	tc *tls.Conn
}

func (c tlsFramingConn) ConnectionState() tls.ConnectionState { return c.tc.ConnectionState() }

// NewFramingConn puts the framing check on c, whose next byte starts a
// request. Refused requests are counted in stats and logged.
func NewFramingConn(c net.Conn, stats *Counters, log *slog.Logger) net.Conn {
	fc := &FramingConn{Conn: c, refused: func(err error) {
		stats.ClientErrors.Add(1)
		log.Info("request refused", "reason", strings.TrimPrefix(err.Error(), "proxy: "), "remote", c.RemoteAddr().String())
	}}
	if tc, ok := c.(*tls.Conn); ok {
		return tlsFramingConn{FramingConn: fc, tc: tc}
	}
	return fc
}

func (c *FramingConn) Read(p []byte) (int, error) {
	if c.tunnel.Load() {
		if len(c.held) > 0 {
			n := copy(p, c.held)
			c.held = c.held[n:]
			return n, nil
		}
		return c.Conn.Read(p)
	}
	if c.err != nil {
		if len(c.poison) > 0 {
			n := copy(p, c.poison)
			c.poison = c.poison[n:]
			return n, nil
		}
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n == 0 {
		return 0, err
	}
	k, ferr := c.f.feed(p[:n])
	if ferr == nil {
		return n, err
	}
	c.err = ferr
	c.held = append(c.held[:0], p[k:n]...)
	if refusal(ferr) {
		c.refused(ferr)
		c.poison = []byte(refusedLine)
	}
	if k == 0 {
		return c.Read(p)
	}
	return k, nil
}

// Tunnel ends the check: after a protocol switch (101) the bytes that follow
// are no HTTP. Anything held back after a stop is passed on after all (a
// client that sent, before the 101, tunnel bytes looking like an ambiguous
// head may see its tunnel get a stray NUL). It is called between
// net/http's last read and the tunnel's first.
func (c *FramingConn) Tunnel() { c.tunnel.Store(true) }

// CloseWrite lets net/http half-close the connection as it does its own.
func (c *FramingConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}
