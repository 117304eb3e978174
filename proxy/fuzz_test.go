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
		s.fwd.fast = false
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

// addSeeds adds each request text as a seed.
func addSeeds(f *testing.F, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
}
