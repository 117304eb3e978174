package sidecar

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/testkit"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

func TestSwapHandler(t *testing.T) {
	named := func(name string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) })
	}
	s := newSwapHandler(named("a"))
	get := func() string {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		return rec.Body.String()
	}
	if got := get(); got != "a" {
		t.Fatalf("before the swap: %q", got)
	}
	// Requests keep being served while the target changes.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var bad atomic.Int64
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if got := get(); got != "a" && got != "b" {
					bad.Add(1)
				}
			}
		}()
	}
	s.Store(named("b"))
	close(stop)
	wg.Wait()
	if bad.Load() != 0 {
		t.Errorf("%d requests answered by neither handler", bad.Load())
	}
	if got := get(); got != "b" {
		t.Fatalf("after the swap: %q", got)
	}
}

// recObserver records what it was asked.
type recObserver struct {
	name   string
	match  bool
	mu     sync.Mutex
	afters []any
}

func (o *recObserver) Match(string, string, string) bool { return o.match }
func (o *recObserver) Before(context.Context, *http.Request, []byte) any {
	return o.name + "-state"
}
func (o *recObserver) After(_ context.Context, state any, _ *http.Request, _ int, _ http.Header, _ []byte) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.afters = append(o.afters, state)
}

func TestSwapObserver(t *testing.T) {
	a, b := &recObserver{name: "a", match: true}, &recObserver{name: "b"}
	s := newSwapObserver(a)
	r := httptest.NewRequest(http.MethodDelete, "/api/v3/x/", nil)
	ctx := context.Background()
	if !s.Match(r.Method, r.Host, r.URL.Path) {
		t.Fatal("Match does not reach the first observer")
	}
	st := s.Before(ctx, r, nil)
	s.Store(b)
	if s.Match(r.Method, r.Host, r.URL.Path) {
		t.Fatal("Match still reaches the first observer after the swap")
	}
	// The exchange started on a: its After goes to a, with a's state.
	s.After(ctx, st, r, 204, nil, nil)
	// An exchange whose Before overran has no state: the current observer gets nil.
	s.After(ctx, nil, r, 204, nil, nil)
	// A new exchange runs on b.
	s.After(ctx, s.Before(ctx, r, nil), r, 204, nil, nil)
	if !slices.Equal(a.afters, []any{"a-state"}) {
		t.Errorf("first observer's Afters: %v", a.afters)
	}
	if !slices.Equal(b.afters, []any{nil, "b-state"}) {
		t.Errorf("second observer's Afters: %v", b.afters)
	}
}

func TestStoreDownObserver(t *testing.T) {
	cases := []struct {
		name   string
		method string
		path   string
		authz  string
		cookie string
		miss   bool
	}{
		{"api with a token", http.MethodDelete, "/api/v3/core/authenticated_sessions/abc/", "Bearer t", "", true},
		{"api with a session cookie", http.MethodPost, "/api/v3/flows/executor/default-invalidation-flow/", "", "c", true},
		{"api anonymous", http.MethodDelete, "/api/v3/core/authenticated_sessions/abc/", "", "", false},
		{"logout hint", http.MethodGet, "/flows/-/default/invalidation/", "", "c", false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var missed []string
			o := storeDownObserver{match: func(string, string, string) bool { return true },
				missed: func(r *http.Request) { missed = append(missed, r.URL.Path) }}
			r := httptest.NewRequest(c.method, c.path, nil)
			if c.authz != "" {
				r.Header.Set("Authorization", c.authz)
			}
			if c.cookie != "" {
				r.AddCookie(&http.Cookie{Name: tap.SessionCookieName, Value: c.cookie})
			}
			if !o.Match(r.Method, r.Host, r.URL.Path) {
				t.Fatal("Match is not the matcher's")
			}
			if st := o.Before(context.Background(), r, nil); st != nil {
				t.Errorf("Before returned state %v: nothing may be acknowledged", st)
			}
			if got := len(missed) == 1; got != c.miss {
				t.Errorf("counted as a miss: %v, want %v", got, c.miss)
			}
		})
	}
}

func TestLogLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := &logLimiter{every: time.Minute, clock: func() time.Time { return now }}
	steps := []struct {
		advance time.Duration
		ok      bool
		held    uint64
	}{
		{0, true, 0}, {time.Second, false, 0}, {time.Second, false, 0},
		{time.Minute, true, 2}, {0, false, 0}, {time.Minute, true, 1},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		held, ok := l.allow()
		if ok != s.ok || held != s.held {
			t.Errorf("step %d: allow() = %d, %v; want %d, %v", i, held, ok, s.held, s.ok)
		}
	}
}

// TestSSFPrefixesForMatchesTransmitter holds the degraded proxy's SSF
// prefixes (ssf.PrefixesFor) to what a built transmitter answers for the
// same issuer.
func TestSSFPrefixesForMatchesTransmitter(t *testing.T) {
	for _, issuer := range []string{"http://127.0.0.1:9080/ssf", "https://auth.example/", "https://auth.example/a/b/", "https://auth.example"} {
		cfg := degradedTestConfig(t, "http://127.0.0.1:1", t.TempDir())
		cfg.Issuer = issuer
		a, err := Build(context.Background(), cfg, nil, slog.New(slog.DiscardHandler), WithTracerProvider(noop.NewTracerProvider()))
		if err != nil {
			t.Fatalf("%s: %v", issuer, err)
		}
		want := a.tx.Prefixes()
		a.store.Close()
		if got := ssf.PrefixesFor(issuer); !slices.Equal(got, want) {
			t.Errorf("%s: ssf.PrefixesFor = %v, transmitter %v", issuer, got, want)
		}
	}
}

// roHealth is the /healthz answer.
type roHealth = testkit.Health

func degradedTestConfig(t *testing.T, upstream, dataDir string) Config {
	t.Helper()
	listen, adminListen := testkit.ListenAddrs(t)
	return Config{
		Listen: listen, AdminListen: adminListen, Upstream: upstream, Issuer: "http://" + listen + "/ssf",
		DataDir: dataDir, AllowPrivateEndpoints: true, PollInterval: time.Second, DefaultSubjects: "ALL",
		Retention: 720 * time.Hour, DeliveredRetention: 72 * time.Hour, PushTimeout: 5 * time.Second,
		MaxBackoff: 2 * time.Second, PauseAfter: 72 * time.Hour, KeyOverlap: 168 * time.Hour, MaxBody: 64 << 10,
	}
}

// stepTimer is the degraded retry loop's timer, stepped by the test.
type stepTimer struct {
	asked chan time.Duration
	fire  chan time.Time
}

func (s *stepTimer) after(d time.Duration) <-chan time.Time {
	s.asked <- d
	return s.fire
}

// expect waits for the loop to ask for d, then lets it elapse unless hold.
func (s *stepTimer) expect(t *testing.T, d time.Duration, hold bool) {
	t.Helper()
	select {
	case got := <-s.asked:
		if got != d {
			t.Fatalf("the retry loop waits %s, want %s", got, d)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the retry loop did not wait for %s", d)
	}
	if !hold {
		s.fire <- time.Time{}
	}
}

// TestDegradedStartRecovers runs the sidecar in process on a data dir
// path that a file blocks: it starts degraded, answers as it must, backs
// off 1 s doubling to its cap (a /healthz look brings the next attempt
// forward), and once the path is free swaps the full sidecar in behind the
// same listeners.
func TestDegradedStartRecovers(t *testing.T) {
	var upstreamHits atomic.Int64
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamHits.Add(1)
		w.Header().Set("X-Upstream", "yes")
		if r.Method == http.MethodDelete {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		io.WriteString(w, "authentik page "+r.URL.Path)
	}))
	defer up.Close()
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	if err := os.WriteFile(dataDir, []byte("a file where the data dir should be"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := degradedTestConfig(t, up.URL, dataDir)
	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	receivers := []ssf.Receiver{{Name: "rx", Audience: "https://rx.example/", SubjectFormat: ssf.SubjectFormatComplex,
		Profile: ssf.ProfileSSF, Tokens: []ssf.Token{{Value: "rx-token-0123456789abcdef", Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}}}
	a, err := Build(context.Background(), cfg, receivers, logger, WithTracerProvider(noop.NewTracerProvider()), WithDegradedStart())
	if err != nil {
		t.Fatalf("Build with a blocked data dir: %v", err)
	}
	if a.degraded == nil {
		t.Fatal("Build did not start degraded")
	}
	timer := &stepTimer{asked: make(chan time.Duration), fire: make(chan time.Time)}
	a.degraded.after = timer.after
	a.degraded.max = 4 * time.Second
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run after shutdown: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("run did not return within 20 s of shutdown")
		}
	}()
	select {
	case <-a.proxy.Ready():
	case err := <-done:
		t.Fatalf("run ended at start: %v", err)
	}
	front, admin := "http://"+cfg.Listen, "http://"+cfg.AdminListen
	client := &http.Client{Timeout: 5 * time.Second}
	do := func(method, url string, hdr map[string]string) (int, http.Header, string) {
		t.Helper()
		req, _ := http.NewRequest(method, url, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	waitReady := func() {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			resp, err := client.Get(admin + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("admin listener not ready")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitReady()

	// Degraded: proxied, ready, SSF 503, admin API 503, misses counted.
	if code, h, body := do(http.MethodGet, front+"/if/flow/x/", nil); code != 200 || body != "authentik page /if/flow/x/" || h.Get("X-Upstream") != "yes" {
		t.Errorf("proxied page while degraded: %d %q", code, body)
	}
	if code, _, body := do(http.MethodGet, admin+"/readyz", nil); code != 200 || !strings.Contains(body, "degraded") {
		t.Errorf("/readyz while degraded: %d %s", code, body)
	}
	code, h, body := do(http.MethodGet, front+"/.well-known/ssf-configuration/ssf", nil)
	var e struct{ Err, Description string }
	if err := json.Unmarshal([]byte(body), &e); err != nil || code != 503 || e.Err != "temporarily_unavailable" || h.Get("Retry-After") != "1" {
		t.Errorf("discovery while degraded: %d Retry-After %q %s", code, h.Get("Retry-After"), body)
	}
	if code, h, body := do(http.MethodHead, front+"/ssf/jwks.json", nil); code != 503 || body != "" || h.Get("Retry-After") == "" {
		t.Errorf("HEAD jwks while degraded: %d %q", code, body)
	}
	if code, _, body := do(http.MethodGet, admin+"/admin/streams", nil); code != 503 || !strings.Contains(body, "store_unavailable") {
		t.Errorf("admin API while degraded: %d %s", code, body)
	}
	for range 3 {
		if code, _, _ := do(http.MethodDelete, front+"/api/v3/core/authenticated_sessions/abc/", map[string]string{"Authorization": "Bearer admin"}); code != http.StatusNoContent {
			t.Fatalf("tapped delete while degraded: %d", code)
		}
	}
	if code, _, body := do(http.MethodGet, admin+"/metrics", nil); code != 200 || !strings.Contains(body, "ssf_sidecar_tap_misses_total 3\n") ||
		!strings.Contains(body, "\nssf_sidecar_store_up 0\n") {
		t.Errorf("/metrics while degraded does not count 3 misses or show the store down: %d\n%s", code, body)
	}

	// Backoff: 1 s, then 2 s, then 4 s (1 s gap + the rest, or a /healthz
	// look), then the 4 s cap.
	timer.expect(t, time.Second, false) // attempt 1
	timer.expect(t, time.Second, false)
	timer.expect(t, time.Second, false) // attempt 2
	timer.expect(t, time.Second, false)
	timer.expect(t, 3*time.Second, true)
	code, _, body = do(http.MethodGet, admin+"/healthz", nil) // brings attempt 3 forward
	var hz roHealth
	_ = json.Unmarshal([]byte(body), &hz)
	if code != 200 || hz.Status != "degraded" || hz.Checks["store"].Status != "failing" || !strings.Contains(hz.Checks["store"].Error, dataDir) ||
		!strings.Contains(hz.Checks["store"].Error, "not a directory") || hz.Checks["upstream"].Status != "ok" {
		t.Errorf("/healthz while degraded: %d %s", code, body)
	}
	timer.expect(t, time.Second, false) // attempt 3 happened: the next wait starts with the gap
	if err := os.Remove(dataDir); err != nil {
		t.Fatal(err)
	}
	timer.expect(t, 3*time.Second, false) // capped at 4 s: attempt 4 opens the store

	deadline := time.Now().Add(10 * time.Second)
	for a.degraded.live.Load() == nil || func() bool { c, _, _ := do(http.MethodGet, admin+"/readyz", nil); return c != 200 }() {
		if time.Now().After(deadline) {
			t.Fatal("did not recover within 10 s of the store opening")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _, body := do(http.MethodGet, front+"/.well-known/ssf-configuration/ssf", nil); code != 200 || !strings.Contains(body, "jwks_uri") {
		t.Errorf("discovery after recovery: %d %s", code, body)
	}
	if code, _, body := do(http.MethodGet, admin+"/readyz", nil); code != 200 || strings.Contains(body, "degraded") {
		t.Errorf("/readyz after recovery: %d %s", code, body)
	}
	if code, _, body := do(http.MethodGet, admin+"/healthz", nil); code != 200 || !strings.Contains(body, `"status":"ok"`) {
		t.Errorf("/healthz after recovery: %d %s", code, body)
	}
	if code, _, body := do(http.MethodGet, admin+"/metrics", nil); code != 200 || !strings.Contains(body, "ssf_sidecar_tap_misses_total 3\n") ||
		!strings.Contains(body, "\nssf_sidecar_store_up 1\n") || !strings.Contains(body, `ssf_sidecar_signing_keys{kid="`) {
		t.Errorf("/metrics after recovery lost the degraded misses, or does not show the store up and its key:\n%s", body)
	}
	if st, err := os.Stat(filepath.Join(dataDir, "ssf-sidecar.db")); err != nil || st.Size() == 0 {
		t.Errorf("no store in the data dir after recovery: %v", err)
	}
	// The recovery is logged just after the switch-over the loop above saw.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "store opened") && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	out := logs.String()
	if n := strings.Count(out, "store unavailable: serving authentik WITHOUT observing it"); n != 1 {
		t.Errorf("the start error is logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "tapped request not observed"); n != 1 {
		t.Errorf("the per-request warning is logged %d times for 3 requests in a minute, want once:\n%s", n, out)
	}
	if !strings.Contains(out, "store opened") {
		t.Errorf("recovery is not logged:\n%s", out)
	}
}

// TestDegradedStartOnlyForTheStore: other start-up failures still fail,
// and only serve degrades.
func TestDegradedStartOnlyForTheStore(t *testing.T) {
	blocked := func(t *testing.T) string {
		p := filepath.Join(t.TempDir(), "data")
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	badKey := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(badKey, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		dataDir  func(*testing.T) string
		keys     []string
		degrade  bool
		degraded bool
	}{
		{"store blocked, serve", blocked, nil, true, true},
		{"store blocked, offline commands", blocked, nil, false, false},
		{"bad key file", func(t *testing.T) string { return t.TempDir() }, []string{badKey}, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := degradedTestConfig(t, "http://127.0.0.1:1", c.dataDir(t))
			cfg.SigningKeys = c.keys
			opts := []Option{WithTracerProvider(noop.NewTracerProvider())}
			if c.degrade {
				opts = append(opts, WithDegradedStart())
			}
			a, err := Build(context.Background(), cfg, nil, slog.New(slog.DiscardHandler), opts...)
			if !c.degraded {
				if err == nil {
					if a.store != nil {
						a.store.Close()
					}
					t.Fatal("Build succeeded")
				}
				return
			}
			if err != nil || a.degraded == nil {
				t.Fatalf("Build: %v, degraded %v", err, a != nil && a.degraded != nil)
			}
		})
	}
}

// TestDegradedListenerInUse: a degraded start still exits when its listen
// address is taken.
func TestDegradedListenerInUse(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := degradedTestConfig(t, "http://127.0.0.1:1", p)
	cfg.Listen = taken.Addr().String()
	a, err := Build(context.Background(), cfg, nil, slog.New(slog.DiscardHandler), WithTracerProvider(noop.NewTracerProvider()), WithDegradedStart())
	if err != nil || a.degraded == nil {
		t.Fatalf("Build: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			t.Errorf("run with the listen address taken: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not fail within 20 s with its listen address taken")
	}
}

var _ proxy.Observer = (*swapObserver)(nil)
var _ proxy.Observer = storeDownObserver{}

// BenchmarkObserverMatch compares the tap's Match called directly (a
// normal start) with the same call through the swappable observer a
// degraded start keeps for its whole life, on an untapped request (the
// per-request cost every proxied request pays).
func BenchmarkObserverMatch(b *testing.B) {
	up, _ := url.Parse("http://127.0.0.1:1")
	tp, err := tap.New(tap.Config{Upstream: up, KV: unavailableKV{}, Publisher: tap.PublisherFunc(
		func(context.Context, tap.Signal) error { return nil })})
	if err != nil {
		b.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/api/v3/core/applications/", nil)
	for _, c := range []struct {
		name string
		obs  proxy.Observer
	}{{"direct", tp}, {"swapped", newSwapObserver(tp)}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if c.obs.Match(r.Method, r.Host, r.URL.Path) {
					b.Fatal("matched an untapped request")
				}
			}
		})
	}
}
