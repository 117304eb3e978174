package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/proxy"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// tapWorld is the sidecar (with its simulated authentik and a push stream
// of session revocations to the demo receiver) on one backend, and beside
// it the bare proxy, without tap or SSF, in front of the same authentik:
// the same request through the latter is the untapped baseline.
type tapWorld struct {
	backend string
	w       *demoWorld
	bare    string // the bare proxy's URL
	userPK  int
	client  *http.Client
	tapped  int // session revocations sent through the sidecar
}

var tapBackends = []string{"bbolt", "postgres"}

func startTapWorld(tb testing.TB, backend string) *tapWorld {
	tb.Helper()
	ctx := context.Background()
	opts := demoOptions{DataDir: tb.TempDir()}
	if backend == "postgres" {
		url, schema := pgtest.Schema(tb)
		opts.Mutate = func(c *sidecar.Config) {
			c.DatabaseURL, c.DatabaseSchema, c.EncryptionKey = url, schema, testEncryptionKey
		}
	}
	w, err := startDemoWorld(ctx, opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = w.Close() })
	u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "erin", Email: "erin@example.com", Password: "pw-erin-1"})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
		tb.Fatal(err)
	}
	up, _ := url.Parse(w.AK.URL())
	p, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Upstream: up, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		tb.Fatal(err)
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(pctx) }()
	tb.Cleanup(func() { cancel(); <-done })
	select {
	case <-p.Ready():
	case err := <-done:
		tb.Fatalf("bare proxy: %v", err)
	}
	return &tapWorld{backend: backend, w: w, bare: "http://" + p.Addr().String(), userPK: u.PK,
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}}}
}

// revoke ends a fresh session of the world's user as authentik's admin
// (DELETE /api/v3/core/authenticated_sessions/<uuid>/), through the
// sidecar when tapped, else through the bare proxy, and returns how long
// the request took.
func (x *tapWorld) revoke(tb testing.TB, tapped bool) time.Duration {
	s, _, err := x.w.AK.IssueSession(x.userPK)
	if err != nil {
		tb.Fatal(err)
	}
	base := x.bare
	if tapped {
		base = x.w.Front
		x.tapped++
	}
	req, _ := http.NewRequest(http.MethodDelete, base+"/api/v3/core/authenticated_sessions/"+s.UUID+"/", nil)
	req.Header.Set("Authorization", "Bearer "+x.w.AK.AdminToken())
	t0 := time.Now()
	resp, err := x.client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if resp.StatusCode != http.StatusNoContent {
		tb.Fatalf("%s: DELETE session (tapped %v): %d", x.backend, tapped, resp.StatusCode)
	}
	if _, ok := x.w.AK.Session(s.UUID); ok {
		tb.Fatalf("%s: the session outlived its DELETE (tapped %v)", x.backend, tapped)
	}
	return d
}

// settle waits until the receiver has accepted one session-revoked SET
// for each tapped revocation (and fails on more), so one segment's signing
// and delivery do not run into the next.
func (x *tapWorld) settle(tb testing.TB) {
	deadline := time.Now().Add(time.Minute)
	for {
		got := x.revocationsReceived()
		if got > x.tapped {
			tb.Fatalf("%s: %d session-revoked SETs for %d tapped revocations", x.backend, got, x.tapped)
		}
		if got == x.tapped {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %d session-revoked SETs received for %d tapped revocations", x.backend, got, x.tapped)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// revocationsReceived counts the session-revoked SETs the receiver accepted.
func (x *tapWorld) revocationsReceived() int {
	n := 0
	for _, s := range x.w.Receiver.Received() {
		if ev, ok := s.Claims["events"].(map[string]any); ok && ev[ssf.EventSessionRevoked] != nil {
			n++
		}
	}
	return n
}

func medianDur(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// tapRound is one round's medians on one backend.
type tapRound struct{ tapped, untapped time.Duration }

func (r tapRound) added() time.Duration { return r.tapped - r.untapped }

// tappedRounds sends, per round and backend, per revocations through the
// sidecar (tapped) and per through the bare proxy (untapped), alternating
// one by one, with the backends' order alternating between rounds, and
// returns each round's medians by backend.
func tappedRounds(tb testing.TB, rounds, per int) map[string][]tapRound {
	worlds := map[string]*tapWorld{}
	for _, be := range tapBackends {
		worlds[be] = startTapWorld(tb, be)
		for range 5 { // connections, caches, the first flow look-ups
			worlds[be].revoke(tb, true)
			worlds[be].revoke(tb, false)
		}
		worlds[be].settle(tb)
	}
	out := map[string][]tapRound{}
	for round := range rounds {
		order := slices.Clone(tapBackends)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, be := range order {
			x := worlds[be]
			var on, off []time.Duration
			for i := range per {
				if i%2 == 0 { // neither kind always goes first
					on = append(on, x.revoke(tb, true))
					off = append(off, x.revoke(tb, false))
				} else {
					off = append(off, x.revoke(tb, false))
					on = append(on, x.revoke(tb, true))
				}
			}
			x.settle(tb)
			out[be] = append(out[be], tapRound{tapped: medianDur(on), untapped: medianDur(off)})
		}
	}
	return out
}

// BenchmarkTappedRequest measures what the tap adds to a session
// revocation (journal intent before forwarding, outcome after, look-ups)
// on bbolt and on PostgreSQL, side by side in one run: in each round
// (TAPPED_BENCH_ROUNDS, default 5) and on each backend, the same DELETE of
// an authenticated session through the sidecar and through a bare proxy,
// alternating. added_ms is the median tapped latency less the median
// untapped one; ratio is PostgreSQL's added latency over bbolt's (the
// median of the rounds' ratios; goal ≤ 1.5).
func BenchmarkTappedRequest(b *testing.B) {
	rounds := 5
	if n, err := strconv.Atoi(os.Getenv("TAPPED_BENCH_ROUNDS")); err == nil && n > 0 {
		rounds = n
	}
	per := max(b.N/rounds, 20)
	b.ResetTimer()
	res := tappedRounds(b, rounds, per)
	b.StopTimer()
	var ratios []float64
	for i := range rounds {
		ratios = append(ratios, float64(res["postgres"][i].added())/float64(res["bbolt"][i].added()))
	}
	for _, be := range tapBackends {
		var on, off, add []time.Duration
		for _, r := range res[be] {
			on, off, add = append(on, r.tapped), append(off, r.untapped), append(add, r.added())
		}
		b.ReportMetric(durMS(medianDur(on)), "tapped_ms_"+be)
		b.ReportMetric(durMS(medianDur(off)), "untapped_ms_"+be)
		b.ReportMetric(durMS(medianDur(add)), "added_ms_"+be)
	}
	slices.Sort(ratios)
	b.ReportMetric(ratios[len(ratios)/2], "ratio_postgres/bbolt")
	b.ReportMetric(ratios[0], "ratio_min")
	b.ReportMetric(ratios[len(ratios)-1], "ratio_max")
}

func durMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// TestTappedRequestBenchmark runs the benchmark's path once at a tiny
// size: on both backends the tapped revocations each give a SET the
// receiver accepted (settle fails otherwise), each session is gone in
// authentik (revoke fails otherwise), and the medians are positive.
func TestTappedRequestBenchmark(t *testing.T) {
	if testing.Short() {
		t.Skip("two sidecars in -short mode")
	}
	res := tappedRounds(t, 1, 4)
	for _, be := range tapBackends {
		if len(res[be]) != 1 {
			t.Fatalf("%s: %d rounds", be, len(res[be]))
		}
		r := res[be][0]
		if r.tapped <= 0 || r.untapped <= 0 {
			t.Errorf("%s: tapped %v, untapped %v", be, r.tapped, r.untapped)
		}
	}
}
