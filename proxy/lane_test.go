package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLaneCarriesAndHandsOff pipelines a mix of requests on one client
// connection: the lane carries the plain GETs and HEADs, hands the
// connection to net/http at the first request it does not (a POST with a
// body), and every answer still comes back in order and intact.
func TestLaneCarriesAndHandsOff(t *testing.T) {
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	reqs := []struct{ method, target, extra, body string }{
		{"GET", "/one?x=%2F", "Cookie: authentik_session=abc\r\nAccept: */*\r\n", ""},
		{"HEAD", "/two", "", ""},
		{"GET", "/three", "Connection: keep-alive\r\n", ""},
		{"POST", "/four", "Content-Length: 5\r\n", "hello"},
		{"GET", "/five", "", ""},
	}
	var all strings.Builder
	for _, r := range reqs {
		fmt.Fprintf(&all, "%s %s HTTP/1.1\r\nHost: auth.example\r\n%s\r\n%s", r.method, r.target, r.extra, r.body)
	}
	if _, err := io.WriteString(c, all.String()); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	for _, r := range reqs {
		req, _ := http.NewRequest(r.method, "http://auth.example"+r.target, nil)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			t.Fatalf("%s %s: %v", r.method, r.target, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d %v", r.method, r.target, resp.StatusCode, err)
		}
		if got := resp.Header.Values("Set-Cookie"); len(got) != 2 {
			t.Errorf("%s %s: Set-Cookie %q", r.method, r.target, got)
		}
		if r.method == "HEAD" {
			if len(b) != 0 {
				t.Errorf("HEAD answered with a body %q", b)
			}
			continue
		}
		var got seen
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s %s: %v (%q)", r.method, r.target, err, b)
		}
		if got.Method != r.method || got.RequestURI != r.target || got.Body != r.body || got.Host != "auth.example" {
			t.Errorf("upstream saw %+v for %s %s", got, r.method, r.target)
		}
		if v := got.Header["X-Forwarded-For"]; len(v) != 1 || v[0] != "127.0.0.1" {
			t.Errorf("%s: X-Forwarded-For %q", r.target, v)
		}
		if _, ok := got.Header["Connection"]; ok {
			t.Errorf("%s: Connection forwarded", r.target)
		}
		if r.target == "/one?x=%2F" && got.Header.Get("Cookie") != "authentik_session=abc" {
			t.Errorf("cookie %q", got.Header.Get("Cookie"))
		}
	}
	// Three went through the lane; the POST and everything after it on
	// that connection through net/http.
	if st := s.Stats(); st.Lane != 3 || st.Proxied != 5 {
		t.Errorf("stats %+v, want 3 of 5 on the lane", st)
	}
}

// TestLaneLeavesClaimedRoutes sends SSF and observed paths: the lane must
// not carry them, so the SSF handler and the observer see them as before.
func TestLaneLeavesClaimedRoutes(t *testing.T) {
	up := reflectUpstream(t)
	ssf := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Header().Set("X-From", "ssf") })
	obs := &recordingObserver{match: func(_, _, path string) bool { return strings.HasPrefix(path, "/tapped/") }}
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), SSF: ssf, SSFPrefixes: []string{"/ssf/"}, Observer: obs})
	// A claimed request hands its connection to net/http for good, so each
	// request gets a connection of its own here.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for _, c := range []struct {
		path     string
		ssf, obs bool
	}{{"/plain", false, false}, {"/ssf/streams", true, false}, {"/ssf", true, false}, {"/ssfx", false, false},
		{"/tapped/logout", false, true}, {"/plain2", false, false}} {
		resp, err := client.Get(base + c.path)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if got := resp.Header.Get("X-From") == "ssf"; got != c.ssf {
			t.Errorf("%s: answered by ssf %v, want %v", c.path, got, c.ssf)
		}
	}
	if obs.afters() != 1 {
		t.Errorf("observer saw %d exchanges, want 1", obs.afters())
	}
	if st := s.Stats(); st.Lane != 3 || st.SSF != 2 || st.Observed != 1 {
		t.Errorf("stats %+v", st)
	}
}

// recordingObserver matches by a function and counts completed exchanges.
type recordingObserver struct {
	match func(method, host, path string) bool
	mu    sync.Mutex
	n     int
}

func (o *recordingObserver) Match(method, host, path string) bool { return o.match(method, host, path) }
func (o *recordingObserver) Before(context.Context, *http.Request, []byte) any {
	return nil
}
func (o *recordingObserver) After(context.Context, any, *http.Request, int, http.Header, []byte) {
	o.mu.Lock()
	o.n++
	o.mu.Unlock()
}
func (o *recordingObserver) afters() int { o.mu.Lock(); defer o.mu.Unlock(); return o.n }

// cannedUpstream answers every request on a connection with the next
// canned response; a response ending in "<close>" closes the connection
// after it is written.
func cannedUpstream(t *testing.T, responses ...string) string {
	t.Helper()
	var mu sync.Mutex
	next := 0
	return rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if _, err := http.ReadRequest(br); err != nil {
				return
			}
			mu.Lock()
			r := responses[next%len(responses)]
			next++
			mu.Unlock()
			closeAfter := strings.HasSuffix(r, "<close>")
			io.WriteString(c, strings.TrimSuffix(r, "<close>"))
			if closeAfter {
				return
			}
		}
	})
}

// TestLaneResponseFraming covers the answers the lane passes on: each
// framing the upstream may use, interim responses, hop-by-hop fields, and
// broken heads or bodies (502, or a cut connection once the head is out).
func TestLaneResponseFraming(t *testing.T) {
	cases := []struct {
		name, response string
		head           bool
		status         int
		body           string
		trailer        string
		header         map[string]string // want (empty: must be absent)
		cut            bool              // the client must see a broken body
	}{
		{name: "content length", response: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
			status: 200, body: "hello", header: map[string]string{"X-A": "1"}},
		{name: "chunked with trailer", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
			status: 200, body: "hello world", trailer: "42"},
		{name: "close delimited", response: "HTTP/1.0 200 OK\r\nX-B: 2\r\n\r\nuntil the end<close>",
			status: 200, body: "until the end", header: map[string]string{"X-B": "2"}},
		{name: "interim responses skipped", response: "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
			status: 201, body: "ok"},
		{name: "hop-by-hop removed", response: "HTTP/1.1 200 OK\r\nConnection: X-Hop, keep-alive\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nUpgrade: h2c\r\nContent-Length: 1\r\n\r\nx",
			status: 200, body: "x", header: map[string]string{"X-Hop": "", "Keep-Alive": "", "Proxy-Authenticate": "", "Upgrade": ""}},
		{name: "repeated equal lengths", response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", status: 200, body: "ok"},
		{name: "head keeps the length", response: "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head: true,
			status: 200, header: map[string]string{"Content-Length": "1234"}},
		{name: "no content", response: "HTTP/1.1 204 No Content\r\nX-C: 3\r\n\r\n", status: 204, header: map[string]string{"X-C": "3"}},
		{name: "conflicting lengths", response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc<close>", status: 502},
		{name: "garbage status line", response: "HTTP/1.1 2000 OK\r\n\r\n<close>", status: 502},
		{name: "header with a control byte", response: "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n<close>", status: 502},
		{name: "unknown transfer coding", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx<close>", status: 502},
		{name: "unasked switch", response: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n<close>", status: 502},
		{name: "short body", response: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc<close>", status: 200, cut: true},
		{name: "bad chunk size", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n<close>", status: 200, cut: true},
		{name: "chunk overrunning its size", response: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n0\r\n\r\n<close>", status: 200, cut: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := cannedUpstream(t, c.response)
			s, base := startProxy(t, Config{Upstream: mustURL(t, up)})
			method := "GET"
			if c.head {
				method = "HEAD"
			}
			req, _ := http.NewRequest(method, base+"/x", nil)
			resp, err := noRedirect().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d (%q)", resp.StatusCode, c.status, b)
			}
			if c.cut {
				if err == nil {
					t.Fatalf("a broken body reached the client as complete: %q", b)
				}
				return
			}
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if c.status != 502 && string(b) != c.body {
				t.Errorf("body %q, want %q", b, c.body)
			}
			if c.trailer != "" && resp.Trailer.Get("X-Sum") != c.trailer {
				t.Errorf("trailer %v", resp.Trailer)
			}
			for k, v := range c.header {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if st := s.Stats(); st.Lane != 1 {
				t.Errorf("stats %+v: the lane did not carry the request", st)
			}
		})
	}
}

// TestLaneReusesAndRecovers checks the lane's connection handling: a
// keep-alive client connection serves many requests over one upstream
// connection, and an upstream that closes its idle connection is retried
// once on a fresh one.
func TestLaneReusesAndRecovers(t *testing.T) {
	// Every answer closes the upstream connection without saying so: the
	// next request finds it dead and must be retried on a new one.
	up := cannedUpstream(t, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok<close>")
	s, base := startProxy(t, Config{Upstream: mustURL(t, up)})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
	for i := range 5 {
		resp, err := client.Get(base + "/r")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
	if st := s.Stats(); st.Lane != 5 || st.UpstreamErrors != 0 {
		t.Errorf("stats %+v", st)
	}
}

// TestLaneTrustedPeers checks X-Forwarded-* on the lane against the same
// rules as net/http's path, for trusted and untrusted peers.
func TestLaneTrustedPeers(t *testing.T) {
	for _, c := range []struct {
		name           string
		trusted        []netip.Prefix
		xff, proto, hd string
		realIP         string
	}{
		{name: "untrusted", xff: "127.0.0.1", proto: "http", hd: "auth.example", realIP: ""},
		{name: "trusted", trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
			xff: "1.2.3.4, 10.0.0.1, 5.6.7.8, 127.0.0.1", proto: "https", hd: "public.example", realIP: "1.2.3.4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			up := reflectUpstream(t)
			s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), TrustedProxies: c.trusted})
			resp, body := rawRoundTrip(t, strings.TrimPrefix(base, "http://"), "GET /a HTTP/1.1\r\nHost: auth.example\r\n"+
				"X-Forwarded-For: 1.2.3.4, 10.0.0.1\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Proto: https\r\n"+
				"X-Forwarded-Host: public.example\r\nX-Real-IP: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\n\r\n")
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			var got seen
			if err := json.Unmarshal([]byte(body), &got); err != nil {
				t.Fatal(err)
			}
			if v := got.Header["X-Forwarded-For"]; len(v) != 1 || v[0] != c.xff {
				t.Errorf("X-Forwarded-For %q, want %q", v, c.xff)
			}
			if v := got.Header["X-Forwarded-Proto"]; len(v) != 1 || v[0] != c.proto {
				t.Errorf("X-Forwarded-Proto %q, want %q", v, c.proto)
			}
			if v := got.Header["X-Forwarded-Host"]; len(v) != 1 || v[0] != c.hd {
				t.Errorf("X-Forwarded-Host %q, want %q", v, c.hd)
			}
			if got.Header.Get("X-Real-Ip") != c.realIP {
				t.Errorf("X-Real-Ip %q, want %q", got.Header.Get("X-Real-Ip"), c.realIP)
			}
			if st := s.Stats(); st.Lane != 1 {
				t.Errorf("stats %+v: the lane did not carry the request", st)
			}
		})
	}
}

// TestLaneSlowClientHead: a request head that trickles in is still served;
// one that stops half way is dropped after ReadHeaderTimeout without
// reaching the upstream.
func TestLaneSlowClientHead(t *testing.T) {
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), ReadHeaderTimeout: 300 * time.Millisecond})
	addr := strings.TrimPrefix(base, "http://")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, part := range []string{"GET /slow", " HTTP/1.1\r\nHo", "st: h\r\n", "\r\n"} {
		io.WriteString(c, part)
		time.Sleep(20 * time.Millisecond)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("trickled head: %v %v", resp, err)
	}
	resp.Body.Close()

	c2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	io.WriteString(c2, "GET /stalled HTTP/1.1\r\nHost: h\r\n")
	_ = c2.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c2.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a stalled head got %d bytes of answer", n)
	} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
		t.Fatal("the proxy did not drop a stalled head")
	}
	if st := s.Stats(); st.Proxied != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestLaneIdleTimeout: a keep-alive client connection the lane served is
// closed once it has been idle for IdleTimeout.
func TestLaneIdleTimeout(t *testing.T) {
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), IdleTimeout: 200 * time.Millisecond})
	c, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /once HTTP/1.1\r\nHost: h\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: %v, want EOF from the proxy closing it", err)
	}
	if st := s.Stats(); st.Lane != 1 {
		t.Errorf("stats %+v", st)
	}
}
