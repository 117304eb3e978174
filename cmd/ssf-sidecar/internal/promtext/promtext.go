// Package promtext is a small Prometheus registry: labelled counters and
// histograms with fixed buckets, and the text exposition format 0.0.4.
package promtext

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

// CounterVec is a counter per label set.
type CounterVec struct {
	name, help string
	labels     []string
	m          sync.Map // joined label values → *atomic.Uint64
}

// NewCounterVec makes a counter per set of the named labels.
func NewCounterVec(name, help string, labels ...string) *CounterVec {
	return &CounterVec{name: name, help: help, labels: labels}
}

// Add increments the counter of the label values (as many as labels).
func (c *CounterVec) Add(n uint64, values ...string) {
	k := strings.Join(values, labelSep)
	v, ok := c.m.Load(k)
	if !ok {
		v, _ = c.m.LoadOrStore(k, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(n)
}

// Value is the counter of the label values (0 when never incremented).
func (c *CounterVec) Value(values ...string) uint64 {
	if v, ok := c.m.Load(strings.Join(values, labelSep)); ok {
		return v.(*atomic.Uint64).Load()
	}
	return 0
}

// Retain drops the series whose label value is not in keep: the series of
// a deleted stream end with it.
func (c *CounterVec) Retain(label string, keep map[string]bool) {
	retainSeries(&c.m, c.labels, label, keep)
}

// Retain drops the series whose label value is not in keep.
func (h *HistogramVec) Retain(label string, keep map[string]bool) {
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

// Family is the counter's samples, ready to write.
func (c *CounterVec) Family() Family {
	f := Family{Name: c.name, Help: c.help, Type: "counter"}
	c.m.Range(func(k, v any) bool {
		f.Samples = append(f.Samples, Sample{Labels: pairs(c.labels, k.(string)), Value: float64(v.(*atomic.Uint64).Load())})
		return true
	})
	return f
}

// HistogramVec is a histogram of durations per label set, with fixed
// upper bounds in seconds.
type HistogramVec struct {
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

// NewHistogramVec makes a histogram per set of the named labels.
func NewHistogramVec(name, help string, bounds []float64, labels ...string) *HistogramVec {
	return &HistogramVec{name: name, help: help, labels: labels, bounds: bounds}
}

// Observe records one duration for the label values.
func (h *HistogramVec) Observe(d time.Duration, values ...string) {
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

// Count is how many observations the label values have.
func (h *HistogramVec) Count(values ...string) uint64 {
	if v, ok := h.m.Load(strings.Join(values, labelSep)); ok {
		return v.(*histogram).count.Load()
	}
	return 0
}

// Family is the histogram's buckets, sums and counts, ready to write.
func (h *HistogramVec) Family() Family {
	f := Family{Name: h.name, Help: h.help, Type: "histogram"}
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
			f.Samples = append(f.Samples, Sample{Suffix: "_bucket", Labels: append(slices.Clone(base), [2]string{"le", le}), Value: float64(cum)})
		}
		f.Samples = append(f.Samples,
			Sample{Suffix: "_sum", Labels: base, Value: time.Duration(x.sumNs.Load()).Seconds()},
			Sample{Suffix: "_count", Labels: base, Value: float64(x.count.Load())})
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

// Family is one metric with its samples, ready to write.
type Family struct {
	Name, Help, Type string
	Samples          []Sample
}

// Sample is one line of a family: its labels and value.
type Sample struct {
	Suffix string // _bucket, _sum, _count for histograms
	Labels [][2]string
	Value  float64
}

// WriteFamilies writes families in the text exposition format, sorted by
// name and, within a family, by labels (histogram buckets keep their order).
func WriteFamilies(w io.Writer, fams []Family) error {
	slices.SortFunc(fams, func(a, b Family) int { return strings.Compare(a.Name, b.Name) })
	bw := bufio.NewWriter(w)
	for _, f := range fams {
		if f.Type != "histogram" {
			slices.SortStableFunc(f.Samples, func(a, b Sample) int { return strings.Compare(LabelString(a.Labels), LabelString(b.Labels)) })
		} else {
			slices.SortStableFunc(f.Samples, func(a, b Sample) int {
				return strings.Compare(LabelString(withoutLE(a.Labels)), LabelString(withoutLE(b.Labels)))
			})
		}
		bw.WriteString("# HELP " + f.Name + " " + escapeHelp(f.Help) + "\n")
		bw.WriteString("# TYPE " + f.Name + " " + f.Type + "\n")
		for _, s := range f.Samples {
			bw.WriteString(f.Name + s.Suffix + LabelString(s.Labels) + " " + formatValue(s.Value) + "\n")
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

// LabelString is the label set as the exposition writes it: {a="x",b="y"}.
func LabelString(l [][2]string) string {
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

// Counter is a family of one unlabelled counter sample.
func Counter(name, help string, v uint64) Family {
	return Family{Name: name, Help: help, Type: "counter", Samples: []Sample{{Value: float64(v)}}}
}

// Gauge is a family of one gauge sample with the given label pairs.
func Gauge(name, help string, v float64, labelPairs ...string) Family {
	var l [][2]string
	for i := 0; i+1 < len(labelPairs); i += 2 {
		l = append(l, [2]string{labelPairs[i], labelPairs[i+1]})
	}
	return Family{Name: name, Help: help, Type: "gauge", Samples: []Sample{{Labels: l, Value: v}}}
}

// Desc is the counter's name and label names.
func (c *CounterVec) Desc() (name string, labels []string) { return c.name, slices.Clone(c.labels) }

// Desc is the histogram's name and label names (without le).
func (h *HistogramVec) Desc() (name string, labels []string) { return h.name, slices.Clone(h.labels) }
