//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demoreceiver"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// The three-replica rig: three sidecar processes (the crash test's child,
// each with a data dir and ports of its own) on one PostgreSQL schema in
// front of one simulated authentik, behind a TCP balancer, with push
// receivers that record every delivery and how many overlapped.

// Event types the rig's streams ask for.
const (
	evSessionRevoked   = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	evCredentialChange = "https://schemas.openid.net/secevent/caep/event-type/credential-change"
)

// The rig's receivers: one name (and token, and push path) per case.
var replicaReceiverNames = []string{"read", "verify", "pause", "longpoll", "ack", "sixty", "events", "keys", "chaos", "bench"}

func replicaToken(name string) string { return "replica-rx-" + name + "-token-0123456789" }

// balancer is a TCP round-robin proxy over the replicas' listen
// addresses: each connection goes to the next replica that accepts it, so
// a dead one is skipped.
type balancer struct {
	ln       net.Listener
	backends []string
	next     atomic.Uint64
	mu       sync.Mutex
	conns    map[net.Conn]bool
	closed   bool
}

func startBalancer(t testing.TB, backends []string) *balancer {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &balancer{ln: ln, backends: backends, conns: map[net.Conn]bool{}}
	t.Cleanup(b.close)
	go b.serve()
	return b
}

func (b *balancer) URL() string { return "http://" + b.ln.Addr().String() }

func (b *balancer) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.relay(c)
	}
}

func (b *balancer) relay(c net.Conn) {
	start := b.next.Add(1)
	var u net.Conn
	for i := range b.backends {
		addr := b.backends[(int(start)+i)%len(b.backends)]
		var err error
		if u, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
			break
		}
	}
	if u == nil {
		c.Close()
		return
	}
	if !b.track(c, u) {
		return
	}
	go func() { _, _ = io.Copy(u, c); u.Close(); c.Close() }()
	_, _ = io.Copy(c, u)
	u.Close()
	c.Close()
	b.mu.Lock()
	delete(b.conns, c)
	delete(b.conns, u)
	b.mu.Unlock()
}

func (b *balancer) track(c, u net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		c.Close()
		u.Close()
		return false
	}
	b.conns[c], b.conns[u] = true, true
	return true
}

func (b *balancer) close() {
	b.ln.Close()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for c := range b.conns {
		c.Close()
	}
}

// rxHub is the push receivers: one path per receiver, each SET verified
// against the transmitter's JWKS (through the balancer) and recorded with
// the number of deliveries in flight on that path when it came.
type rxHub struct {
	srv    *http.Server
	ln     net.Listener
	verify *demoReceiver // verification only; it does not listen

	mu      sync.Mutex
	paths   map[string]*rxPath
	hold    time.Duration
	bad     int
	changed chan struct{}
}

type rxPath struct {
	got      []rxDelivery
	inflight int
	overlaps int
}

// rxDelivery is one push as the receiver saw it.
type rxDelivery struct {
	receivedSET
	At time.Time
}

func startRxHub(t testing.TB, jwksURL, issuer string) *rxHub {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := &rxHub{ln: ln, paths: map[string]*rxPath{}, changed: make(chan struct{}), hold: 3 * time.Millisecond,
		verify: demoreceiver.NewVerifier(jwksURL, issuer)}
	h.srv = &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = h.srv.Serve(ln) }()
	t.Cleanup(func() { h.srv.Close() })
	return h
}

func (h *rxHub) URL(name string) string { return "http://" + h.ln.Addr().String() + "/rx/" + name }

func (h *rxHub) path(name string) *rxPath {
	p := h.paths[name]
	if p == nil {
		p = &rxPath{}
		h.paths[name] = p
	}
	return p
}

func (h *rxHub) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	name, ok := strings.CutPrefix(req.URL.Path, "/rx/")
	if !ok || req.Method != http.MethodPost {
		http.NotFound(w, req)
		return
	}
	h.mu.Lock()
	p := h.path(name)
	p.inflight++
	if p.inflight > 1 {
		p.overlaps++
	}
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		p.inflight--
		h.mu.Unlock()
	}()
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		return
	}
	set, err := h.verify.Verify(req.Context(), string(body))
	if err != nil {
		h.mu.Lock()
		h.bad++
		h.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	// Hold the delivery a moment, so a second push of the same stream
	// from another replica would overlap it and be seen.
	h.mu.Lock()
	hold := h.hold
	h.mu.Unlock()
	time.Sleep(hold)
	h.mu.Lock()
	p.got = append(p.got, rxDelivery{receivedSET: set, At: time.Now()})
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

// received returns what arrived on the path, and how many deliveries
// overlapped another one in flight there.
func (h *rxHub) received(name string) ([]rxDelivery, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	p := h.path(name)
	return append([]rxDelivery(nil), p.got...), p.overlaps
}

func (h *rxHub) rejected() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.bad
}

// waitUntil waits until cond holds over what arrived on the path, or the
// timeout passes; it returns whether cond held.
func (h *rxHub) waitUntil(name string, timeout time.Duration, cond func([]rxDelivery) bool) bool {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		h.mu.Lock()
		got := append([]rxDelivery(nil), h.path(name).got...)
		ch := h.changed
		h.mu.Unlock()
		if cond(got) {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

// replicaSet is the running system.
type replicaSet struct {
	t      testing.TB
	ak     *authentiktest.Server
	rigs   []*crashRig
	lb     *balancer
	rx     *rxHub
	client *http.Client // no keep-alive: every request through the balancer picks again
	url    string       // PostgreSQL
	schema string

	mu    sync.Mutex
	users map[string]authentiktest.User
	seq   atomic.Int64
}

// replicaOptions adjust the rig (the benchmark starts fewer replicas and
// turns the event-API poller off).
type replicaOptions struct {
	replicas int
	poller   bool
	env      []string
}

func startReplicaSet(t testing.TB, o replicaOptions) *replicaSet {
	t.Helper()
	url, schema := pgtest.Schema(t)
	ak, err := authentiktest.Start(authentiktest.Config{SecretKey: "replica-test-authentik-secret"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ak.Close() })
	s := &replicaSet{t: t, ak: ak, url: url, schema: schema, users: map[string]authentiktest.User{},
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	dir := t.TempDir()
	var rx strings.Builder
	rx.WriteString("receivers:\n")
	for _, n := range replicaReceiverNames {
		fmt.Fprintf(&rx, "  - name: %s\n    tokens: [%q]\n    subject_format: complex\n", n, replicaToken(n))
	}
	rxFile := filepath.Join(dir, "receivers.yaml")
	if err := os.WriteFile(rxFile, []byte(rx.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	var listens []string
	for i := 0; i < o.replicas; i++ {
		listen, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		admin, err := freeAddr()
		if err != nil {
			t.Fatal(err)
		}
		listens = append(listens, listen)
		rt, _ := t.(*testing.T) // crashRig.start needs one; the rig uses startQuiet
		s.rigs = append(s.rigs, &crashRig{t: rt, logDir: filepath.Join(dir, fmt.Sprintf("replica-%d", i)),
			front: "http://" + listen, admin: "http://" + admin, client: &http.Client{Timeout: 5 * time.Second}})
	}
	s.lb = startBalancer(t, listens)
	s.rx = startRxHub(t, s.lb.URL()+"/ssf/jwks.json", s.lb.URL()+"/ssf")
	for i, r := range s.rigs {
		if err := os.MkdirAll(r.logDir, 0o700); err != nil {
			t.Fatal(err)
		}
		r.env = append(os.Environ(), crashChildEnv+"=1",
			"SSF_LISTEN="+listens[i], "SSF_ADMIN_LISTEN="+strings.TrimPrefix(r.admin, "http://"), "SSF_UPSTREAM="+ak.URL(),
			"SSF_ISSUER="+s.lb.URL()+"/ssf", "SSF_DATA_DIR="+filepath.Join(r.logDir, "data"),
			"SSF_DATABASE_URL="+url, "SSF_DATABASE_SCHEMA="+schema, "SSF_ENCRYPTION_KEY="+testEncryptionKey,
			"SSF_AUTHENTIK_SECRET_KEY="+ak.SecretKey(), "SSF_ALLOW_PRIVATE_ENDPOINTS=true",
			"SSF_POLL_INTERVAL=200ms", "SSF_RECEIVERS="+rxFile, "SSF_MAX_BACKOFF=1s",
			// A dead replica's streams and poller move within 6 s.
			"SSF_PUSH_TIMEOUT=2s", "SSF_LEASE_TTL=6s", "SSF_MIN_VERIFICATION_INTERVAL=1s",
			"SSF_TRUSTED_PROXIES=127.0.0.1/32", "SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=warn", "OTEL_TRACES_EXPORTER=none")
		if o.poller {
			r.env = append(r.env, "SSF_AUTHENTIK_TOKEN="+ak.AdminToken())
		}
		r.env = append(r.env, o.env...)
	}
	// Start them at once: they share the migration and the first key.
	var wg sync.WaitGroup
	errs := make([]string, len(s.rigs))
	for i, r := range s.rigs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = r.startQuiet()
		}()
	}
	wg.Wait()
	for _, e := range errs {
		if e != "" {
			t.Fatal(e)
		}
	}
	t.Cleanup(func() {
		for _, r := range s.rigs {
			r.stop()
		}
	})
	return s
}

// newChildCommand runs this test binary as one sidecar (TestCrashChildProcess).
func newChildCommand(env []string, out *os.File) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChildProcess$")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = out, out
	return cmd
}

// startQuiet is crashRig.start for any goroutine: it returns what went
// wrong instead of failing the test.
func (r *crashRig) startQuiet() string {
	r.lives++
	logf, err := os.Create(filepath.Join(r.logDir, fmt.Sprintf("life-%02d.log", r.lives)))
	if err != nil {
		return err.Error()
	}
	cmd := newChildCommand(r.env, logf)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err.Error()
	}
	c := &crashChild{cmd: cmd, done: make(chan error, 1)}
	go func() { c.done <- cmd.Wait(); logf.Close() }()
	r.child = c
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-c.done:
			out, _ := os.ReadFile(logf.Name())
			return fmt.Sprintf("%s life %d: the sidecar exited at start: %v\n%s", r.front, r.lives, err, out)
		default:
		}
		resp, err := r.client.Get(r.admin + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return ""
			}
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("%s life %d: not ready within 30 s", r.front, r.lives)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// killQuiet is crashRig.kill for any goroutine.
func (r *crashRig) killQuiet() {
	if r.child == nil {
		return
	}
	_ = r.child.cmd.Process.Kill() // SIGKILL
	<-r.child.done
	r.child = nil
}

// call sends an SSF (or any) request to base with a receiver's token.
func (s *replicaSet) call(base, token, method, path string, body any) (int, []byte, error) {
	var payload []byte
	if body != nil {
		payload, _ = json.Marshal(body)
	}
	// A 429 of the management-call limit is waited out (up to 15 s).
	deadline := time.Now().Add(15 * time.Second)
	for {
		req, _ := http.NewRequest(method, base+path, bytes.NewReader(payload))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := s.client.Do(req)
		if err != nil {
			return 0, nil, err
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusTooManyRequests || time.Now().After(deadline) {
			return resp.StatusCode, data, nil
		}
		wait, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
		time.Sleep(time.Duration(min(max(wait, 1), 2)) * time.Second)
	}
}

// mustCall is call that fails the test unless the answer is want.
func (s *replicaSet) mustCall(t testing.TB, want int, base, token, method, path string, body any) []byte {
	t.Helper()
	code, data, err := s.call(base, token, method, path, body)
	if err != nil || code != want {
		t.Fatalf("%s %s on %s: %d %s %v, want %d", method, path, base, code, data, err, want)
	}
	return data
}

// createStream creates a stream of the receiver through base: push to
// the hub's path when path is set, else poll. It returns the stream id
// and, for poll, the poll path.
func (s *replicaSet) createStream(t testing.TB, base, receiver, path string, events ...string) (id, pollPath string) {
	t.Helper()
	body := map[string]any{"events_requested": events}
	if path != "" {
		body["delivery"] = map[string]any{"method": "urn:ietf:rfc:8935", "endpoint_url": s.rx.URL(path)}
	}
	data := s.mustCall(t, http.StatusCreated, base, replicaToken(receiver), http.MethodPost, "/ssf/streams", body)
	var st struct {
		ID       string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.ID == "" {
		t.Fatalf("stream created without an id: %s", data)
	}
	if path == "" {
		u := st.Delivery.EndpointURL
		pollPath = u[strings.Index(u, "/ssf/"):]
	}
	return st.ID, pollPath
}

// waitKnown waits until every replica serves the stream (each syncs the
// streams from the database every 5 s).
func (s *replicaSet) waitKnown(t testing.TB, name, id string) {
	t.Helper()
	for i, r := range s.rigs {
		// Paced: management calls are rate-limited per receiver.
		if !eventuallyEvery(20*time.Second, 400*time.Millisecond, func() bool {
			code, _, err := s.call(r.front, replicaToken(name), http.MethodGet, "/ssf/streams?stream_id="+id, nil)
			return err == nil && code == http.StatusOK
		}) {
			t.Fatalf("replica %d does not serve stream %s 20 s after it was created", i, id)
		}
	}
}

// deleteStream removes the case's stream, so it adds no load to the next.
func (s *replicaSet) deleteStream(t testing.TB, name, id string) {
	code, data, err := s.call(s.lb.URL(), replicaToken(name), http.MethodDelete, "/ssf/streams?stream_id="+id, nil)
	if err != nil || code != http.StatusNoContent {
		t.Errorf("delete stream %s: %d %s %v", id, code, data, err)
	}
}

// eventually polls cond every 50 ms until it holds or the timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	return eventuallyEvery(timeout, 50*time.Millisecond, cond)
}

// eventuallyEvery polls cond every interval until it holds or the timeout
// passes.
func eventuallyEvery(timeout, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(every)
	}
}

// revocation is one session delete sent to a sidecar.
type revocation struct {
	uuid, hash string
	acked      bool // authentik's 204 came back through the sidecar
}

// revoke issues a session for a user of authentik and deletes it with the
// admin token through base (authentik logs nothing for that: only the
// traffic sees it).
func (s *replicaSet) revoke(base string) (revocation, error) {
	n := s.seq.Add(1)
	u, err := s.user(fmt.Sprintf("rev%d", n%8))
	if err != nil {
		return revocation{}, err
	}
	se, _, err := s.ak.IssueSession(u.PK)
	if err != nil {
		return revocation{}, err
	}
	h := sha256.Sum256([]byte(se.SID))
	r := revocation{uuid: se.UUID, hash: hex.EncodeToString(h[:])}
	req, _ := http.NewRequest(http.MethodDelete, base+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", nil)
	req.Header.Set("Authorization", "Bearer "+s.ak.AdminToken())
	// Many admins, so the tap's per-client rate limit does not shape the load.
	req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", n>>16&255, n>>8&255, n&255))
	resp, err := s.client.Do(req)
	if err != nil {
		return r, nil // no response: not acknowledged
	}
	resp.Body.Close()
	r.acked = resp.StatusCode == http.StatusNoContent
	return r, nil
}

// user returns authentik's user of that name, creating it once.
func (s *replicaSet) user(name string) (authentiktest.User, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u, ok := s.users[name]; ok {
		return u, nil
	}
	u, err := s.ak.AddUser(authentiktest.UserSpec{Username: name, Email: name + "@example.com", Password: "initial-password-1"})
	if err == nil {
		s.users[name] = u
	}
	return u, err
}

// sessionKey maps a session-revoked SET back to the session's uuid (its
// subject names the session by uuid or by the hash of its id).
func sessionKey(alias map[string]string, d receivedSET) string {
	return alias[sessionOf(d.Claims)]
}

// metricSum adds a metric up over the replicas that answer.
func (s *replicaSet) metricSum(names ...string) float64 {
	var n float64
	for _, r := range s.rigs {
		n += r.metric(names...)
	}
	return n
}

// stats reads a stream's outbox state through one replica's admin API.
func (s *replicaSet) stats(r *crashRig, id string) (backlog, delivered int64, err error) {
	resp, err := r.client.Get(r.admin + "/admin/outbox/" + id)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	var st struct {
		Backlog   int64 `json:"backlog"`
		Delivered int64 `json:"delivered"`
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return 0, 0, fmt.Errorf("admin outbox stats: %d %s", resp.StatusCode, b)
	}
	err = json.NewDecoder(resp.Body).Decode(&st)
	return st.Backlog, st.Delivered, err
}

// poll calls a poll stream on base and returns the SETs handed out.
func (s *replicaSet) poll(base, name, path string, ack []string, wait bool, maxEvents int) (map[string]string, error) {
	body := map[string]any{"returnImmediately": !wait, "maxEvents": maxEvents}
	if ack != nil {
		body["ack"] = ack
	}
	code, data, err := s.call(base, replicaToken(name), http.MethodPost, path, body)
	if err != nil {
		return nil, err
	}
	if code != http.StatusOK {
		return nil, fmt.Errorf("poll on %s: %d %s", base, code, data)
	}
	var pr struct {
		Sets map[string]string `json:"sets"`
	}
	if err := json.Unmarshal(data, &pr); err != nil {
		return nil, err
	}
	return pr.Sets, nil
}

// ctxBG is the tests' context.
var ctxBG = context.Background()
