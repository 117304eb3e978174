package proxy

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// scriptedUpstream accepts connections and answers each request read on
// them with the reply chosen by reply(connIndex, requestIndexOnConn); a reply
// of "" closes the connection without answering, and pauseMark in a reply
// makes it wait 20 ms there.
func scriptedUpstream(t *testing.T, reply func(conn, req int, r *http.Request) string) (addr string, conns *atomic.Int32, reqs *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns, reqs = &atomic.Int32{}, &atomic.Int32{}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ci := int(conns.Add(1)) - 1
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for ri := 0; ; ri++ {
					r, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, r.Body)
					reqs.Add(1)
					out := reply(ci, ri, r)
					if out == "" {
						return
					}
					for i, part := range strings.Split(out, pauseMark) {
						if i > 0 {
							time.Sleep(20 * time.Millisecond)
						}
						if _, err := io.WriteString(c, part); err != nil {
							return
						}
					}
					if strings.HasPrefix(out, "HTTP/1.0") {
						return // close-delimited body
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), conns, reqs
}

const pauseMark = "\x00pause\x00"

const okReply = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestFastPathReusesConnections(t *testing.T) {
	addr, conns, reqs := scriptedUpstream(t, func(_, _ int, _ *http.Request) string { return okReply })
	_, base := startProxy(t, Config{Upstream: mustURL(t, "http://"+addr)})
	for i := range 20 {
		if st, b := getBody(t, base+"/static/x.js"); st != 200 || b != "ok" {
			t.Fatalf("request %d: %d %q", i, st, b)
		}
	}
	if conns.Load() != 1 || reqs.Load() != 20 {
		t.Errorf("upstream saw %d connections for %d requests", conns.Load(), reqs.Load())
	}
}

// TestFastPathStaleConnection: the upstream closes a kept-alive connection
// after one answer, as servers do on their idle timeout. The next GET is
// retried once on a fresh connection and succeeds.
func TestFastPathStaleConnection(t *testing.T) {
	addr, conns, _ := scriptedUpstream(t, func(_, req int, _ *http.Request) string {
		if req == 0 {
			return okReply
		}
		return "" // closes instead of answering a second request
	})
	s, base := startProxy(t, Config{Upstream: mustURL(t, "http://"+addr)})
	for i := range 3 {
		if st, b := getBody(t, base+"/api/v3/x"); st != 200 || b != "ok" {
			t.Fatalf("request %d: %d %q", i, st, b)
		}
	}
	if conns.Load() != 3 || s.Stats().UpstreamErrors != 0 {
		t.Errorf("connections %d, stats %+v", conns.Load(), s.Stats())
	}
}

func TestFastPathUpstreamAnswers(t *testing.T) {
	cases := []struct {
		name   string
		reply  string
		status int
		body   string
	}{
		{"interim responses skipped", "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + okReply, 200, "ok"},
		{"chunked with trailer", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nok\r\n0\r\nX-T: v\r\n\r\n", 200, "ok"},
		{"close-delimited", "HTTP/1.0 200 OK\r\n\r\nuntil close", 200, "until close"},
		{"header too large", "HTTP/1.1 200 OK\r\nX-Big: " + strings.Repeat("b", 64<<10) + "\r\nContent-Length: 0\r\n\r\n", 502, "Bad Gateway\n"},
		{"garbage", "NOT HTTP\r\n\r\n", 502, "Bad Gateway\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			addr, _, _ := scriptedUpstream(t, func(_, _ int, _ *http.Request) string { return c.reply })
			_, base := startProxy(t, Config{Upstream: mustURL(t, "http://"+addr), MaxHeaderBytes: 16 << 10})
			st, b := getBody(t, base+"/x")
			if st != c.status || b != c.body {
				t.Errorf("got %d %q, want %d %q", st, b, c.status, c.body)
			}
		})
	}
}

func TestFastPathResponseHeaderTimeout(t *testing.T) {
	block := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer up.Close()
	defer close(block)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), ResponseHeaderTimeout: 100 * time.Millisecond})
	for _, method := range []string{"GET", "HEAD"} {
		req, _ := http.NewRequest(method, base+"/slow", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 504 {
			t.Errorf("%s: status %d", method, resp.StatusCode)
		}
	}
	if st := s.Stats(); st.UpstreamTimeouts != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestFastPathHeaderTimeoutOnReusedConnection: the header deadline kept from
// an earlier request on the same connection still yields 504 for a slow
// answer, and a fast answer's body is never cut by it.
func TestFastPathHeaderTimeoutOnReusedConnection(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	addr, conns, _ := scriptedUpstream(t, func(_, req int, _ *http.Request) string {
		if req == 1 {
			<-release
			return ""
		}
		return okReply
	})
	_, base := startProxy(t, Config{Upstream: mustURL(t, "http://"+addr), ResponseHeaderTimeout: 200 * time.Millisecond})
	if st, b := getBody(t, base+"/fast"); st != 200 || b != "ok" {
		t.Fatalf("first: %d %q", st, b)
	}
	if st, _ := getBody(t, base+"/slow"); st != 504 {
		t.Fatalf("second: %d", st)
	}
	if conns.Load() != 1 {
		t.Errorf("the slow request did not reuse the connection (%d connections)", conns.Load())
	}
}

// TestFastPathLongBodyNotCutByHeaderDeadline: a body that takes longer than
// the header timeout to arrive still arrives whole.
func TestFastPathLongBodyNotCutByHeaderDeadline(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(200)
		io.WriteString(w, "01234")
		w.(http.Flusher).Flush()
		time.Sleep(300 * time.Millisecond) // the upstream is slow mid-body, longer than the header timeout
		io.WriteString(w, "56789")
	}))
	defer up.Close()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), ResponseHeaderTimeout: 100 * time.Millisecond})
	for i := range 2 {
		if st, b := getBody(t, base+"/dl"); st != 200 || b != "0123456789" {
			t.Fatalf("round %d: %d %q", i, st, b)
		}
	}
}
