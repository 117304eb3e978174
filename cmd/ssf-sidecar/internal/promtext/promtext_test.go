package promtext

import (
	"strings"
	"testing"
	"time"
)

func TestPromTextExposition(t *testing.T) {
	c := NewCounterVec("x_total", "Things\ncounted.", "a")
	c.Add(2, `q"uo\te`+"\n")
	c.Add(1, "plain")
	h := NewHistogramVec("x_seconds", "Durations.", []float64{0.1, 1}, "k")
	for _, d := range []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond, 2 * time.Second} {
		h.Observe(d, "v")
	}
	var b strings.Builder
	if err := WriteFamilies(&b, []Family{h.Family(), c.Family(), Gauge("x_gauge", "G.", 1.5)}); err != nil {
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
	if c.Value("plain") != 1 || c.Value("none") != 0 || h.Count("v") != 4 {
		t.Error("value/count read back wrong")
	}
}
