package tap

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// memLease is a PollerLease in memory with the store leases' semantics:
// one holder until it releases or its ttl runs out, a new token for each
// new holder, the same one when the holder extends.
type memLease struct {
	t        testing.TB
	mu       sync.Mutex
	holder   string
	token    uint64
	expires  time.Time
	attempts map[string]int // poller lease attempts by holder
	// others are the replicas' liveness leases, always granted.
	others map[string]uint64
}

func newMemLease(t testing.TB) *memLease {
	return &memLease{t: t, attempts: map[string]int{}, others: map[string]uint64{}}
}

func (m *memLease) Acquire(_ context.Context, name, holder string, ttl time.Duration) (uint64, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.HasPrefix(name, ReplicaLeasePrefix) {
		m.others[name]++
		return m.others[name], true, nil
	}
	if name != PollerLeaseName {
		m.t.Errorf("lease name %q, want %q", name, PollerLeaseName)
	}
	m.attempts[holder]++
	now := time.Now()
	if m.holder != "" && m.holder != holder && now.Before(m.expires) {
		return 0, false, nil
	}
	if m.holder != holder {
		m.holder = holder
		m.token++
	}
	m.expires = now.Add(ttl)
	return m.token, true, nil
}

func (m *memLease) Release(_ context.Context, name, holder string, token uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if strings.HasPrefix(name, ReplicaLeasePrefix) {
		return nil
	}
	if m.holder != holder || m.token != token {
		return errors.New("not the holder")
	}
	m.holder = ""
	return nil
}

// give hands the lease to holder for an hour, as another replica taking
// it over would.
func (m *memLease) give(holder string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.holder, m.expires = holder, time.Now().Add(time.Hour)
	m.token++
}

func (m *memLease) state() (holder string, token uint64, attempts map[string]int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.holder, m.token, maps(m.attempts)
}

func maps(in map[string]int) map[string]int {
	out := make(map[string]int, len(in))
	for k, v := range in {
		out[k] = v
	}
	return out
}

// tagTransport marks every request with the replica that made it.
type tagTransport struct{ tag string }

func (tt tagTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Replica", tt.tag)
	return http.DefaultTransport.RoundTrip(r)
}

// eventReads records which replica read the event list, in order.
type eventReads struct {
	mu  sync.Mutex
	who []string
}

func (er *eventReads) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v3/events/events/" {
			er.mu.Lock()
			er.who = append(er.who, r.Header.Get("X-Test-Replica"))
			er.mu.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

func (er *eventReads) since(n int) []string {
	er.mu.Lock()
	defer er.mu.Unlock()
	return slices.Clone(er.who[min(n, len(er.who)):])
}

func (er *eventReads) count() int {
	er.mu.Lock()
	defer er.mu.Unlock()
	return len(er.who)
}

func replicaConfig(cfg Config, lease PollerLease, holder string) Config {
	cfg.PollerLease, cfg.LeaseHolder = lease, holder
	cfg.HTTPClient = &http.Client{Timeout: 5 * time.Second, Transport: tagTransport{tag: holder}}
	return cfg
}

func logoutEvent(t testing.TB, e *env, u authentiktest.User) {
	t.Helper()
	if _, err := e.ak.RecordEvent(authentiktest.EventSpec{Action: "logout", UserPK: u.PK}); err != nil {
		t.Fatal(err)
	}
}

// TestPollerLeaseOneHolderAndTakeover: two replicas share one store and one
// poller lease. Only the holder reads the event API — the standby's polls
// do not reach authentik — and when the holder stops, the standby takes
// the lease over and goes on from the committed cursor: every event is
// published exactly once across the two.
func TestPollerLeaseOneHolderAndTakeover(t *testing.T) {
	lease := newMemLease(t)
	reads := &eventReads{}
	e := newEnv(t, envOpts{wrap: reads.wrap, mutate: func(c *Config) {
		*c = replicaConfig(*c, lease, "A")
	}})
	if holder, _, _ := lease.state(); holder != "A" {
		t.Fatalf("lease holder after A's first poll = %q", holder)
	}
	b, err := New(replicaConfig(e.cfg, lease, "B"))
	if err != nil {
		t.Fatal(err)
	}
	bctx, bcancel := context.WithCancel(context.Background())
	bdone := make(chan error, 1)
	go func() { bdone <- b.Run(bctx) }()
	defer func() {
		bcancel()
		if err := <-bdone; err != nil {
			t.Errorf("B: Run: %v", err)
		}
	}()
	bTried := func(n int) func() bool {
		return func() bool { _, _, at := lease.state(); return at["B"] >= n }
	}
	e.waitFor("B to try the lease", bTried(1))

	users := []authentiktest.User{e.user("u1"), e.user("u2"), e.user("u3"), e.user("u4")}
	logoutEvent(t, e, users[0])
	logoutEvent(t, e, users[1])
	mark := reads.count()
	e.poll()
	_, _, at := lease.state()
	b.PollNow()
	e.waitFor("B to try again", bTried(at["B"]+1))
	if n := b.Stats().Polls; n != 0 {
		t.Errorf("standby B completed %d polls", n)
	}
	if got := reads.since(mark); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != "A" }) {
		t.Errorf("event-API reads while A holds the lease: %v; want A's only", got)
	}
	if n := len(e.rec.signals()); n != 2 {
		t.Fatalf("%d signals from A, want 2", n)
	}
	_, tokenA, _ := lease.state()

	// A stops (and releases); what happens next is B's to read.
	e.stop()
	e.stop = nil
	if holder, _, _ := lease.state(); holder != "" {
		t.Errorf("lease still held by %q after A stopped", holder)
	}
	logoutEvent(t, e, users[2])
	logoutEvent(t, e, users[3])
	mark = reads.count()
	b.PollNow()
	e.waitFor("B's first poll", func() bool { return b.Stats().Polls >= 1 })
	holder, tokenB, _ := lease.state()
	if holder != "B" || tokenB <= tokenA {
		t.Errorf("lease after takeover: %q token %d; want B above %d", holder, tokenB, tokenA)
	}
	if got := reads.since(mark); len(got) == 0 || slices.ContainsFunc(got, func(s string) bool { return s != "B" }) {
		t.Errorf("event-API reads after takeover: %v; want B's only", got)
	}
	checkRevokedOnceEach(t, e, users)
}

// TestPollerStopsWhenLeaseLost: a poller whose lease goes to another
// replica in the middle of a poll publishes nothing more and leaves the
// cursor where it was; once the lease is free again it goes on from there.
func TestPollerStopsWhenLeaseLost(t *testing.T) {
	lease := newMemLease(t)
	var steal sync.Once
	stolen := make(chan struct{})
	armed := make(chan struct{})
	e := newEnv(t, envOpts{
		wrap: func(next http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/api/v3/events/events/" {
					select {
					case <-armed:
						// Another replica takes the lease while A reads the page.
						steal.Do(func() { lease.give("C"); close(stolen) })
					default:
					}
				}
				next.ServeHTTP(w, r)
			})
		},
		mutate: func(c *Config) {
			*c = replicaConfig(*c, lease, "A")
			c.PollerLeaseTTL = 3 * time.Nanosecond // renew before every event
		},
	})
	users := []authentiktest.User{e.user("v1"), e.user("v2"), e.user("v3")}
	for _, u := range users {
		logoutEvent(t, e, u)
	}
	cur0, _ := e.kv.Get(BucketCursor, cursorKey)
	close(armed)
	e.tap.PollNow()
	<-stolen
	e.waitFor("A to find the lease gone", func() bool { _, _, at := lease.state(); return at["A"] >= 3 })
	if n := len(e.rec.signals()); n != 0 {
		t.Fatalf("%d signals published after the lease was lost", n)
	}
	if n := e.tap.Stats().Polls; n != 1 {
		t.Errorf("%d polls completed, want only the first (before the loss)", n)
	}
	if cur, _ := e.kv.Get(BucketCursor, cursorKey); string(cur) != string(cur0) {
		t.Errorf("cursor moved by a poller without the lease: %s → %s", cur0, cur)
	}
	// C goes away (its lease ends): A takes over and publishes each once.
	lease.mu.Lock()
	lease.expires = time.Now()
	lease.mu.Unlock()
	e.poll()
	checkRevokedOnceEach(t, e, users)
}

// TestPollerLeaseConfig: the lease settings are validated and defaulted.
func TestPollerLeaseConfig(t *testing.T) {
	e := newEnv(t, envOpts{noToken: true})
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr bool
		wantTTL time.Duration
	}{
		{"negative ttl", func(c *Config) { c.PollerLeaseTTL = -time.Second }, true, 0},
		{"default ttl", func(c *Config) { c.PollInterval = 5 * time.Second }, false, 15 * time.Second},
		// A long interval does not stretch a takeover: the lease is
		// renewed while the poller waits.
		{"ttl stays short with a long interval", func(c *Config) { c.PollInterval = time.Minute }, false, 15 * time.Second},
		{"explicit ttl", func(c *Config) { c.PollerLeaseTTL = time.Second }, false, time.Second},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := e.cfg
			cfg.PollerLease = newMemLease(t)
			tc.mutate(&cfg)
			tp, err := New(cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("New: %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if tp.cfg.PollerLeaseTTL != tc.wantTTL {
				t.Errorf("PollerLeaseTTL = %v, want %v", tp.cfg.PollerLeaseTTL, tc.wantTTL)
			}
			if tp.cfg.LeaseHolder == "" {
				t.Error("no default LeaseHolder")
			}
		})
	}
	// Rescans come once a liveness lifetime when replicas share the
	// journal, so a dead replica's open intent waits at most two of them;
	// alone, every 30 s.
	for _, tc := range []struct {
		lease bool
		ttl   time.Duration
		want  time.Duration
	}{{false, 0, 30 * time.Second}, {true, 0, 15 * time.Second}, {true, 6 * time.Second, 6 * time.Second}, {true, time.Minute, 30 * time.Second}} {
		cfg := e.cfg
		cfg.PollerLeaseTTL = tc.ttl
		if tc.lease {
			cfg.PollerLease = newMemLease(t)
		}
		tp, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := tp.rescanEvery(); got != tc.want {
			t.Errorf("shared journal %v, lease %v: rescan every %v, want %v", tc.lease, tc.ttl, got, tc.want)
		}
	}
	a, _ := New(e.cfg)
	b, _ := New(e.cfg)
	if a.cfg.LeaseHolder == b.cfg.LeaseHolder {
		t.Errorf("two taps got the same default holder %q", a.cfg.LeaseHolder)
	}
}

// checkRevokedOnceEach checks that each user's logout, read from the event
// API, was published once as a session revocation.
func checkRevokedOnceEach(t *testing.T, e *env, users []authentiktest.User) {
	t.Helper()
	var wants []want
	for _, u := range users {
		wants = append(wants, want{kind: KindSessionRevoked, source: SourceEventAPI, subject: int64(u.PK), initiator: InitiatorUser})
	}
	checkSignals(t, e.rec.signals(), wants)
	if e.rec.calls != len(users) {
		t.Errorf("published %d times for %d events", e.rec.calls, len(users))
	}
}

// TestPollerRenewsWhileWaiting: with a poll interval far longer than the
// lease, the holder renews the lease while it waits for the next poll
// (without polling), so a standby does not take it over from a live holder.
func TestPollerRenewsWhileWaiting(t *testing.T) {
	lease := newMemLease(t)
	e := newEnv(t, envOpts{mutate: func(c *Config) {
		*c = replicaConfig(*c, lease, "A")
		c.PollInterval = time.Hour
		c.PollerLeaseTTL = 60 * time.Millisecond
	}})
	_, token, at := lease.state()
	e.waitFor("A to renew several times between polls", func() bool {
		_, _, now := lease.state()
		return now["A"] >= at["A"]+5
	})
	if holder, tok, _ := lease.state(); holder != "A" || tok != token {
		t.Errorf("lease %q token %d after waiting, want A's %d", holder, tok, token)
	}
	if n := e.tap.Stats().Polls; n != 1 {
		t.Errorf("%d polls, want the first only: renewing is not polling", n)
	}
}
