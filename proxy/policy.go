package proxy

import (
	"net/http"
)

// This file is the forwarding policy the net/http path applies before a
// request goes anywhere: which request targets are refused. The lane only
// carries origin-form targets (parseRequestHead) and hands everything else
// to net/http, so the rules below hold for both paths.

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
