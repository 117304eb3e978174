package proxy

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// recordingUpstream is a raw HTTP/1.1 server that records what it parsed
// from each request, under the exchange (generation) current when it
// arrived; exchanges run one at a time and carry one request each.
type recordingUpstream struct {
	ln  net.Listener
	gen atomic.Int64
	mu  sync.Mutex
	got map[int64][]string
}

func newRecordingUpstream(tb testing.TB) *recordingUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	u := &recordingUpstream{ln: ln, got: map[int64][]string{}}
	go u.serve() // lives as long as the test process
	return u
}

func (u *recordingUpstream) serve() {
	for {
		c, err := u.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			br := bufio.NewReader(c)
			for {
				_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
				r, err := http.ReadRequest(br)
				if err != nil {
					return
				}
				body, err := io.ReadAll(r.Body)
				if err != nil {
					return
				}
				u.mu.Lock()
				if r.Host == u.ln.Addr().String() {
					r.Host = "<upstream>" // no Host from the client: each front end names its own upstream
				}
				gen := u.gen.Load()
				u.got[gen] = append(u.got[gen], describe(r, body))
				u.mu.Unlock()
				answer := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\n"
				if r.Method != http.MethodHead {
					answer += "ok"
				}
				io.WriteString(c, answer)
			}
		}()
	}
}

// describe is what the comparison looks at: method, request target, body
// and every header field but those each front end sets its own way. The
// X-Forwarded-* fields are in it: the proxy's two paths must set them
// alike (only method and target are compared with the reference).
func describe(r *http.Request, body []byte) string {
	var keys []string
	for k := range r.Header {
		switch k {
		case "User-Agent", "Accept-Encoding", "Content-Length":
			continue // the reference proxy's own additions (and length vs chunked)
		}
		keys = append(keys, k+"="+strings.Join(r.Header[k], "\x00"))
	}
	sort.Strings(keys)
	return fmt.Sprintf("%s %s host=%q body=%q %s", r.Method, r.RequestURI, r.Host, body, strings.Join(keys, " "))
}

func (u *recordingUpstream) take(gen int64) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	g := u.got[gen]
	delete(u.got, gen)
	return g
}

// front is one way into a recording upstream.
type front struct {
	name string
	addr string
	up   *recordingUpstream
}

// warmUp is a request the lane hands to net/http (it has a body), sent
// ahead of the fuzzed one in exchange's second mode: the fuzzed request is
// then read by net/http under the framing check, as every later request on
// a keep-alive connection is.
const warmUp = "POST /warm-up HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\nw"

// exchange sends raw on a fresh connection (after the warm-up request and
// its answer when afterWarmUp is set), reads one response (or the close),
// and reports whether anything reached the upstream and what (the warm-up
// left out).
func (fr *front) exchange(raw []byte, afterWarmUp bool) (status int, got []string) {
	gen := fr.up.gen.Add(1)
	c, err := net.Dial("tcp", fr.addr)
	if err != nil {
		return -1, nil
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	br := bufio.NewReader(c)
	if afterWarmUp {
		_, _ = io.WriteString(c, warmUp)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			c.Close()
			return -1, nil
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	_, _ = c.Write(raw)
	method, _, _ := strings.Cut(string(raw[:min(len(raw), 16)]), " ")
	if resp, err := http.ReadResponse(br, &http.Request{Method: method}); err == nil {
		status = resp.StatusCode
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	c.Close()
	// What the upstream got was recorded before it answered.
	got = fr.up.take(gen)
	if afterWarmUp && len(got) > 0 && strings.HasPrefix(got[0], "POST /warm-up ") {
		got = got[1:]
	}
	return status, got
}

var (
	diffOnce   sync.Once
	diffFronts []*front
)

// differentialFronts starts, once per process, the proxy with its lane,
// the proxy with net/http only, and httputil.ReverseProxy, each in front of
// its own recording upstream.
//
// Behind them, the same two paths of a proxy that trusts the loopback
// peer (--trusted-proxies), so that the forwarded fields it keeps and
// appends to are compared too: [lane, net/http, reference, trusted lane,
// trusted net/http].
func differentialFronts(tb testing.TB) []*front {
	diffOnce.Do(func() {
		start := func(fast bool, trusted []netip.Prefix) {
			up := newRecordingUpstream(tb)
			s, err := New(Config{Listen: "127.0.0.1:0", Upstream: parseURL(tb, "http://"+up.ln.Addr().String()),
				DisableFastPath: !fast, ReadHeaderTimeout: 2 * time.Second, TrustedProxies: trusted})
			if err != nil {
				tb.Fatal(err)
			}
			go func() { _ = s.Run(context.Background()) }()
			<-s.Ready()
			name := "lane"
			if !fast {
				name = "net/http"
			}
			if trusted != nil {
				name = "trusted " + name
			}
			diffFronts = append(diffFronts, &front{name: name, addr: s.Addr().String(), up: up})
		}
		start(true, nil)
		start(false, nil)
		defer start(false, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
		defer start(true, []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
		up := newRecordingUpstream(tb)
		rp := httputil.NewSingleHostReverseProxy(parseURL(tb, "http://"+up.ln.Addr().String()))
		tr := &http.Transport{DisableCompression: true}
		rp.Transport = tr
		rp.ErrorLog = log.New(io.Discard, "", 0)
		srv := httptest.NewUnstartedServer(rp)
		srv.Config.ReadHeaderTimeout = 2 * time.Second
		srv.Start()
		diffFronts = append(diffFronts, &front{name: "httputil.ReverseProxy", addr: srv.Listener.Addr().String(), up: up})
	})
	return diffFronts
}

// FuzzDifferentialPaths sends the same request bytes through the proxy's
// lane, through its net/http path and through httputil.ReverseProxy. The
// two paths of the proxy must forward exactly the same requests, or refuse
// alike; and whatever the proxy forwards, the reference forwards the same
// way (the proxy may refuse more: opaque targets, ambiguous framing). Each
// input goes once as a connection's first request and once as its second,
// after a request the lane hands to net/http, so that net/http reads it
// under the framing check.
func FuzzDifferentialPaths(f *testing.F) {
	addSeeds(f,
		"GET /static/a.js?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
		"HEAD /api/v3/core/users/me/ HTTP/1.1\r\nHost: h\r\nCookie: authentik_session=abc\r\n\r\n",
		"DELETE x:y:/api/v3/core/authenticated_sessions/5578be33-ae30-41cd-b977-f4f6d9594692/ HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET http://h/api/v3/ HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 3\r\n\r\nabc",
		"GET //ssf/streams HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close, X-Drop\r\nX-Drop: 1\r\nKeep-Alive: 5\r\n\r\n",
		"GET /a HTTP/1.1\nHost: h\nX_Forwarded_For: 1.2.3.4\n\n",
		"PUT /b HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET * HTTP/1.1\r\nHost: h\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: outer\r\nForwarded: for=10.0.0.1\r\nX-Real-Ip: 10.0.0.1\r\n\r\n",
		"HEAD /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-Host: outer\r\nX-Forwarded-For:\r\n\r\n",
		"POST /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.0.0.1\r\nX-Real-Ip: 10.0.0.9\r\nContent-Length: 1\r\n\r\nx",
	)
	f.Fuzz(func(t *testing.T, raw []byte) {
		if len(raw) > 4096 {
			return
		}
		// Only whole messages: a front end waiting for the rest of a head
		// or body would stall the fuzzer, and says nothing about forwarding.
		br := bufio.NewReader(bytes.NewReader(raw))
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		if _, err := io.ReadAll(req.Body); err != nil || br.Buffered() > 0 {
			return // pipelined requests: the unit tests cover those
		}
		fronts := differentialFronts(t)
		for _, afterWarmUp := range []bool{false, true} {
			compareFronts(t, fronts, raw, afterWarmUp)
		}
	})
}

// compareFronts sends raw through every front and compares what their
// upstreams received.
func compareFronts(t *testing.T, fronts []*front, raw []byte, afterWarmUp bool) {
	type result struct {
		status int
		got    []string
	}
	res := make([]result, len(fronts))
	for i, fr := range fronts {
		res[i].status, res[i].got = fr.exchange(raw, afterWarmUp)
	}
	mode := "as a first request"
	if afterWarmUp {
		mode = "after a handed-off request"
	}
	lane, ref := res[0], res[2]
	for _, pair := range [][2]int{{0, 1}, {3, 4}} {
		a, b := res[pair[0]], res[pair[1]]
		if strings.Join(a.got, "\n") != strings.Join(b.got, "\n") {
			t.Fatalf("%s and %s forwarded differently for %q (%s):\n%s: %q (status %d)\n%s: %q (status %d)",
				fronts[pair[0]].name, fronts[pair[1]].name, raw, mode,
				fronts[pair[0]].name, a.got, a.status, fronts[pair[1]].name, b.got, b.status)
		}
	}
	if len(lane.got) == 0 {
		return // refused (or not a request): the reference may forward what the proxy's policy refuses
	}
	if len(ref.got) == 0 {
		if ref.status == 0 || ref.status == http.StatusBadGateway {
			return // the reference failed on its own (a hop-by-hop it rejects, a timeout)
		}
		t.Fatalf("the proxy forwarded what httputil.ReverseProxy refused (%d) for %q (%s): %q", ref.status, raw, mode, lane.got)
	}
	if first(lane.got) != first(ref.got) {
		t.Fatalf("the proxy and httputil.ReverseProxy forwarded differently for %q (%s):\nproxy:     %q\nreference: %q", raw, mode, lane.got, ref.got)
	}
}

// first is the method and target of the first forwarded request.
func first(got []string) string {
	if len(got) == 0 {
		return ""
	}
	m, rest, _ := strings.Cut(got[0], " ")
	target, _, _ := strings.Cut(rest, " ")
	return m + " " + target
}

func parseURL(tb testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

// TestPathsAgreeOnUpstreamFailures: an upstream that refuses connections is
// answered 502 and one that does not answer in time 504, with the same
// header fields and body on the lane and on net/http's path, for GET and
// HEAD.
func TestPathsAgreeOnUpstreamFailures(t *testing.T) {
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close() // connections to it are refused
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() { _, _ = io.Copy(io.Discard, c); c.Close() }() // reads, never answers
		}
	}()
	answer := func(upstream string, fast bool, method string) string {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		s, err := New(Config{Listen: "127.0.0.1:0", Upstream: parseURL(t, "http://"+upstream),
			DisableFastPath: !fast, ResponseHeaderTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = s.Run(ctx) }()
		<-s.Ready()
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c, "%s /a HTTP/1.1\r\nHost: h\r\n\r\n", method)
		resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("%s via %s (lane %v): %v", method, upstream, fast, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Header.Del("Date") // net/http's server adds one
		var keys []string
		for k, v := range resp.Header {
			keys = append(keys, k+"="+strings.Join(v, ","))
		}
		sort.Strings(keys)
		return fmt.Sprintf("%d %v body=%q", resp.StatusCode, keys, body)
	}
	for _, tc := range []struct {
		upstream string
		status   int
	}{{deadAddr, http.StatusBadGateway}, {silent.Addr().String(), http.StatusGatewayTimeout}} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			lane, nh := answer(tc.upstream, true, method), answer(tc.upstream, false, method)
			if lane != nh {
				t.Errorf("%s, upstream %d: the lane answered %s, net/http %s", method, tc.status, lane, nh)
			}
			if want := strconv.Itoa(tc.status) + " "; !strings.HasPrefix(lane, want) {
				t.Errorf("%s: answered %s, want %d", method, lane, tc.status)
			}
		}
	}
}
