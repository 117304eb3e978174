package lane

import (
	"context"
	"errors"
	"net"
	"net/http"
)

// This file is the forwarding policy both paths of the proxy apply, the
// lane and net/http's (the proxy package): which header fields are
// hop-by-hop or set by the proxy (FieldPolicy), how the X-Forwarded-*
// fields are written (ForwardedPolicy), how an upstream failure is answered
// (UpstreamFailure, FailureFields, FailureBody), which paths are not
// canonical (NonCanonical); the framing refused is in framing.go.
// The proxy's TestFieldPolicyOneTable, TestPathsAgreeOnUpstreamFailures and
// FuzzDifferentialPaths hold both paths to it.

// FieldPolicy names every request header field the proxy treats
// specially. hop: removed before forwarding (RFC 9110 section 7.6.1, plus
// the legacy Proxy-Connection and Keep-Alive; Te is reduced to "trailers").
// protected: set by the proxy (replaced from untrusted peers), never
// removable through Connection.
var FieldPolicy = []struct {
	Name      string
	Kind      FieldKind // how the lane's Classify sees it
	Hop       bool
	Protected bool
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

// NonCanonical reports whether a path has an empty, "." or ".." segment
// (a doubled slash, "/./", "/../", or such a segment at the end): the SSF
// router, the observer and authentik's router may each read such a path
// as another one.
func NonCanonical[T string | []byte](p T) bool {
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

// XFAction is what the proxy does with one of the fields that say where a
// request came from, on both paths (forwarded.apply for net/http's,
// lane.writeRequest for the lane's).
type XFAction uint8

const (
	XFKeep    XFAction = iota // passed on as it came
	XFDrop                    // removed
	XFSet                     // replaced by the proxy's own value
	XFAppend                  // the proxy's value appended to those that came
	XFDefault                 // kept when it came, else the proxy's value
)

// XFValue is the value the proxy supplies for a field.
type XFValue uint8

const (
	XFNone  XFValue = iota
	XFPeer          // the peer's IP address
	XFProto         // "http" or "https", as the request arrived
	XFHost          // the request's Host
)

// ForwardedPolicy is the X-Forwarded-* rule both paths apply. From a peer
// outside --trusted-proxies every such field is the proxy's own (authentik
// believes the first X-Forwarded-For entry); a trusted peer's are kept,
// X-Forwarded-For appended to. Each kind of the lane's Classify appears
// with one rule only.
var ForwardedPolicy = [...]struct {
	Name               string
	Kind               FieldKind
	Value              XFValue
	Untrusted, Trusted XFAction
}{
	{"X-Forwarded-For", fXFF, XFPeer, XFSet, XFAppend},
	{"X-Forwarded-Proto", fXFProto, XFProto, XFSet, XFDefault},
	{"X-Forwarded-Host", fXFHost, XFHost, XFSet, XFDefault},
	{"Forwarded", fForwarded, XFNone, XFDrop, XFKeep},
	{"X-Real-Ip", fForwarded, XFNone, XFDrop, XFKeep},
}

func XFActionFor(untrusted, trusted XFAction, isTrusted bool) XFAction {
	if isTrusted {
		return trusted
	}
	return untrusted
}

// xfByKind is ForwardedPolicy by field kind, [untrusted, trusted], for the
// lane: every other kind is kept.
var xfByKind = func() (t [2][fKinds]XFAction) {
	for _, p := range ForwardedPolicy {
		t[0][p.Kind], t[1][p.Kind] = p.Untrusted, p.Trusted
	}
	return t
}()

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// UpstreamFailure is the status both paths answer when the upstream could
// not be reached or did not answer: 504 Gateway Timeout for a timeout, 502
// Bad Gateway otherwise. It counts the failure.
func UpstreamFailure(c *Counters, err error) int {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, context.DeadlineExceeded) {
		c.UpstreamTimeouts.Add(1)
		return http.StatusGatewayTimeout
	}
	c.UpstreamErrors.Add(1)
	return http.StatusBadGateway
}

// FailureFields are the header fields of a 502 or 504 answer, on both
// paths, besides its Content-Length (len(FailureBody(status))); a HEAD
// answer has the same fields and no body.
var FailureFields = [...][2]string{
	{"Content-Type", "text/plain; charset=utf-8"},
	{"X-Content-Type-Options", "nosniff"},
}

func FailureBody(status int) string { return http.StatusText(status) + "\n" }
