package proxy

import (
	"net/http"
	"net/netip"
	"net/textproto"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// hopHeaders are the hop-by-hop fields net/http's path deletes, from
// lane.FieldPolicy.
var hopHeaders = func() (hh []string) {
	for _, f := range lane.FieldPolicy {
		if f.Hop {
			hh = append(hh, f.Name)
		}
	}
	return hh
}()

// protectedHeader reports the fields a client may not remove by naming
// them in Connection (lane.FieldPolicy): the proxy sets them itself, and
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

// peerIP returns the IP part of a RemoteAddr, without any zone.
func peerIP(remoteAddr string) string { return lane.PeerIP(remoteAddr) }

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
// arrived from remoteAddr for host, by lane.ForwardedPolicy.
func (f forwarded) apply(h http.Header, remoteAddr, host string, tls bool) {
	dropUnderscoreAliases(h)
	ip := peerIP(remoteAddr)
	proto := "http"
	if tls {
		proto = "https"
	}
	trusted := f.isTrusted(ip)
	for _, p := range lane.ForwardedPolicy {
		var v string
		switch p.Value {
		case lane.XFPeer:
			v = ip
		case lane.XFProto:
			v = proto
		case lane.XFHost:
			v = host
		}
		switch lane.XFActionFor(p.Untrusted, p.Trusted, trusted) {
		case lane.XFDrop:
			delete(h, p.Name)
		case lane.XFSet:
			h[p.Name] = []string{v}
		case lane.XFAppend:
			if prior := h[p.Name]; len(prior) > 0 {
				h[p.Name] = []string{strings.Join(prior, ", ") + ", " + v}
			} else {
				h[p.Name] = []string{v}
			}
		case lane.XFDefault:
			if len(h[p.Name]) == 0 {
				h[p.Name] = []string{v}
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
