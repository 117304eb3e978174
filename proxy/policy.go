package proxy

import (
	"net/http"
	"path"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// This file holds the net/http path's part of the forwarding policy: which
// request targets and paths are refused. The rules both paths apply (header
// fields, X-Forwarded-*, framing, 502/504) are in internal/lane's policy.go,
// which the lane and this package share.

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
	s.stats.ClientErrors.Add(1)
	s.log.Info("request refused", "reason", reason, "method", r.Method, "request_id", requestID(r))
	w.Header()["Connection"] = []string{"close"}
	http.Error(w, "Bad Request", http.StatusBadRequest)
	if s.cfg.OnRequest != nil {
		s.cfg.OnRequest("proxy", http.StatusBadRequest, 0)
	}
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
	if r.URL.RawPath == "" && !lane.NonCanonical(r.URL.Path) {
		return false // the common case, without allocating
	}
	c := canonicalPath(r.URL.Path)
	if r.URL.EscapedPath() == c {
		return false
	}
	if s.underSSF(c) {
		return true // the SSF router matches the raw path: any other spelling would be proxied
	}
	if s.cfg.Observer == nil || !lane.NonCanonical(r.URL.Path) {
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
