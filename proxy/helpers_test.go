package proxy

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// seen is what the reflecting upstream reports about a request it got.
type seen struct {
	Method        string
	RequestURI    string
	Host          string
	Header        http.Header
	Body          string
	ContentLength int64
	TE            []string
	Proto         string
}

// reflectUpstream answers every request with a JSON description of what it
// received. The response status and extra headers come from the request's
// X-Want-Status header so that each case can choose them.
func reflectUpstream(t *testing.T) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		rec := seen{Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Header: r.Header,
			Body: string(body), ContentLength: r.ContentLength, TE: r.TransferEncoding, Proto: r.Proto}
		status := http.StatusOK
		if v := r.Header.Get("X-Want-Status"); v != "" {
			if err := json.Unmarshal([]byte(v), &status); err != nil {
				status = 400
			}
		}
		h := w.Header()
		h.Add("Set-Cookie", "authentik_session=abc; Path=/; HttpOnly")
		h.Add("Set-Cookie", "authentik_csrf=def; Path=/")
		h.Add("X-Multi", "one")
		h.Add("X-Multi", "two")
		h.Set("Content-Type", "application/json")
		if status == http.StatusFound {
			h.Set("Location", "/if/flow/next/?x=%2F")
		}
		w.WriteHeader(status)
		if r.Method != http.MethodHead && status != 204 && status != 304 {
			_ = json.NewEncoder(w).Encode(rec)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

// startProxy runs a Server on a loopback port and returns it with its base URL.
func startProxy(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		cancel()
		t.Fatalf("Run: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	})
	return s, "http://" + s.Addr().String()
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// noRedirect is a client that returns redirects as they are.
func noRedirect() *http.Client {
	return &http.Client{
		Transport:     &http.Transport{DisableCompression: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}
}

// headerDiff describes how two header sets differ, ignoring the listed keys.
func headerDiff(a, b http.Header, ignore ...string) string {
	skip := map[string]bool{}
	for _, k := range ignore {
		skip[http.CanonicalHeaderKey(k)] = true
	}
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if skip[k] {
			continue
		}
		if strings.Join(a[k], "\x00") != strings.Join(b[k], "\x00") {
			diffs = append(diffs, k+": "+strings.Join(a[k], "|")+" != "+strings.Join(b[k], "|"))
		}
	}
	sort.Strings(diffs)
	return strings.Join(diffs, "; ")
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// lockedBuffer is a goroutine-safe log sink.
type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// rawServer serves every connection to a loopback listener with handle
// (which need not close it) and returns the listener's http:// URL.
func rawServer(t *testing.T, handle func(c net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return "http://" + ln.Addr().String()
}
