package proxy

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"path"
	"strings"
)

// This file is the forwarding policy both paths apply: which header fields
// are hop-by-hop or set by the proxy (fieldPolicy: the lane's classify and
// net/http's removeHopByHop and protectedHeader are checked against it by
// TestFieldPolicyOneTable), how the X-Forwarded-* fields are written
// (forwardedPolicy), how an upstream failure is answered (upstreamFailure,
// failureFields, failureBody: TestPathsAgreeOnUpstreamFailures and
// FuzzDifferentialPaths hold the two paths to them), which request targets
// and paths are refused, and which framing. The lane only carries origin-form, canonical,
// bodyless GET and HEAD requests and hands everything else to net/http,
// where refuseRequest and shadowsClaimedRoute sit; ambiguousFraming is
// checked by the lane on every plain-HTTP connection's first head.

// fieldPolicy names every request header field the proxy treats
// specially. hop: removed before forwarding (RFC 9110 section 7.6.1, plus
// the legacy Proxy-Connection and Keep-Alive; Te is reduced to "trailers").
// protected: set by the proxy (replaced from untrusted peers), never
// removable through Connection.
var fieldPolicy = []struct {
	name      string
	kind      fieldKind // how the lane's classify sees it
	hop       bool
	protected bool
}{
	{"Connection", fConnection, true, false},
	{"Proxy-Connection", fHop, true, false},
	{"Keep-Alive", fHop, true, false},
	{"Proxy-Authenticate", fHop, true, false},
	{"Proxy-Authorization", fHop, true, false},
	{"Trailer", fHop, true, false},
	{"Transfer-Encoding", fTransferEncoding, true, false},
	{"Upgrade", fHop, true, false},
	{"Te", fHop, false, false},
	{"X-Forwarded-For", fXFF, false, true},
	{"X-Forwarded-Proto", fXFProto, false, true},
	{"X-Forwarded-Host", fXFHost, false, true},
	{"Forwarded", fForwarded, false, true},
	{"X-Real-Ip", fForwarded, false, true},
	{"Content-Length", fContentLength, false, false},
	{"Host", fHost, false, false},
	{"Expect", fExpect, false, false},
}

// refuseRequest returns why r must be answered 400 without being forwarded,
// or "" when it may go on.
//
// Only three request-target forms are let through (RFC 9112 section 3.2):
// origin-form ("/path?query"), absolute-form with an http or https scheme
// and no user info ("http://host/path"; the upstream is fixed, so the
// authority only becomes the Host), and asterisk-form for OPTIONS, which
// net/http answers itself. Anything else, such as "x:y:/api/..." (a scheme
// with an opaque part) or a bare "*", is refused: the router, the observer
// and authentik would each read another path out of it.
func refuseRequest(r *http.Request) string {
	u := r.URL
	if u == nil {
		return "no request target"
	}
	if u.Opaque != "" {
		return "request target is not origin-form"
	}
	if u.Scheme != "" || u.Host != "" {
		if u.Scheme != "http" && u.Scheme != "https" {
			return "request target has a scheme other than http or https"
		}
		if u.User != nil {
			return "request target carries user info"
		}
		if u.Path == "" {
			u.Path = "/" // "http://host" is the root (RFC 9112 section 3.2.2)
		}
	}
	if u.Path == "" || u.Path[0] != '/' {
		return "request target is not origin-form"
	}
	return ""
}

// refuse answers 400 and closes the connection: the request was not
// forwarded.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, reason string) {
	s.stats.clientErrors.Add(1)
	s.log.Info("request refused", "reason", reason, "method", r.Method, "request_id", requestID(r))
	w.Header()["Connection"] = []string{"close"}
	http.Error(w, "Bad Request", http.StatusBadRequest)
	if s.cfg.OnRequest != nil {
		s.cfg.OnRequest("proxy", http.StatusBadRequest, 0)
	}
}

// nonCanonical reports whether a path has an empty, "." or ".." segment
// (a doubled slash, "/./", "/../", or such a segment at the end): the SSF
// router, the observer and authentik's router may each read such a path
// as another one.
func nonCanonical[T string | []byte](p T) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		rest := p[i+1:]
		switch {
		case len(rest) > 0 && rest[0] == '/':
			return true
		case len(rest) > 0 && rest[0] == '.' && (len(rest) == 1 || rest[1] == '/'):
			return true
		case len(rest) > 1 && rest[0] == '.' && rest[1] == '.' && (len(rest) == 2 || rest[2] == '/'):
			return true
		}
	}
	return false
}

// canonicalPath is the decoded path with empty, "." and ".." segments
// resolved, a trailing slash (or a trailing dot segment, which names the
// directory) kept.
func canonicalPath(p string) string {
	c := path.Clean(p)
	if c != "/" && (strings.HasSuffix(p, "/") || strings.HasSuffix(p, "/.") || strings.HasSuffix(p, "/..")) {
		c += "/"
	}
	return c
}

// shadowsClaimedRoute reports whether r's path is spelled other than in its
// canonical form while the canonical form is an SSF route (doubled slashes,
// dot segments, escapes) or one the observer watches (doubled slashes, dot
// segments: the observer sees escapes decoded, as authentik does). Such a request is refused: forwarded as it is, it would carry a
// receiver's token to authentik, or run a tapped action past the tap,
// wherever authentik's router cleans the path.
func (s *Server) shadowsClaimedRoute(r *http.Request) bool {
	if r.URL.RawPath == "" && !nonCanonical(r.URL.Path) {
		return false // the common case, without allocating
	}
	c := canonicalPath(r.URL.Path)
	if r.URL.EscapedPath() == c {
		return false
	}
	if s.underSSF(c) {
		return true // the SSF router matches the raw path: any other spelling would be proxied
	}
	if s.cfg.Observer == nil || !nonCanonical(r.URL.Path) {
		return false // the observer matches the decoded path, as authentik acts on it
	}
	return s.cfg.Observer.Match(r.Method, r.Host, c)
}

func (s *Server) underSSF(p string) bool {
	for _, pre := range s.cfg.SSFPrefixes {
		base := strings.TrimSuffix(pre, "/")
		if strings.HasPrefix(p, base) && (len(p) == len(base) || p[len(base)] == '/') {
			return true
		}
	}
	return false
}

// ambiguousFraming reports whether the request head at the start of b
// (ending in an empty line, CRLF or bare LF) declares its body length two
// ways: Content-Length together with Transfer-Encoding, or either of them
// continued on an obs-folded line. A front proxy may read such a message
// differently, so it is refused with 400 and the connection closed, as
// nginx does (RFC 9112 sections 5.2 and 6.1). A b without a whole head
// reports false.
func ambiguousFraming(b []byte) bool {
	_, rest := cutLine(b) // the request line
	var cl, te, prevFraming bool
	for len(rest) > 0 {
		var line []byte
		if bytes.IndexByte(rest, '\n') < 0 {
			return false // the head is not all here
		}
		line, rest = cutLine(rest)
		if len(line) == 0 {
			return cl && te
		}
		if line[0] == ' ' || line[0] == '\t' {
			if prevFraming {
				return true // obs-fold of Content-Length or Transfer-Encoding
			}
			continue
		}
		name, _, _ := bytes.Cut(line, []byte(":"))
		name = bytes.TrimRight(name, " \t")
		isCL, isTE := asciiEqualFold(name, "content-length"), asciiEqualFold(name, "transfer-encoding")
		cl, te, prevFraming = cl || isCL, te || isTE, isCL || isTE
	}
	return false
}

// refuseFraming answers an ambiguously framed request 400 and closes the
// connection; nothing was forwarded.
func (l *lane) refuseFraming(lc *laneConn) {
	l.stats.clientErrors.Add(1)
	l.fwd.log.Info("request refused", "reason", "ambiguous message framing")
	const msg = "Bad Request\n"
	_, _ = lc.bw.WriteString("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: 12\r\n\r\n" + msg)
	_ = lc.bw.Flush()
	lc.c.Close()
}

// xfAction is what the proxy does with one of the fields that say where a
// request came from, on both paths (forwarded.apply for net/http's,
// lane.writeRequest for the lane's).
type xfAction uint8

const (
	xfKeep    xfAction = iota // passed on as it came
	xfDrop                    // removed
	xfSet                     // replaced by the proxy's own value
	xfAppend                  // the proxy's value appended to those that came
	xfDefault                 // kept when it came, else the proxy's value
)

// xfValue is the value the proxy supplies for a field.
type xfValue uint8

const (
	xfNone  xfValue = iota
	xfPeer          // the peer's IP address
	xfProto         // "http" or "https", as the request arrived
	xfHost          // the request's Host
)

// forwardedPolicy is the X-Forwarded-* rule both paths apply. From a peer
// outside --trusted-proxies every such field is the proxy's own (authentik
// believes the first X-Forwarded-For entry); a trusted peer's are kept,
// X-Forwarded-For appended to. Each kind of the lane's classify appears
// with one rule only.
var forwardedPolicy = [...]struct {
	name               string
	kind               fieldKind
	value              xfValue
	untrusted, trusted xfAction
}{
	{"X-Forwarded-For", fXFF, xfPeer, xfSet, xfAppend},
	{"X-Forwarded-Proto", fXFProto, xfProto, xfSet, xfDefault},
	{"X-Forwarded-Host", fXFHost, xfHost, xfSet, xfDefault},
	{"Forwarded", fForwarded, xfNone, xfDrop, xfKeep},
	{"X-Real-Ip", fForwarded, xfNone, xfDrop, xfKeep},
}

func xfActionFor(untrusted, trusted xfAction, isTrusted bool) xfAction {
	if isTrusted {
		return trusted
	}
	return untrusted
}

// xfByKind is forwardedPolicy by field kind, [untrusted, trusted], for the
// lane: every other kind is kept.
var xfByKind = func() (t [2][fKinds]xfAction) {
	for _, p := range forwardedPolicy {
		t[0][p.kind], t[1][p.kind] = p.untrusted, p.trusted
	}
	return t
}()

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// upstreamFailure is the status both paths answer when the upstream could
// not be reached or did not answer: 504 Gateway Timeout for a timeout, 502
// Bad Gateway otherwise. It counts the failure.
func (c *counters) upstreamFailure(err error) int {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		c.upstreamTimeouts.Add(1)
		return http.StatusGatewayTimeout
	}
	c.upstreamErrors.Add(1)
	return http.StatusBadGateway
}

// failureFields are the header fields of a 502 or 504 answer, on both
// paths, besides its Content-Length (len(failureBody(status))); a HEAD
// answer has the same fields and no body.
var failureFields = [...][2]string{
	{"Content-Type", "text/plain; charset=utf-8"},
	{"X-Content-Type-Options", "nosniff"},
}

func failureBody(status int) string { return http.StatusText(status) + "\n" }
