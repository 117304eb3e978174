package lane

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

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
