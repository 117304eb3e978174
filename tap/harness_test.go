package tap

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// boltKV is a small bbolt-backed KV, as cmd wires the outbox store.
type boltKV struct {
	db   *bolt.DB
	fail func(marks []Mark) error // injected commit failure
}

func newBoltKV(t testing.TB) *boltKV {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "tap.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return &boltKV{db: db}
}

func (k *boltKV) Commit(_ context.Context, marks []Mark) error {
	if k.fail != nil {
		if err := k.fail(marks); err != nil {
			return err
		}
	}
	return k.db.Update(func(tx *bolt.Tx) error {
		for _, m := range marks {
			// Fences are not checked here: the tests of fencing run on the
			// outbox store (replicas_test.go).
			if !m.IfValue {
				continue
			}
			var cur []byte
			if b := tx.Bucket([]byte(m.Bucket)); b != nil {
				cur = b.Get(m.Key)
			}
			if !sameValue(cur, m.Expect) {
				return fmt.Errorf("test kv: condition on %s/%q failed", m.Bucket, m.Key)
			}
		}
		for _, m := range marks {
			if m.Bucket == "" && len(m.Key) == 0 {
				continue // a fence only
			}
			b, err := tx.CreateBucketIfNotExists([]byte(m.Bucket))
			if err != nil {
				return err
			}
			if m.Delete {
				err = b.Delete(m.Key)
			} else {
				err = b.Put(m.Key, append([]byte{}, m.Value...))
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func (k *boltKV) Get(bucket string, key []byte) ([]byte, error) {
	var out []byte
	err := k.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		if v := b.Get(key); v != nil {
			out = append([]byte{}, v...)
		}
		return nil
	})
	return out, err
}

func (k *boltKV) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	return k.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(bucket))
		if b == nil {
			return nil
		}
		c := b.Cursor()
		for key, v := c.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, v = c.Next() {
			if err := fn(key, v); err != nil {
				return err
			}
		}
		return nil
	})
}

func (k *boltKV) count(bucket string) int {
	n := 0
	_ = k.Scan(bucket, nil, func(_, _ []byte) error { n++; return nil })
	return n
}

// recorder is a Publisher that commits the marks, as ssf does, and keeps
// every signal published (deduplicated on ID, as the outbox's idempotent
// enqueue would).
type recorder struct {
	kv    KV
	mu    sync.Mutex
	sigs  []Signal
	ids   map[string]bool
	fail  error
	calls int // successful Publish calls, repeats included
}

func (r *recorder) Publish(ctx context.Context, s Signal) error {
	r.mu.Lock()
	fail := r.fail
	r.mu.Unlock()
	if fail != nil {
		return fail
	}
	// Commit and record under one lock, so a test that sees the journal
	// drained also sees the signal.
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.kv.Commit(ctx, s.Marks); err != nil {
		return err
	}
	r.calls++
	if r.ids == nil {
		r.ids = map[string]bool{}
	}
	if !r.ids[s.ID] {
		r.ids[s.ID] = true
		s.Marks = nil
		r.sigs = append(r.sigs, s)
	}
	return nil
}

func (r *recorder) signals() []Signal {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Signal(nil), r.sigs...)
}

// testProxy calls Match/Before/After the way the proxy does.
type testProxy struct {
	tap      *Tap
	upstream *url.URL
	client   *http.Client
	// skipAfter simulates a crash between forwarding and the outcome.
	skipAfter bool
	// noTap forwards without consulting the tap (benchmark baseline).
	noTap bool
	// beforeAfter, when set, runs between authentik's answer and After
	// (a replica paused in the middle of a request).
	beforeAfter func()
}

func (p *testProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	out, _ := http.NewRequestWithContext(r.Context(), r.Method, p.upstream.String()+r.URL.RequestURI(), bytes.NewReader(body))
	out.Header = r.Header.Clone()
	out.Header.Set("X-Forwarded-For", "203.0.113.7")
	var state any
	tapped := !p.noTap && p.tap.Match(r.Method, r.Host, r.URL.Path)
	if tapped {
		view := out.Clone(r.Context())
		view.Body = nil
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		state = p.tap.Before(ctx, view, body[:min(len(body), 64<<10)])
		cancel()
	}
	resp, err := p.client.Do(out)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if tapped && p.beforeAfter != nil {
		p.beforeAfter()
	}
	if tapped && !p.skipAfter {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		p.tap.After(ctx, state, out, resp.StatusCode, resp.Header, rb)
		cancel()
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	w.WriteHeader(resp.StatusCode)
	_, _ = w.Write(rb)
}

// env is one test world: a simulated authentik, the tap in front of it
// behind a tiny proxy, a bbolt KV and a recording publisher.
type env struct {
	t     testing.TB
	ak    *authentiktest.Server
	kv    *boltKV
	rec   *recorder
	tap   *Tap
	proxy *testProxy
	front *httptest.Server
	stop  func()
	cfg   Config
	// upstream is where authentik is reached (the simulator, or a wrapper)
	upstream string
}

type envOpts struct {
	ak        authentiktest.Config
	noToken   bool
	secretKey bool
	mutate    func(*Config)
	// wrap, when set, puts a handler in front of the simulated authentik
	// (the tap and the proxy then talk to it).
	wrap func(http.Handler) http.Handler
}

func newEnv(t testing.TB, o envOpts) *env {
	t.Helper()
	o.ak.DisableCSRF = true
	ak, err := authentiktest.Start(o.ak)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ak.Close() })
	e := &env{t: t, ak: ak, kv: newBoltKV(t), upstream: ak.URL()}
	if o.wrap != nil {
		ws := httptest.NewServer(o.wrap(ak.Handler()))
		t.Cleanup(ws.Close)
		e.upstream = ws.URL
	}
	e.rec = &recorder{kv: e.kv}
	u, _ := url.Parse(e.upstream)
	e.cfg = Config{Upstream: u, KV: e.kv, Publisher: e.rec, PollInterval: time.Hour, FlowRefresh: time.Hour}
	if !o.noToken {
		e.cfg.Token = ak.AdminToken()
	}
	if o.secretKey {
		e.cfg.SecretKey = "authentiktest-secret-key"
		if o.ak.SecretKey != "" {
			e.cfg.SecretKey = o.ak.SecretKey
		}
	}
	if o.mutate != nil {
		o.mutate(&e.cfg)
	}
	e.start()
	return e
}

// start (re)starts the tap on the env's KV, waits for its first poll and
// flow refresh.
func (e *env) start() {
	e.t.Helper()
	tp, err := New(e.cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.tap = tp
	u, _ := url.Parse(e.upstream)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if e.proxy == nil {
		e.proxy = &testProxy{upstream: u, client: noRedirect}
		e.front = httptest.NewServer(e.proxy)
		e.t.Cleanup(e.front.Close)
	}
	e.proxy.tap = tp
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tp.Run(ctx) }()
	e.stop = func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	}
	e.t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
			e.stop = nil
		}
	})
	if e.cfg.Token != "" {
		e.waitFor("first poll and flow refresh", func() bool {
			tp.flows.mu.RLock()
			loaded := tp.flows.set.loaded
			tp.flows.mu.RUnlock()
			return tp.Stats().Polls >= 1 && loaded
		})
	}
}

func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.stop = nil
	e.start()
}

func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// poll runs one poll of the event API and waits for it.
func (e *env) poll() {
	e.t.Helper()
	n := e.tap.Stats().Polls
	e.tap.PollNow()
	e.waitFor("a poll", func() bool { return e.tap.Stats().Polls > n })
}

// settle waits until the worker's queue is empty and the journal holds
// no completed intent, then polls the event API once.
func (e *env) settle() {
	e.t.Helper()
	e.waitFor("the journal to drain", func() bool {
		return len(e.tap.queue) == 0 && e.kv.count(BucketJournal) == 0
	})
	if e.cfg.Token != "" {
		e.poll()
	}
}

// do sends a request through the proxy.
func (e *env) do(method, path string, body string, cookie, bearer string) *http.Response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = bytes.NewReader([]byte(body))
	}
	req, _ := http.NewRequest(method, e.front.URL+path, rd)
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: cookie})
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return e.send(req)
}

// send sends req without following redirects and drains the answer.
func (e *env) send(req *http.Request) *http.Response {
	e.t.Helper()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// flow answers a flow stage through the proxy as a browser does: the POST,
// then, when authentik answers 302 to the executor itself (a stage that is
// not the flow's last), the GET on which the next stage runs. Like a
// browser it keeps the session cookie authentik sets (a password change
// cycles the session key). It returns the last answer's status.
func (e *env) flow(slug, body string, cookie *string) int {
	e.t.Helper()
	path := "/api/v3/flows/executor/" + slug + "/?query="
	resp := e.do("POST", path, body, *cookie, "")
	*cookie = sessionCookieOf(resp, *cookie)
	if resp.StatusCode != http.StatusFound {
		return resp.StatusCode
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Path != "/api/v3/flows/executor/"+slug+"/" {
		e.t.Fatalf("flow %s: redirect to %q", slug, resp.Header.Get("Location"))
	}
	resp = e.do("GET", loc.RequestURI(), "", *cookie, "")
	*cookie = sessionCookieOf(resp, *cookie)
	return resp.StatusCode
}

// sessionCookieOf returns the authentik_session a response set, or old.
func sessionCookieOf(resp *http.Response, old string) string {
	for _, c := range resp.Cookies() {
		if c.Name == SessionCookieName && c.Value != "" {
			return c.Value
		}
	}
	return old
}

func (e *env) user(name string) authentiktest.User {
	e.t.Helper()
	u, err := e.ak.AddUser(authentiktest.UserSpec{Username: name, Email: name + "@example.com", Password: "pw-" + name})
	if err != nil {
		e.t.Fatal(err)
	}
	return u
}

func (e *env) session(pk int) (authentiktest.Session, string) {
	e.t.Helper()
	s, c, err := e.ak.IssueSession(pk)
	if err != nil {
		e.t.Fatal(err)
	}
	return s, c
}

var errInjected = errors.New("injected failure")
