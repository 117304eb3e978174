package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary act as a benchmark child process.
func TestMain(m *testing.M) {
	if os.Getenv("SSF_BENCH_TEST_CHILD") == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
		err := Child(ctx, os.Args[1:], os.Stdout)
		stop()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const wrkSample = `Running 4s test @ http://127.0.0.1:40000/bench
  2 threads and 128 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     7.06ms    3.18ms  47.97ms   77.05%
    Req/Sec     9.11k     1.02k   11.62k    72.50%
  Latency Distribution
     50%    6.89ms
     75%    8.46ms
     90%   10.48ms
     99%   17.07ms
  72543 requests in 4.01s, 46.70MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec:  18090.55
Transfer/sec:     11.64MB
`

func TestParseWrk(t *testing.T) {
	r, err := parseWrk(wrkSample)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 18090.55 || r.P50 != 6890*time.Microsecond || r.P99 != 17070*time.Microsecond || r.Errors != 9 {
		t.Errorf("parsed %+v", r)
	}
	us := strings.Replace(strings.Replace(wrkSample, "6.89ms", "412.00us", 1), "17.07ms", "1.20s", 1)
	if r, err := parseWrk(us); err != nil || r.P50 != 412*time.Microsecond || r.P99 != 1200*time.Millisecond {
		t.Errorf("units: %+v %v", r, err)
	}
	for _, bad := range []string{"", "Requests/sec: 12\n", "garbage\x00"} {
		if _, err := parseWrk(bad); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

// TestRunSmoke runs the driver briefly with the in-process generator and an
// nginx path that does not exist: the rows print and the nginx row is
// reported as skipped.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("load run in -short mode")
	}
	var out bytes.Buffer
	err := Run(context.Background(), Options{Duration: 300 * time.Millisecond, Warmup: -1, Connections: 4, Rounds: 1,
		Generator: "go", NginxPath: "/nonexistent/nginx", CompareTransport: true}, &out)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"nginx: could not start", "4 connection(s)", "1 connection(s)", "direct ", "sidecar ",
		"sidecar-transport ", "sidecar/direct: throughput"} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "\nnginx ") {
		t.Errorf("nginx row printed though nginx is absent:\n%s", s)
	}
}

// TestRunChildProcesses runs the upstream and the sidecars as child
// processes (this test binary in its child role).
func TestRunChildProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("load run in -short mode")
	}
	t.Setenv("SSF_BENCH_TEST_CHILD", "1")
	var out bytes.Buffer
	err := Run(context.Background(), Options{Duration: 300 * time.Millisecond, Warmup: -1, Connections: 2, Rounds: 1,
		Generator: "go", NginxPath: "/nonexistent/nginx", CompareTransport: true, ChildCommand: []string{os.Args[0]}}, &out)
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, want := range []string{"each run in a process of their own", "2 connection(s)", "sidecar-transport "} {
		if !strings.Contains(s, want) {
			t.Errorf("output lacks %q:\n%s", want, s)
		}
	}
}

func TestChildRejectsBadArgs(t *testing.T) {
	for _, args := range [][]string{nil, {"nope"}, {"upstream", "-1"}, {"sidecar"}, {"sidecar", "ftp://x"}} {
		if err := Child(context.Background(), args, &bytes.Buffer{}); err == nil {
			t.Errorf("Child(%q) accepted", args)
		}
	}
}
