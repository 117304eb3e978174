package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// generator drives load at a URL for a duration over a number of
// keep-alive connections.
type generator interface {
	name() string
	run(ctx context.Context, url string, conns int, d time.Duration) (Result, error)
}

// pickGenerator prefers wrk: a separate C process with little overhead of its
// own, so that on a small machine the generator takes as few cycles as
// possible from what is measured, and takes them equally from every row. The
// Go generator runs in this process and is the fallback.
func pickGenerator(name string) (generator, error) {
	switch name {
	case "wrk":
		p, err := exec.LookPath("wrk")
		if err != nil {
			return nil, fmt.Errorf("bench: wrk not found: %w", err)
		}
		return wrkGen{path: p}, nil
	case "go":
		return goGen{}, nil
	case "":
		if p, err := exec.LookPath("wrk"); err == nil {
			return wrkGen{path: p}, nil
		}
		return goGen{}, nil
	}
	return nil, fmt.Errorf("bench: unknown generator %q (wrk or go)", name)
}

type wrkGen struct{ path string }

func (g wrkGen) name() string { return "wrk (" + g.path + ")" }

func (g wrkGen) run(ctx context.Context, url string, conns int, d time.Duration) (Result, error) {
	threads := min(conns, 2)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, g.path, "--latency", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", strconv.Itoa(secs)+"s", url+"/bench")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Result{}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	return parseWrk(string(out))
}

var (
	wrkRPS    = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkPct    = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)
	wrkErrors = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads requests/s, p50, p99 and error counts from wrk --latency output.
func parseWrk(out string) (Result, error) {
	var r Result
	m := wrkRPS.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output has no Requests/sec: %q", out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	for _, pm := range wrkPct.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(pm[2], 64)
		unit := map[string]float64{"us": 1e3, "ms": 1e6, "s": 1e9}[pm[3]]
		d := time.Duration(v * unit)
		if pm[1] == "50" {
			r.P50 = d
		} else {
			r.P99 = d
		}
	}
	if r.P50 == 0 || r.P99 == 0 {
		return r, fmt.Errorf("wrk output has no latency distribution: %q", out)
	}
	if em := wrkErrors.FindStringSubmatch(out); em != nil {
		for _, s := range em[1:] {
			n, _ := strconv.ParseInt(s, 10, 64)
			r.Errors += n
		}
	}
	if nm := wrkNon2xx.FindStringSubmatch(out); nm != nil {
		n, _ := strconv.ParseInt(nm[1], 10, 64)
		r.Errors += n
	}
	return r, nil
}

// goGen is an in-process closed-loop generator: conns goroutines, each with
// its own keep-alive connection, sending GETs back to back.
type goGen struct{}

func (goGen) name() string { return "go (in-process; competes with the proxy's own runtime)" }

func (goGen) run(ctx context.Context, url string, conns int, d time.Duration) (Result, error) {
	tr := &http.Transport{MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()

	var errs atomic.Int64
	lat := make([][]time.Duration, conns)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for ctx.Err() == nil {
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/bench", nil)
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				_, err = io.CopyBuffer(io.Discard, resp.Body, buf)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					if ctx.Err() == nil {
						errs.Add(1)
					}
					continue
				}
				lat[i] = append(lat[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return Result{}, fmt.Errorf("no request succeeded (%d errors)", errs.Load())
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration { return all[min(len(all)-1, int(float64(len(all))*p))] }
	runtime.GC()
	return Result{RPS: float64(len(all)) / elapsed.Seconds(), P50: pct(0.50), P99: pct(0.99), Errors: errs.Load()}, nil
}

// firstLine returns the first line of s, for short error messages.
func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}
