package proxy

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

func TestWebSocketEcho(t *testing.T) {
	upgrader := websocket.Upgrader{}
	var gotXFF, gotHost string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotXFF, gotHost = r.Header.Get("X-Forwarded-For"), r.Host
		c, err := upgrader.Upgrade(w, r, http.Header{"Set-Cookie": {"ws=1"}})
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, append([]byte("echo:"), msg...)); err != nil {
				return
			}
		}
	}))
	defer up.Close()
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})

	wsURL := "ws" + strings.TrimPrefix(base, "http") + "/ws/client/"
	c, resp, err := websocket.DefaultDialer.Dial(wsURL, http.Header{"Origin": {base}})
	if err != nil {
		t.Fatalf("dial through proxy: %v", err)
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Set-Cookie") != "ws=1" {
		t.Errorf("handshake response %d %v", resp.StatusCode, resp.Header)
	}
	for i, msg := range []string{"hello", strings.Repeat("x", 100<<10), "bye"} {
		mt := websocket.TextMessage
		if i == 1 {
			mt = websocket.BinaryMessage
		}
		if err := c.WriteMessage(mt, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		gotType, got, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if gotType != mt || string(got) != "echo:"+msg {
			t.Fatalf("message %d: got type %d, %.40q", i, gotType, got)
		}
	}
	if gotXFF != "127.0.0.1" || !strings.HasPrefix(gotHost, "127.0.0.1:") {
		t.Errorf("upstream saw XFF %q host %q", gotXFF, gotHost)
	}
	if st := s.Stats(); st.Upgrades != 1 {
		t.Errorf("upgrades = %d", st.Upgrades)
	}
}

func TestServerSentEventsStream(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-release // the upstream is not done until the client saw the first event
		fmt.Fprint(w, "data: second\n\n")
	}))
	defer up.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})

	resp, err := http.Get(base + "/api/v3/events/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "data: first\n" {
		t.Fatalf("first line %q, %v", line, err)
	}
	close(release)
	rest, err := io.ReadAll(br)
	if err != nil || string(rest) != "\ndata: second\n\n" {
		t.Fatalf("rest %q, %v", rest, err)
	}
}

func TestChunkedResponseFlushedAndTrailers(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Checksum")
		w.WriteHeader(200)
		io.WriteString(w, "part1;")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "part2")
		w.Header().Set("X-Checksum", "abc")
	}))
	defer up.Close()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})
	resp, err := http.Get(base + "/chunked")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "part1;" {
		close(release)
		t.Fatalf("first chunk %q %v", buf, err)
	}
	close(release)
	rest, _ := io.ReadAll(resp.Body)
	if string(rest) != "part2" || resp.Trailer.Get("X-Checksum") != "abc" {
		t.Errorf("rest %q trailer %v", rest, resp.Trailer)
	}
}

// TestLargeUploadBoundedMemory streams 256 MiB through the proxy and checks
// that the heap does not grow with the body.
func TestLargeUploadBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large upload in -short mode")
	}
	const size = 256 << 20
	var gotSum string
	var gotN int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		gotN, _ = io.Copy(h, r.Body)
		gotSum = hex.EncodeToString(h.Sum(nil))
	}))
	defer up.Close()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})

	var peak uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
		}
	}()
	src := &patternReader{left: size}
	want := sha256.New()
	req, _ := http.NewRequest("POST", base+"/upload", io.TeeReader(src, want))
	req.ContentLength = size
	resp, err := http.DefaultClient.Do(req)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || gotN != size || gotSum != hex.EncodeToString(want.Sum(nil)) {
		t.Fatalf("status %d, upstream got %d bytes, sum match %v", resp.StatusCode, gotN, gotSum == hex.EncodeToString(want.Sum(nil)))
	}
	if peak > 64<<20 {
		t.Errorf("heap in use peaked at %d MiB while streaming %d MiB", peak>>20, size>>20)
	}
}

type patternReader struct{ left int }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := min(len(b), p.left)
	for i := range b[:n] {
		b[i] = byte(p.left - i)
	}
	p.left -= n
	return n, nil
}

func TestUpstreamFailures(t *testing.T) {
	// A port with nothing listening.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := ln.Addr().String()
	ln.Close()

	block := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(block)

	cases := []struct {
		name     string
		upstream string
		status   int
		check    func(Stats) bool
	}{
		{"down", "http://" + deadAddr, 502, func(s Stats) bool { return s.UpstreamErrors == 1 }},
		{"slow", slow.URL, 504, func(s Stats) bool { return s.UpstreamTimeouts == 1 }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, base := startProxy(t, Config{Upstream: mustURL(t, c.upstream), ResponseHeaderTimeout: 100 * time.Millisecond})
			resp, err := http.Post(base+"/api/v3/x", "text/plain", strings.NewReader("payload"))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Errorf("status %d, want %d", resp.StatusCode, c.status)
			}
			if st := s.Stats(); !c.check(st) {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestNonIdempotentNotRetried: a POST whose upstream connection dies after
// the request was sent is answered 502, and the upstream saw it once.
func TestNonIdempotentNotRetried(t *testing.T) {
	var mu sync.Mutex
	hits := 0
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		io.Copy(io.Discard, r.Body)
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close() // die without answering
	}))
	defer up.Close()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})
	resp, err := http.Post(base+"/api/v3/core/users/1/set_password/", "application/json", strings.NewReader(`{"password":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if resp.StatusCode != 502 || hits != 1 {
		t.Errorf("status %d, upstream hits %d", resp.StatusCode, hits)
	}
}

func TestClientDisconnectNotAnError(t *testing.T) {
	entered := make(chan struct{})
	left := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-r.Context().Done() // the proxy cancels the upstream request when the client goes
		close(left)
	}))
	defer up.Close()
	var mu sync.Mutex
	var statuses []int
	logs := &lockedBuffer{}
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Logger: newTestLogger(logs),
		OnRequest: func(_ string, status int, _ time.Duration) {
			mu.Lock()
			statuses = append(statuses, status)
			mu.Unlock()
		}})

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/slow", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-entered
	cancel()
	<-errc
	<-left
	waitFor(t, "request accounted", func() bool { mu.Lock(); defer mu.Unlock(); return len(statuses) == 1 })
	st := s.Stats()
	// A plain GET: the proxy's own lane carried it and noticed the client go.
	if st.ClientGone != 1 || st.UpstreamErrors != 0 || statuses[0] != 499 || st.Lane != 1 {
		t.Errorf("stats %+v statuses %v", st, statuses)
	}
	if strings.Contains(logs.String(), "level=WARN") || strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("client disconnect logged as a problem:\n%s", logs.String())
	}
}

func TestConcurrentRequests(t *testing.T) {
	up := reflectUpstream(t)
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	const workers, each = 32, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				body := fmt.Sprintf("w%d-i%d", w, i)
				resp, err := client.Post(fmt.Sprintf("%s/c/%d/%d?x=%d", base, w, i, i), "text/plain", strings.NewReader(body))
				if err != nil {
					errs <- err
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				want := fmt.Sprintf(`"RequestURI":"/c/%d/%d?x=%d"`, w, i, i)
				if !strings.Contains(string(b), want) || !strings.Contains(string(b), `"Body":"`+body+`"`) {
					errs <- fmt.Errorf("mixed up response for %s: %.200s", body, b)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := s.Stats(); st.Proxied != workers*each {
		t.Errorf("proxied %d", st.Proxied)
	}
}
