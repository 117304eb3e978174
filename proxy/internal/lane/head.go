package lane

import (
	"bytes"
	"errors"
	"strconv"
)

// This file parses the two message heads the lane handles itself. Both
// parsers accept a deliberately narrow form: anything they do not accept is
// not an error for the client but a reason to give the connection to
// net/http, which then answers exactly as it would have without the lane.

// field is one header field of a parsed head; name and value point into the
// head's buffer (value without surrounding white space).
type field struct {
	name, value []byte
	kind        FieldKind
}

type FieldKind uint8

const (
	fOther FieldKind = iota
	fHost
	fConnection
	fContentLength
	fTransferEncoding
	fXFF
	fXFProto
	fXFHost
	fForwarded // Forwarded, X-Real-Ip: dropped from untrusted peers
	fHop       // Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization, Upgrade, Trailer, Te
	fExpect
	fKinds // the number of kinds
)

// Classify names the header fields the lane treats specially. The length
// switch keeps the common case (an ordinary field) to one or two compares.
func Classify(name []byte) FieldKind {
	eq := func(s string) bool { return asciiEqualFold(name, s) }
	switch len(name) {
	case 2:
		if eq("te") {
			return fHop
		}
	case 4:
		if eq("host") {
			return fHost
		}
	case 6:
		if eq("expect") {
			return fExpect
		}
	case 7:
		if eq("upgrade") {
			return fHop
		}
		if eq("trailer") {
			return fHop
		}
	case 9:
		if eq("forwarded") {
			return fForwarded
		}
		if eq("x-real-ip") {
			return fForwarded
		}
	case 10:
		if eq("connection") {
			return fConnection
		}
		if eq("keep-alive") {
			return fHop
		}
	case 14:
		if eq("content-length") {
			return fContentLength
		}
	case 15:
		if eq("x-forwarded-for") {
			return fXFF
		}
	case 16:
		if eq("proxy-connection") {
			return fHop
		}
		if eq("x-forwarded-host") {
			return fXFHost
		}
	case 17:
		if eq("transfer-encoding") {
			return fTransferEncoding
		}
		if eq("x-forwarded-proto") {
			return fXFProto
		}
	case 18:
		if eq("proxy-authenticate") {
			return fHop
		}
	case 19:
		if eq("proxy-authorization") {
			return fHop
		}
	}
	return fOther
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

// asciiSet is a byte table holding digits, letters and the extra bytes.
func asciiSet(extra string) (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range extra {
		t[c] = true
	}
	return t
}

var (
	// tchar are the token characters of RFC 9110 section 5.6.2.
	tchar = asciiSet("!#$%&'*+-.^_`|~")
	// targetChar are the bytes the lane lets through in a request target:
	// unreserved, sub-delims, ":@/?" and "%" (checked separately). Anything
	// else (quotes, brackets, backslash, controls, non-ASCII) goes to net/http.
	targetChar = asciiSet("-._~!$&'()*+,;=:@/?%")
	// hostChar are the bytes accepted in a Host value: names, IPv4,
	// bracketed IPv6 and a port.
	hostChar = asciiSet("-.:[]")
)

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// validValue reports a field value free of control characters (HTAB and
// obs-text allowed), as net/http requires.
func validValue(v []byte) bool {
	for _, c := range v {
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// reqHead is a request the lane carries: GET or HEAD, origin-form target,
// HTTP/1.1, no body, exactly one Host, no hop-by-hop field other than a
// Connection of keep-alive or close.
type reqHead struct {
	head   bool // HEAD rather than GET
	target []byte
	path   []byte // target without the query
	host   []byte
	close  bool // the client sent Connection: close
	fields []field
}

var crlf = []byte("\r\n")

// parseRequestHead parses head (a complete request head ending in CRLFCRLF)
// into h, reusing h.fields. It reports false for anything outside the
// lane's form.
func parseRequestHead(head []byte, h *reqHead) bool {
	h.fields = h.fields[:0]
	h.host, h.close = nil, false
	line, rest, ok := bytes.Cut(head, crlf)
	if !ok {
		return false
	}
	switch {
	case bytes.HasPrefix(line, []byte("GET ")):
		h.head, line = false, line[4:]
	case bytes.HasPrefix(line, []byte("HEAD ")):
		h.head, line = true, line[5:]
	default:
		return false
	}
	const version = " HTTP/1.1"
	if !bytes.HasSuffix(line, []byte(version)) {
		return false
	}
	target := line[:len(line)-len(version)]
	if len(target) == 0 || target[0] != '/' {
		return false
	}
	h.target, h.path = target, target
	inQuery := false
	for i := 0; i < len(target); i++ {
		c := target[i]
		if !targetChar[c] {
			return false
		}
		switch c {
		case '%':
			// An escape in the path would need decoding before the route
			// match; only the query may carry escapes here.
			if !inQuery || i+2 >= len(target) || !isHex(target[i+1]) || !isHex(target[i+2]) {
				return false
			}
		case '?':
			if !inQuery {
				inQuery, h.path = true, target[:i]
			}
		}
	}
	hosts := 0
	for len(rest) > 0 {
		line, rest, ok = bytes.Cut(rest, crlf)
		if !ok {
			return false
		}
		if len(line) == 0 {
			return len(rest) == 0 && hosts == 1
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return false
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !tchar[c] || c == '_' {
				// "_" is refused too: CGI-style servers read X_Forwarded_For
				// as X-Forwarded-For; net/http's path drops such aliases.
				return false
			}
		}
		if !validValue(value) {
			return false
		}
		k := Classify(name)
		switch k {
		case fHost:
			hosts++
			if len(value) == 0 {
				return false
			}
			for _, c := range value {
				if !hostChar[c] {
					return false
				}
			}
			h.host = value
		case fConnection:
			switch {
			case asciiEqualFold(value, "keep-alive"):
			case asciiEqualFold(value, "close"):
				h.close = true
			default:
				return false
			}
		case fContentLength, fTransferEncoding, fHop, fExpect:
			return false
		}
		h.fields = append(h.fields, field{name: name, value: value, kind: k})
	}
	return false
}

// respHead is an upstream response head.
type respHead struct {
	status int
	reason []byte
	minor  byte // HTTP/1.<minor>
	fields []field
	// framing
	contentLength int64 // -1: none given
	chunked       bool
	close         bool // Connection: close (or HTTP/1.0 without keep-alive)
	hasTrailer    bool
}

var errBadResponse = errors.New("proxy: malformed upstream response head")

// parseResponseHead parses head (status line and fields, each line ending
// in CRLF or LF, the empty line included) into h.
func parseResponseHead(head []byte, h *respHead) error {
	h.fields = h.fields[:0]
	h.contentLength, h.chunked, h.close, h.hasTrailer = -1, false, false, false
	line, rest := cutLine(head)
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return errBadResponse
	}
	h.minor = line[7]
	if h.minor != '0' && h.minor != '1' {
		return errBadResponse
	}
	code := line[9:12]
	if code[0] < '1' || code[0] > '9' || !isDigit(code[1]) || !isDigit(code[2]) {
		return errBadResponse
	}
	h.status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	h.reason = nil
	if len(line) > 12 {
		if line[12] != ' ' || !validValue(line[13:]) {
			return errBadResponse
		}
		h.reason = line[13:]
	}
	keepAlive := false
	for {
		if len(rest) == 0 {
			return errBadResponse // no empty line
		}
		line, rest = cutLine(rest)
		if len(line) == 0 {
			break
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return errBadResponse
		}
		name, value := line[:colon], trimOWS(line[colon+1:])
		for _, c := range name {
			if !tchar[c] {
				return errBadResponse
			}
		}
		if !validValue(value) {
			return errBadResponse
		}
		k := Classify(name)
		switch k {
		case fContentLength:
			n, err := strconv.ParseUint(string(value), 10, 63)
			if err != nil || len(value) == 0 || value[0] == '+' {
				return errBadResponse
			}
			if h.contentLength >= 0 && h.contentLength != int64(n) {
				return errBadResponse
			}
			h.contentLength = int64(n)
		case fTransferEncoding:
			if !asciiEqualFold(value, "chunked") || h.chunked {
				return errBadResponse // other codings: net/http's client refuses them too
			}
			h.chunked = true
		case fConnection:
			for _, tok := range bytes.Split(value, []byte(",")) {
				tok = trimOWS(tok)
				switch {
				case asciiEqualFold(tok, "close"):
					h.close = true
				case asciiEqualFold(tok, "keep-alive"):
					keepAlive = true
				}
			}
		}
		if k == fHop && asciiEqualFold(name, "trailer") {
			h.hasTrailer = true
		}
		h.fields = append(h.fields, field{name: name, value: value, kind: k})
	}
	if len(rest) != 0 {
		return errBadResponse
	}
	if h.minor == '0' {
		if h.chunked {
			return errBadResponse // RFC 9112 section 6.1: framing of an HTTP/1.0 message with Transfer-Encoding is faulty
		}
		if !keepAlive {
			h.close = true
		}
	}
	if h.chunked {
		h.contentLength = -1 // Transfer-Encoding overrides Content-Length
	}
	return nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// cutLine splits off the first line, without its CRLF or LF.
func cutLine(b []byte) (line, rest []byte) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return b, nil
	}
	line, rest = b[:i], b[i+1:]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, rest
}

// connectionNames returns the field names a response's Connection fields
// list (other than close and keep-alive): they are hop-by-hop and dropped.
func connectionNames(fields []field, dst [][]byte) [][]byte {
	for _, f := range fields {
		if f.kind != fConnection {
			continue
		}
		for _, tok := range bytes.Split(f.value, []byte(",")) {
			tok = trimOWS(tok)
			if len(tok) == 0 || asciiEqualFold(tok, "close") || asciiEqualFold(tok, "keep-alive") {
				continue
			}
			dst = append(dst, tok)
		}
	}
	return dst
}
