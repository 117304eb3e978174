package outbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const noSweep = 1000 * time.Hour

// waitBackoff waits until the dispatcher sleeps on the fake clock and
// returns the sleep's length.
func waitBackoff(t *testing.T, c *fakeClock) time.Duration {
	t.Helper()
	var d time.Duration
	eventually(t, 5*time.Second, "a backoff timer", func() bool {
		var ok bool
		d, ok = c.pendingBelow(noSweep / 2)
		return ok && d < noSweep/2
	})
	return d
}

// TestPushOutcomes sends three SETs to receivers that fail the first
// attempt in different ways, and checks the outcome, the backoff chosen
// (on the injected clock) and that order holds.
func TestPushOutcomes(t *testing.T) {
	errBody := func(code string) func(w http.ResponseWriter) {
		return func(w http.ResponseWriter) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprintf(w, `{"err":%q,"description":"test"}`, code)
		}
	}
	tests := []struct {
		name     string
		first    func(w http.ResponseWriter) // answer to the first attempt
		hang     bool
		reset    bool
		backoff  time.Duration // 0: no backoff expected
		dead     bool          // first SET dead-lettered
		non202   int64
		errMatch string
	}{
		{name: "202", first: func(w http.ResponseWriter) { w.WriteHeader(202) }},
		{name: "200 accepted and counted", first: func(w http.ResponseWriter) { w.WriteHeader(200) }, non202: 1},
		{name: "500", first: func(w http.ResponseWriter) { w.WriteHeader(500) }, backoff: time.Second, errMatch: "500"},
		{name: "429 Retry-After", first: func(w http.ResponseWriter) {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(429)
		}, backoff: 30 * time.Second, errMatch: "429"},
		{name: "invalid_request", first: errBody("invalid_request"), dead: true},
		{name: "invalid_issuer", first: errBody("invalid_issuer"), dead: true},
		{name: "invalid_audience", first: errBody("invalid_audience"), dead: true},
		{name: "invalid_key", first: errBody("invalid_key"), backoff: time.Second, errMatch: "invalid_key"},
		{name: "authentication_failed", first: errBody("authentication_failed"), backoff: time.Second, errMatch: "authentication_failed"},
		{name: "access_denied", first: errBody("access_denied"), backoff: time.Second, errMatch: "access_denied"},
		{name: "400 without error body", first: func(w http.ResponseWriter) { w.WriteHeader(400) }, backoff: time.Second, errMatch: "400"},
		{name: "redirect not followed", first: func(w http.ResponseWriter) {
			w.Header().Set("Location", "http://127.0.0.1:1/elsewhere")
			w.WriteHeader(307)
		}, backoff: time.Second, errMatch: "307"},
		{name: "hang past timeout", hang: true, backoff: time.Second, errMatch: "timeout"},
		{name: "connection reset", reset: true, backoff: time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			release := make(chan struct{})
			rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
				if n > 1 {
					w.WriteHeader(http.StatusAccepted)
					return
				}
				switch {
				case tc.hang:
					select {
					case <-release:
					case <-r.Context().Done():
					}
				case tc.reset:
					conn, _, err := w.(*statusWriter).ResponseWriter.(http.Hijacker).Hijack()
					if err == nil {
						if tcp, ok := conn.(*net.TCPConn); ok {
							_ = tcp.SetLinger(0)
						}
						conn.Close()
					}
				default:
					tc.first(w)
				}
			})
			defer close(release)
			h := newHarness(t, clock, func(c *Config) {
				c.SweepInterval = noSweep
				c.PushTimeout = 300 * time.Millisecond
			})
			h.pushStream("s", rc.srv.URL, "")
			ids := []string{"a", "b", "c"}
			for _, id := range ids {
				h.enqueue(makeSET("s", id))
			}
			if tc.backoff > 0 {
				got := waitBackoff(t, clock)
				if got != tc.backoff {
					t.Errorf("backoff = %v, want %v", got, tc.backoff)
				}
				st, _ := h.ob.Stats(context.Background(), "s")
				if !strings.Contains(st.LastError, tc.errMatch) {
					t.Errorf("last error %q does not mention %q", st.LastError, tc.errMatch)
				}
				if st.BackingOffUntil.IsZero() {
					t.Error("stats do not show the backoff")
				}
				rc.mu.Lock()
				attempts := rc.n
				rc.mu.Unlock()
				if attempts != 1 && !tc.reset {
					t.Errorf("%d attempts before the backoff ended, want 1", attempts)
				}
				clock.Advance(tc.backoff)
			}
			want := ids
			if tc.dead {
				want = ids[1:]
			}
			eventually(t, 5*time.Second, "deliveries", func() bool { return len(rc.accepted()) >= len(want) })
			got := rc.accepted()
			if !slices.Equal(got, want) {
				t.Errorf("accepted = %v, want %v", got, want)
			}
			eventually(t, 5*time.Second, "stats", func() bool {
				st, _ := h.ob.Stats(context.Background(), "s")
				return st.Backlog == 0
			})
			st, _ := h.ob.Stats(context.Background(), "s")
			if st.Delivered != int64(len(want)) || st.Non202 != tc.non202 {
				t.Errorf("delivered=%d non202=%d, want %d %d", st.Delivered, st.Non202, len(want), tc.non202)
			}
			dl, err := h.ob.DeadLetters(context.Background(), "s", 10)
			if err != nil {
				t.Fatal(err)
			}
			if tc.dead {
				if len(dl) != 1 || dl[0].JTI != "a" || !strings.Contains(dl[0].Reason, tc.name) {
					t.Errorf("dead letters = %+v, want a with reason %s", dl, tc.name)
				}
			} else if len(dl) != 0 {
				t.Errorf("unexpected dead letters %+v", dl)
			}
		})
	}
}

func TestBackoffSchedule(t *testing.T) {
	var jitter float64
	o := &Outbox{cfg: Config{MaxBackoff: 10 * time.Minute, Jitter: func() float64 { return jitter }}}
	tests := []struct {
		n      int
		jitter float64
		want   time.Duration
	}{
		{1, 0.5, time.Second},
		{1, 0, 750 * time.Millisecond},
		{1, 0.999999, 1249999 * time.Microsecond},
		{2, 0.5, 2 * time.Second},
		{5, 0.5, 16 * time.Second},
		{10, 0.5, 512 * time.Second},
		{11, 0.5, 10 * time.Minute},
		{11, 0, 450 * time.Second},
		{500, 0.5, 10 * time.Minute},
	}
	for _, tc := range tests {
		jitter = tc.jitter
		got := o.backoff(tc.n)
		if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
			t.Errorf("backoff(%d, jitter %v) = %v, want %v", tc.n, tc.jitter, got, tc.want)
		}
	}
}

// TestBackoffGrowsAndCaps drives a failing stream through its backoff on
// the injected clock.
func TestBackoffGrowsAndCaps(t *testing.T) {
	clock := newFakeClock()
	var fail atomic.Bool
	fail.Store(true)
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		if fail.Load() {
			w.WriteHeader(503)
			return
		}
		w.WriteHeader(202)
	})
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep; c.MaxBackoff = 8 * time.Second })
	h.pushStream("s", rc.srv.URL, "")
	h.enqueue(makeSET("s", "x"), makeSET("s", "y"))
	var got []time.Duration
	for i := range 6 {
		d := waitBackoff(t, clock)
		got = append(got, d)
		if i == 5 {
			fail.Store(false)
		}
		clock.Advance(d)
	}
	want := []time.Duration{1, 2, 4, 8, 8, 8}
	for i := range want {
		want[i] *= time.Second
	}
	if !slices.Equal(got, want) {
		t.Errorf("backoffs = %v, want %v", got, want)
	}
	eventually(t, 5*time.Second, "delivery", func() bool { return len(rc.accepted()) == 2 })
	if a := rc.accepted(); !slices.Equal(a, []string{"x", "y"}) {
		t.Errorf("order = %v", a)
	}
	rc.mu.Lock()
	for _, d := range rc.got {
		if d.JTI != "x" && d.Status != 202 {
			t.Errorf("y attempted while x was failing")
		}
	}
	rc.mu.Unlock()
}

type reporterFunc func(ctx context.Context, id string, since time.Time, lastErr string)

func (f reporterFunc) StreamFailing(ctx context.Context, id string, since time.Time, lastErr string) {
	f(ctx, id, since, lastErr)
}

// TestPauseAfterReportsOnce: a stream failing for PauseAfter is reported
// once; the transmitter pauses it and queues a head SET, which goes first
// when the stream is enabled again.
func TestPauseAfterReportsOnce(t *testing.T) {
	clock := newFakeClock()
	var fail atomic.Bool
	fail.Store(true)
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		if fail.Load() {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(202)
	})
	var reports atomic.Int32
	paused := make(chan struct{})
	var h *harness
	start := clock.Now()
	rep := reporterFunc(func(ctx context.Context, id string, since time.Time, lastErr string) {
		if reports.Add(1) > 1 {
			return
		}
		if !since.Equal(start) || !strings.Contains(lastErr, "500") {
			t.Errorf("report since=%v lastErr=%q", since, lastErr)
		}
		if err := h.ob.SetStream(ctx, StreamConfig{ID: id, Method: MethodPush, Status: StatusPaused, EndpointURL: rc.srv.URL}); err != nil {
			t.Error(err)
		}
		head := makeSET(id, "stream-updated")
		head.Head = true
		if err := h.ob.Enqueue(ctx, []SET{head}, nil); err != nil {
			t.Error(err)
		}
		close(paused)
	})
	h = newHarness(t, clock, func(c *Config) {
		c.SweepInterval = noSweep
		c.MaxBackoff = 10 * time.Second
		c.PauseAfter = 60 * time.Second
		c.Reporter = rep
	})
	h.pushStream("s", rc.srv.URL, "")
	h.enqueue(makeSET("s", "e1"), makeSET("s", "e2"))
	isPaused := func() bool {
		select {
		case <-paused:
			return true
		default:
			return false
		}
	}
	for !isPaused() {
		var d time.Duration
		eventually(t, 5*time.Second, "a backoff timer or the pause", func() bool {
			var ok bool
			d, ok = clock.pendingBelow(noSweep / 2)
			return ok || isPaused()
		})
		if d > 0 {
			clock.Advance(d)
		}
	}
	if n := reports.Load(); n != 1 {
		t.Errorf("reported %d times", n)
	}
	if clock.Now().Sub(start) < 60*time.Second {
		t.Errorf("reported after %v, before PauseAfter", clock.Now().Sub(start))
	}
	fail.Store(false)
	if err := h.ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: rc.srv.URL}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "deliveries", func() bool { return len(rc.accepted()) == 3 })
	if got := rc.accepted(); !slices.Equal(got, []string{"stream-updated", "e1", "e2"}) {
		t.Errorf("order after resume = %v", got)
	}
}

// TestIsolation: one receiver hangs; another stream's SETs all arrive, in
// order, while the first is stuck.
func TestIsolation(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	stuck := make(chan struct{})
	hang := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		once.Do(func() { close(stuck) })
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	fast := newReceiver(t, nil)
	h := newHarness(t, nil, func(c *Config) {
		c.SweepInterval = noSweep
		c.PushTimeout = time.Hour
		c.Workers = 4
	})
	defer close(release)
	h.pushStream("slow", hang.srv.URL, "")
	h.pushStream("fast", fast.srv.URL, "")
	var want []string
	for i := range 200 {
		h.enqueue(makeSET("slow", fmt.Sprintf("slow-%03d", i)))
		id := fmt.Sprintf("fast-%03d", i)
		want = append(want, id)
		h.enqueue(makeSET("fast", id))
		if i == 0 {
			<-stuck
		}
	}
	fast.waitFor(t, 200, 30*time.Second)
	if got := fast.accepted(); !slices.Equal(got, want) {
		t.Errorf("fast stream order broken: %v", got[:min(len(got), 10)])
	}
	st, _ := h.ob.Stats(context.Background(), "slow")
	if st.Backlog != 200 {
		t.Errorf("slow backlog = %d, want 200", st.Backlog)
	}
}

// TestPushHeaders is the conformance row for push: headers exact, no
// Authorization when none is configured, body a SET the independent
// verifier accepts.
func TestPushHeaders(t *testing.T) {
	tests := []struct {
		name, auth string
	}{
		{"with authorization_header", "Bearer s3cr3t-token"},
		{"verbatim odd scheme", "Custom  abc=="},
		{"none configured", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc := newReceiver(t, nil)
			h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
			h.pushStream("s", rc.srv.URL+"/events", tc.auth)
			h.enqueue(makeSET("s", "v1"))
			d := rc.waitFor(t, 1, 5*time.Second)[0]
			if got := d.Header.Get("Content-Type"); got != "application/secevent+jwt" {
				t.Errorf("Content-Type = %q", got)
			}
			if got := d.Header.Get("Accept"); got != "application/json" {
				t.Errorf("Accept = %q", got)
			}
			got, present := d.Header["Authorization"]
			if tc.auth == "" && present {
				t.Errorf("Authorization sent although none configured: %q", got)
			}
			if tc.auth != "" && (len(got) != 1 || got[0] != tc.auth) {
				t.Errorf("Authorization = %q, want %q", got, tc.auth)
			}
			if jti := verifyJTI(t, d.Compact); jti != "v1" {
				t.Errorf("verified jti = %q", jti)
			}
		})
	}
}

// TestDestinationChecks: names resolving to private addresses are refused
// before any connection; TLS certificates are verified; the environment's
// proxy is not used.
func TestDestinationChecks(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.WriteHeader(202)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	tests := []struct {
		name string
		ips  []string
	}{
		{"loopback", []string{"127.0.0.1"}},
		{"private", []string{"10.0.0.1"}},
		{"cgnat", []string{"100.64.1.1"}},
		{"link-local", []string{"169.254.169.254"}},
		{"nat64", []string{"64:ff9b::a00:1"}},
		{"mapped", []string{"::ffff:127.0.0.1"}},
		{"mixed answers all refused", []string{"10.1.2.3", "127.0.0.1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clock := newFakeClock()
			var lookups atomic.Int32
			h := newHarness(t, clock, func(c *Config) {
				c.SweepInterval = noSweep
				c.AllowPrivateEndpoints = false
				c.LookupIP = func(ctx context.Context, host string) ([]net.IPAddr, error) {
					lookups.Add(1)
					if host != "receiver.test" {
						return nil, errors.New("unknown host")
					}
					var out []net.IPAddr
					for _, s := range tc.ips {
						out = append(out, net.IPAddr{IP: net.ParseIP(s)})
					}
					return out, nil
				}
			})
			h.pushStream("s", "https://receiver.test:"+port+"/", "")
			h.enqueue(makeSET("s", "x"))
			waitBackoff(t, clock)
			st, _ := h.ob.Stats(context.Background(), "s")
			if !strings.Contains(st.LastError, "not allowed") {
				t.Errorf("last error = %q", st.LastError)
			}
			if lookups.Load() == 0 {
				t.Error("resolver not consulted")
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Errorf("%d requests reached a refused address", n)
	}

	t.Run("untrusted certificate", func(t *testing.T) {
		tlsSrv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			hits.Add(1)
			w.WriteHeader(202)
		}))
		defer tlsSrv.Close()
		clock := newFakeClock()
		h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
		h.pushStream("s", tlsSrv.URL, "")
		h.enqueue(makeSET("s", "x"))
		waitBackoff(t, clock)
		st, _ := h.ob.Stats(context.Background(), "s")
		if !strings.Contains(st.LastError, "certificate") {
			t.Errorf("last error = %q, want a certificate error", st.LastError)
		}
		if hits.Load() != 0 {
			t.Error("request sent over an unverified connection")
		}
		// Trusting the test CA makes it work.
		h2 := newHarness(t, nil, func(c *Config) {
			c.SweepInterval = noSweep
			c.TLSConfig = tlsSrv.Client().Transport.(*http.Transport).TLSClientConfig
		})
		h2.pushStream("s", tlsSrv.URL, "")
		h2.enqueue(makeSET("s", "y"))
		eventually(t, 5*time.Second, "TLS delivery", func() bool { return hits.Load() == 1 })
	})

	t.Run("no environment proxy", func(t *testing.T) {
		h := newHarness(t, nil, nil)
		tr, ok := h.ob.client.Transport.(*http.Transport)
		if !ok || tr.Proxy != nil {
			t.Error("push transport uses a proxy function")
		}
		if h.ob.client.CheckRedirect == nil {
			t.Error("redirects would be followed")
		}
	})
}

func TestCheckEndpointURL(t *testing.T) {
	tests := []struct {
		url          string
		allowPrivate bool
		ok           bool
	}{
		{"https://receiver.example/events", false, true},
		{"https://receiver.example:8443/events?x=1", false, true},
		{"http://receiver.example/events", false, false},
		{"http://receiver.example/events", true, true},
		{"http://127.0.0.1:8080/", true, true},
		{"ftp://receiver.example/", true, false},
		{"/relative", false, false},
		{"https://user:pw@receiver.example/", false, false},
		{"https://receiver.example/#frag", false, false},
		{"https://receiver.example:99999/", false, false},
		{"https://127.0.0.1/", false, false},
		{"https://10.0.0.1/", false, false},
		{"https://172.16.5.4/", false, false},
		{"https://192.168.1.1/", false, false},
		{"https://100.64.0.1/", false, false},
		{"https://169.254.169.254/", false, false},
		{"https://0.0.0.0/", false, false},
		{"https://[::1]/", false, false},
		{"https://[::]/", false, false},
		{"https://[fe80::1]/", false, false},
		{"https://[fd00::1]/", false, false},
		{"https://[64:ff9b::a00:1]/", false, false},
		{"https://[::ffff:10.0.0.1]/", false, false},
		{"https://[::1%25lo]:31600/ssrf", false, false}, // zone ids hide the address from prefix checks
		{"https://[::1%251]:31600/ssrf2", false, false},
		{"https://[fe80::fc:ff:fe00:1%25eth0]:31600/", false, false},
		{"https://[::ffff:7f00:1%25lo]:31600/", false, false},
		{"https://[2606:4700::1111%25eth0]/", false, false}, // a zone is never a public destination
		{"https://2130706433/", false, false},               // 127.0.0.1 decimal
		{"https://0x7f000001/", false, false},               // hex
		{"https://0177.0.0.1/", false, false},               // octal
		{"https://0x7f.1/", false, false},                   // two-part
		{"https://10.1/", false, false},                     // 10.0.0.1
		{"https://localhost/", false, false},
		{"https://api.localhost./", false, false},
		{"https://8.8.8.8/", false, true},
		{"https://[2606:4700::1111]/", false, true},
		{"https://134744072/", false, true}, // 8.8.8.8 decimal
	}
	for _, tc := range tests {
		err := CheckEndpointURL(tc.url, tc.allowPrivate)
		if (err == nil) != tc.ok {
			t.Errorf("CheckEndpointURL(%q, %v) = %v, want ok=%v", tc.url, tc.allowPrivate, err, tc.ok)
		}
	}
}

// TestHeadPreemptsPipeline: a Head SET enqueued while a stream is busy
// delivering its backlog goes out right after the attempt in flight.
func TestHeadPreemptsPipeline(t *testing.T) {
	inFirst := make(chan struct{})
	release := make(chan struct{})
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		if n == 1 {
			close(inFirst)
			<-release
		}
		w.WriteHeader(202)
	})
	h := newHarness(t, nil, func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, "")
	ids := jtis("e", 10)
	var sets []SET
	for _, id := range ids {
		sets = append(sets, makeSET("s", id))
	}
	h.enqueue(sets...)
	<-inFirst
	head := makeSET("s", "head")
	head.Head = true
	h.enqueue(head)
	close(release)
	rc.waitFor(t, 11, 10*time.Second)
	want := append([]string{ids[0], "head"}, ids[1:]...)
	if got := rc.accepted(); !slices.Equal(got, want) {
		t.Errorf("order = %v, want %v", got, want)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		v    string
		want time.Duration
	}{
		{"", 0},
		{"120", 2 * time.Minute},
		{"-5", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
	}
	for _, tc := range tests {
		if got := parseRetryAfter(tc.v, now); got != tc.want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", tc.v, got, tc.want)
		}
	}
}

// TestZonedAddressesForbidden: the connect-time checks (the dialer's
// Control and the resolved-address loop) judge an address through
// forbiddenAddr; a zone id must not hide a loopback or link-local address
// from it.
func TestZonedAddressesForbidden(t *testing.T) {
	for _, s := range []string{"::1%lo", "::1%1", "fe80::fc:ff:fe00:1%eth0", "::ffff:127.0.0.1%lo", "fd00::1%x"} {
		if !forbiddenAddr(netip.MustParseAddr(s)) {
			t.Errorf("forbiddenAddr(%s) = false", s)
		}
		ap := netip.AddrPortFrom(netip.MustParseAddr(s), 443)
		if !forbiddenAddr(ap.Addr()) {
			t.Errorf("forbiddenAddr(%s) = false", ap)
		}
	}
	if forbiddenAddr(netip.MustParseAddr("2606:4700::1111")) {
		t.Error("a public address is forbidden")
	}
}

// TestLastErrorSurvivesReopen: a push stream's last error and its time are
// kept with its delivery state, so Stats reports them after a restart.
func TestLastErrorSurvivesReopen(t *testing.T) {
	clock := newFakeClock()
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, "Bearer secret-token")
	h.enqueue(makeSET("s", "x"))
	waitBackoff(t, clock) // the failure is committed before the stream backs off
	before, err := h.ob.Stats(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(before.LastError, "500") || before.LastErrorAt.IsZero() {
		t.Fatalf("before reopen: last error %q at %v", before.LastError, before.LastErrorAt)
	}
	// Paused, so the reopened outbox does not try again and overwrite it.
	if err := h.ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush,
		Status: StatusPaused, EndpointURL: rc.srv.URL, AuthorizationHeader: "Bearer secret-token"}); err != nil {
		t.Fatal(err)
	}
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	after, err := h.ob.Stats(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	if after.LastError != before.LastError || !after.LastErrorAt.Equal(before.LastErrorAt) {
		t.Errorf("after reopen: last error %q at %v, want %q at %v",
			after.LastError, after.LastErrorAt, before.LastError, before.LastErrorAt)
	}
	if strings.Contains(after.LastError, rc.srv.URL) || strings.Contains(after.LastError, "secret-token") {
		t.Errorf("last error %q carries the endpoint or its credentials", after.LastError)
	}
}

// TestBackoffSurvivesReopen: a failing push stream's backoff and the time
// it began to fail are read back at open, so the reopened dispatcher waits
// out what is left of the backoff; a change of credentials ends the
// backoff, also for the next open.
func TestBackoffSurvivesReopen(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
		w.WriteHeader(http.StatusInternalServerError)
	})
	h := newHarness(t, clock, func(c *Config) { c.SweepInterval = noSweep })
	h.pushStream("s", rc.srv.URL, "")
	h.enqueue(makeSET("s", "x"))
	waitBackoff(t, clock)
	clock.Advance(2 * time.Second) // the first backoff (1s) ends: a second failure
	var before StreamStats
	eventually(t, 5*time.Second, "the second backoff", func() bool {
		before, _ = h.ob.Stats(ctx, "s")
		return before.BackingOffUntil.Sub(clock.Now()) == 2*time.Second
	})
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	after, err := h.ob.Stats(ctx, "s")
	if err != nil || !after.FailingSince.Equal(before.FailingSince) || after.FailingSince.IsZero() ||
		!after.BackingOffUntil.Equal(before.BackingOffUntil) {
		t.Fatalf("after reopen: failing since %v, backing off until %v (%v); want %v and %v",
			after.FailingSince, after.BackingOffUntil, err, before.FailingSince, before.BackingOffUntil)
	}
	if d := waitBackoff(t, clock); d != 2*time.Second {
		t.Errorf("the reopened dispatcher waits %v, want the 2s left of the backoff", d)
	}
	// The next failure continues the run: the backoff doubles again.
	clock.Advance(2 * time.Second)
	eventually(t, 5*time.Second, "the third backoff", func() bool {
		s, _ := h.ob.Stats(ctx, "s")
		return s.BackingOffUntil.Sub(clock.Now()) == 4*time.Second && s.FailingSince.Equal(before.FailingSince)
	})
	h.pushStream("s", rc.srv.URL, "Bearer fixed")
	h.reopen(func(c *Config) { c.SweepInterval = noSweep })
	// Tried again at once after the change (it may have failed anew, a
	// new run), but the old run is gone.
	if s, _ := h.ob.Stats(ctx, "s"); s.FailingSince.Equal(before.FailingSince) {
		t.Errorf("after a change of credentials and a reopen: failing since %v, the old run", s.FailingSince)
	}
}
