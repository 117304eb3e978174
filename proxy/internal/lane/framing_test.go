package lane

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// followBytewise feeds b to a new framer a byte at a time and returns the
// offsets at which it saw requests end, and where and why it stopped (-1,
// nil: it did not).
func followBytewise(b []byte) (ends []int, stop int, err error) {
	var f framer
	for i := range b {
		n, ferr := f.feed(b[i : i+1])
		if ferr != nil {
			return ends, i + n, ferr
		}
		if f.messages > len(ends) {
			ends = append(ends, i+1)
		}
	}
	return ends, -1, nil
}

// followChunks feeds b in pieces of the given size and returns where and
// why the framer stopped, and how many requests it saw end.
func followChunks(b []byte, size int) (messages, stop int, err error) {
	var f framer
	for i := 0; i < len(b); i += size {
		piece := b[i:min(i+size, len(b))]
		n, ferr := f.feed(piece)
		if ferr != nil {
			return f.messages, i + n, ferr
		}
	}
	return f.messages, -1, nil
}

// netHTTPMessages reads b as net/http's server does (http.ReadRequest on a
// 4 KiB buffer, each body to its end) and returns the offsets at which the
// requests it read without error ended, with the offsets their heads ended,
// and how many heads it read.
func netHTTPMessages(b []byte) (ends, headEnds []int, heads int) {
	cr := &countingReader{r: bytes.NewReader(b)}
	br := bufio.NewReader(cr)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return ends, headEnds, heads
		}
		heads++
		headEnds = append(headEnds, cr.n-br.Buffered())
		if _, err := io.Copy(io.Discard, req.Body); err != nil {
			return ends, headEnds[:len(headEnds)-1], heads
		}
		ends = append(ends, cr.n-br.Buffered())
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// ambiguousHead is the reference for the refusal: the head at the start of
// b (up to its empty line) names both Content-Length and Transfer-Encoding,
// or continues one of them on an obs-folded line.
func ambiguousHead(b []byte) bool {
	_, rest, _ := bytes.Cut(b, []byte("\n")) // the request line
	var cl, te, prev bool
	for len(rest) > 0 {
		var line []byte
		line, rest, _ = bytes.Cut(rest, []byte("\n"))
		line = bytes.TrimSuffix(line, []byte("\r"))
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			if prev {
				return true
			}
			continue
		}
		name, _, _ := bytes.Cut(line, []byte(":"))
		name = bytes.TrimRight(name, " \t")
		isCL, isTE := asciiEqualFold(name, "content-length"), asciiEqualFold(name, "transfer-encoding")
		cl, te, prev = cl || isCL, te || isTE, isCL || isTE
	}
	return cl && te
}

// FuzzFraming holds the framing check to net/http's reading of the same
// bytes: it never panics; it stops at the same byte however the stream is
// cut into reads; for every request net/http reads whole, it either sees
// that request end at the same byte, or stops before its head ends, for a
// reason the head shows; and it never lets through a head the reference
// finds ambiguous.
func FuzzFraming(f *testing.F) {
	for _, s := range framingSeeds {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, step uint8) {
		if len(b) > 1<<14 {
			return
		}
		ends, stop, err := followBytewise(b)
		messages, stop2, err2 := followChunks(b, int(step)%17+1)
		if stop2 != stop || err2 != err || messages != len(ends) {
			t.Fatalf("pieces of %d: stopped at %d (%v) after %d requests; bytewise at %d (%v) after %d",
				int(step)%17+1, stop2, err2, messages, stop, err, len(ends))
		}
		if refusal(err) {
			// What net/http reads of a refused stream: the bytes before
			// the stop, then the refused line; it must not read the
			// refused head as a request.
			if _, _, n := netHTTPMessages(append(b[:stop:stop], refusedLine...)); n > len(ends) {
				t.Fatalf("net/http read %d heads from %q, the check passed %d", n, append(b[:stop:stop], refusedLine...), len(ends))
			}
		}
		want, heads, _ := netHTTPMessages(b)
		start := 0
		for m, end := range want {
			if stop >= 0 && stop < end {
				if stop >= heads[m] && err != errBadRequestChunk {
					t.Fatalf("request %d (%q): stopped in its body at %d (%v)", m, b[start:end], stop, err)
				}
				if err != errBadRequestChunk && !ambiguousHead(b[start:]) && err != errTEInOldHTTP && err != errBadCL {
					t.Fatalf("request %d (%q) refused with %v, though its head is not ambiguous", m, b[start:end], err)
				}
				return
			}
			if m >= len(ends) || ends[m] != end {
				t.Fatalf("net/http reads request %d as %q; the check saw requests end at %v", m, b[start:end], ends)
			}
			if ambiguousHead(b[start:]) {
				t.Fatalf("request %d (%q) has an ambiguous head and went through", m, b[start:end])
			}
			start = end
		}
	})
}

var framingSeeds = []string{
	"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nabc\r\n10  \r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
	"POST /a HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\nContent-Length: 5\n\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n 3\r\n\r\nabc",
	"POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
	"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
	"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello world\r\n0\r\n\r\n",
	"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
	"PUT /b HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\r\nHost: h\r\n\r\n",
}

// TestFramingFollowsRequests: well-formed pipelined streams go through
// whole, every request seen to its end; each ambiguous head is stopped
// before its end, after the requests ahead of it.
func TestFramingFollowsRequests(t *testing.T) {
	const next = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, c := range []struct {
		stream   string
		messages int
		err      error
	}{
		{framingSeeds[0], 2, nil},
		{framingSeeds[1], 2, nil},
		{framingSeeds[2], 2, nil},
		{framingSeeds[11], 2, nil},
		{"GET / HTTP/1.1\nHost: x\n\n" + next, 2, nil},
		{"POST / HTTP/1.1\r\nHost: x\r\ncontent-length: 0\r\n\r\n" + next, 2, nil},
		{"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n" + next, 2, nil},
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + framingSeeds[3], 1, errCLAndTE},
		{next + next + framingSeeds[4], 2, errCLAndTE},
		{next + framingSeeds[5], 1, errFolded},
		{"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\tx\r\n\r\n0\r\n\r\n", 0, errFolded},
		{next + framingSeeds[6], 1, errTEInOldHTTP},
		{"POST /a HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 0, errBadCL},
		{"POST /a HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", 0, errBadCL},
		{"POST /a HTTP/1.1\r\nContent-Length: 3" + strings.Repeat(" ", 70) + "\r\n\r\nabc", 0, errBadCL},
		{"POST /a HTTP/1.1\r\nContent-Length: 3\r\nX-A: 1\r\n\r\nabc" + next + "PUT /b HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n", 2, errFolded},
		{framingSeeds[8], 0, errUnsupportedT},
		{framingSeeds[9], 0, errBadRequestChunk},
		{"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n", 0, errBadRequestChunk},
		{"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\n", 0, errBadRequestChunk},
	} {
		var f framer
		n, err := f.feed([]byte(c.stream))
		if err != c.err || f.messages != c.messages {
			t.Errorf("%q: %d requests, stopped at %d with %v; want %d requests and %v", c.stream, f.messages, n, err, c.messages, c.err)
		}
		if refusal(err) {
			if _, _, heads := netHTTPMessages([]byte(c.stream[:n] + refusedLine)); heads != c.messages {
				t.Errorf("%q: net/http read %d heads of what went on, want %d", c.stream, heads, c.messages)
			}
		}
		want, _, _ := netHTTPMessages([]byte(c.stream))
		if c.err == nil && len(want) != c.messages {
			t.Errorf("%q: net/http reads %d requests", c.stream, len(want))
		}
	}
}

// TestFramingConnHandsRefusalToNetHTTP serves a FramingConn with net/http:
// the requests before an ambiguous one are answered in order, then net/http
// answers 400 with Connection: close and closes; after a Tunnel nothing is
// checked and nothing held back is lost.
func TestFramingConnHandsRefusalToNetHTTP(t *testing.T) {
	var mu sync.Mutex
	var served []string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		served = append(served, r.URL.Path)
		mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
	}), ReadHeaderTimeout: 5 * time.Second}
	client, server := net.Pipe()
	var stats Counters
	fc := NewFramingConn(server, &stats, discardLogger())
	ln := NewListener(server.LocalAddr())
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	ln.Deliver(fc)
	_ = client.SetDeadline(time.Now().Add(10 * time.Second))
	go func() {
		_, _ = io.WriteString(client, "POST /1 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"+
			"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"+
			"POST /3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"+
			"GET /4 HTTP/1.1\r\nHost: x\r\n\r\n")
	}()
	all, _ := io.ReadAll(client)
	got := string(all)
	if strings.Count(got, "HTTP/1.1 200 OK") != 2 || !strings.Contains(got, "HTTP/1.1 400 Bad Request") ||
		strings.Index(got, "400 Bad Request") < strings.LastIndex(got, "200 OK") || !strings.Contains(got, "Connection: close") {
		t.Errorf("answers %q", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(served, " ") != "/1 /2" || stats.ClientErrors.Load() != 1 {
		t.Errorf("served %q, %d refused", served, stats.ClientErrors.Load())
	}

	// A tunnel: bytes that would look like an ambiguous head pass.
	a, b := net.Pipe()
	tc := NewFramingConn(b, &stats, discardLogger()).(*FramingConn)
	go func() {
		_, _ = io.WriteString(a, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\nX Content-Length: 1\r\nTransfer-Encoding: chunked\r\nrest")
		a.Close()
	}()
	buf := make([]byte, 4096)
	n, _ := io.ReadAtLeast(tc, buf, len("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")+20)
	tc.Tunnel()
	rest, _ := io.ReadAll(tc)
	if got := string(buf[:n]) + string(rest); !strings.HasSuffix(got, "chunked\r\nrest") {
		t.Errorf("tunnel read %q", got)
	}
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// BenchmarkFraming is the check's own cost per request, for a browser-like
// GET head and a chunked PUT, read in net/http's 4 KiB pieces.
func BenchmarkFraming(b *testing.B) {
	get := "GET /api/v3/core/users/me/?x=1 HTTP/1.1\r\nHost: auth.example\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0\r\n" +
		"Accept: application/json\r\nAccept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\nReferer: https://auth.example/if/admin/\r\n" +
		"Cookie: authentik_session=" + strings.Repeat("a", 300) + "; authentik_csrf=" + strings.Repeat("b", 32) + "\r\nConnection: keep-alive\r\n\r\n"
	put := "PUT /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + strings.Repeat("x", 64) + "\r\n0\r\n\r\n"
	for name, one := range map[string]string{"get": get, "chunked-put": put} {
		b.Run(name, func(b *testing.B) {
			stream := []byte(strings.Repeat(one, 64))
			b.SetBytes(int64(len(stream)))
			var f framer
			for b.Loop() {
				for i := 0; i < len(stream); i += 4096 {
					if _, err := f.feed(stream[i:min(i+4096, len(stream))]); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*64), "ns/request")
		})
	}
}
