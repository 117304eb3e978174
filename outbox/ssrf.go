package outbox

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrForbiddenDestination is returned when a push destination is a private,
// loopback, link-local, CGNAT, unspecified or NAT64 address and private
// endpoints are not allowed.
var ErrForbiddenDestination = errors.New("outbox: destination address not allowed")

var forbiddenPrefixes = func() []netip.Prefix {
	var ps []netip.Prefix
	for _, s := range []string{
		"0.0.0.0/8",      // unspecified / "this network"
		"10.0.0.0/8",     // private
		"100.64.0.0/10",  // CGNAT
		"127.0.0.0/8",    // loopback
		"169.254.0.0/16", // link-local
		"172.16.0.0/12",  // private
		"192.0.0.0/24",   // IETF protocol assignments
		"192.168.0.0/16", // private
		"198.18.0.0/15",  // benchmarking
		"224.0.0.0/4",    // multicast
		"240.0.0.0/4",    // reserved, broadcast
		"::/128",         // unspecified
		"::1/128",        // loopback
		"64:ff9b::/96",   // NAT64
		"64:ff9b:1::/48", // local-use NAT64
		"fc00::/7",       // unique local
		"fe80::/10",      // link-local
		"ff00::/8",       // multicast
		"2001:db8::/32",  // documentation
		"100::/64",       // discard
	} {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	return ps
}()

// forbiddenAddr reports whether a is a destination pushes must not reach.
// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry,
// and a zone id is dropped first: netip.Prefix.Contains never matches a
// zoned address, so [::1%lo] would otherwise pass as public.
func forbiddenAddr(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	if !a.IsValid() {
		return true
	}
	for _, p := range forbiddenPrefixes {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// CheckEndpointURL is the parse-time check of a push endpoint: an absolute
// https URL (http only when allowPrivate) whose host is not a literal
// private, loopback, link-local, CGNAT, unspecified, NAT64 or IPv4-mapped
// private address, in any of the decimal, octal or hex IPv4 spellings.
// Names are checked again when connecting, against what they resolve to.
func CheckEndpointURL(raw string, allowPrivate bool) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("outbox: endpoint_url: %w", err)
	}
	if !u.IsAbs() || u.Host == "" {
		return errors.New("outbox: endpoint_url must be an absolute URL")
	}
	if u.User != nil {
		return errors.New("outbox: endpoint_url must not carry credentials")
	}
	if u.Fragment != "" {
		return errors.New("outbox: endpoint_url must not have a fragment")
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowPrivate {
			return errors.New("outbox: endpoint_url must use https")
		}
	default:
		return fmt.Errorf("outbox: endpoint_url scheme %q not supported", u.Scheme)
	}
	host := u.Hostname()
	if host == "" {
		return errors.New("outbox: endpoint_url has no host")
	}
	if p := u.Port(); p != "" {
		if n, err := strconv.Atoi(p); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("outbox: endpoint_url port %q invalid", p)
		}
	}
	if allowPrivate {
		return nil
	}
	if strings.Contains(host, "%") {
		// An IPv6 zone id names a local interface: never a receiver's address.
		return fmt.Errorf("%w: %s", ErrForbiddenDestination, host)
	}
	if a, ok := parseHostAddr(host); ok && forbiddenAddr(a) {
		return fmt.Errorf("%w: %s", ErrForbiddenDestination, host)
	}
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return fmt.Errorf("%w: %s", ErrForbiddenDestination, host)
	}
	return nil
}

// parseHostAddr reads host as an IP address in any spelling a resolver
// might accept: standard forms, and IPv4 numbers in decimal, octal or hex,
// with one to four parts (inet_aton).
func parseHostAddr(host string) (netip.Addr, bool) {
	if a, err := netip.ParseAddr(strings.Trim(host, "[]")); err == nil {
		return a, true
	}
	parts := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(parts) > 4 {
		return netip.Addr{}, false
	}
	nums := make([]uint64, len(parts))
	for i, p := range parts {
		if p == "" {
			return netip.Addr{}, false
		}
		n, err := strconv.ParseUint(p, 0, 32) // 0x.., 0.., decimal
		if err != nil {
			return netip.Addr{}, false
		}
		nums[i] = n
	}
	var v uint64
	switch len(nums) {
	case 1:
		v = nums[0]
	case 2:
		if nums[0] > 255 || nums[1] > 0xffffff {
			return netip.Addr{}, false
		}
		v = nums[0]<<24 | nums[1]
	case 3:
		if nums[0] > 255 || nums[1] > 255 || nums[2] > 0xffff {
			return netip.Addr{}, false
		}
		v = nums[0]<<24 | nums[1]<<16 | nums[2]
	case 4:
		for _, n := range nums {
			if n > 255 {
				return netip.Addr{}, false
			}
		}
		v = nums[0]<<24 | nums[1]<<16 | nums[2]<<8 | nums[3]
	}
	if v > 0xffffffff {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

// newClient builds the push client: no environment proxy, no redirects,
// verified TLS, destination checks on every connection, keep-alive.
func (o *Outbox) newClient() *http.Client {
	if o.cfg.Transport != nil {
		return &http.Client{Transport: o.cfg.Transport, CheckRedirect: noRedirect}
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.cfg.TLSConfig != nil {
		tlsCfg = o.cfg.TLSConfig.Clone()
		tlsCfg.InsecureSkipVerify = false
		if tlsCfg.MinVersion < tls.VersionTLS12 {
			tlsCfg.MinVersion = tls.VersionTLS12
		}
	}
	allow := o.cfg.AllowPrivateEndpoints
	dialer := &net.Dialer{
		Timeout:   o.cfg.ConnectTimeout,
		KeepAlive: 30 * time.Second,
		Control: func(network, address string, _ syscall.RawConn) error {
			if allow {
				return nil
			}
			ap, err := netip.ParseAddrPort(address)
			if err != nil || forbiddenAddr(ap.Addr()) {
				return fmt.Errorf("%w: %s", ErrForbiddenDestination, address)
			}
			return nil
		},
	}
	lookup := o.cfg.LookupIP
	if lookup == nil {
		lookup = net.DefaultResolver.LookupIPAddr
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		var ips []netip.Addr
		if a, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{a}
		} else {
			answers, err := lookup(ctx, host)
			if err != nil {
				return nil, fmt.Errorf("outbox: resolve %s: %w", host, err)
			}
			for _, ia := range answers {
				if a, ok := netip.AddrFromSlice(ia.IP); ok {
					ips = append(ips, a.Unmap())
				}
			}
		}
		if len(ips) == 0 {
			return nil, fmt.Errorf("outbox: %s has no addresses", host)
		}
		var firstErr error
		for _, a := range ips {
			if !allow && forbiddenAddr(a) {
				if firstErr == nil {
					firstErr = fmt.Errorf("%w: %s resolves to %s", ErrForbiddenDestination, host, a)
				}
				continue
			}
			c, err := dialer.DialContext(ctx, network, net.JoinHostPort(a.String(), port))
			if err == nil {
				return c, nil
			}
			if firstErr == nil {
				firstErr = err
			}
		}
		return nil, firstErr
	}
	tr := &http.Transport{
		Proxy:                 nil,
		DialContext:           dial,
		TLSClientConfig:       tlsCfg,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   o.cfg.ConnectTimeout,
		ResponseHeaderTimeout: o.cfg.PushTimeout,
	}
	return &http.Client{Transport: tr, CheckRedirect: noRedirect}
}

func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
