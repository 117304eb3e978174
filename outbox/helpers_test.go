package outbox

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/sgnl-ai/caep.dev/secevent/pkg/parser"
)

const (
	testIssuer   = "https://issuer.example/ssf"
	testAudience = "https://receiver.example/"
	testKID      = "test-key-1"
	eventVerify  = "https://schemas.openid.net/secevent/ssf/event-type/verification"
)

var (
	keyOnce sync.Once
	testKey *rsa.PrivateKey
)

func rsaKey(t testing.TB) *rsa.PrivateKey {
	keyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testKey = k
	})
	return testKey
}

// rsaSigner signs claims as an RS256 SET with golang-jwt.
type rsaSigner struct {
	key  *rsa.PrivateKey
	mu   sync.Mutex
	fail error
	n    int
}

func newSigner(t testing.TB) *rsaSigner { return &rsaSigner{key: rsaKey(t)} }

var setHeader = base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"RS256","kid":"` + testKID + `","typ":"secevent+jwt"}`))

func (s *rsaSigner) Sign(_ context.Context, claims []byte) (string, error) {
	s.mu.Lock()
	s.n++
	fail := s.fail
	s.mu.Unlock()
	if fail != nil {
		return "", fail
	}
	in := setHeader + "." + base64.RawURLEncoding.EncodeToString(claims)
	sig, err := jwt.SigningMethodRS256.Sign(in, s.key)
	if err != nil {
		return "", err
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verifier is the independent SET parser, checking signature, issuer and
// audience against the test key.
func verifier(t testing.TB) *parser.Parser {
	return parser.NewParser(parser.WithPublicKey(&rsaKey(t).PublicKey, testKID),
		parser.WithExpectedIssuer(testIssuer), parser.WithExpectedAudience(testAudience))
}

// verifyJTI checks a compact SET with the independent verifier and returns
// its jti.
func verifyJTI(t testing.TB, compact string) string {
	t.Helper()
	ev, err := verifier(t).ParseSecEvent(compact)
	if err != nil {
		t.Errorf("independent verifier rejected SET: %v", err)
		return ""
	}
	return ev.ID
}

// makeSET builds a verification SET for a stream.
func makeSET(stream, jti string) SET {
	claims := map[string]any{
		"iss": testIssuer, "aud": testAudience, "jti": jti, "iat": 1764000000,
		"sub_id": map[string]any{"format": "opaque", "id": stream},
		"events": map[string]any{eventVerify: map[string]any{"state": "s-" + jti}},
	}
	b, _ := json.Marshal(claims)
	return SET{StreamID: stream, JTI: jti, Key: "src-" + jti + "/" + stream, EventType: eventVerify, Claims: b,
		Labels: map[string]string{"source": "test"}}
}

func jtiOfCompact(compact string) string {
	parts := splitDots(compact)
	if len(parts) != 3 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		JTI string `json:"jti"`
	}
	_ = json.Unmarshal(b, &c)
	return c.JTI
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// fakeClock is a manual clock: After channels fire on Advance.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	added   chan struct{} // signalled on each After
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
	// quiet: a lease heartbeat's timer, which pendingBelow does not
	// report (tests look for backoff and long-poll timers).
	quiet bool
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), added: make(chan struct{}, 1024)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time { return c.after(d, false) }

// afterQuiet is After for timers pendingBelow leaves out.
func (c *fakeClock) afterQuiet(d time.Duration) <-chan time.Time { return c.after(d, true) }

func (c *fakeClock) after(d time.Duration, quiet bool) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch, quiet: quiet})
	select {
	case c.added <- struct{}{}:
	default:
	}
	return ch
}

// Advance moves the clock and fires the due waiters.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	keep := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			keep = append(keep, w)
		}
	}
	c.waiters = keep
	c.mu.Unlock()
}

// pendingBelow returns the soonest pending waiter due in less than max.
func (c *fakeClock) pendingBelow(max time.Duration) (time.Duration, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	best := time.Duration(-1)
	for _, w := range c.waiters {
		d := w.at.Sub(c.now)
		if !w.quiet && d < max && (best < 0 || d < best) {
			best = d
		}
	}
	return best, best >= 0
}

// receiver is an httptest push receiver recording what arrives.
type receiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	got    []delivery
	notify chan delivery
	answer func(n int, r *http.Request, w http.ResponseWriter) // n: attempt number from 1
	n      int
}

type delivery struct {
	JTI     string
	Compact string
	Header  http.Header
	Status  int
}

func newReceiver(t testing.TB, answer func(n int, r *http.Request, w http.ResponseWriter)) *receiver {
	rc := &receiver{notify: make(chan delivery, 100000), answer: answer}
	rc.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.n++
		n := rc.n
		rc.mu.Unlock()
		rw := &statusWriter{ResponseWriter: w}
		if rc.answer != nil {
			rc.answer(n, r, rw)
		} else {
			rw.WriteHeader(http.StatusAccepted)
		}
		d := delivery{JTI: jtiOfCompact(string(body)), Compact: string(body), Header: r.Header.Clone(), Status: rw.status}
		rc.mu.Lock()
		rc.got = append(rc.got, d)
		rc.mu.Unlock()
		rc.notify <- d
	}))
	t.Cleanup(rc.srv.Close)
	return rc
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// accepted returns the jtis answered with 2xx, in arrival order.
func (rc *receiver) accepted() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	var out []string
	for _, d := range rc.got {
		if d.Status >= 200 && d.Status < 300 {
			out = append(out, d.JTI)
		}
	}
	return out
}

// waitFor reads deliveries until n arrived or the deadline passes.
func (rc *receiver) waitFor(t testing.TB, n int, within time.Duration) []delivery {
	t.Helper()
	var out []delivery
	deadline := time.After(within)
	for len(out) < n {
		select {
		case d := <-rc.notify:
			out = append(out, d)
		case <-deadline:
			t.Fatalf("got %d deliveries, want %d", len(out), n)
		}
	}
	return out
}

type harness struct {
	t      testing.TB
	path   string
	store  *Store
	ob     *Outbox
	cancel context.CancelFunc
	done   chan error
	clock  *fakeClock
	signer *rsaSigner
}

// newHarness opens a store and an outbox in a temporary directory; mod
// adjusts the config. The outbox runs until the test ends.
func newHarness(t testing.TB, clock *fakeClock, mod func(*Config)) *harness {
	t.Helper()
	h := &harness{t: t, path: filepath.Join(t.TempDir(), "ssf.db"), clock: clock, signer: newSigner(t)}
	h.open(mod)
	t.Cleanup(h.close)
	return h
}

func (h *harness) open(mod func(*Config)) {
	h.t.Helper()
	st, err := Open(h.path, StoreOptions{NoSync: true})
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := Config{Store: st, Signer: h.signer, AllowPrivateEndpoints: true,
		PushTimeout: 2 * time.Second, MaxLongPoll: 2 * time.Second}
	if h.clock != nil {
		cfg.Clock, cfg.After = h.clock.Now, h.clock.After
		cfg.Jitter = func() float64 { return 0.5 }
	}
	if mod != nil {
		mod(&cfg)
	}
	ob, err := New(cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	if h.clock != nil {
		ob.heartbeatAfter = h.clock.afterQuiet
	}
	ctx, cancel := context.WithCancel(context.Background())
	h.store, h.ob, h.cancel, h.done = st, ob, cancel, make(chan error, 1)
	go func() { h.done <- ob.Run(ctx) }()
}

func (h *harness) close() {
	if h.cancel == nil {
		return
	}
	h.cancel()
	if err := <-h.done; err != nil {
		h.t.Errorf("Run: %v", err)
	}
	if err := h.store.Close(); err != nil {
		h.t.Errorf("Close: %v", err)
	}
	h.cancel = nil
}

func (h *harness) reopen(mod func(*Config)) {
	h.close()
	h.open(mod)
}

func (h *harness) pushStream(id, url, auth string) {
	h.t.Helper()
	if err := h.ob.SetStream(context.Background(), StreamConfig{ID: id, Method: MethodPush,
		Status: StatusEnabled, EndpointURL: url, AuthorizationHeader: auth}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) pollStream(id string) {
	h.t.Helper()
	if err := h.ob.SetStream(context.Background(), StreamConfig{ID: id, Method: MethodPoll,
		Status: StatusEnabled}); err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) enqueue(sets ...SET) {
	h.t.Helper()
	if err := h.ob.Enqueue(context.Background(), sets, nil); err != nil {
		h.t.Fatal(err)
	}
}

func jtis(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%04d", prefix, i)
	}
	return out
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
