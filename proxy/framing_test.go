package proxy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The requests whose framing the proxy refuses, on every request of every
// HTTP/1.x connection (RFC 9112 sections 5.2 and 6.1).
var ambiguousRequests = map[string]string{
	"CL+TE":     "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"TE+CL":     "POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
	"folded CL": "POST /bad HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc",
}

// Requests that go ahead of the refused one. The first is handed from the
// lane to net/http (it has a body), so what follows is read by net/http.
const (
	handedOff = "POST /first HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
	plainGet  = "GET /second HTTP/1.1\r\nHost: x\r\n\r\n"
	chunked   = "PUT /third HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
	after     = "GET /after HTTP/1.1\r\nHost: x\r\n\r\n"
)

// frontConn dials the proxy as a client would: plain TCP, or TLS offering
// HTTP/1.1 only.
type frontDialer func(t *testing.T) net.Conn

func plainFront(addr string) frontDialer {
	return func(t *testing.T) net.Conn {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
}

func tlsFront(addr string, pool *x509.CertPool, protos ...string) frontDialer {
	return func(t *testing.T) net.Conn {
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pool, NextProtos: protos})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.ConnectionState().NegotiatedProtocol; len(protos) > 0 && got != protos[0] {
			t.Fatalf("negotiated %q", got)
		}
		return c
	}
}

// exchange sends reqs on one connection, one at a time (each after the
// previous answer) or all in one write (pipelined), and returns the
// statuses read until the proxy closed the connection.
func exchange(t *testing.T, c net.Conn, reqs []string, pipelined bool) []int {
	t.Helper()
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var statuses []int
	read := func() bool {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return false
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		statuses = append(statuses, resp.StatusCode)
		return true
	}
	if pipelined {
		if _, err := io.WriteString(c, strings.Join(reqs, "")); err != nil {
			t.Fatal(err)
		}
	} else {
		for _, r := range reqs {
			if _, err := io.WriteString(c, r); err != nil {
				return statuses // closed after a refusal
			}
			if !read() {
				return statuses
			}
		}
	}
	for read() {
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("connection not closed: %v", err)
	}
	return statuses
}

// TestAmbiguousFramingRefusedOnEveryRequest: a request with Content-Length
// and Transfer-Encoding, or an obs-folded Content-Length, is answered 400
// and its connection closed wherever it comes: as the second or third
// request on a plain keep-alive connection the lane handed to net/http (fast
// path on and off), as the first or a later request over TLS with
// HTTP/1.1, and pipelined behind others. The requests ahead of it are
// answered; neither it nor anything after it reaches the upstream.
func TestAmbiguousFramingRefusedOnEveryRequest(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	type front struct {
		name string
		dial frontDialer
	}
	var fronts []front
	up, got := countingUpstream(t)
	laneSrv, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL)})
	offSrv, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), DisableFastPath: true})
	tlsSrv, _ := startProxy(t, Config{Upstream: mustURL(t, up.URL), TLSCertFile: certFile, TLSKeyFile: keyFile})
	fronts = append(fronts,
		front{"lane", plainFront(laneSrv.Addr().String())},
		front{"fast path off", plainFront(offSrv.Addr().String())},
		front{"tls h1", tlsFront(tlsSrv.Addr().String(), pool, "http/1.1")},
		front{"tls without alpn", tlsFront(tlsSrv.Addr().String(), pool)})

	sequences := []struct {
		name      string
		tlsOnly   bool
		ahead     []string
		pipelined bool
	}{
		{name: "first request", tlsOnly: true},
		{name: "second after a hand-off", ahead: []string{handedOff}},
		{name: "third after a hand-off", ahead: []string{handedOff, plainGet}},
		{name: "third after a chunked one", ahead: []string{handedOff, chunked}},
		{name: "pipelined", ahead: []string{handedOff, plainGet, chunked}, pipelined: true},
	}
	for _, fr := range fronts {
		for _, seq := range sequences {
			if seq.tlsOnly && !strings.HasPrefix(fr.name, "tls") {
				continue
			}
			for kind, bad := range ambiguousRequests {
				t.Run(fr.name+"/"+seq.name+"/"+kind, func(t *testing.T) {
					before := len(got())
					reqs := append(append([]string(nil), seq.ahead...), bad, after)
					statuses := exchange(t, fr.dial(t), reqs, seq.pipelined)
					want := make([]int, len(seq.ahead), len(seq.ahead)+1)
					for i := range want {
						want[i] = http.StatusNoContent
					}
					want = append(want, http.StatusBadRequest)
					if fmt.Sprint(statuses) != fmt.Sprint(want) {
						t.Errorf("statuses %v, want %v and a close", statuses, want)
					}
					seen := got()[before:]
					if len(seen) != len(seq.ahead) {
						t.Errorf("upstream received %q, want only the %d requests ahead", seen, len(seq.ahead))
					}
					for _, s := range seen {
						if strings.Contains(s, "/bad") || strings.Contains(s, "/after") {
							t.Errorf("upstream received %q", s)
						}
					}
				})
			}
		}
	}
	for _, s := range []*Server{laneSrv, offSrv, tlsSrv} {
		if st := s.Stats(); st.ClientErrors == 0 {
			t.Errorf("refusals not counted: %+v", st)
		}
	}
}

// TestTLSHTTP1KeepsTLSState: a request over TLS with HTTP/1.1 (which the
// proxy's own TLS front passes to net/http under the framing check) is
// still known to have come over TLS, and one over h2 still gets HTTP/2.
func TestTLSHTTP1KeepsTLSState(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), TLSCertFile: certFile, TLSKeyFile: keyFile})
	base = strings.Replace(base, "http://", "https://", 1)
	for _, h2 := range []bool{false, true} {
		client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: h2}}
		for i := range 2 { // a keep-alive connection's first and second request
			resp, err := client.Post(base+"/api/v3/x/", "text/plain", strings.NewReader("body"))
			if err != nil {
				t.Fatal(err)
			}
			var got seen
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if (resp.ProtoMajor == 2) != h2 {
				t.Errorf("h2 %v: client spoke %s", h2, resp.Proto)
			}
			if got.Header.Get("X-Forwarded-Proto") != "https" || got.Body != "body" {
				t.Errorf("h2 %v, request %d: upstream saw X-Forwarded-Proto %q, body %q", h2, i, got.Header.Get("X-Forwarded-Proto"), got.Body)
			}
		}
		client.CloseIdleConnections()
	}
	// A client speaking plain HTTP to the TLS port is told so.
	resp, body := rawRoundTrip(t, s.Addr().String(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "HTTPS") {
		t.Errorf("plain HTTP to the TLS port: %d %q", resp.StatusCode, body)
	}
}

// TestHTTP2BodyLengthEnforced: HTTP/2 has no Transfer-Encoding and frames
// bodies itself; Go's server refuses a DATA length that differs from the
// request's content-length, and a transfer-encoding field, so such a
// request never reaches the upstream whole.
func TestHTTP2BodyLengthEnforced(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	up := newRecordingUpstream(t) // records only requests read whole
	t.Cleanup(func() { up.ln.Close() })
	s, _ := startProxy(t, Config{Upstream: mustURL(t, "http://"+up.ln.Addr().String()), TLSCertFile: certFile, TLSKeyFile: keyFile})
	for _, r := range []struct {
		name   string
		fields []string
		data   string
	}{
		{"longer than content-length", []string{"content-length", "3"}, "hello"},
		{"shorter than content-length", []string{"content-length", "10"}, "hello"},
		{"transfer-encoding", []string{"transfer-encoding", "chunked"}, "0\r\n\r\n"},
	} {
		c := tlsFront(s.Addr().String(), pool, "h2")(t)
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
			t.Fatal(err)
		}
		fr := http2.NewFramer(c, c)
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		fields := append([]string{":method", "POST", ":scheme", "https", ":authority", "x", ":path", "/h2"}, r.fields...)
		for i := 0; i < len(fields); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		if err := fr.WriteSettings(); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(1, true, []byte(r.data)); err != nil {
			t.Fatal(err)
		}
		// The stream ends in a reset, an error status or the connection's
		// end; never in the upstream's 200.
		for ended := false; !ended; {
			f, err := fr.ReadFrame()
			if err != nil {
				break
			}
			switch f := f.(type) {
			case *http2.RSTStreamFrame:
				ended = true
			case *http2.HeadersFrame:
				hf, _ := hpack.NewDecoder(4096, nil).DecodeFull(f.HeaderBlockFragment())
				for _, h := range hf {
					if h.Name == ":status" && h.Value == "200" {
						t.Errorf("%s: answered 200", r.name)
					}
				}
				ended = f.StreamEnded()
			case *http2.DataFrame:
				ended = f.StreamEnded()
			}
		}
		c.Close()
	}
	waitFor(t, "the proxy's requests to end", func() bool { return s.Stats().ClientErrors+s.Stats().ClientGone >= 1 })
	if g := up.take(0); len(g) != 0 {
		t.Errorf("upstream received %q", g)
	}
}

// rawUpgradeUpstream switches every request to protocol "raw" and then
// echoes what it reads.
func rawUpgradeUpstream(t *testing.T) string {
	return rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n")
		_, _ = io.Copy(c, br)
	})
}

// plainAndTLSFronts starts the proxy in front of upstream twice, on plain
// HTTP and on TLS, and returns a dialer for each (TLS offering HTTP/1.1).
func plainAndTLSFronts(t *testing.T, upstream string) map[string]frontDialer {
	certFile, keyFile, pool := selfSigned(t)
	plain, _ := startProxy(t, Config{Upstream: mustURL(t, upstream)})
	secure, _ := startProxy(t, Config{Upstream: mustURL(t, upstream), TLSCertFile: certFile, TLSKeyFile: keyFile})
	return map[string]frontDialer{
		"plain": plainFront(plain.Addr().String()), "tls": tlsFront(secure.Addr().String(), pool, "http/1.1"),
	}
}

// TestFramingCheckStopsAfterUpgrade: after a 101 the bytes on the
// connection are the new protocol's, even if they look like an ambiguous
// request head; and an upgrade still works after a handed-off request and
// over TLS.
func TestFramingCheckStopsAfterUpgrade(t *testing.T) {
	fronts := plainAndTLSFronts(t, rawUpgradeUpstream(t))
	const upgrade = "GET /raw HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n"
	tunnelled := ambiguousRequests["CL+TE"] + ambiguousRequests["folded CL"]
	for name, dial := range fronts {
		t.Run(name, func(t *testing.T) {
			c := dial(t)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.WriteString(c, upgrade); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, nil)
			if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("upgrade: %v %v", resp, err)
			}
			if _, err := io.WriteString(c, tunnelled); err != nil {
				t.Fatal(err)
			}
			echo := make([]byte, len(tunnelled))
			if _, err := io.ReadFull(br, echo); err != nil || string(echo) != tunnelled {
				t.Fatalf("tunnel echoed %q (%v)", echo, err)
			}
		})
	}
}

// TestExpectContinueAfterHandOff: "Expect: 100-continue" still gets its
// interim answer, and the connection goes on, when net/http reads the
// request under the framing check (after a hand-off, and over TLS).
func TestExpectContinueAfterHandOff(t *testing.T) {
	for name, dial := range plainAndTLSFronts(t, reflectUpstream(t).URL) {
		t.Run(name, func(t *testing.T) {
			c := dial(t)
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(c)
			roundTrip := func(req string) *http.Response {
				t.Helper()
				if _, err := io.WriteString(c, req); err != nil {
					t.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			for _, req := range []string{handedOff, "PUT /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"} {
				resp := roundTrip(req)
				if resp.StatusCode == http.StatusContinue {
					resp = roundTrip("hello")
				}
				var got seen
				err := json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("%q: %d %v", req, resp.StatusCode, err)
				}
				if strings.HasPrefix(req, "PUT") && got.Body != "hello" {
					t.Errorf("upstream got body %q", got.Body)
				}
			}
			resp := roundTrip(plainGet)
			if resp.StatusCode != 200 {
				t.Errorf("after: %d", resp.StatusCode)
			}
		})
	}
}
