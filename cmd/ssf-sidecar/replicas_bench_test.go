//go:build linux

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// benchStreams is how many push streams the replica benchmark delivers:
// a push stream is delivered by one replica at a time, so replicas can
// only share the work of several streams.
const benchStreams = 12

// benchSignals is how many session revocations one round publishes; each
// gives a SET on every stream.
const benchSignals = 150

// benchPublishers publish at once, so the store's group commit batches
// their enqueues as a busy tap's would.
const benchPublishers = 32

// BenchmarkReplicasDelivery measures push delivery throughput with 1, 2
// and 3 replica processes on one PostgreSQL schema, side by side in one
// run: stream i is created on replica i mod n, which delivers its
// verification and so holds its dispatch lease, spreading the streams
// evenly; then a process of its own enqueues the revocations
// straight into the shared outbox (as a replica's tap would), and the
// round ends when the receiver has every SET. It reports SETs/s from the
// first publish to the last delivery, the rate over the middle 80 % of
// the deliveries, and the ratio to one replica.
//
//	go test -run '^$' -bench BenchmarkReplicasDelivery -benchtime 2x ./cmd/ssf-sidecar/
func BenchmarkReplicasDelivery(b *testing.B) {
	var one float64
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			rate := benchReplicaDelivery(b, n)
			if n == 1 {
				one = rate
			} else if one > 0 {
				b.ReportMetric(rate/one, "x_one_replica")
			}
		})
	}
}

// replicaCPU is the CPU time the running replica processes have used.
func replicaCPU(s *replicaSet) time.Duration {
	var d time.Duration
	for _, r := range s.rigs {
		if r.child != nil {
			d += procCPU(fmt.Sprintf("/proc/%d/stat", r.child.cmd.Process.Pid))
		}
	}
	return d
}

// machineBusy is the CPU time all processes of the machine have used
// (the first line of /proc/stat less idle and iowait).
func machineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	var ticks int64
	for i, f := range strings.Fields(line)[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, _ := strconv.ParseInt(f, 10, 64)
		ticks += v
	}
	return time.Duration(ticks) * (time.Second / 100)
}

// procCPU reads utime+stime (fields 14 and 15) of a /proc/<pid>/stat
// file, counted in USER_HZ (100 a second).
func procCPU(path string) time.Duration {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	s := string(data)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]) // f[0] is field 3
	if len(f) < 13 {
		return 0
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(u+k) * (time.Second / 100)
}

func benchReplicaDelivery(b *testing.B, n int) float64 {
	// Leases outlive the set-up, so each stream stays with its creator.
	s := startReplicaSet(b, replicaOptions{replicas: n, env: []string{"SSF_LEASE_TTL=60s", "SSF_LOG_LEVEL=error"}})
	s.rx.mu.Lock()
	s.rx.hold = 0
	s.rx.mu.Unlock()
	paths := make([]string, benchStreams)
	var last string
	for i := range paths {
		paths[i] = fmt.Sprintf("bench%d", i)
		last, _ = s.createStream(b, s.rigs[i%n].front, "bench", paths[i], evSessionRevoked)
	}
	s.waitKnown(b, "bench", last) // the streams sync as one list
	for _, p := range paths {
		if !s.rx.waitUntil(p, 30*time.Second, func(got []rxDelivery) bool { return len(got) >= 1 }) {
			b.Fatalf("stream %s: no verification SET", p)
		}
	}

	// The publisher: the sidecar's own transmitter over the same schema,
	// built but not run (it delivers nothing itself).
	env := map[string]string{}
	for _, kv := range s.rigs[0].env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	cfg, _, err := resolve(nil, func(k string) string { return env[k] })
	if err != nil {
		b.Fatal(err)
	}
	cfg.DataDir = b.TempDir()
	receivers, err := ssf.LoadReceivers(cfg.Receivers)
	if err != nil {
		b.Fatal(err)
	}
	pub, err := sidecar.Build(context.Background(), cfg.Config, receivers, slog.New(slog.DiscardHandler), sidecarOptions()...)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close(context.Background())

	revoked := func() (int, []time.Time) {
		var at []time.Time
		for _, p := range paths {
			got, _ := s.rx.received(p)
			for _, d := range got {
				if d.Event == "session-revoked" {
					at = append(at, d.At)
				}
			}
		}
		return len(at), at
	}
	var total, mid, publish time.Duration
	var midSETs int
	cpu0, busy0, all0 := replicaCPU(s), machineBusy(), time.Now()
	b.ResetTimer()
	for round := 0; round < b.N; round++ {
		start := time.Now()
		var wg sync.WaitGroup
		errs := make(chan error, benchSignals)
		for w := 0; w < benchPublishers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < benchSignals; i += benchPublishers {
					u := tap.User{PK: int64(1000 + i), UID: fmt.Sprintf("uid-%d", i), Username: fmt.Sprintf("u%d", i), Email: fmt.Sprintf("u%d@example.com", i)}
					sig := tap.Signal{ID: fmt.Sprintf("bench-%d-%d", round, i), Kind: tap.KindSessionRevoked, Source: tap.SourceTraffic,
						Time: time.Now(), Subject: u, SessionUUID: fmt.Sprintf("session-%d-%d", round, i)}
					if err := pub.Transmitter().Publish(context.Background(), sig); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		publish += time.Since(start)
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		want := (round + 1) * benchSignals * benchStreams
		if !eventuallyEvery(5*time.Minute, 5*time.Millisecond, func() bool { got, _ := revoked(); return got >= want }) {
			got, _ := revoked()
			b.Fatalf("%d of %d SETs delivered", got, want)
		}
		total += time.Since(start)
		_, at := revoked()
		at = at[want-benchSignals*benchStreams:]
		slices.SortFunc(at, func(x, y time.Time) int { return x.Compare(y) })
		lo, hi := len(at)/10, len(at)*9/10
		mid += at[hi].Sub(at[lo])
		midSETs += hi - lo
	}
	b.StopTimer()
	cpu, busy, wall := replicaCPU(s)-cpu0, machineBusy()-busy0, time.Since(all0)
	var spread []string
	for i, r := range s.rigs {
		spread = append(spread, fmt.Sprintf("replica %d: %.0f pushes, %.0f fenced", i,
			r.metric("ssf_sidecar_deliveries_total"), r.metric("ssf_sidecar_outbox_fenced_total")))
	}
	b.Logf("%d replicas: %d SETs a round; enqueue took %v of %v; %s", n, benchSignals*benchStreams,
		(publish / time.Duration(b.N)).Round(time.Millisecond), (total / time.Duration(b.N)).Round(time.Millisecond), strings.Join(spread, "; "))
	sets := float64(b.N * benchSignals * benchStreams)
	b.Logf("%d replicas: the replica processes used %.2f CPU-s per 1000 SETs; the machine's CPUs were %.0f %% busy (all users)",
		n, cpu.Seconds()/sets*1000, 100*busy.Seconds()/(wall.Seconds()*float64(runtime.NumCPU())))
	rate := float64(b.N*benchSignals*benchStreams) / total.Seconds()
	b.ReportMetric(rate, "SETs/s")
	b.ReportMetric(float64(midSETs)/mid.Seconds(), "SETs/s_mid80")
	if n := s.rx.rejected(); n != 0 {
		b.Fatalf("the receiver rejected %d SETs", n)
	}
	return rate
}
