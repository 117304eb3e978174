package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"
)

// hopHeaders are the hop-by-hop fields net/http's path deletes, from
// fieldPolicy.
var hopHeaders = func() (hh []string) {
	for _, f := range fieldPolicy {
		if f.hop {
			hh = append(hh, f.name)
		}
	}
	return hh
}()

// protectedHeader reports the fields a client may not remove by naming
// them in Connection (fieldPolicy): the proxy sets them itself, and
// letting a client strip them would let it hide or forge where it comes
// from.
func protectedHeader(k string) bool {
	switch k {
	case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "Forwarded", "X-Real-Ip":
		return true
	}
	return false
}

// removeHopByHop deletes the hop-by-hop fields from h, including every field
// named in Connection (except the ones the proxy sets itself, which are
// rewritten afterwards anyway). It reports the Upgrade protocol when the
// message asks for a protocol switch.
func removeHopByHop(h http.Header) (upgrade string) {
	if conns := h["Connection"]; len(conns) > 0 {
		for _, v := range conns {
			for _, tok := range strings.Split(v, ",") {
				tok = textproto.TrimString(tok)
				if tok == "" {
					continue
				}
				if strings.EqualFold(tok, "upgrade") {
					upgrade = h.Get("Upgrade")
					continue
				}
				k := textproto.CanonicalMIMEHeaderKey(tok)
				if protectedHeader(k) {
					continue
				}
				delete(h, k)
			}
		}
	}
	for _, k := range hopHeaders {
		delete(h, k)
	}
	if te, ok := h["Te"]; ok {
		keep := false
		for _, v := range te {
			for _, tok := range strings.Split(v, ",") {
				if strings.EqualFold(textproto.TrimString(tok), "trailers") {
					keep = true
				}
			}
		}
		if keep {
			h["Te"] = []string{"trailers"}
		} else {
			delete(h, "Te")
		}
	}
	return upgrade
}

// forwarded holds the per-server settings for X-Forwarded-* processing.
type forwarded struct {
	trusted []netip.Prefix
}

// peerIP returns the IP part of a RemoteAddr ("1.2.3.4:5", "[::1]:5"),
// without any zone.
func peerIP(remoteAddr string) string {
	host, _, err := net.SplitHostPort(remoteAddr)
	if err != nil {
		host = remoteAddr
	}
	if i := strings.IndexByte(host, '%'); i >= 0 {
		host = host[:i]
	}
	return host
}

func (f forwarded) isTrusted(ip string) bool {
	if len(f.trusted) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range f.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// apply sets X-Forwarded-For, -Proto and -Host on h for a request that
// arrived from remoteAddr for host, by forwardedPolicy.
func (f forwarded) apply(h http.Header, remoteAddr, host string, tls bool) {
	dropUnderscoreAliases(h)
	ip := peerIP(remoteAddr)
	proto := "http"
	if tls {
		proto = "https"
	}
	trusted := f.isTrusted(ip)
	for _, p := range forwardedPolicy {
		var v string
		switch p.value {
		case xfPeer:
			v = ip
		case xfProto:
			v = proto
		case xfHost:
			v = host
		}
		switch xfActionFor(p.untrusted, p.trusted, trusted) {
		case xfDrop:
			delete(h, p.name)
		case xfSet:
			h[p.name] = []string{v}
		case xfAppend:
			if prior := h[p.name]; len(prior) > 0 {
				h[p.name] = []string{strings.Join(prior, ", ") + ", " + v}
			} else {
				h[p.name] = []string{v}
			}
		case xfDefault:
			if len(h[p.name]) == 0 {
				h[p.name] = []string{v}
			}
		}
	}
}

// dropUnderscoreAliases deletes fields such as "X_Forwarded_For": CGI-style
// servers (Django included) fold "_" and "-" into the same variable, so such a
// field could override the value the proxy sets.
func dropUnderscoreAliases(h http.Header) {
	for k := range h {
		if strings.IndexByte(k, '_') < 0 {
			continue
		}
		alias := textproto.CanonicalMIMEHeaderKey(strings.ReplaceAll(k, "_", "-"))
		if protectedHeader(alias) {
			delete(h, k)
		}
	}
}
