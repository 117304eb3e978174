package proxy

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"
)

// Defaults applied by New to zero-valued Config fields.
const (
	DefaultBeforeTimeout         = 2 * time.Second
	DefaultAfterTimeout          = 1 * time.Second
	DefaultCaptureLimit          = 64 << 10
	DefaultResponseHeaderTimeout = 60 * time.Second
	DefaultShutdownTimeout       = 15 * time.Second
	DefaultReadHeaderTimeout     = 10 * time.Second
	DefaultIdleTimeout           = 60 * time.Second
	DefaultMaxConns              = 10000
	DefaultMaxHeaderBytes        = 1 << 20
	DefaultMaxIdleConnsPerHost   = 1024
	DefaultDialTimeout           = 5 * time.Second
	DefaultBodyTimeout           = 10 * time.Second
)

// Config configures a Server. The zero value of every duration and limit
// means "use the default".
type Config struct {
	// Listen is the address to serve on, e.g. ":9080"; ":0" picks a free port
	// (see Server.Addr and Server.Ready).
	Listen string
	// Upstream is authentik's base URL (http or https). A path in it is
	// prefixed to every proxied path.
	Upstream *url.URL
	// TrustedProxies are the peers whose X-Forwarded-* (and Forwarded,
	// X-Real-IP) headers are kept and appended to. From any other peer they
	// are replaced.
	TrustedProxies []netip.Prefix
	// SSF answers itself for any path under one of SSFPrefixes (e.g. "/ssf/"
	// and "/.well-known/ssf-configuration/ssf"); everything else is proxied.
	// Both may be empty, in which case everything is proxied.
	SSF         http.Handler
	SSFPrefixes []string
	// Observer, when set, sees the exchanges it matches. May be nil.
	Observer Observer
	// BeforeTimeout bounds the capture of the request body plus
	// Observer.Before (default 2 s); AfterTimeout bounds the capture of the
	// response body plus Observer.After (default 1 s).
	BeforeTimeout, AfterTimeout time.Duration
	// CaptureLimit is how many response body bytes the observer is shown,
	// and the largest request body an observed route accepts (default
	// 64 KiB; larger ones are refused with 413).
	CaptureLimit int
	// BodyTimeout bounds reading an observed request's whole body before it
	// is forwarded (default 10 s; past it the client gets 408).
	BodyTimeout time.Duration
	// ResponseHeaderTimeout is how long to wait for the upstream's response
	// headers once the request is written; past it the client gets 504.
	ResponseHeaderTimeout time.Duration
	// TLSCertFile and TLSKeyFile, when both set, make the listener serve TLS
	// with HTTP/2 offered to clients.
	TLSCertFile, TLSKeyFile string
	// ShutdownTimeout bounds the drain of in-flight requests once Run's
	// context is done (default 15 s).
	ShutdownTimeout time.Duration
	// ReadHeaderTimeout bounds reading a client's request headers, and
	// the wait for a new connection's first byte (slow client defence;
	// default 10 s). No write timeout is set, so long streams and WebSockets
	// are never cut.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes client keep-alive connections idle between
	// requests (default 60 s).
	IdleTimeout time.Duration
	// MaxConns caps the client connections open at once (default 10 000);
	// over it a new connection is closed at once and counted.
	MaxConns int
	// MaxHeaderBytes caps request headers from clients and response headers
	// from the upstream (default 1 MiB; authentik's cookies and JWTs are large).
	MaxHeaderBytes int
	// MaxIdleConnsPerHost is the upstream keep-alive pool size (default 1024).
	MaxIdleConnsPerHost int
	// DisableFastPath sends every request through net/http's Transport,
	// instead of carrying bodyless requests to a plain-HTTP upstream on the
	// proxy's own keep-alive connections (an escape hatch; slower).
	DisableFastPath bool
	// Logger receives structured logs; default discards.
	Logger *slog.Logger
	// Now is the clock used for request durations; default time.Now.
	Now func() time.Time
	// OnRequest, when set, is called once per request after it finished, with
	// the route class ("proxy", "observed", "upgrade" or "ssf"), the status
	// sent (499 when the client went away first) and the duration.
	OnRequest func(routeClass string, status int, d time.Duration)
	// OnObserverMiss, when set, is called when an observer step ("before" or
	// "after") overran its bound.
	OnObserverMiss func(step string)
	// TracerProvider, when set, gives tapped and SSF requests a server span
	// (a child of the client's traceparent), placed in the request context
	// the Observer and the SSF handler see. Nil traces nothing, at no cost.
	TracerProvider trace.TracerProvider
	// TraceAllRoutes gives every proxied request a server span, not only
	// tapped and SSF ones.
	TraceAllRoutes bool
	// PropagateTrace sends the server span's W3C traceparent to the
	// upstream on a traced request whose client sent none.
	PropagateTrace bool
}

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("proxy: Listen is empty"))
	}
	switch {
	case c.Upstream == nil:
		errs = append(errs, errors.New("proxy: Upstream is required"))
	case c.Upstream.Scheme != "http" && c.Upstream.Scheme != "https":
		errs = append(errs, fmt.Errorf("proxy: Upstream scheme %q is not http or https", c.Upstream.Scheme))
	case c.Upstream.Host == "":
		errs = append(errs, errors.New("proxy: Upstream has no host"))
	}
	if c.Upstream != nil && (c.Upstream.RawQuery != "" || c.Upstream.Fragment != "") {
		errs = append(errs, errors.New("proxy: Upstream must not carry a query or fragment"))
	}
	for i, p := range c.TrustedProxies {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("proxy: TrustedProxies[%d] is not a valid prefix", i))
		}
	}
	if len(c.SSFPrefixes) > 0 && c.SSF == nil {
		errs = append(errs, errors.New("proxy: SSFPrefixes set without an SSF handler"))
	}
	for i, p := range c.SSFPrefixes {
		if !strings.HasPrefix(p, "/") || p == "/" {
			errs = append(errs, fmt.Errorf("proxy: SSFPrefixes[%d] %q must start with / and not be the root", i, p))
		}
		if strings.ContainsAny(p, "*:?#") {
			errs = append(errs, fmt.Errorf("proxy: SSFPrefixes[%d] %q must be a literal path", i, p))
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("proxy: TLSCertFile and TLSKeyFile must be set together"))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"BeforeTimeout", c.BeforeTimeout}, {"AfterTimeout", c.AfterTimeout},
		{"ResponseHeaderTimeout", c.ResponseHeaderTimeout}, {"ShutdownTimeout", c.ShutdownTimeout},
		{"ReadHeaderTimeout", c.ReadHeaderTimeout}, {"IdleTimeout", c.IdleTimeout},
		{"BodyTimeout", c.BodyTimeout},
	} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("proxy: %s is negative", d.name))
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"CaptureLimit", c.CaptureLimit}, {"MaxHeaderBytes", c.MaxHeaderBytes},
		{"MaxIdleConnsPerHost", c.MaxIdleConnsPerHost}, {"MaxConns", c.MaxConns},
	} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("proxy: %s is negative", n.name))
		}
	}
	return errors.Join(errs...)
}

// withDefaults returns c with zero fields filled in.
func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.BeforeTimeout, DefaultBeforeTimeout)
	def(&c.AfterTimeout, DefaultAfterTimeout)
	def(&c.ResponseHeaderTimeout, DefaultResponseHeaderTimeout)
	def(&c.ShutdownTimeout, DefaultShutdownTimeout)
	def(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	def(&c.IdleTimeout, DefaultIdleTimeout)
	def(&c.BodyTimeout, DefaultBodyTimeout)
	if c.CaptureLimit == 0 {
		c.CaptureLimit = DefaultCaptureLimit
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxIdleConnsPerHost == 0 {
		c.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
