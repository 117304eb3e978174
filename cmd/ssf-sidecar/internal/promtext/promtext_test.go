package main

import (
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

func TestPromTextExposition(t *testing.T) {
	c := newCounterVec("x_total", "Things\ncounted.", "a")
	c.add(2, `q"uo\te`+"\n")
	c.add(1, "plain")
	h := newHistogramVec("x_seconds", "Durations.", []float64{0.1, 1}, "k")
	for _, d := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second} {
		h.observe(d, "v")
	}
	var b strings.Builder
	if err := writeFamilies(&b, []family{h.family(), c.family(), gauge("x_gauge", "G.", 1.5)}); err != nil {
		t.Fatal(err)
	}
	want := `# HELP x_gauge G.
# TYPE x_gauge gauge
x_gauge 1.5
# HELP x_seconds Durations.
# TYPE x_seconds histogram
x_seconds_bucket{k="v",le="0.1"} 2
x_seconds_bucket{k="v",le="1"} 3
x_seconds_bucket{k="v",le="+Inf"} 4
x_seconds_sum{k="v"} 2.65
x_seconds_count{k="v"} 4
# HELP x_total Things\ncounted.
# TYPE x_total counter
x_total{a="plain"} 1
x_total{a="q\"uo\\te\n"} 2
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	if c.value("plain") != 1 || c.value("none") != 0 || h.count("v") != 4 {
		t.Error("value/count read back wrong")
	}
}

func TestPollerHealth(t *testing.T) {
	cases := []struct {
		name     string
		on       bool
		lag      time.Duration
		interval time.Duration
		fail     bool
	}{
		{"off", false, time.Hour, 5 * time.Second, false},
		{"fresh", true, 2 * time.Second, 5 * time.Second, false},
		{"within ten intervals", true, 49 * time.Second, 5 * time.Second, false},
		{"ten intervals but under the one-minute floor", true, 55 * time.Second, 5 * time.Second, false},
		{"beyond ten intervals", true, 61 * time.Second, 5 * time.Second, true},
		{"long interval", true, 9 * time.Minute, time.Minute, false},
		{"long interval, far behind", true, 11 * time.Minute, time.Minute, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := pollerHealth(tc.on, tap.Stats{PollLag: tc.lag, PollErrors: 3}, tc.interval)
			if (err != nil) != tc.fail {
				t.Fatalf("err %v, want failing %v", err, tc.fail)
			}
			if err != nil && !strings.Contains(err.Error(), "3 failed polls") {
				t.Errorf("detail %q lacks the failed polls", err)
			}
		})
	}
}
