//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// The crash test runs the sidecar as a child process (this test binary,
// re-executed with crashChildEnv set) in front of a simulated authentik in
// the parent, with a push receiver and a poll receiver in the parent, under
// steady traffic, and kills it with SIGKILL at random moments.

const crashChildEnv = "SSF_CRASH_TEST_CHILD"

// TestCrashChildProcess is the child side of TestCrashKillUnderLoad: it
// runs `serve`, configured through SSF_* variables. Outside a child it
// returns at once.
func TestCrashChildProcess(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		return
	}
	if v := os.Getenv("SSF_CRASH_TEST_FSIZE"); v != "" {
		// A full disk, as the process sees it: writes past this size fail
		// with EFBIG (Go ignores SIGXFSZ).
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &syscall.Rlimit{Cur: n, Max: n}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	code := run(ctx, []string{"serve"}, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// crashChild is one life of the sidecar child process.
type crashChild struct {
	cmd  *exec.Cmd
	done chan error
}

type crashRig struct {
	t      *testing.T
	env    []string
	logDir string
	front  string
	admin  string
	lives  int
	child  *crashChild
	client *http.Client
}

func (r *crashRig) start() {
	r.t.Helper()
	if e := r.startQuiet(); e != "" {
		r.t.Fatal(e)
	}
}

func (r *crashRig) kill() {
	r.t.Helper()
	if err := r.child.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		r.t.Fatalf("kill: %v", err)
	}
	<-r.child.done
}

// stop ends the child with SIGTERM, or SIGKILL after 15 s; it reports
// whether the child stopped on its own. A second call does nothing.
func (r *crashRig) stop() bool {
	if r.child == nil {
		return true
	}
	c := r.child
	r.child = nil
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		return true
	case <-time.After(15 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
		return false
	}
}

// metric sums the samples of the named metric on /metrics (0 when the
// sidecar cannot be reached).
func (r *crashRig) metric(names ...string) float64 {
	resp, err := r.client.Get(r.admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var n float64
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[0], "{")
		if slices.Contains(names, name) {
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			n += v
		}
	}
	return n
}

// misses reads the counters of tapped actions the sidecar knowingly did not
// turn into signals — the tap's misses and rate-limited requests and the
// observer's misses — from /metrics (0 when the sidecar cannot be reached).
func (r *crashRig) misses() float64 {
	return r.metric("ssf_sidecar_tap_misses_total", "ssf_sidecar_tap_rate_limited_total", "ssf_sidecar_observer_misses_total")
}

// ssf calls the SSF API through the sidecar's front.
func (r *crashRig) ssf(token, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, r.front+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data, nil
}

// crashAttempt is one session delete sent through the proxy.
type crashAttempt struct {
	uuid, hash string
	status     int // 0: no response
}

// TestCrashKillUnderLoad: steady traffic through the proxy (sessions
// deleted with the admin token, which authentik never logs) and password
// changes only the event API sees, two receivers (push and poll), SIGKILL at
// 20 random moments with a restart on the same data dir and ports each
// time. At the end every session authentik deleted and every password
// change has its SET at both receivers, except what the miss counters
// account for; no session that survived got a SET; a SET is never issued
// twice (one jti per action), and redeliveries are bounded by what was in
// flight at the kills.
func TestCrashKillUnderLoad(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SSF_CRASH_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (SSF_CRASH_SEED=%d reproduces the kill schedule)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
	const kills = 20

	ak, err := authentiktest.Start(authentiktest.Config{SecretKey: "crash-test-authentik-secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	var users []authentiktest.User
	for i := 0; i < 3; i++ {
		u, err := ak.AddUser(authentiktest.UserSpec{Username: fmt.Sprintf("user%d", i), Email: fmt.Sprintf("user%d@example.com", i), Password: "initial-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u)
	}
	listen, adminListen := listenAddrs(t)
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	rig := &crashRig{t: t, logDir: dir, front: "http://" + listen, admin: "http://" + adminListen,
		client: &http.Client{Timeout: 3 * time.Second}}
	const pushTok, pollTok = "crash-push-receiver-token-0123456789", "crash-poll-receiver-token-0123456789"
	rxFile := filepath.Join(dir, "receivers.yaml")
	if err := os.WriteFile(rxFile, []byte(`receivers:
  - name: push-rx
    tokens: ["`+pushTok+`"]
    subject_format: complex
  - name: poll-rx
    tokens: ["`+pollTok+`"]
    subject_format: complex
`), 0o600); err != nil {
		t.Fatal(err)
	}
	rx, err := startDemoReceiver(rig.front+"/ssf/jwks.json", rig.front+"/ssf")
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	rig.env = append(os.Environ(), crashChildEnv+"=1",
		"SSF_LISTEN="+listen, "SSF_ADMIN_LISTEN="+adminListen, "SSF_UPSTREAM="+ak.URL(),
		"SSF_ISSUER="+rig.front+"/ssf", "SSF_DATA_DIR="+dataDir, "SSF_AUTHENTIK_TOKEN="+ak.AdminToken(),
		"SSF_AUTHENTIK_SECRET_KEY="+ak.SecretKey(), "SSF_ALLOW_PRIVATE_ENDPOINTS=true",
		"SSF_POLL_INTERVAL=200ms", "SSF_RECEIVERS="+rxFile, "SSF_MAX_BACKOFF=1s",
		"SSF_TRUSTED_PROXIES=127.0.0.1/32", "SSF_LOG_FORMAT=text", "SSF_LOG_LEVEL=warn", "OTEL_TRACES_EXPORTER=none")
	rig.start()
	defer rig.stop()

	events := []string{"https://schemas.openid.net/secevent/caep/event-type/session-revoked",
		"https://schemas.openid.net/secevent/caep/event-type/credential-change"}
	code, body, err := rig.ssf(pushTok, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": events,
		"delivery": map[string]any{"method": "urn:ietf:rfc:8935", "endpoint_url": rx.URL()}})
	if err != nil || code != http.StatusCreated {
		t.Fatalf("push stream: %d %s %v", code, body, err)
	}
	code, body, err = rig.ssf(pollTok, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": events})
	if err != nil || code != http.StatusCreated {
		t.Fatalf("poll stream: %d %s %v", code, body, err)
	}
	var pollStream struct {
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	_ = json.Unmarshal(body, &pollStream)
	pollPath := strings.TrimPrefix(pollStream.Delivery.EndpointURL, rig.front)
	// Let the poller complete a read so its cursor is set before any
	// password change (a fresh data dir starts at "now").
	for deadline := time.Now().Add(10 * time.Second); rig.metric("ssf_sidecar_poller_polls_total") < 1; {
		if time.Now().After(deadline) {
			t.Fatal("the event-API poller never completed a read")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The poll receiver: polls and acknowledges what it got on the next call.
	var pollMu sync.Mutex
	var polled []receivedSET
	pollOnce := func(ack []string) ([]string, bool) {
		code, body, err := rig.ssf(pollTok, http.MethodPost, pollPath, map[string]any{"returnImmediately": true, "ack": ack, "maxEvents": 10})
		if err != nil || code != http.StatusOK {
			return ack, false // the acks go again on the next call
		}
		var pr struct {
			Sets          map[string]string `json:"sets"`
			MoreAvailable bool              `json:"moreAvailable"`
		}
		if json.Unmarshal(body, &pr) != nil {
			return ack, false
		}
		var next []string
		for jti, compact := range pr.Sets {
			s, err := rx.Verify(context.Background(), compact)
			if err != nil {
				t.Errorf("polled SET does not verify: %v", err)
				continue
			}
			pollMu.Lock()
			polled = append(polled, s)
			pollMu.Unlock()
			next = append(next, jti)
		}
		return next, len(pr.Sets) > 0 || pr.MoreAvailable
	}
	stopLoad := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	var pending []string
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stopLoad:
				return
			case <-time.After(100 * time.Millisecond):
			}
			pending, _ = pollOnce(pending)
		}
	}()
	// The traffic: session deletes through the proxy, and now and then a
	// password change that only the event API sees.
	var attempts []crashAttempt
	passwords := map[int]int{}
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stopLoad:
				return
			default:
			}
			u := users[i%len(users)]
			if i%7 == 3 {
				if err := ak.SystemSetPassword(u.PK, fmt.Sprintf("password-%d", i), "source_sync"); err != nil {
					t.Error(err)
					return
				}
				passwords[u.PK]++
				continue
			}
			se, _, err := ak.IssueSession(u.PK)
			if err != nil {
				t.Error(err)
				return
			}
			h := sha256.Sum256([]byte(se.SID))
			a := crashAttempt{uuid: se.UUID, hash: hex.EncodeToString(h[:])}
			req, _ := http.NewRequest(http.MethodDelete, rig.front+"/api/v3/core/authenticated_sessions/"+se.UUID+"/", nil)
			req.Header.Set("Authorization", "Bearer "+ak.AdminToken())
			// Many admins behind the ingress, so the tap's per-client rate
			// limit (its own guarantee, tested in tap) does not shape the load.
			req.Header.Set("X-Forwarded-For", fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255))
			if resp, err := rig.client.Do(req); err == nil {
				a.status = resp.StatusCode
				resp.Body.Close()
			} else {
				time.Sleep(20 * time.Millisecond) // the sidecar is down; do not spin
			}
			attempts = append(attempts, a)
		}
	}()

	var missesAtKills float64
	for k := 0; k < kills; k++ {
		time.Sleep(time.Duration(150+rng.IntN(900)) * time.Millisecond)
		missesAtKills += rig.misses()
		rig.kill()
		rig.start()
	}
	time.Sleep(500 * time.Millisecond)
	close(stopLoad)
	wg.Wait()

	// Ground truth from authentik: which deletes happened.
	done := map[string]bool{} // session id (hash) → deleted by authentik
	survived := map[string]bool{}
	alias := map[string]string{} // the session's uuid or sha256(sid) → uuid
	for _, a := range attempts {
		alias[a.uuid], alias[a.hash] = a.uuid, a.uuid
		if _, ok := ak.Session(a.uuid); ok {
			survived[a.uuid] = true
		} else {
			done[a.uuid] = true
		}
	}
	var changes int
	for _, n := range passwords {
		changes += n
	}
	if len(done) < 20 || changes < 5 {
		t.Fatalf("too little load to judge: %d sessions deleted, %d password changes", len(done), changes)
	}

	// Wait for delivery to catch up: every deleted session at both receivers.
	type tally struct {
		jtis     map[string]map[string]bool // action key → jtis
		received int
	}
	count := func(sets []receivedSET) tally {
		tl := tally{jtis: map[string]map[string]bool{}}
		for _, s := range sets {
			key := ""
			switch s.Event {
			case "session-revoked":
				key = "session:" + alias[sessionOf(s.Claims)]
			case "credential-change":
				key = "user:" + userEmailOf(s.Claims)
			default:
				continue
			}
			tl.received++
			if tl.jtis[key] == nil {
				tl.jtis[key] = map[string]bool{}
			}
			tl.jtis[key][s.JTI] = true
		}
		return tl
	}
	complete := func(tl tally) int {
		missing := 0
		for h := range done {
			if len(tl.jtis["session:"+h]) == 0 {
				missing++
			}
		}
		for _, u := range users {
			if d := passwords[u.PK] - len(tl.jtis["user:"+u.Email]); d > 0 {
				missing += d
			}
		}
		return missing
	}
	// A poll batch leased when a kill cut its answer off is handed out
	// again only when its lease (60 s, kept over the restart) ends.
	deadline := time.Now().Add(90 * time.Second)
	var pushT, pollT tally
	for {
		var more bool
		pending, more = pollOnce(pending)
		for more {
			pending, more = pollOnce(pending)
		}
		pushT = count(rx.Received())
		pollMu.Lock()
		pollT = count(polled)
		pollMu.Unlock()
		if complete(pushT) == 0 && complete(pollT) == 0 {
			break
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	misses := missesAtKills + rig.misses()
	pushMissing, pollMissing := complete(pushT), complete(pollT)
	t.Logf("%d kills; %d deletes sent, %d done by authentik, %d password changes; misses counted %v; missing push %d, poll %d",
		kills, len(attempts), len(done), changes, misses, pushMissing, pollMissing)
	for name, m := range map[string]int{"push": pushMissing, "poll": pollMissing} {
		if float64(m) > misses {
			t.Errorf("%s receiver misses %d actions authentik completed; the miss counters account for %v", name, m, misses)
		}
	}
	if misses > 2 {
		t.Errorf("miss counters at %v: should stay near zero under a crash-only fault", misses)
	}
	for name, tl := range map[string]tally{"push": pushT, "poll": pollT} {
		unique := 0
		for key, jtis := range tl.jtis {
			unique += len(jtis)
			if strings.HasPrefix(key, "session:") {
				h := strings.TrimPrefix(key, "session:")
				if survived[h] {
					t.Errorf("%s: a session authentik still holds got a session-revoked SET", name)
				}
				if len(jtis) > 1 {
					t.Errorf("%s: session %s… revoked under %d jtis: the action was issued twice", name, h[:8], len(jtis))
				}
			}
			for _, u := range users {
				if key == "user:"+u.Email && len(jtis) > passwords[u.PK] {
					t.Errorf("%s: %d credential-change SETs for %d password changes of %s", name, len(jtis), passwords[u.PK], u.Email)
				}
			}
		}
		if uj := len(tl.jtis); uj == 0 {
			t.Errorf("%s: nothing received", name)
		}
		redelivered := tl.received - unique
		// One push in flight per stream at a kill; a poll batch (maxEvents
		// 10) leased but not yet acknowledged, handed out again after its
		// lease.
		bound := kills
		if name == "poll" {
			bound = kills * 10
		}
		t.Logf("%s: %d SETs received, %d distinct, %d redelivered (bound %d)", name, tl.received, unique, redelivered, bound)
		if redelivered > bound {
			t.Errorf("%s: %d redeliveries, more than the %d that could have been in flight at the kills", name, redelivered, bound)
		}
	}
	if rej := rx.Rejected(); rej != 0 {
		t.Errorf("push receiver rejected %d SETs", rej)
	}
}

// sessionOf returns the session id of a complex sub_id.
func sessionOf(claims map[string]any) string {
	sub, _ := claims["sub_id"].(map[string]any)
	se, _ := sub["session"].(map[string]any)
	id, _ := se["id"].(string)
	return id
}

// userEmailOf returns the user's email of a complex (or email) sub_id.
func userEmailOf(claims map[string]any) string {
	sub, _ := claims["sub_id"].(map[string]any)
	if u, ok := sub["user"].(map[string]any); ok {
		sub = u
	}
	e, _ := sub["email"].(string)
	return e
}
