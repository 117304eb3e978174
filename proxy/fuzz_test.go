package proxy

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
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
