package pgstore_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// backends are the two stores every comparison here runs on, in this order.
var backends = []string{"bbolt", "postgres"}

// benchStore opens a store on bbolt (a file in a temporary directory) or on
// PostgreSQL (a schema of its own), fsync on for both, with the notifier
// the sidecar uses on that backend (nil: the in-process one) and, on
// PostgreSQL, the database handle.
func benchStore(tb testing.TB, backend string) (*outbox.Store, outbox.Notifier, *pgstore.DB) {
	tb.Helper()
	var db kv.Backend
	var notifier outbox.Notifier
	var pg *pgstore.DB
	switch backend {
	case "bbolt":
		d, err := boltstore.Open(filepath.Join(tb.TempDir(), "bench.db"), boltstore.Options{})
		if err != nil {
			tb.Fatal(err)
		}
		db = d
	case "postgres":
		url, schema := pgtest.Schema(tb)
		d, err := pgstore.Open(context.Background(), pgstore.Options{URL: url, Schema: schema})
		if err != nil {
			tb.Fatal(err)
		}
		db, notifier, pg = d, d.Notifier(), d
	default:
		tb.Fatalf("unknown backend %q", backend)
	}
	st := outbox.NewStore(db, outbox.StoreOptions{})
	tb.Cleanup(func() { st.Close() })
	return st, notifier, pg
}

var (
	rsaOnce sync.Once
	rsaPEM  []byte
	rsaErr  error
)

// rs256Signer is the transmitter's own signer (ssf.Keys) with an RSA-2048
// key, the one every SET of the default profile is signed with.
func rs256Signer(tb testing.TB) *ssf.Keys {
	tb.Helper()
	rsaOnce.Do(func() {
		var k *rsa.PrivateKey
		if k, rsaErr = rsa.GenerateKey(rand.Reader, 2048); rsaErr == nil {
			rsaPEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
		}
	})
	if rsaErr != nil {
		tb.Fatal(rsaErr)
	}
	path := filepath.Join(tb.TempDir(), "signing.pem")
	if err := os.WriteFile(path, rsaPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	keys, err := ssf.NewKeys(context.Background(), ssf.KeyConfig{Files: []string{path}})
	if err != nil {
		tb.Fatal(err)
	}
	return keys
}

// setClaims is a session-revoked SET as the transmitter builds it for a
// receiver with complex subjects: every SET of these benchmarks, and of the
// signing ceiling, has this shape.
func setClaims(jti string) json.RawMessage {
	return json.RawMessage(`{"iss":"https://sso.example.com/ssf","aud":"https://receiver.example.com/","iat":1700000000,"jti":"` + jti +
		`","sub_id":{"format":"complex","user":{"format":"email","email":"alice@example.com"},"session":{"format":"opaque","id":"0b7c9a6e8f8e4c4e9d3b1f1b7c5a2e11"}},` +
		`"events":{"https://schemas.openid.net/secevent/caep/event-type/session-revoked":{"event_timestamp":1700000000,"initiating_entity":"user"}}}`)
}

// signCeiling signs n SETs of the pipeline's shape with parallel
// goroutines doing nothing else and returns SETs per second and the CPU
// time per SET.
func signCeiling(tb testing.TB, s outbox.Signer, n, parallel int) pipeRun {
	var next atomic.Int64
	var wg sync.WaitGroup
	claims := setClaims("ceiling-0000000001")
	start, cpu0 := time.Now(), cpuTime()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := s.Sign(context.Background(), claims); err != nil {
					tb.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return pipeRun{rate: float64(n) / time.Since(start).Seconds(), cpu: (cpuTime() - cpu0) / time.Duration(n)}
}

// rig is one whole pipeline: a store, an outbox running with the RS256
// signer, and one enabled push stream to a local receiver answering 202.
type rig struct {
	backend string
	ob      *outbox.Outbox
	pg      *pgstore.DB  // nil on bbolt
	got     atomic.Int64 // SETs the receiver answered 202
	next    atomic.Int64 // SETs numbered so far
	arrived func(jti string, at time.Time)
}

// newRig starts a pipeline on backend; arrived, if set, sees the jti of
// each SET the receiver accepts and when.
func newRig(tb testing.TB, backend string, signer outbox.Signer, arrived func(jti string, at time.Time)) *rig {
	tb.Helper()
	r := &rig{backend: backend, arrived: arrived}
	srv := httptest.NewServer(http.HandlerFunc(r.receive))
	tb.Cleanup(srv.Close)
	st, notifier, pg := benchStore(tb, backend)
	r.pg = pg
	ob, err := outbox.New(outbox.Config{Store: st, Signer: signer, Notifier: notifier,
		AllowPrivateEndpoints: true, SweepInterval: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = ob.Run(ctx); close(done) }()
	tb.Cleanup(func() { cancel(); <-done })
	if err := ob.SetStream(ctx, outbox.StreamConfig{ID: "s", Method: outbox.MethodPush, Status: outbox.StatusEnabled, EndpointURL: srv.URL}); err != nil {
		tb.Fatal(err)
	}
	r.ob = ob
	return r
}

func (r *rig) receive(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if r.arrived != nil {
		r.arrived(jtiOf(body), time.Now())
	}
	r.got.Add(1)
	w.WriteHeader(http.StatusAccepted)
}

// jtiOf reads the jti from a compact SET's payload ("" if it has none).
func jtiOf(compact []byte) string {
	parts := strings.Split(string(compact), ".")
	if len(parts) != 3 {
		return ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return ""
	}
	var c struct {
		JTI string `json:"jti"`
	}
	_ = json.Unmarshal(payload, &c)
	return c.JTI
}

// newSET numbers the rig's next SET.
func (r *rig) newSET() outbox.SET {
	jti := "p" + strconv.FormatInt(r.next.Add(1), 10)
	return outbox.SET{StreamID: "s", JTI: jti, Claims: setClaims(jti)}
}

// waitDelivered waits until the receiver has accepted n SETs in all.
func (r *rig) waitDelivered(tb testing.TB, n int64) {
	deadline := time.Now().Add(time.Minute + time.Duration(n)*10*time.Millisecond)
	for r.got.Load() < n {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: %d of %d SETs delivered", r.backend, r.got.Load(), n)
		}
		time.Sleep(time.Millisecond) // polling more often would take CPU from the pipeline
	}
}

// pipeRun is one measured stretch of a pipeline.
type pipeRun struct {
	rate float64 // SETs per second of wall time
	// cpu is this process's CPU time per SET (signing included); server
	// that of the PostgreSQL server processes serving its connections.
	cpu, server time.Duration
}

// throughput enqueues n SETs, one per Enqueue call, from producers
// goroutines, waits until the receiver has accepted all of them and
// returns SETs per second from the first enqueue to the last 202, with
// the CPU spent per SET.
func (r *rig) throughput(tb testing.TB, n, producers int) pipeRun {
	want := r.got.Load() + int64(n)
	var left atomic.Int64
	left.Store(int64(n))
	var wg sync.WaitGroup
	srv0 := serverCPU(r.pg)
	start, cpu0 := time.Now(), cpuTime()
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if err := r.ob.Enqueue(context.Background(), []outbox.SET{r.newSET()}, nil); err != nil {
					tb.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	r.waitDelivered(tb, want)
	run := pipeRun{rate: float64(n) / time.Since(start).Seconds(), cpu: (cpuTime() - cpu0) / time.Duration(n)}
	for pid, t := range serverCPU(r.pg) {
		run.server += t - srv0[pid]
	}
	run.server /= time.Duration(n)
	return run
}

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// serverCPU is the CPU time so far of each PostgreSQL backend process
// serving db's idle connections (all of them between measurements), by
// process id, from /proc (empty for bbolt, or where /proc is not there).
func serverCPU(db *pgstore.DB) map[uint32]time.Duration {
	out := map[uint32]time.Duration{}
	if db == nil {
		return out
	}
	// The last outcomes may still be committing after the last 202.
	for deadline := time.Now().Add(2 * time.Second); db.Pool().Stat().AcquiredConns() > 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	for _, c := range db.Pool().AcquireAllIdle(context.Background()) {
		pid := c.Conn().PgConn().PID()
		c.Release()
		if t, ok := procCPU(pid); ok {
			out[pid] = t
		}
	}
	return out
}

// procCPU reads a process's user and system time from /proc/<pid>/stat.
func procCPU(pid uint32) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/stat")
	if err != nil {
		return 0, false
	}
	// The fields after the command name, which is in parentheses: state is
	// the first, utime the 12th, stime the 13th, in clock ticks (100 a second).
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * 10 * time.Millisecond, true
}

// pipelineProducers is how many goroutines enqueue in the pipeline
// benchmark: a busy sidecar's concurrent tapped requests and event-API
// batches.
const pipelineProducers = 64

// pipelineResult is what pipelineRounds measured, by backend: each
// round's wall-time ratio (pipeline over ceiling), CPU ratio (the
// ceiling's CPU time per SET over the pipeline's, the PostgreSQL server's
// included) and pipeline run; and every ceiling run.
type pipelineResult struct {
	ratios, cpuRatios map[string][]float64
	runs              map[string][]pipeRun
	ceilings          []pipeRun
}

// pipelineRounds measures, interleaved, the RS256 signing ceiling and the
// whole pipeline on each backend, per SETs per round: ceiling, bbolt,
// ceiling, postgres, ceiling, … (the backends' order alternating between
// rounds). Each pipeline figure is divided by the mean of the ceilings
// measured just before and after it.
func pipelineRounds(tb testing.TB, rounds, per int) pipelineResult {
	signer := rs256Signer(tb)
	parallel := runtime.GOMAXPROCS(0) // the outbox's default Signers
	rigs := map[string]*rig{}
	for _, be := range backends {
		rigs[be] = newRig(tb, be, signer, nil)
		rigs[be].throughput(tb, min(per, 50), pipelineProducers) // connections, caches
	}
	res := pipelineResult{ratios: map[string][]float64{}, cpuRatios: map[string][]float64{}, runs: map[string][]pipeRun{}}
	ceil := signCeiling(tb, signer, per, parallel)
	res.ceilings = append(res.ceilings, ceil)
	for round := range rounds {
		order := slices.Clone(backends)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, be := range order {
			run := rigs[be].throughput(tb, per, pipelineProducers)
			after := signCeiling(tb, signer, per, parallel)
			res.ratios[be] = append(res.ratios[be], run.rate/((ceil.rate+after.rate)/2))
			res.cpuRatios[be] = append(res.cpuRatios[be], float64(ceil.cpu+after.cpu)/2/float64(run.cpu+run.server))
			res.runs[be] = append(res.runs[be], run)
			res.ceilings = append(res.ceilings, after)
			ceil = after
		}
	}
	return res
}

// BenchmarkPipeline compares the whole pipeline — durable enqueue by 64
// producers, RS256 signing at hand-out, push to a local receiver answering
// 202 — with the rate at which this machine RS256-signs SETs of the same
// shape with the same parallelism (GOMAXPROCS signers, nothing else), on
// PostgreSQL and on bbolt, side by side in one run of interleaved rounds
// (PIPELINE_BENCH_ROUNDS, default 5). ratio_postgres is the median of the
// rounds' pipeline/ceiling ratios on PostgreSQL (goal ≥ 0.8); cpu_ratio
// compares CPU time per SET instead (the PostgreSQL server's counted),
// which other load on the machine distorts less, and
// cpu_ratio_server_apart_postgres leaves the server's CPU out (as if it ran
// on a machine of its own). cpu_µs/SET is this process's CPU per SET,
// server_cpu_µs/SET the PostgreSQL backends'.
func BenchmarkPipeline(b *testing.B) {
	rounds := envInt("PIPELINE_BENCH_ROUNDS", 5)
	per := max(b.N/rounds, 200)
	b.ResetTimer()
	res := pipelineRounds(b, rounds, per)
	b.StopTimer()
	for _, be := range backends {
		b.ReportMetric(median(res.ratios[be]), "ratio_"+be)
		b.ReportMetric(slices.Min(res.ratios[be]), "ratio_min_"+be)
		b.ReportMetric(slices.Max(res.ratios[be]), "ratio_max_"+be)
		b.ReportMetric(median(res.cpuRatios[be]), "cpu_ratio_"+be)
		b.ReportMetric(medianOf(res.runs[be], func(r pipeRun) float64 { return r.rate }), "SETs/s_"+be)
		b.ReportMetric(medianOf(res.runs[be], func(r pipeRun) float64 { return us(r.cpu) }), "cpu_µs/SET_"+be)
		if be == "postgres" {
			b.ReportMetric(medianOf(res.runs[be], func(r pipeRun) float64 { return us(r.server) }), "server_cpu_µs/SET_"+be)
			// With the server on a machine of its own, its CPU would not
			// come out of the signers' cores.
			c := medianOf(res.ceilings, func(r pipeRun) float64 { return us(r.cpu) })
			b.ReportMetric(c/medianOf(res.runs[be], func(r pipeRun) float64 { return us(r.cpu) }), "cpu_ratio_server_apart_"+be)
		}
	}
	b.ReportMetric(medianOf(res.ceilings, func(r pipeRun) float64 { return r.rate }), "ceiling_SETs/s")
	b.ReportMetric(medianOf(res.ceilings, func(r pipeRun) float64 { return us(r.cpu) }), "ceiling_cpu_µs/SET")
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

func medianOf[T any](v []T, f func(T) float64) float64 {
	out := make([]float64, len(v))
	for i, x := range v {
		out[i] = f(x)
	}
	return median(out)
}

// instantSigner stands in for RS256 where only the rest of the pipeline
// is measured.
type instantSigner struct{}

func (instantSigner) Sign(_ context.Context, claims []byte) (string, error) {
	return "eyJhbGciOiJSUzI1NiJ9." + base64.RawURLEncoding.EncodeToString(claims) + ".c2ln", nil
}

// BenchmarkPipelineOverhead runs the pipeline of BenchmarkPipeline on each
// backend with a signer that costs next to nothing, and reports what the
// rest of it (store, HTTP, the local receiver, garbage collection) costs
// per SET: this process's CPU and, on PostgreSQL, the server's.
func BenchmarkPipelineOverhead(b *testing.B) {
	for _, be := range backends {
		b.Run(be, func(b *testing.B) {
			r := newRig(b, be, instantSigner{}, nil)
			r.throughput(b, 100, pipelineProducers)
			b.ResetTimer()
			run := r.throughput(b, b.N, pipelineProducers)
			b.StopTimer()
			b.ReportMetric(run.rate, "SETs/s")
			b.ReportMetric(us(run.cpu), "cpu_µs/SET")
			b.ReportMetric(us(run.server), "server_cpu_µs/SET")
		})
	}
}

// latencySample is one SET's times, from its slot in the schedule.
type latencySample struct {
	jti       string
	enqueued  time.Duration // Enqueue returned
	delivered time.Duration // the receiver answered 202
}

// openLoop offers SETs to r at rate per second on a fixed schedule for d:
// the SET of slot i is enqueued at start + i/rate by a goroutine of its
// own whatever happened to the earlier ones, and its latency is measured
// from its slot, so a stall delays every SET that was due during it
// (no coordinated omission). It returns each SET's latencies, once all have
// been delivered.
func openLoop(tb testing.TB, r *rig, track *jtiClock, rate float64, d time.Duration) []latencySample {
	n := int(rate * d.Seconds())
	want := r.got.Load() + int64(n)
	samples := make([]latencySample, n)
	interval := time.Duration(float64(time.Second) / rate)
	var wg sync.WaitGroup
	start := time.Now().Add(interval)
	for i := range n {
		slot := start.Add(time.Duration(i) * interval)
		time.Sleep(time.Until(slot))
		s := r.newSET()
		samples[i].jti = s.JTI
		track.expect(s.JTI, slot)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := r.ob.Enqueue(context.Background(), []outbox.SET{s}, nil); err != nil {
				tb.Error(err)
			}
			samples[i].enqueued = time.Since(slot)
		}()
	}
	wg.Wait()
	r.waitDelivered(tb, want)
	for i := range samples {
		samples[i].delivered = track.latency(samples[i].jti)
	}
	return samples
}

// jtiClock keeps each SET's slot and its arrival at the receiver.
type jtiClock struct {
	mu   sync.Mutex
	slot map[string]time.Time
	lat  map[string]time.Duration
}

func newJTIClock() *jtiClock {
	return &jtiClock{slot: map[string]time.Time{}, lat: map[string]time.Duration{}}
}

func (c *jtiClock) expect(jti string, slot time.Time) {
	c.mu.Lock()
	c.slot[jti] = slot
	c.mu.Unlock()
}

func (c *jtiClock) arrived(jti string, at time.Time) {
	c.mu.Lock()
	if s, ok := c.slot[jti]; ok {
		c.lat[jti] = at.Sub(s)
	}
	c.mu.Unlock()
}

// latency is jti's time from slot to 202 (-1 if it never arrived).
func (c *jtiClock) latency(jti string) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.lat[jti]; ok {
		return l
	}
	return -1
}

// quantiles are p50, p90, p99 and the maximum of ds (sorted in place).
func quantiles(ds []time.Duration) (p50, p90, p99, maxD time.Duration) {
	slices.Sort(ds)
	q := func(f float64) time.Duration { return ds[int(f*float64(len(ds)-1))] }
	return q(0.5), q(0.9), q(0.99), ds[len(ds)-1]
}

// latencyResult is what latencyRounds measured, by backend: every SET's
// enqueue → 202 latency and enqueue latency, and each segment's p99; and
// the signing ceiling before each segment (when it is not well above the
// offered rate, the machine was too busy for the figures to mean much).
type latencyResult struct {
	delivered, enqueued, segP99 map[string][]time.Duration
	ceilings                    []float64
}

// latencyRounds offers rate SETs/s to a pipeline on each backend, in
// segments of d alternating between the backends (rounds of each).
func latencyRounds(tb testing.TB, rate float64, d time.Duration, rounds int) latencyResult {
	signer := rs256Signer(tb)
	rigs, clocks := map[string]*rig{}, map[string]*jtiClock{}
	for _, be := range backends {
		c := newJTIClock()
		clocks[be], rigs[be] = c, newRig(tb, be, signer, c.arrived)
		rigs[be].throughput(tb, 50, 8) // warm up connections and caches
	}
	res := latencyResult{delivered: map[string][]time.Duration{}, enqueued: map[string][]time.Duration{}, segP99: map[string][]time.Duration{}}
	for round := range rounds {
		order := slices.Clone(backends)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, be := range order {
			res.ceilings = append(res.ceilings, signCeiling(tb, signer, 100, runtime.GOMAXPROCS(0)).rate)
			var seg []time.Duration
			for _, s := range openLoop(tb, rigs[be], clocks[be], rate, d) {
				if s.delivered < 0 {
					tb.Fatalf("%s: a SET the receiver accepted was not matched to its slot", be)
				}
				seg = append(seg, s.delivered)
				res.enqueued[be] = append(res.enqueued[be], s.enqueued)
			}
			res.delivered[be] = append(res.delivered[be], seg...)
			_, _, p99, _ := quantiles(seg)
			res.segP99[be] = append(res.segP99[be], p99)
		}
	}
	return res
}

// BenchmarkLatency200 offers SETs at a fixed rate (LATENCY_BENCH_RATE,
// default 200 per second) on an open-loop schedule to the whole pipeline
// on bbolt and on PostgreSQL, in interleaved segments (LATENCY_BENCH_ROUNDS
// of LATENCY_BENCH_SEGMENT each per backend, default 4 × 6 s: 24 s and
// 4,800 SETs a backend), and reports each backend's latency from the SET's
// slot to the receiver's 202: p50, p90, p99 (goal on PostgreSQL ≤ 25 ms)
// and max over all its SETs, the lowest and highest p99 of its segments,
// and the durable enqueue's own p99; and the median RS256 signing ceiling
// measured before the segments. Run with -benchtime 1x.
func BenchmarkLatency200(b *testing.B) {
	rate := float64(envInt("LATENCY_BENCH_RATE", 200))
	seg := 6 * time.Second
	if v, err := time.ParseDuration(os.Getenv("LATENCY_BENCH_SEGMENT")); err == nil && v > 0 {
		seg = v
	}
	rounds := envInt("LATENCY_BENCH_ROUNDS", 4)
	for range b.N {
		res := latencyRounds(b, rate, seg, rounds)
		var p99 [2]float64
		for i, be := range backends {
			p50, p90, p, mx := quantiles(res.delivered[be])
			_, _, ep99, _ := quantiles(res.enqueued[be])
			b.ReportMetric(ms(p50), "p50_ms_"+be)
			b.ReportMetric(ms(p90), "p90_ms_"+be)
			b.ReportMetric(ms(p), "p99_ms_"+be)
			b.ReportMetric(ms(mx), "max_ms_"+be)
			b.ReportMetric(ms(slices.Min(res.segP99[be])), "p99_seg_min_ms_"+be)
			b.ReportMetric(ms(slices.Max(res.segP99[be])), "p99_seg_max_ms_"+be)
			b.ReportMetric(ms(ep99), "enqueue_p99_ms_"+be)
			p99[i] = ms(p)
		}
		b.ReportMetric(p99[1]/p99[0], "p99_ratio_postgres/bbolt")
		b.ReportMetric(median(res.ceilings), "ceiling_SETs/s")
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestPipelineBenchmarks runs each path of the benchmarks above once at a
// tiny size, so they cannot rot: every SET reaches the receiver on both
// backends, and the figures are positive and finite.
func TestPipelineBenchmarks(t *testing.T) {
	if testing.Short() {
		t.Skip("RS256 load in -short mode")
	}
	t.Run("throughput", func(t *testing.T) {
		res := pipelineRounds(t, 1, 40)
		for _, be := range backends {
			if len(res.ratios[be]) != 1 || len(res.runs[be]) != 1 || !(res.ratios[be][0] > 0) || !(res.cpuRatios[be][0] > 0) ||
				!(res.runs[be][0].rate > 0) || res.runs[be][0].cpu <= 0 {
				t.Errorf("%s: ratios %v, cpu ratios %v, runs %+v", be, res.ratios[be], res.cpuRatios[be], res.runs[be])
			}
		}
		if len(res.ceilings) != 3 || slices.ContainsFunc(res.ceilings, func(c pipeRun) bool { return !(c.rate > 0) || c.cpu <= 0 }) {
			t.Errorf("ceilings %+v", res.ceilings)
		}
	})
	t.Run("latency", func(t *testing.T) {
		res := latencyRounds(t, 100, 300*time.Millisecond, 1)
		for _, be := range backends {
			if len(res.delivered[be]) != 30 || len(res.enqueued[be]) != 30 || len(res.segP99[be]) != 1 {
				t.Fatalf("%s: %d delivered, %d enqueued samples, want 30; %d segments", be, len(res.delivered[be]), len(res.enqueued[be]), len(res.segP99[be]))
			}
			for i, d := range res.delivered[be] {
				if d <= 0 {
					t.Errorf("%s: sample %d latency %v", be, i, d)
				}
			}
			p50, _, p99, mx := quantiles(res.delivered[be])
			if p50 <= 0 || p99 < p50 || mx < p99 || res.segP99[be][0] != p99 {
				t.Errorf("%s: p50 %v p99 %v max %v, segment p99 %v", be, p50, p99, mx, res.segP99[be][0])
			}
		}
		if len(res.ceilings) != 2 || !(res.ceilings[0] > 0) || !(res.ceilings[1] > 0) {
			t.Errorf("ceilings %v", res.ceilings)
		}
	})
	t.Run("parsers", func(t *testing.T) {
		if cpu, ok := procCPU(uint32(os.Getpid())); !ok || cpu <= 0 {
			t.Errorf("procCPU(self) = %v, %v", cpu, ok)
		}
		if _, ok := procCPU(0); ok {
			t.Error("procCPU(0) read something")
		}
		if got := jtiOf([]byte("e30." + base64.RawURLEncoding.EncodeToString([]byte(`{"jti":"p7"}`)) + ".sig")); got != "p7" {
			t.Errorf("jtiOf = %q", got)
		}
		for _, bad := range []string{"", "a.b", "a.!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte("[")) + ".c"} {
			if got := jtiOf([]byte(bad)); got != "" {
				t.Errorf("jtiOf(%q) = %q", bad, got)
			}
		}
	})
}
