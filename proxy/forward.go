package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/internal/lane"
)

// forwarder is the proxy core: one http.Handler that sends a request to the
// upstream and streams the answer back. It avoids httputil.ReverseProxy's
// per-request clone of the request and its headers: the inbound request is
// owned by this handler, so its header map is edited in place and shallow
// copied once for the transport.
type forwarder struct {
	cfg       Config
	log       *slog.Logger
	transport *http.Transport
	fwd       forwarded
	stats     *counters
	upgrades  *connSet
	// roundTrip is transport.RoundTrip; benchmarks replace it.
	roundTrip func(*http.Request) (*http.Response, error)
	// fast is set when the lane may carry requests (plain-HTTP upstream,
	// fast path not turned off).
	fast bool
	// basePath is the upstream URL's path without a trailing slash ("" when
	// the upstream is a bare host).
	basePath, baseRawPath string
	// tr starts server spans; nil when tracing is off.
	tr *spanTracer
}

func newForwarder(cfg Config, stats *counters, upgrades *connSet) *forwarder {
	base := strings.TrimSuffix(cfg.Upstream.Path, "/")
	baseRaw := strings.TrimSuffix(cfg.Upstream.EscapedPath(), "/")
	f := &forwarder{
		cfg:         cfg,
		log:         cfg.Logger,
		transport:   newTransport(cfg),
		fwd:         forwarded{trusted: cfg.TrustedProxies},
		stats:       stats,
		upgrades:    upgrades,
		basePath:    base,
		baseRawPath: baseRaw,
		tr:          newSpanTracer(cfg),
	}
	f.roundTrip = f.transport.RoundTrip
	if cfg.Upstream.Scheme == "http" && !cfg.DisableFastPath {
		f.fast = true
	}
	return f
}

// newTransport builds the upstream transport: a large keep-alive pool to one
// host, no environment proxy (the upstream is authentik next door; an
// HTTP_PROXY meant for outbound traffic must not capture it), no transparent
// gzip (bodies and Accept-Encoding pass untouched), and HTTP/1.1 only, so
// that WebSocket upgrades and trailers work the same way on every request.
func newTransport(cfg Config) *http.Transport {
	d := &net.Dialer{Timeout: DefaultDialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                  nil,
		DialContext:            d.DialContext,
		MaxIdleConns:           0, // no global cap; the per-host cap applies
		MaxIdleConnsPerHost:    cfg.MaxIdleConnsPerHost,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  cfg.ResponseHeaderTimeout,
		ExpectContinueTimeout:  0,
		DisableCompression:     true,
		ForceAttemptHTTP2:      false,
		MaxResponseHeaderBytes: int64(cfg.MaxHeaderBytes),
		WriteBufferSize:        16 << 10,
		ReadBufferSize:         16 << 10,
	}
}

// bufPool holds copy buffers for response bodies.
var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func (p *forwarder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	class, status := "proxy", 0
	if p.cfg.OnRequest != nil {
		start := p.cfg.Now()
		// Deferred so that a response aborted half way is reported too.
		defer func() { p.cfg.OnRequest(class, status, p.cfg.Now().Sub(start)) }()
	}
	var span trace.Span
	if p.tr != nil {
		defer func() {
			if span != nil {
				endSpan(span, class, status)
			}
		}()
	}
	status = p.serve(w, r, &class, &status, &span)
}

// serve proxies one request and returns the status sent to the client.
// status is set as soon as it is known, for a response aborted half way.
func (p *forwarder) serve(w http.ResponseWriter, r *http.Request, class *string, status *int, span *trace.Span) int {
	p.stats.Proxied.Add(1)
	out := p.outgoing(r)

	var obs *observation
	if p.cfg.Observer != nil && p.cfg.Observer.Match(out.Method, out.Host, out.URL.Path) {
		*class = "observed"
		p.stats.observed.Add(1)
		if p.tr != nil {
			// The observer finds the server span in the request context.
			sent := out.Header["Traceparent"] != nil
			out, *span = p.tr.start(out, *class)
			p.tr.propagateTo(out, sent)
		}
		body, status, err := p.readObservedBody(w, out)
		if status != 0 {
			return p.refuseBody(w, r, status, err)
		}
		obs = p.before(out, body)
	} else if p.tr != nil && p.tr.all {
		sent := out.Header["Traceparent"] != nil
		out, *span = p.tr.start(out, *class)
		p.tr.propagateTo(out, sent)
	}

	// Every request net/http serves goes through http.Transport; the
	// hand-written client carries only what the lane reads itself.
	resp, err := p.roundTrip(out)
	if err != nil {
		return p.fail(w, r, out, err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		*class = "upgrade"
		if obs != nil {
			p.after(obs, out, resp, false) // the body is the raw connection now
		}
		return p.upgrade(w, r, out, resp)
	}
	if obs != nil {
		p.after(obs, out, resp, true)
	}
	return p.respond(w, r, resp, status)
}

// outgoing turns the inbound request into the upstream request: same method,
// path (raw form kept), query, body and Host; hop-by-hop fields removed;
// X-Forwarded-* set.
func (p *forwarder) outgoing(r *http.Request) *http.Request {
	upgrade := removeHopByHop(r.Header)
	p.fwd.apply(r.Header, r.RemoteAddr, r.Host, r.TLS != nil)
	if upgrade != "" {
		r.Header["Connection"] = []string{"Upgrade"}
		r.Header["Upgrade"] = []string{upgrade}
	}

	out := new(http.Request)
	*out = *r
	u := *r.URL
	// Only Path and RawPath name the resource (refuseRequest keeps opaque
	// targets out; this is the second lock).
	u.Opaque, u.User = "", nil
	u.Scheme = p.cfg.Upstream.Scheme
	u.Host = p.cfg.Upstream.Host
	if p.basePath != "" {
		u.Path = p.basePath + u.Path
		if u.RawPath != "" {
			u.RawPath = p.baseRawPath + u.RawPath
		}
	}
	out.URL = &u
	out.RequestURI = ""
	out.Close = false
	if r.ContentLength == 0 {
		out.Body = nil // no body: never send a zero-length chunked body
	} else if r.Body != nil && r.Body != http.NoBody {
		out.Body = &clientBody{ReadCloser: r.Body}
	}
	// Keep an explicit "no User-Agent" from turning into Go's default.
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = nil
	}
	return out
}

// refuseBody answers an observed request whose body could not be read
// whole within its limits; nothing was forwarded. The connection is closed:
// the rest of the body may still be on its way.
func (p *forwarder) refuseBody(w http.ResponseWriter, r *http.Request, status int, err error) int {
	p.stats.ClientErrors.Add(1)
	p.log.Info("observed request body refused", "request_id", requestID(r), "path", r.URL.Path, "status", status, "error", err)
	w.Header()["Connection"] = []string{"close"}
	http.Error(w, http.StatusText(status), status)
	return status
}

// fail maps a transport error to the client's status: 504 for an upstream
// timeout, 499 (nothing written) when the client left, 502 otherwise.
func (p *forwarder) fail(w http.ResponseWriter, r *http.Request, out *http.Request, err error) int {
	if cb := clientBodyOf(out.Body); cb != nil && cb.err != nil && (r.Context().Err() == nil || lane.IsFramingError(cb.err)) {
		// The client's own body was malformed (bad chunking, short body).
		// (A body the framing check stopped also ends the request's
		// context: net/http takes any read error for a closed connection.)
		p.stats.ClientErrors.Add(1)
		p.log.InfoContext(out.Context(), "client sent a malformed request body", "request_id", requestID(r), "path", r.URL.Path, "error", cb.err)
		w.Header()["Connection"] = []string{"close"}
		http.Error(w, "Bad Request", http.StatusBadRequest)
		return http.StatusBadRequest
	}
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		p.stats.ClientGone.Add(1)
		p.log.DebugContext(out.Context(), "client went away before the upstream answered", "request_id", requestID(r), "path", r.URL.Path)
		return 499
	}
	status := lane.UpstreamFailure(&p.stats.Counters, err)
	p.log.WarnContext(out.Context(), "upstream request failed", "request_id", requestID(r), "method", r.Method,
		"path", r.URL.Path, "status", status, "error", err)
	h := w.Header()
	for _, f := range lane.FailureFields {
		h[f[0]] = []string{f[1]}
	}
	body := lane.FailureBody(status)
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
	return status
}

// respond writes the upstream's status, headers, body and trailers.
func (p *forwarder) respond(w http.ResponseWriter, r *http.Request, resp *http.Response, status *int) int {
	defer resp.Body.Close()
	dst := w.Header()
	for k, vv := range resp.Header {
		dst[k] = vv
	}
	removeHopByHop(dst)
	if n := len(resp.Trailer); n > 0 {
		keys := make([]string, 0, n)
		for k := range resp.Trailer {
			keys = append(keys, k)
		}
		dst["Trailer"] = []string{strings.Join(keys, ", ")}
	}
	w.WriteHeader(resp.StatusCode)
	*status = resp.StatusCode

	flush := resp.ContentLength == -1 || isStreamingType(resp.Header)
	bp := bufPool.Get().(*[]byte)
	err := copyBody(w, resp.Body, *bp, flush)
	bufPool.Put(bp)
	if err != nil {
		if r.Context().Err() != nil || errors.Is(err, lane.ErrClientWrite) {
			p.stats.ClientGone.Add(1)
			p.log.Debug("client went away during the response", "request_id", requestID(r), "path", r.URL.Path)
		} else {
			p.stats.UpstreamErrors.Add(1)
			p.log.Warn("upstream response body failed", "request_id", requestID(r), "path", r.URL.Path, "error", err)
		}
		// The status line is out; abort so the client sees a truncated
		// message rather than a falsely complete one.
		panic(http.ErrAbortHandler)
	}
	for k, vv := range resp.Trailer {
		dst[http.TrailerPrefix+k] = vv
	}
	return resp.StatusCode
}

// copyBody streams src to w, flushing after every write when flush is set
// (server-sent events, chunked responses).
func copyBody(w http.ResponseWriter, src interface{ Read([]byte) (int, error) }, buf []byte, flush bool) error {
	var fl http.Flusher
	if flush {
		fl, _ = w.(http.Flusher)
	}
	for {
		n, rerr := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return errors.Join(lane.ErrClientWrite, werr)
			}
			if fl != nil {
				fl.Flush()
			}
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				return nil
			}
			return rerr
		}
	}
}

// isStreamingType reports whether the response is an event stream, which
// must be flushed even when the upstream gave a Content-Length.
func isStreamingType(h http.Header) bool {
	ct := h["Content-Type"]
	if len(ct) == 0 {
		return false
	}
	const es = "text/event-stream"
	v := strings.TrimLeft(ct[0], " \t")
	return len(v) >= len(es) && strings.EqualFold(v[:len(es)], es)
}

// clientBody remembers why reading the client's body failed, so that a
// malformed body is answered 400 instead of being blamed on the upstream.
type clientBody struct {
	io.ReadCloser
	err error
}

func (b *clientBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// clientBodyOf finds the clientBody under a request body, looking through
// the observer's capture reader.
func clientBodyOf(b io.Reader) *clientBody {
	if pr, ok := b.(*prefixReader); ok {
		b = pr.src
	}
	cb, _ := b.(*clientBody)
	return cb
}

// closeIdle drops every idle upstream connection.
func (p *forwarder) closeIdle() {
	p.transport.CloseIdleConnections()
}
