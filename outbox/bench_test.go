package outbox

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// benchOutbox opens a store (fsync on unless noSync) and an outbox that is
// not running yet.
func benchOutbox(b *testing.B, dir string, noSync bool, mod func(*Config)) (*Store, *Outbox) {
	b.Helper()
	st, err := Open(filepath.Join(dir, "bench.db"), StoreOptions{NoSync: noSync})
	if err != nil {
		b.Fatal(err)
	}
	cfg := Config{Store: st, Signer: newSigner(b), AllowPrivateEndpoints: true, SweepInterval: time.Hour}
	if mod != nil {
		mod(&cfg)
	}
	ob, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	return st, ob
}

func runOutbox(b *testing.B, ob *Outbox) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = ob.Run(ctx); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
}

// produce enqueues SETs for stream s, one per call, from producers
// goroutines, numbering them after next up to upto (jti prefix+number),
// and returns once all are durable.
func produce(b *testing.B, ob *Outbox, s string, producers int, next *atomic.Int64, upto int64, prefix string) {
	set := makeSET(s, "x")
	var wg sync.WaitGroup
	for range producers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Load()
				if i >= upto {
					return
				}
				if !next.CompareAndSwap(i, i+1) {
					continue
				}
				one := set
				one.JTI, one.Key = prefix+strconv.FormatInt(i+1, 10), ""
				if err := ob.Enqueue(context.Background(), []SET{one}, nil); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkEnqueue measures durable (fsync) enqueue throughput of one SET
// per call with 1, 64 and 256 concurrent producers.
func BenchmarkEnqueue(b *testing.B) {
	for _, producers := range []int{1, 64, 256} {
		b.Run("producers="+strconv.Itoa(producers), func(b *testing.B) {
			_, ob := benchOutbox(b, b.TempDir(), false, nil)
			if err := ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPoll, Status: StatusPaused}); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			b.ResetTimer()
			start := time.Now()
			produce(b, ob, "s", producers, &next, int64(b.N), "j")
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "SETs/s")
		})
	}
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// signCeiling signs n SETs on all cores and returns SETs/s.
func signCeiling(b *testing.B, n int) float64 {
	rate, _ := signCeilingCPU(b, n)
	return rate
}

// signCeilingCPU signs n SETs on all cores and returns SETs per second of
// wall time and per second of CPU time.
func signCeilingCPU(b *testing.B, n int) (wall, cpu float64) {
	s := newSigner(b)
	claims := makeSET("s", "ceiling").Claims
	var next atomic.Int64
	var wg sync.WaitGroup
	start, cpu0 := time.Now(), cpuTime()
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if _, err := s.Sign(context.Background(), claims); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return float64(n) / time.Since(start).Seconds(), float64(n) / (cpuTime() - cpu0).Seconds()
}

// countingReceiver answers 202 and counts; onJTI sees each arrival.
func countingReceiver(b testing.TB, onJTI func(jti string)) (*httptest.Server, *atomic.Int64) {
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if onJTI != nil {
			onJTI(jtiOfCompact(string(body)))
		}
		n.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	b.Cleanup(srv.Close)
	return srv, &n
}

// BenchmarkPipeline measures, side by side in one run, the RS256 signing
// ceiling (all cores signing, nothing else) and the whole pipeline for the
// same number of SETs: durable enqueue by 64 producers, signing at
// hand-out, push to a local receiver answering 202. The machine is shared
// and noisy, so the run is split into interleaved rounds — ceiling,
// pipeline, ceiling, … — and each round's pipeline rate is compared with
// the mean of the ceilings measured just before and after it; the median
// of those ratios is reported (ratio), with the same by CPU time
// (cpu_ratio), which a busy machine distorts far less, and the spread;
// writes/txn is how many writes (enqueues and delivery records) the store's
// transactions carried on average.
func BenchmarkPipeline(b *testing.B) {
	const rounds = 5
	per := max(b.N/rounds, 200)
	srv, got := countingReceiver(b, nil)
	st, ob := benchOutbox(b, b.TempDir(), false, nil)
	if err := ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: srv.URL}); err != nil {
		b.Fatal(err)
	}
	runOutbox(b, ob)
	var next atomic.Int64
	stats0 := st.stats()
	pipeline := func(upto int64) (wall, cpu float64) {
		start, cpu0 := time.Now(), cpuTime()
		produce(b, ob, "s", 64, &next, upto, "p")
		for got.Load() < upto {
			time.Sleep(time.Millisecond)
		}
		n := float64(per)
		return n / time.Since(start).Seconds(), n / (cpuTime() - cpu0).Seconds()
	}
	b.ResetTimer()
	var ratios, cpuRatios, ceilings, rates []float64
	cw, cc := signCeilingCPU(b, per)
	for r := 1; r <= rounds; r++ {
		pw, pc := pipeline(int64(r * per))
		cw2, cc2 := signCeilingCPU(b, per)
		ceil, ceilCPU := (cw+cw2)/2, (cc+cc2)/2
		ratios, cpuRatios = append(ratios, pw/ceil), append(cpuRatios, pc/ceilCPU)
		ceilings, rates = append(ceilings, ceil), append(rates, pw)
		cw, cc = cw2, cc2
	}
	b.StopTimer()
	stats := st.stats()
	b.ReportMetric(float64(stats.Writes-stats0.Writes)/float64(stats.Transactions-stats0.Transactions), "writes/txn")
	b.ReportMetric(median(ratios), "ratio")
	b.ReportMetric(slices.Min(ratios), "ratio_min")
	b.ReportMetric(slices.Max(ratios), "ratio_max")
	b.ReportMetric(median(cpuRatios), "cpu_ratio")
	b.ReportMetric(median(ceilings), "ceiling_SETs/s")
	b.ReportMetric(median(rates), "pipeline_SETs/s")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkLatency200 enqueues at 200 SETs/s and reports the latency from
// the start of Enqueue to the receiver's 202, with signing on all cores
// (the default) and on one core (leaving the other to the writer and HTTP).
func BenchmarkLatency200(b *testing.B) {
	for _, signers := range []int{runtime.GOMAXPROCS(0), 1} {
		b.Run("signers="+strconv.Itoa(signers), func(b *testing.B) { latency200(b, signers) })
	}
}

func latency200(b *testing.B, signers int) {
	n := max(b.N, 400)
	var mu sync.Mutex
	started := make(map[string]time.Time, n)
	lat := make([]time.Duration, 0, n)
	srv, got := countingReceiver(b, func(jti string) {
		now := time.Now()
		mu.Lock()
		lat = append(lat, now.Sub(started[jti]))
		mu.Unlock()
	})
	_, ob := benchOutbox(b, b.TempDir(), false, func(c *Config) { c.Signers = signers })
	if err := ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: srv.URL}); err != nil {
		b.Fatal(err)
	}
	runOutbox(b, ob)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	enq := make([]time.Duration, 0, n)
	b.ResetTimer()
	for i := range n {
		<-tick.C
		s := makeSET("s", "l"+strconv.Itoa(i))
		t0 := time.Now()
		mu.Lock()
		started[s.JTI] = t0
		mu.Unlock()
		go func() {
			if err := ob.Enqueue(context.Background(), []SET{s}, nil); err != nil {
				b.Error(err)
			}
			mu.Lock()
			enq = append(enq, time.Since(t0))
			mu.Unlock()
		}()
	}
	for got.Load() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	mu.Lock()
	slices.Sort(lat)
	p := func(q float64) float64 { return float64(lat[int(q*float64(len(lat)-1))].Microseconds()) / 1000 }
	b.ReportMetric(p(0.5), "p50_ms")
	b.ReportMetric(p(0.99), "p99_ms")
	b.ReportMetric(p(1), "max_ms")
	// The durable enqueue alone (fsync), for telling disk stalls apart.
	slices.Sort(enq)
	b.ReportMetric(float64(enq[int(0.99*float64(len(enq)-1))].Microseconds())/1000, "enqueue_p99_ms")
	mu.Unlock()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// fillBacklog enqueues n SETs on a paused stream, 1000 per transaction.
func fillBacklog(b *testing.B, ob *Outbox, stream string, n int) {
	b.Helper()
	batch := make([]SET, 0, 1000)
	for i := 0; i < n; i++ {
		batch = append(batch, makeSET(stream, fmt.Sprintf("b%08d", i)))
		if len(batch) == cap(batch) || i == n-1 {
			if err := ob.Enqueue(context.Background(), batch, nil); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// BenchmarkDrain measures how fast a backlog (OUTBOX_BENCH_BACKLOG, default
// 100000) drains to a fast receiver once its stream is enabled.
func BenchmarkDrain(b *testing.B) {
	size := envInt("OUTBOX_BENCH_BACKLOG", 100000)
	for range b.N {
		srv, got := countingReceiver(b, nil)
		_, ob := benchOutbox(b, b.TempDir(), false, nil)
		cfg := StreamConfig{ID: "s", Method: MethodPush, Status: StatusPaused, EndpointURL: srv.URL}
		if err := ob.SetStream(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
		fillBacklog(b, ob, "s", size)
		before := signCeiling(b, 2000)
		runOutbox(b, ob)
		start := time.Now()
		cfg.Status = StatusEnabled
		if err := ob.SetStream(context.Background(), cfg); err != nil {
			b.Fatal(err)
		}
		for got.Load() < int64(size) {
			time.Sleep(5 * time.Millisecond)
		}
		rate := float64(size) / time.Since(start).Seconds()
		ceiling := (before + signCeiling(b, 2000)) / 2
		b.ReportMetric(rate, "SETs/s")
		b.ReportMetric(ceiling, "ceiling_SETs/s")
		b.ReportMetric(rate/ceiling, "ratio")
	}
}

// anonRSS reads the process's anonymous resident memory (the bbolt file
// mapping is file-backed and not counted).
func anonRSS() (uint64, error) {
	f, err := os.Open("/proc/self/smaps_rollup")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "Anonymous:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no Anonymous line")
}

// BenchmarkBacklogMemory fills a backlog on disk (OUTBOX_BENCH_MEM_BACKLOG,
// default 100000; set 1000000 for the 1M figure), reopens the store, runs
// the outbox with the backlog held (paused push stream) and a poll stream
// answering polls, and reports Go heap and anonymous RSS.
func BenchmarkBacklogMemory(b *testing.B) {
	size := envInt("OUTBOX_BENCH_MEM_BACKLOG", 100000)
	dir := b.TempDir()
	for range b.N {
		st, ob := benchOutbox(b, dir, true, nil)
		ctx := context.Background()
		if err := ob.SetStream(ctx, StreamConfig{ID: "push", Method: MethodPush, Status: StatusPaused, EndpointURL: "http://127.0.0.1:1/"}); err != nil {
			b.Fatal(err)
		}
		if err := ob.SetStream(ctx, StreamConfig{ID: "poll", Method: MethodPoll, Status: StatusEnabled}); err != nil {
			b.Fatal(err)
		}
		fillBacklog(b, ob, "push", size)
		fillBacklog(b, ob, "poll", 10000)
		st.Close()

		runtime.GC()
		debug.FreeOSMemory()
		st, ob = benchOutbox(b, dir, true, nil)
		runOutbox(b, ob)
		for range 20 {
			if _, err := ob.Poll(ctx, "poll", PollRequest{MaxEvents: intp(50), ReturnImmediately: true}); err != nil {
				b.Fatal(err)
			}
		}
		stats, err := ob.AllStats(ctx)
		if err != nil || len(stats) != 2 {
			b.Fatal(stats, err)
		}
		if _, err := ob.sweep(ctx); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		rss, err := anonRSS()
		if err != nil {
			b.Fatal(err)
		}
		fi, _ := os.Stat(filepath.Join(dir, "bench.db"))
		b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap_MiB")
		b.ReportMetric(float64(rss)/(1<<20), "anonRSS_MiB")
		b.ReportMetric(float64(fi.Size())/(1<<20), "file_MiB")
		b.ReportMetric(float64(stats[1].Backlog), "backlog")
		st.Close()
	}
}

// instantSigner stands in for the signer where only the rest of the
// pipeline is measured.
type instantSigner struct{}

func (instantSigner) Sign(_ context.Context, claims []byte) (string, error) {
	return setHeader + "." + base64.RawURLEncoding.EncodeToString(claims) + ".c2ln", nil
}

// BenchmarkPipelineOverhead runs the pipeline of BenchmarkPipeline with a
// signer that costs next to nothing, and reports the CPU the rest of it
// (store, HTTP, the local receiver, garbage collection) spends per SET.
func BenchmarkPipelineOverhead(b *testing.B) {
	srv, got := countingReceiver(b, nil)
	_, ob := benchOutbox(b, b.TempDir(), false, func(c *Config) { c.Signer = instantSigner{} })
	if err := ob.SetStream(context.Background(), StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: srv.URL}); err != nil {
		b.Fatal(err)
	}
	runOutbox(b, ob)
	var next atomic.Int64
	b.ResetTimer()
	start, cpu0 := time.Now(), cpuTime()
	produce(b, ob, "s", 64, &next, int64(b.N), "o")
	for got.Load() < int64(b.N) {
		time.Sleep(100 * time.Microsecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "SETs/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N)/1e3, "cpu_µs/SET")
}
