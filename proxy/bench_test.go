package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
)

// BenchmarkProxy compares a round trip through the proxy core with one
// through a plain httputil.ReverseProxy and with the upstream directly, over
// loopback with keep-alive. Run with -benchmem to see allocations per request.
func BenchmarkProxy(b *testing.B) {
	up, u := benchUpstream(b)
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: u})
	if err != nil {
		b.Fatal(err)
	}
	sidecar := httptest.NewServer(s.Handler())
	defer sidecar.Close()
	rp := httptest.NewServer(httputil.NewSingleHostReverseProxy(u))
	defer rp.Close()

	for _, c := range []struct{ name, url string }{
		{"direct", up.URL}, {"sidecar", sidecar.URL}, {"reverseproxy", rp.URL},
	} {
		b.Run(c.name, func(b *testing.B) { benchGets(b, c.url+"/api/v3/core/users/me/") })
	}
}

// benchUpstream is an upstream answering every request with 512 bytes of
// JSON; it is closed with the benchmark.
func benchUpstream(b *testing.B) (*httptest.Server, *url.URL) {
	body := make([]byte, 512)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header()["Content-Type"] = []string{"application/json"}
		w.Write(body)
	}))
	b.Cleanup(up.Close)
	return up, mustURL(&testing.T{}, up.URL)
}

// benchGets GETs url from parallel clients over keep-alive connections.
func benchGets(b *testing.B, url string) {
	benchRequests(b, &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true}, func() *http.Request {
		r, _ := http.NewRequest(http.MethodGet, url, nil)
		return r
	})
}

// benchRequests sends what next makes from parallel clients over tr's
// keep-alive connections.
func benchRequests(b *testing.B, tr *http.Transport, next func() *http.Request) {
	client := &http.Client{Transport: tr}
	defer tr.CloseIdleConnections()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		for pb.Next() {
			resp, err := client.Do(next())
			if err != nil {
				b.Error(err)
				return
			}
			io.CopyBuffer(io.Discard, resp.Body, buf)
			resp.Body.Close()
		}
	})
}

// BenchmarkForwarderHandler measures the proxy's own handler work per request
// with an in-memory upstream transport, so that allocations counted are the
// proxy's.
func BenchmarkForwarderHandler(b *testing.B) {
	body := make([]byte, 512)
	s, err := New(Config{Listen: "127.0.0.1:0", Upstream: mustURL(&testing.T{}, "http://authentik:9000")})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	rt := fixedTransport{body: body}
	s.fwd.roundTrip = rt.RoundTrip
	s.fwd.fast = false
	req := httptest.NewRequest("GET", "/api/v3/core/users/me/?x=1", nil)
	req.Header.Set("Cookie", "authentik_session=abc")
	req.Header.Set("Accept", "application/json")
	b.ReportAllocs()
	for b.Loop() {
		r := req.Clone(req.Context())
		w := discardWriter{h: http.Header{}}
		h.ServeHTTP(&w, r)
	}
}

type fixedTransport struct{ body []byte }

func (f fixedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(&byteReader{b: f.body}), ContentLength: int64(len(f.body))}, nil
}

type byteReader struct{ b []byte }

func (r *byteReader) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
