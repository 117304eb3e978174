package proxy

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// teeListener records every byte the upstream reads from its connections.
type teeListener struct {
	net.Listener
	raw *lockedBuffer
}

func (l teeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return teeConn{Conn: c, raw: l.raw}, nil
}

type teeConn struct {
	net.Conn
	raw *lockedBuffer
}

func (c teeConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.raw.Write(b[:n])
	return n, err
}

// rawUpstream reflects what it parsed (as reflectUpstream does) and keeps the
// raw bytes it read. A response header X-Hop with "Connection: X-Hop" lets
// tests check response-side hop-by-hop removal.
func rawUpstream(t *testing.T) (*httptest.Server, *lockedBuffer) {
	t.Helper()
	raw := &lockedBuffer{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Connection", "X-Hop")
		w.Header().Set("X-Hop", "secret-hop")
		w.Header().Set("Keep-Alive", "timeout=5")
		_ = json.NewEncoder(w).Encode(seen{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host,
			Header: r.Header, Body: string(body), ContentLength: r.ContentLength, TE: r.TransferEncoding})
	}))
	srv.Listener = teeListener{Listener: srv.Listener, raw: raw}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, raw
}

// rawRoundTrip writes a hand-made request on a fresh connection and reads
// one response.
func rawRoundTrip(t *testing.T, addr, request string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

func TestSmugglingAndHeaderAbuse(t *testing.T) {
	cases := []struct {
		name    string
		trusted []netip.Prefix
		request string
		// status the client must get; 200 means forwarded.
		status int
		check  func(t *testing.T, s seen, raw string, resp *http.Response)
	}{
		{
			// Refused like nginx does (RFC 9112 section 6.1), not forwarded at all.
			name:    "content-length and chunked together",
			request: "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
			status:  400,
		},
		{
			name:    "smuggled request in a chunked body with a content-length is refused",
			request: "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2e\r\nGET /admin HTTP/1.1\r\nHost: h\r\nX-Pad: aaaaa\r\n\r\n\r\n0\r\n\r\n",
			status:  400,
		},
		{
			name:    "smuggled request in a chunked body stays body",
			request: "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2e\r\nGET /admin HTTP/1.1\r\nHost: h\r\nX-Pad: aaaaa\r\n\r\n\r\n0\r\n\r\n",
			status:  200,
			check: func(t *testing.T, s seen, raw string, _ *http.Response) {
				if strings.Count(raw, "HTTP/1.1\r\n") != 2 || !strings.Contains(s.Body, "GET /admin") {
					t.Errorf("smuggled request not kept as body; upstream read:\n%q", raw)
				}
			},
		},
		{name: "two different content-lengths", request: "POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nhello", status: 400},
		{name: "unknown transfer-coding", request: "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", status: 501},
		{name: "space before colon", request: "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", status: 400},
		{
			name:    "obs-fold is unfolded, never forwarded folded",
			request: "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n folded\r\n\r\n",
			status:  200,
			check: func(t *testing.T, s seen, raw string, _ *http.Response) {
				if s.Header.Get("X-A") != "1 folded" || strings.Contains(raw, "\r\n folded") {
					t.Errorf("X-A %q; upstream read %q", s.Header.Get("X-A"), raw)
				}
			},
		},
		{name: "malformed chunked body", request: "POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello world\r\n0\r\n\r\n", status: 400},
		{name: "bare LF in value", request: "GET /a HTTP/1.1\r\nHost: h\r\nX-A: 1\rX-B: 2\r\n\r\n", status: 400},
		{
			name:    "connection names forwarded headers",
			request: "GET /a HTTP/1.1\r\nHost: h\r\nConnection: X-Forwarded-For, X-Forwarded-Host, X-Forwarded-Proto, X-Private\r\nX-Private: p\r\n\r\n",
			status:  200,
			check: func(t *testing.T, s seen, _ string, _ *http.Response) {
				if s.Header.Get("X-Forwarded-For") != "127.0.0.1" || s.Header.Get("X-Forwarded-Host") != "h" ||
					s.Header.Get("X-Forwarded-Proto") != "http" {
					t.Errorf("forwarded headers stripped: %v", s.Header)
				}
				if s.Header.Get("X-Private") != "" || s.Header.Get("Connection") != "" {
					t.Errorf("connection-scoped field forwarded: %v", s.Header)
				}
			},
		},
		{
			name: "spoofed forwarding headers from an untrusted peer",
			request: "GET /a HTTP/1.1\r\nHost: auth.example\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n" +
				"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\nForwarded: for=1.2.3.4\r\nX-Real-IP: 1.2.3.4\r\n" +
				"X_Forwarded_For: 9.9.9.9\r\nX-Forwarded_Host: evil\r\n\r\n",
			status: 200,
			check: func(t *testing.T, s seen, _ string, _ *http.Response) {
				want := map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "auth.example"}
				for k, v := range want {
					if got := s.Header[k]; len(got) != 1 || got[0] != v {
						t.Errorf("%s = %q, want %q", k, got, v)
					}
				}
				for _, k := range []string{"Forwarded", "X-Real-Ip", "X_Forwarded_For", "X-Forwarded_Host", "X_forwarded_for"} {
					if _, ok := s.Header[k]; ok {
						t.Errorf("%s passed through: %v", k, s.Header)
					}
				}
				if s.Host != "auth.example" {
					t.Errorf("host %q", s.Host)
				}
			},
		},
		{
			name:    "trusted peer's forwarding headers are kept and appended to",
			trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			request: "GET /a HTTP/1.1\r\nHost: auth.example\r\nX-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nX-Forwarded-Proto: https\r\n" +
				"X-Forwarded-Host: public.example\r\nX-Real-IP: 1.2.3.4\r\n\r\n",
			status: 200,
			check: func(t *testing.T, s seen, _ string, _ *http.Response) {
				if got := s.Header["X-Forwarded-For"]; len(got) != 1 || got[0] != "1.2.3.4, 10.0.0.1, 127.0.0.1" {
					t.Errorf("X-Forwarded-For %q", got)
				}
				if s.Header.Get("X-Forwarded-Proto") != "https" || s.Header.Get("X-Forwarded-Host") != "public.example" ||
					s.Header.Get("X-Real-Ip") != "1.2.3.4" {
					t.Errorf("headers %v", s.Header)
				}
			},
		},
		{
			name: "hop-by-hop fields dropped both ways",
			request: "GET /a HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n" +
				"Proxy-Authorization: Basic Zm9vOmJhcg==\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nUpgrade: h2c\r\n\r\n",
			status: 200,
			check: func(t *testing.T, s seen, _ string, resp *http.Response) {
				for _, k := range []string{"X-Secret", "Keep-Alive", "Proxy-Authorization", "Proxy-Connection", "Te", "Upgrade"} {
					if _, ok := s.Header[k]; ok {
						t.Errorf("%s forwarded", k)
					}
				}
				if resp.Header.Get("X-Hop") != "" || resp.Header.Get("Keep-Alive") != "" {
					t.Errorf("response hop-by-hop fields reached the client: %v", resp.Header)
				}
			},
		},
		{name: "CONNECT tunnel refused", request: "CONNECT internal.example:22 HTTP/1.1\r\nHost: internal.example:22\r\n\r\n", status: 405},
		{
			// net/http answers "OPTIONS *" itself (so does authentik's own Go
			// server); it never reaches a handler.
			name:    "asterisk-form OPTIONS answered locally",
			request: "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
			status:  200,
			check: func(t *testing.T, _ seen, raw string, _ *http.Response) {
				if raw != "" {
					t.Errorf("upstream read %q", raw)
				}
			},
		},
		{name: "oversized headers", request: "GET /a HTTP/1.1\r\nHost: h\r\nCookie: " + strings.Repeat("a", 64<<10) + "\r\n\r\n", status: 431},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up, raw := rawUpstream(t)
			s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), TrustedProxies: c.trusted, MaxHeaderBytes: 16 << 10})
			resp, body := rawRoundTrip(t, strings.TrimPrefix(base, "http://"), c.request)
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d (body %.200q)", resp.StatusCode, c.status, body)
			}
			if c.status != 200 {
				if c.name == "malformed chunked body" {
					// Its head went upstream before the body broke; the
					// upstream must not have got a complete request.
					if strings.Contains(raw.String(), "0\r\n\r\n") {
						t.Errorf("upstream got a complete request: %q", raw.String())
					}
					return
				}
				if raw.String() != "" || s.Stats().Proxied != 0 {
					t.Errorf("refused request reached the upstream: %q", raw.String())
				}
				return
			}
			var got seen
			if body != "" {
				if err := json.Unmarshal([]byte(body), &got); err != nil {
					t.Fatalf("upstream reply: %v (%q)", err, body)
				}
			}
			c.check(t, got, raw.String(), resp)
		})
	}
}
