// Package bench measures the proxy's overhead side by side: the same load
// against a small fast upstream directly, through ssf-sidecar's proxy, and
// through nginx when nginx is installed. It is a command-line benchmark, not
// a test: the figures depend on the machine.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/proxy"
)

// Options tunes a benchmark run. Zero values take the defaults.
type Options struct {
	// Duration of each measured run (default 3 s), after a Warmup (default 1 s).
	Duration, Warmup time.Duration
	// Rounds is how many times each target is measured, interleaved, to
	// damp the noise of a shared machine (default 3; medians are shown).
	Rounds int
	// Connections for the saturating load (default 128).
	Connections int
	// BodySize is the upstream's response body size in bytes (default 512).
	BodySize int
	// Generator is "wrk" or "go"; empty picks wrk when it is on PATH, else go.
	Generator string
	// NginxPath is the nginx binary; empty looks up "nginx" on PATH.
	NginxPath string
	// CompareTransport adds a "sidecar-transport" row: the proxy with its
	// fast path off (every request through net/http's Transport).
	CompareTransport bool
	// ChildCommand, when set, is the command (argv) that runs Child with the
	// arguments appended; the upstream and each sidecar then run in their
	// own processes, which is fairer against nginx's own processes. Empty:
	// everything runs in this process.
	ChildCommand []string
	// Rows limits the targets measured ("direct", "sidecar", "nginx"); empty means all.
	Rows []string
}

func (o Options) withDefaults() Options {
	if o.Duration <= 0 {
		o.Duration = 3 * time.Second
	}
	if o.Warmup < 0 {
		o.Warmup = 0
	} else if o.Warmup == 0 {
		o.Warmup = time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 3
	}
	if o.Connections <= 0 {
		o.Connections = 128
	}
	if o.BodySize <= 0 {
		o.BodySize = 512
	}
	return o
}

// Result is one measured row.
type Result struct {
	Target      string
	Connections int
	RPS         float64
	P50, P99    time.Duration
	Errors      int64
}

// target is something the load can be pointed at.
type target struct {
	name string
	url  string
}

// Run starts the upstream, the sidecar proxy and (when available) nginx,
// drives a saturating load and then a single-connection load at each, and
// prints requests/s, p50, p99 and the ratios to w.
func Run(ctx context.Context, opts Options, w io.Writer) error {
	opts = opts.withDefaults()
	gen, err := pickGenerator(opts.Generator)
	if err != nil {
		return err
	}

	var upURL, upAddr, sidecarURL, transportURL string
	if len(opts.ChildCommand) > 0 {
		up, err := startChild(ctx, opts.ChildCommand, "upstream", strconv.Itoa(opts.BodySize))
		if err != nil {
			return fmt.Errorf("bench: upstream: %w", err)
		}
		defer up.stop()
		upURL = up.url
		sc, err := startChild(ctx, opts.ChildCommand, "sidecar", upURL)
		if err != nil {
			return fmt.Errorf("bench: sidecar: %w", err)
		}
		defer sc.stop()
		sidecarURL = sc.url
		if opts.CompareTransport {
			st, err := startChild(ctx, opts.ChildCommand, "sidecar", upURL, "transport")
			if err != nil {
				return fmt.Errorf("bench: sidecar (transport only): %w", err)
			}
			defer st.stop()
			transportURL = st.url
		}
	} else {
		up, err := startUpstream(opts.BodySize)
		if err != nil {
			return fmt.Errorf("bench: upstream: %w", err)
		}
		defer up.Close()
		upURL = "http://" + up.Addr().String()
		pctx, cancelProxy := context.WithCancel(ctx)
		defer cancelProxy()
		u, done, err := startSidecar(pctx, upURL, false)
		if err != nil {
			return fmt.Errorf("bench: sidecar: %w", err)
		}
		defer func() { cancelProxy(); <-done }()
		sidecarURL = u
		if opts.CompareTransport {
			u, done, err := startSidecar(pctx, upURL, true)
			if err != nil {
				return fmt.Errorf("bench: sidecar (transport only): %w", err)
			}
			defer func() { cancelProxy(); <-done }()
			transportURL = u
		}
	}
	upAddr = strings.TrimPrefix(upURL, "http://")
	targets := []target{{"direct", upURL}, {"sidecar", sidecarURL}}
	if transportURL != "" {
		targets = append(targets, target{"sidecar-transport", transportURL})
	}
	nginxPath := opts.NginxPath
	if nginxPath == "" {
		nginxPath, _ = exec.LookPath("nginx")
	}
	if nginxPath == "" {
		fmt.Fprintln(w, "nginx: not found on PATH — the nginx row is skipped (apt-get install nginx-light to add it)")
	} else {
		ng, err := startNginx(ctx, nginxPath, upAddr)
		if err != nil {
			fmt.Fprintf(w, "nginx: could not start (%v) — the nginx row is skipped\n", err)
		} else {
			defer ng.stop()
			targets = append(targets, target{"nginx", ng.url})
		}
	}
	targets = filterRows(targets, opts.Rows)

	fmt.Fprintf(w, "generator: %s; %s per run after %s warm-up; upstream body %d bytes\n",
		gen.name(), opts.Duration, opts.Warmup, opts.BodySize)
	if len(opts.ChildCommand) > 0 {
		fmt.Fprintln(w, "upstream and sidecar each run in a process of their own")
	} else {
		fmt.Fprintln(w, "upstream and sidecar share this process (no ChildCommand given)")
	}
	fmt.Fprintf(w, "%d round(s), targets interleaved within each round; the median of the rounds is shown\n", opts.Rounds)
	for _, load := range []int{opts.Connections, 1} {
		runs := make([][]Result, len(targets))
		for round := 0; round < opts.Rounds; round++ {
			for i, t := range targets {
				if err := ctx.Err(); err != nil {
					return err
				}
				if opts.Warmup > 0 {
					if _, err := gen.run(ctx, t.url, load, opts.Warmup); err != nil {
						return fmt.Errorf("bench: warm-up %s: %w", t.name, err)
					}
				}
				r, err := gen.run(ctx, t.url, load, opts.Duration)
				if err != nil {
					return fmt.Errorf("bench: %s with %d connections: %w", t.name, load, err)
				}
				r.Target, r.Connections = t.name, load
				runs[i] = append(runs[i], r)
			}
		}
		rows := make([]Result, len(targets))
		for i := range targets {
			rows[i] = median(runs[i])
		}
		printTable(w, load, rows)
	}
	return nil
}

// median takes each figure's median over the rounds independently, and sums
// the errors.
func median(rs []Result) Result {
	out := rs[0]
	n := len(rs)
	rps := make([]float64, n)
	p50 := make([]time.Duration, n)
	p99 := make([]time.Duration, n)
	out.Errors = 0
	for i, r := range rs {
		rps[i], p50[i], p99[i] = r.RPS, r.P50, r.P99
		out.Errors += r.Errors
	}
	slices.Sort(rps)
	slices.Sort(p50)
	slices.Sort(p99)
	out.RPS, out.P50, out.P99 = rps[n/2], p50[n/2], p99[n/2]
	return out
}

func filterRows(ts []target, rows []string) []target {
	if len(rows) == 0 {
		return ts
	}
	var out []target
	for _, t := range ts {
		for _, r := range rows {
			if r == t.name {
				out = append(out, t)
			}
		}
	}
	return out
}

func printTable(w io.Writer, conns int, rows []Result) {
	fmt.Fprintf(w, "\n%d connection(s); errors are socket errors, timeouts (over 2 s) and non-2xx answers\n%-18s %12s %10s %10s %8s\n", conns, "target", "req/s", "p50", "p99", "errors")
	by := map[string]Result{}
	for _, r := range rows {
		by[r.Target] = r
		fmt.Fprintf(w, "%-18s %12.0f %10s %10s %8d\n", r.Target, r.RPS, fmtDur(r.P50), fmtDur(r.P99), r.Errors)
	}
	s, okS := by["sidecar"]
	if n, ok := by["nginx"]; ok && okS && n.RPS > 0 && n.P99 > 0 {
		fmt.Fprintf(w, "sidecar/nginx: throughput %.2fx, p50 %.2fx, p99 %.2fx\n",
			s.RPS/n.RPS, float64(s.P50)/float64(n.P50), float64(s.P99)/float64(n.P99))
	}
	if d, ok := by["direct"]; ok && okS && d.RPS > 0 {
		fmt.Fprintf(w, "sidecar/direct: throughput %.2fx; p50 added %s, p99 added %s\n",
			s.RPS/d.RPS, fmtDur(s.P50-d.P50), fmtDur(s.P99-d.P99))
	}
	if d, ok := by["direct"]; ok {
		if n, ok := by["nginx"]; ok && d.RPS > 0 {
			fmt.Fprintf(w, "nginx/direct: throughput %.2fx; p50 added %s\n", n.RPS/d.RPS, fmtDur(n.P50-d.P50))
		}
	}
}

func fmtDur(d time.Duration) string {
	if d < 0 {
		return "-" + fmtDur(-d)
	}
	if d < time.Millisecond {
		return fmt.Sprintf("%dµs", d.Microseconds())
	}
	return fmt.Sprintf("%.2fms", float64(d)/float64(time.Millisecond))
}

// startUpstream serves a fixed body on every path from an in-process server.
func startUpstream(size int) (*upstream, error) {
	body := make([]byte, size)
	for i := range body {
		body[i] = 'a' + byte(i%26)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	clen := fmt.Sprint(size)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["Content-Type"] = []string{"application/json"}
		h["Content-Length"] = []string{clen}
		_, _ = w.Write(body)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return &upstream{srv: srv, ln: ln}, nil
}

type upstream struct {
	srv *http.Server
	ln  net.Listener
}

func (u *upstream) Addr() net.Addr { return u.ln.Addr() }
func (u *upstream) Close()         { _ = u.srv.Close() }

// startSidecar runs the proxy on a loopback port in front of upURL.
func startSidecar(ctx context.Context, upURL string, transportOnly bool) (string, <-chan error, error) {
	u, err := url.Parse(upURL)
	if err != nil {
		return "", nil, err
	}
	s, err := proxy.New(proxy.Config{Listen: "127.0.0.1:0", Upstream: u,
		DisableFastPath: transportOnly, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return "", nil, err
	}
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	select {
	case <-s.Ready():
	case err := <-done:
		return "", nil, errors.Join(errors.New("proxy stopped at start"), err)
	}
	return "http://" + s.Addr().String(), done, nil
}
