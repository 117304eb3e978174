package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// recObserver records what the proxy hands it. Paths starting with /tapped
// match. Before and After may be made to block until release is closed, or
// to panic.
type recObserver struct {
	mu          sync.Mutex
	matchCalls  int
	before      []beforeCall
	after       []afterCall
	blockBefore bool
	blockAfter  bool
	panicBefore bool
	release     chan struct{}
	beforeSeen  chan struct{}
}

type beforeCall struct {
	method, uri, host string
	header            http.Header
	body              string
	hasBody           bool
	deadline          bool
}

type afterCall struct {
	state  any
	status int
	header http.Header
	body   string
	uri    string
}

func newRecObserver() *recObserver {
	return &recObserver{release: make(chan struct{}), beforeSeen: make(chan struct{}, 16)}
}

func (o *recObserver) Match(_, _, path string) bool {
	o.mu.Lock()
	o.matchCalls++
	o.mu.Unlock()
	return strings.HasPrefix(path, "/tapped")
}

func (o *recObserver) Before(ctx context.Context, r *http.Request, body []byte) any {
	_, hasDeadline := ctx.Deadline()
	o.mu.Lock()
	o.before = append(o.before, beforeCall{method: r.Method, uri: r.URL.RequestURI(), host: r.Host,
		header: r.Header.Clone(), body: string(body), hasBody: r.Body != nil, deadline: hasDeadline})
	block, panics := o.blockBefore, o.panicBefore
	o.mu.Unlock()
	o.beforeSeen <- struct{}{}
	if panics {
		panic("observer bug")
	}
	if block {
		<-o.release // ignores ctx on purpose: an observer that overruns
	}
	return "state:" + r.URL.Path
}

func (o *recObserver) After(ctx context.Context, state any, r *http.Request, status int, header http.Header, body []byte) {
	o.mu.Lock()
	o.after = append(o.after, afterCall{state: state, status: status, header: header.Clone(), body: string(body), uri: r.URL.RequestURI()})
	block := o.blockAfter
	o.mu.Unlock()
	if block {
		<-o.release
	}
}

func (o *recObserver) snapshot() ([]beforeCall, []afterCall, int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]beforeCall(nil), o.before...), append([]afterCall(nil), o.after...), o.matchCalls
}

func TestObserverStepsAndCaptures(t *testing.T) {
	const limit = 48
	const respBody = `{"component":"xak-flow-redirect","to":"/","padding":"longer than the limit"}`
	var upBody string
	var mu sync.Mutex
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		upBody = string(b)
		mu.Unlock()
		http.SetCookie(w, &http.Cookie{Name: "authentik_session", Value: "", MaxAge: -1})
		w.Header().Add("Set-Cookie", "authentik_csrf=new")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, respBody)
	}))
	defer up.Close()
	obs := newRecObserver()
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Observer: obs, CaptureLimit: limit})

	reqBody := `{"uid_field":"akadmin","password":"hunter2"}`
	req, _ := http.NewRequest("POST", base+"/tapped/api/v3/flows/executor/default-invalidation/?query=x%3D1", strings.NewReader(reqBody))
	req.Host = "auth.example.test"
	req.Header.Set("Cookie", "authentik_session=jwt; authentik_csrf=c")
	req.Header.Set("Authorization", "Bearer tok")
	req.Header.Set("X-Forwarded-For", "6.6.6.6") // untrusted peer: replaced before the observer sees it
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(got) != respBody {
		t.Errorf("client got %q", got)
	}
	mu.Lock()
	if upBody != reqBody {
		t.Errorf("upstream got body %q", upBody)
	}
	mu.Unlock()

	// An unmarked route: matched against, never observed.
	resp, err = http.Get(base + "/api/v3/core/users/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	before, after, matches := obs.snapshot()
	if matches != 2 || len(before) != 1 || len(after) != 1 {
		t.Fatalf("matches %d, before %d, after %d", matches, len(before), len(after))
	}
	b := before[0]
	if b.method != "POST" || b.uri != "/tapped/api/v3/flows/executor/default-invalidation/?query=x%3D1" || b.host != "auth.example.test" {
		t.Errorf("before saw %s %s host %s", b.method, b.uri, b.host)
	}
	if b.body != reqBody || b.hasBody || !b.deadline {
		t.Errorf("before body %q (want %q), view has body %v, deadline %v", b.body, reqBody, b.hasBody, b.deadline)
	}
	if b.header.Get("Cookie") != "authentik_session=jwt; authentik_csrf=c" || b.header.Get("Authorization") != "Bearer tok" ||
		b.header.Get("X-Forwarded-For") != "127.0.0.1" {
		t.Errorf("before headers %v", b.header)
	}
	a := after[0]
	if a.state != "state:/tapped/api/v3/flows/executor/default-invalidation/" || a.status != 200 {
		t.Errorf("after state %v status %d", a.state, a.status)
	}
	if len(a.header["Set-Cookie"]) != 2 || a.body != respBody[:limit] {
		t.Errorf("after headers %v body %q", a.header, a.body)
	}
	if st := s.Stats(); st.Observed != 1 || st.BeforeMisses != 0 || st.AfterMisses != 0 || st.Proxied != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestObserverOverrun: a step that ignores its deadline delays the exchange
// by its bound only, and the miss is counted.
func TestObserverOverrun(t *testing.T) {
	cases := []struct {
		name                 string
		blockBefore, blockAf bool
		panicBefore          bool
		wantBefore, wantAf   uint64
		wantState            any
	}{
		{name: "before overruns", blockBefore: true, wantBefore: 1, wantState: nil},
		{name: "after overruns", blockAf: true, wantAf: 1, wantState: "state:/tapped/x"},
		{name: "before panics", panicBefore: true, wantState: nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				io.WriteString(w, "done")
			}))
			defer up.Close()
			obs := newRecObserver()
			obs.blockBefore, obs.blockAfter, obs.panicBefore = c.blockBefore, c.blockAf, c.panicBefore
			defer close(obs.release)
			var mu sync.Mutex
			var missed []string
			const bound = 100 * time.Millisecond
			s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Observer: obs,
				BeforeTimeout: bound, AfterTimeout: bound,
				OnObserverMiss: func(step string) { mu.Lock(); missed = append(missed, step); mu.Unlock() }})

			start := time.Now()
			resp, err := http.Post(base+"/tapped/x", "text/plain", strings.NewReader("body"))
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			elapsed := time.Since(start)
			if resp.StatusCode != 200 || string(b) != "done" {
				t.Fatalf("status %d body %q", resp.StatusCode, b)
			}
			// Not a performance assertion: a step that were not bounded would
			// hold the request until release is closed at the end of the test.
			if elapsed > 20*bound {
				t.Errorf("request took %s with steps bounded by %s", elapsed, bound)
			}
			st := s.Stats()
			if st.BeforeMisses != c.wantBefore || st.AfterMisses != c.wantAf {
				t.Errorf("misses before %d after %d", st.BeforeMisses, st.AfterMisses)
			}
			mu.Lock()
			if uint64(len(missed)) != c.wantBefore+c.wantAf {
				t.Errorf("miss hook calls %v", missed)
			}
			mu.Unlock()
			_, after, _ := obs.snapshot()
			if len(after) != 1 || after[0].state != c.wantState {
				t.Errorf("after calls %+v", after)
			}
		})
	}
}

// TestObserverSlowStreams: a client that stalls mid-body and an upstream that
// streams do not hold the exchange: the steps see what arrived in time and
// the rest still flows.
func TestObserverSlowStreams(t *testing.T) {
	release := make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: got "+string(b)+"\n\n")
		w.(http.Flusher).Flush()
		<-release
		io.WriteString(w, "data: end\n\n")
	}))
	defer up.Close()
	obs := newRecObserver()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Observer: obs,
		BeforeTimeout: 200 * time.Millisecond, AfterTimeout: 200 * time.Millisecond})

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("POST", base+"/tapped/stream", pr)
	respc := make(chan *http.Response, 1)
	errc := make(chan error, 1)
	go func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			errc <- err
			return
		}
		respc <- resp
	}()
	io.WriteString(pw, "first;")
	// Longer than the before-bound: the observer still gets the whole body.
	time.Sleep(300 * time.Millisecond)
	io.WriteString(pw, "second")
	pw.Close()
	var resp *http.Response
	select {
	case resp = <-respc:
	case err := <-errc:
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, _ := br.ReadString('\n')
	if line != "data: got first;second\n" {
		t.Errorf("first event %q", line)
	}
	close(release)
	rest, _ := io.ReadAll(br)
	if string(rest) != "\ndata: end\n\n" {
		t.Errorf("rest %q", rest)
	}
	before, after, _ := obs.snapshot()
	if len(before) != 1 || before[0].body != "first;second" {
		t.Errorf("before captured %+v", before)
	}
	if len(after) != 1 || after[0].body != "data: got first;second\n\n" {
		t.Errorf("after captured %+v", after)
	}
}

// TestObservedWebSocket: an upgrade on a matched route still switches
// protocols; After sees the 101 without a body.
func TestObservedWebSocket(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		mt, msg, err := c.ReadMessage()
		if err == nil {
			c.WriteMessage(mt, msg)
		}
	}))
	defer up.Close()
	obs := newRecObserver()
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Observer: obs})
	c, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(base, "http")+"/tapped/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		t.Fatal(err)
	}
	if _, msg, err := c.ReadMessage(); err != nil || string(msg) != "ping" {
		t.Fatalf("echo %q %v", msg, err)
	}
	_, after, _ := obs.snapshot()
	if len(after) != 1 || after[0].status != http.StatusSwitchingProtocols || after[0].body != "" {
		t.Errorf("after %+v", after)
	}
}

// TestResponseCutMidBody: an upstream that dies half way through a body
// makes the client see a truncated response, not a complete one.
func TestResponseCutMidBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100")
		w.WriteHeader(200)
		io.WriteString(w, "only part")
		w.(http.Flusher).Flush()
		conn, _, _ := http.NewResponseController(w).Hijack()
		conn.Close()
	}))
	defer up.Close()
	var mu sync.Mutex
	var statuses []int
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL),
		OnRequest: func(_ string, st int, _ time.Duration) { mu.Lock(); statuses = append(statuses, st); mu.Unlock() }})
	// The client must see an error: either before the head (the part
	// buffered with it is dropped) or while reading the body.
	resp, err := http.Get(base + "/download")
	if err == nil {
		b, rerr := io.ReadAll(resp.Body)
		resp.Body.Close()
		if rerr == nil || len(b) == 100 {
			t.Errorf("truncated body read as complete: %q", b)
		}
	}
	waitFor(t, "request accounted", func() bool { mu.Lock(); defer mu.Unlock(); return len(statuses) == 1 })
	if st := s.Stats(); st.UpstreamErrors != 1 || statuses[0] != 200 {
		t.Errorf("stats %+v, statuses %v", st, statuses)
	}
}

// TestObservedBodyLimits: an observed request whose body is longer than the
// capture limit (the observer would decide on a prefix) or slower than
// BodyTimeout is refused, and nothing reaches the upstream; unobserved
// routes are not affected.
func TestObservedBodyLimits(t *testing.T) {
	up, got := countingUpstream(t)
	obs := newRecObserver()
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), Observer: obs, CaptureLimit: 32,
		BodyTimeout: 300 * time.Millisecond})
	long := `{"padding":"` + strings.Repeat("x", 64) + `","is_active":false}`
	resp, err := http.Post(base+"/tapped/users/3/", "application/json", strings.NewReader(long))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("long body: %d, want 413", resp.StatusCode)
	}
	// A body that stops half way.
	c, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "PATCH /tapped/users/3/ HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n{\"is_")
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	r, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.StatusCode != http.StatusRequestTimeout {
		t.Errorf("stalled body: %d, want 408", r.StatusCode)
	}
	if g := got(); len(g) != 0 {
		t.Errorf("upstream received %q", g)
	}
	if before, _, _ := obs.snapshot(); len(before) != 0 {
		t.Errorf("the observer was shown a partial body: %+v", before)
	}
	// Unobserved routes take long bodies as before.
	resp, err = http.Post(base+"/other/", "application/json", strings.NewReader(long))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("unobserved long body: %d", resp.StatusCode)
	}
}
