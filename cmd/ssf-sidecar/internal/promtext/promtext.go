package main

import (
	"bufio"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// A small Prometheus registry: labelled counters and histograms with fixed
// buckets updated on the hot path, plus gauges and counters read from the
// components' own statistics at scrape time. Written by hand to keep the
// Prometheus client (and its dependency tree) out of the binary; the text
// exposition format 0.0.4 is all /metrics needs.

// labelSep joins label values into a map key; it cannot occur in UTF-8.
const labelSep = "\xff"

// counterVec is a counter per label set.
type counterVec struct {
	name, help string
	labels     []string
	m          sync.Map // joined label values → *atomic.Uint64
}

func newCounterVec(name, help string, labels ...string) *counterVec {
	return &counterVec{name: name, help: help, labels: labels}
}

// add increments the counter of the label values (as many as labels).
func (c *counterVec) add(n uint64, values ...string) {
	k := strings.Join(values, labelSep)
	v, ok := c.m.Load(k)
	if !ok {
		v, _ = c.m.LoadOrStore(k, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(n)
}

// value is the counter of the label values (0 when never incremented).
func (c *counterVec) value(values ...string) uint64 {
	if v, ok := c.m.Load(strings.Join(values, labelSep)); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// retain drops the series whose label value is not in keep: the series of
// a deleted stream end with it.
func (c *counterVec) retain(label string, keep map[string]bool) {
	retainSeries(&c.m, c.labels, label, keep)
}

func (h *histogramVec) retain(label string, keep map[string]bool) {
	retainSeries(&h.m, h.labels, label, keep)
}

func retainSeries(m *sync.Map, labels []string, label string, keep map[string]bool) {
	i := slices.Index(labels, label)
	if i < 0 {
		return
	}
	m.Range(func(k, _ any) bool {
		if vals := strings.Split(k.(string), labelSep); i < len(vals) && !keep[vals[i]] {
			m.Delete(k)
		}
		return true
	})
}

func (c *counterVec) family() family {
	f := family{name: c.name, help: c.help, typ: "counter"}
	c.m.Range(func(k, v any) bool {
		f.samples = append(f.samples, sample{labels: pairs(c.labels, k.(string)), value: float64(v.(*atomic.Uint64).Load())})
		return true
	})
	return f
}

// histogramVec is a histogram of durations per label set, with fixed
// upper bounds in seconds.
type histogramVec struct {
	name, help string
	labels     []string
	bounds     []float64
	m          sync.Map // joined label values → *histogram
}

type histogram struct {
	counts []atomic.Uint64 // per bucket (not cumulative), last is +Inf
	sumNs  atomic.Int64
	count  atomic.Uint64
}

func newHistogramVec(name, help string, bounds []float64, labels ...string) *histogramVec {
	return &histogramVec{name: name, help: help, labels: labels, bounds: bounds}
}

func (h *histogramVec) observe(d time.Duration, values ...string) {
	k := strings.Join(values, labelSep)
	v, ok := h.m.Load(k)
	if !ok {
		v, _ = h.m.LoadOrStore(k, &histogram{counts: make([]atomic.Uint64, len(h.bounds)+1)})
	}
	x := v.(*histogram)
	s := d.Seconds()
	i, _ := slices.BinarySearch(h.bounds, s) // first bound ≥ s: le is inclusive
	x.counts[i].Add(1)
	x.sumNs.Add(int64(d))
	x.count.Add(1)
}

// count is how many observations the label values have.
func (h *histogramVec) count(values ...string) uint64 {
	if v, ok := h.m.Load(strings.Join(values, labelSep)); ok {
		return v.(*histogram).count.Load()
	}
	return 0
}

func (h *histogramVec) family() family {
	f := family{name: h.name, help: h.help, typ: "histogram"}
	h.m.Range(func(k, v any) bool {
		x := v.(*histogram)
		base := pairs(h.labels, k.(string))
		var cum uint64
		for i := range x.counts {
			cum += x.counts[i].Load()
			le := "+Inf"
			if i < len(h.bounds) {
				le = strconv.FormatFloat(h.bounds[i], 'g', -1, 64)
			}
			f.samples = append(f.samples, sample{suffix: "_bucket", labels: append(slices.Clone(base), [2]string{"le", le}), value: float64(cum)})
		}
		f.samples = append(f.samples,
			sample{suffix: "_sum", labels: base, value: time.Duration(x.sumNs.Load()).Seconds()},
			sample{suffix: "_count", labels: base, value: float64(x.count.Load())})
		return true
	})
	return f
}

func pairs(names []string, joined string) [][2]string {
	if len(names) == 0 {
		return nil
	}
	vals := strings.Split(joined, labelSep)
	out := make([][2]string, len(names))
	for i, n := range names {
		if i < len(vals) {
			out[i] = [2]string{n, vals[i]}
		} else {
			out[i] = [2]string{n, ""}
		}
	}
	return out
}

// family is one metric with its samples, ready to write.
type family struct {
	name, help, typ string
	samples         []sample
}

type sample struct {
	suffix string // _bucket, _sum, _count for histograms
	labels [][2]string
	value  float64
}

// writeFamilies writes families in the text exposition format, sorted by
// name and, within a family, by labels (histogram buckets keep their order).
func writeFamilies(w io.Writer, fams []family) error {
	slices.SortFunc(fams, func(a, b family) int { return strings.Compare(a.name, b.name) })
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		if f.typ != "histogram" {
			slices.SortStableFunc(f.samples, func(a, b sample) int { return strings.Compare(labelString(a.labels), labelString(b.labels)) })
		} else {
			slices.SortStableFunc(f.samples, func(a, b sample) int {
				return strings.Compare(labelString(withoutLE(a.labels)), labelString(withoutLE(b.labels)))
			})
		}
		bw.WriteString("# HELP " + f.name + " " + escapeHelp(f.help) + "\n")
		bw.WriteString("# TYPE " + f.name + " " + f.typ + "\n")
		for _, s := range f.samples {
			bw.WriteString(f.name + s.suffix + labelString(s.labels) + " " + formatValue(s.value) + "\n")
		}
	}
	return bw.Flush()
}

func withoutLE(l [][2]string) [][2]string {
	if n := len(l); n > 0 && l[n-1][0] == "le" {
		return l[:n-1]
	}
	return l
}

func labelString(l [][2]string) string {
	if len(l) == 0 {
		return ""
	}
	var b strings.Builder
	b.WriteByte('{')
	for i, p := range l {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(p[0])
		b.WriteString(`="`)
		b.WriteString(escapeLabel(p[1]))
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`, `"`, `\"`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }

func formatValue(v float64) string {
	switch {
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	case math.IsNaN(v):
		return "NaN"
	}
	return strconv.FormatFloat(v, 'g', -1, 64)
}
