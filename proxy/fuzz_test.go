package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
	"time"
)

// FuzzRemoveHopByHop feeds arbitrary Connection, Te and Upgrade values: no
// panic, no hop-by-hop field survives, and the forwarding fields are never
// removed by naming them.
func FuzzRemoveHopByHop(f *testing.F) {
	f.Add("keep-alive, X-Secret", "trailers", "websocket")
	f.Add("X-Forwarded-For,,  ,Upgrade", "gzip, trailers;q=1", "")
	f.Add("close", "", "h2c")
	f.Add("\x00,\xff, x-forwarded-host ,FORWARDED", "TRAILERS", "websocket, h2c")
	f.Fuzz(func(t *testing.T, conn, te, upgrade string) {
		h := http.Header{
			"Connection": {conn}, "Te": {te}, "Upgrade": {upgrade}, "Keep-Alive": {"1"},
			"X-Forwarded-For": {"1.1.1.1"}, "X-Forwarded-Host": {"h"}, "Forwarded": {"for=x"}, "X-Secret": {"s"},
		}
		got := removeHopByHop(h)
		for _, k := range hopHeaders {
			if _, ok := h[k]; ok {
				t.Fatalf("%s survived", k)
			}
		}
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "Forwarded"} {
			if _, ok := h[k]; !ok {
				t.Fatalf("%s removed via Connection %q", k, conn)
			}
		}
		if te := h["Te"]; te != nil && (len(te) != 1 || te[0] != "trailers") {
			t.Fatalf("Te %q forwarded", te)
		}
		if got != "" && got != upgrade {
			t.Fatalf("upgrade %q from %q", got, upgrade)
		}
	})
}

// FuzzForwarded checks X-Forwarded-* processing for arbitrary peers and
// incoming values: from an untrusted peer exactly one X-Forwarded-For entry,
// the peer's, reaches the upstream.
func FuzzForwarded(f *testing.F) {
	f.Add("127.0.0.1:5555", "1.2.3.4", "auth.example", true)
	f.Add("[::1]:80", "", "h", false)
	f.Add("[fe80::1%eth0]:1", "a, b, c", "", false)
	f.Add("10.0.0.1:1", "1.2.3.4", "h:8080", true)
	f.Add("garbage", "\x00", "\xff", false)
	f.Fuzz(func(t *testing.T, remote, xff, host string, tls bool) {
		fw := forwarded{trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}
		h := http.Header{"X-Forwarded-For": {xff}, "X-Real-Ip": {"x"}, "X_forwarded_for": {"y"}}
		fw.apply(h, remote, host, tls)
		ip := peerIP(remote)
		got := h["X-Forwarded-For"]
		if len(got) != 1 || !strings.HasSuffix(got[0], ip) {
			t.Fatalf("X-Forwarded-For %q for peer %q", got, remote)
		}
		if _, ok := h["X_forwarded_for"]; ok {
			t.Fatal("underscore alias survived")
		}
		if !fw.isTrusted(ip) {
			if got[0] != ip || h.Get("X-Forwarded-Host") != host || h.Get("X-Real-Ip") != "" {
				t.Fatalf("untrusted peer's values kept: %v", h)
			}
		}
	})
}

// FuzzCapture: for any body, limit and read chunking, the capture is the
// body's prefix and the returned reader yields the body exactly.
func FuzzCapture(f *testing.F) {
	f.Add([]byte("hello world"), 5, false)
	f.Add([]byte(""), 0, true)
	f.Add(bytes.Repeat([]byte("x"), 70000), 65536, true)
	f.Fuzz(func(t *testing.T, body []byte, limit int, oneByte bool) {
		if limit < 0 || limit > 1<<20 {
			return
		}
		var r io.Reader = bytes.NewReader(body)
		if oneByte {
			r = iotest.OneByteReader(r)
		}
		c := capture(context.Background(), io.NopCloser(r), limit, true)
		want := body[:min(len(body), limit)]
		if limit > 0 && !bytes.Equal(c.prefix, want) {
			t.Fatalf("prefix %q, want %q", c.prefix, want)
		}
		all, err := io.ReadAll(c.rest)
		if err != nil || !bytes.Equal(all, body) {
			t.Fatalf("rest %d bytes (want %d), %v", len(all), len(body), err)
		}
		if err := c.rest.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzProxyRequest drives whole requests, parsed from arbitrary bytes as the
// server would, through the handler with an in-memory upstream: no panic,
// and what would go upstream carries the proxy's own X-Forwarded-For, the
// original Host, and no hop-by-hop field.
func FuzzProxyRequest(f *testing.F) {
	f.Add([]byte("GET /a%2Fb?x=1 HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: X-Forwarded-For, keep-alive\r\n\r\n"))
	f.Add([]byte("POST /api/v3/flows/executor/x/ HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nCookie: authentik_session=a\r\n\r\nhello"))
	f.Add([]byte("GET /ws/client/ HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTe: trailers, gzip\r\n\r\n"))
	f.Add([]byte("PUT /tapped/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return
		}
		req.RemoteAddr = "192.0.2.7:4242"
		var got *http.Request
		s, err := New(Config{Listen: "127.0.0.1:0", Upstream: mustURL(t, "http://authentik:9000"),
			Observer: matchAll{}, CaptureLimit: 8, BeforeTimeout: time.Second, AfterTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		s.fwd.fast = nil
		s.fwd.roundTrip = func(out *http.Request) (*http.Response, error) {
			got = out
			if out.Body != nil {
				io.Copy(io.Discard, out.Body)
			}
			return &http.Response{StatusCode: 200, Header: http.Header{"Connection": {"X-Drop"}, "X-Drop": {"1"}},
				Body: io.NopCloser(strings.NewReader("ok")), ContentLength: 2}, nil
		}
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, req)
		if req.Method == http.MethodConnect {
			return
		}
		if got == nil {
			if w.Code == http.StatusOK {
				t.Fatalf("200 without an upstream request")
			}
			return
		}
		if xff := got.Header["X-Forwarded-For"]; len(xff) != 1 || xff[0] != "192.0.2.7" {
			t.Fatalf("X-Forwarded-For %q", xff)
		}
		if got.Host != req.Host {
			t.Fatalf("host %q became %q", req.Host, got.Host)
		}
		for _, k := range []string{"Keep-Alive", "Proxy-Connection", "Proxy-Authorization", "Transfer-Encoding", "Trailer"} {
			if _, ok := got.Header[k]; ok {
				t.Fatalf("%s forwarded", k)
			}
		}
		if w.Header().Get("X-Drop") != "" {
			t.Fatal("response hop-by-hop field reached the client")
		}
	})
}

type matchAll struct{}

func (matchAll) Match(string, string, string) bool                                   { return true }
func (matchAll) Before(context.Context, *http.Request, []byte) any                   { return nil }
func (matchAll) After(context.Context, any, *http.Request, int, http.Header, []byte) {}

// FuzzLaneRequestHead checks the lane's request parser against net/http's:
// whatever the lane accepts, net/http must read as the same request (method,
// target, Host and every field value), and nothing the lane accepts may
// carry a body or framing of its own. Anything else must be refused, never
// a panic.
func FuzzLaneRequestHead(f *testing.F) {
	f.Add([]byte("GET /api/v3/core/users/me/?q=%2F HTTP/1.1\r\nHost: auth.example:9000\r\nCookie: authentik_session=a.b.c\r\nAccept: */*\r\n\r\n"))
	f.Add([]byte("HEAD /static/x.js HTTP/1.1\r\nHost: h\r\nConnection: close\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: h\r\nHost: i\r\n\r\n"))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("GET /a HTTP/1.1\r\nHost: h\r\nX: a\x00\r\n\r\n"))
	f.Add([]byte("GET /%zz HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var h reqHead
		i := bytes.Index(raw, []byte("\r\n\r\n"))
		if i < 0 {
			return
		}
		head := raw[:i+4]
		if bareLF(head) >= 0 || !parseRequestHead(head, &h) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(head)))
		if err != nil {
			t.Fatalf("lane accepted what net/http refuses (%v): %q", err, head)
		}
		if want := map[bool]string{true: "HEAD", false: "GET"}[h.head]; req.Method != want {
			t.Fatalf("method %q vs %q", req.Method, want)
		}
		if req.RequestURI != string(h.target) || req.Host != string(h.host) || req.ContentLength != 0 ||
			len(req.TransferEncoding) != 0 || req.ProtoMinor != 1 {
			t.Fatalf("net/http read %q %q %d %v, lane %q %q", req.RequestURI, req.Host, req.ContentLength, req.TransferEncoding, h.target, h.host)
		}
		if req.URL.Path != string(h.path) {
			t.Fatalf("path %q vs lane %q", req.URL.Path, h.path)
		}
		for _, fd := range h.fields {
			if fd.kind == fHost {
				continue
			}
			found := false
			for _, v := range req.Header.Values(string(fd.name)) {
				if v == string(fd.value) {
					found = true
				}
			}
			if !found {
				t.Fatalf("field %q: %q, net/http has %q", fd.name, fd.value, req.Header.Values(string(fd.name)))
			}
		}
	})
}

// FuzzLaneResponse feeds arbitrary upstream responses to the lane's head
// parser and chunked copier: no panic, and whatever they accept, net/http's
// client reads the same way (status, length, and for chunked bodies the
// same decoded bytes).
func FuzzLaneResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n5\r\nhello\r\n0\r\nX: 1\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		var buf []byte
		var h respHead
		br := bufio.NewReaderSize(bytes.NewReader(raw), 4096)
		if err := readResponseHead(br, &buf, &h); err != nil {
			return
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: "GET"})
		if err != nil {
			t.Fatalf("lane accepted a head net/http refuses (%v): %q", err, raw)
		}
		defer resp.Body.Close()
		if resp.StatusCode != h.status {
			t.Fatalf("status %d vs lane %d", resp.StatusCode, h.status)
		}
		noBody := h.status == 204 || h.status == 304
		if !noBody && !h.chunked && h.contentLength >= 0 && resp.ContentLength != h.contentLength {
			t.Fatalf("length %d vs lane %d", resp.ContentLength, h.contentLength)
		}
		if !h.chunked || noBody {
			return
		}
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		if copyChunked(bw, br) != nil {
			return
		}
		bw.Flush()
		// What the lane passed on, read as a chunked body, is what net/http
		// decodes from the upstream's bytes.
		want, werr := io.ReadAll(resp.Body)
		again, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), &out)), nil)
		if err != nil {
			t.Fatal(err)
		}
		got, gerr := io.ReadAll(again.Body)
		if werr != nil || gerr != nil || !bytes.Equal(got, want) {
			t.Fatalf("chunked body: lane passed %q (%v), net/http decodes %q (%v)", got, gerr, want, werr)
		}
	})
}

// FuzzAmbiguousFraming: the framing check never panics, and whenever it
// refuses a head, net/http either refuses it too or reads a request whose
// head named both framing fields or folded one of them.
func FuzzAmbiguousFraming(f *testing.F) {
	addSeeds(f,
		"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n",
		"POST /a HTTP/1.1\nHost: x\nContent-Length:\n 3\n\nabc",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
	)
	f.Fuzz(func(t *testing.T, b []byte) {
		if !ambiguousFraming(b) {
			return
		}
		lower := bytes.ToLower(b)
		hasCL, hasTE := bytes.Contains(lower, []byte("content-length")), bytes.Contains(lower, []byte("transfer-encoding"))
		if !hasCL && !hasTE {
			t.Fatalf("refused a head naming neither framing field: %q", b)
		}
	})
}

// addSeeds adds each request text as a seed.
func addSeeds(f *testing.F, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}
