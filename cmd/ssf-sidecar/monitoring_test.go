package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
)

// The Grafana dashboard and the Prometheus rules in deploy/ query only what
// the sidecar exports: every metric name and every label they select or
// group by is checked against a real /metrics scrape of a sidecar that has
// done some work (the demo script, a key rotation). promtool checks the
// rules' syntax and their unit tests in CI.

// exported is what one scrape shows: family names with their type, and the
// label names seen on each family's samples.
type exported struct {
	types  map[string]string
	labels map[string]map[string]bool
}

var sampleLabel = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)

func scrapeFamilies(t *testing.T, adminURL string) exported {
	t.Helper()
	scrape(t, adminURL) // the format checks
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ex := exported{types: map[string]string{}, labels: map[string]map[string]bool{}}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			ex.types[name] = typ
			ex.labels[name] = map[string]bool{}
			continue
		}
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		name, rest, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		base := ex.family(name)
		if base == "" {
			continue
		}
		if rest != "" {
			labelPart, _, _ := strings.Cut(rest, "} ")
			for _, m := range sampleLabel.FindAllStringSubmatch(labelPart, -1) {
				ex.labels[base][m[1]] = true
			}
		}
	}
	if len(ex.types) < 20 {
		t.Fatalf("scrape shows only %d families", len(ex.types))
	}
	// A labelled family shows its labels only once it has a sample: take the
	// label names of the event-counted families from their declarations.
	for name, labels := range sidecar.LabelledFamilies() {
		if ex.labels[name] == nil {
			t.Fatalf("%s is declared but not exported", name)
		}
		for _, l := range labels {
			ex.labels[name][l] = true
		}
	}
	return ex
}

// family maps a series name (a histogram's _bucket, _sum, _count
// included) to its family; "" when the sidecar exports no such thing.
func (ex exported) family(name string) string {
	if _, ok := ex.types[name]; ok {
		return name
	}
	for _, suf := range []string{"_bucket", "_sum", "_count"} {
		if b, ok := strings.CutSuffix(name, suf); ok && ex.types[b] == "histogram" {
			return b
		}
	}
	return ""
}

var (
	promMetric   = regexp.MustCompile(`\bssf_sidecar_[a-zA-Z0-9_]+`)
	promSelector = regexp.MustCompile(`\b(ssf_sidecar_[a-zA-Z0-9_]+)\s*\{([^}]*)\}`)
	promMatcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	promGrouping = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	// Labels Prometheus adds to every target, and a histogram's bucket bound.
	targetLabels = map[string]bool{"job": true, "instance": true, "le": true}
)

// checkQuery reports every metric or label of a PromQL expression the
// sidecar does not export. It returns the metrics used.
func (ex exported) checkQuery(errorf func(format string, args ...any), where, expr string) []string {
	var used []string
	known := map[string]bool{}
	for k := range targetLabels {
		known[k] = true
	}
	for _, name := range promMetric.FindAllString(expr, -1) {
		fam := ex.family(name)
		if fam == "" {
			errorf("%s queries %s, which the sidecar does not export: %s", where, name, expr)
			continue
		}
		used = append(used, fam)
		for l := range ex.labels[fam] {
			known[l] = true
		}
		if name != fam && strings.HasSuffix(name, "_bucket") {
			known["le"] = true
		}
	}
	for _, sel := range promSelector.FindAllStringSubmatch(expr, -1) {
		fam := ex.family(sel[1])
		if fam == "" || len(ex.labels[fam]) == 0 {
			continue // reported above, or no samples to learn its labels from
		}
		for _, m := range promMatcher.FindAllStringSubmatch(sel[2], -1) {
			if !ex.labels[fam][m[1]] && !targetLabels[m[1]] {
				errorf("%s selects %s by label %q, which it does not carry: %s", where, fam, m[1], expr)
			}
		}
	}
	for _, g := range promGrouping.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !known[l] {
				errorf("%s groups by %q, which none of its metrics carries: %s", where, l, expr)
			}
		}
	}
	return used
}

// monitoredSidecar is a sidecar that issued, delivered and rotated, so the
// labelled series exist.
func monitoredSidecar(t *testing.T) exported {
	t.Helper()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	if _, err := runDemoScript(ctx, w, io.Discard, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Sidecar.Keys().Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for sumOf(scrape(t, w.AdminURL), "ssf_sidecar_delivery_latency_seconds_count") == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ex := scrapeFamilies(t, w.AdminURL)
	for fam, labels := range map[string][]string{
		"ssf_sidecar_signing_keys":                              {"kid", "state"},
		"ssf_sidecar_signing_key_leaves_jwks_timestamp_seconds": {"kid"},
		"ssf_sidecar_deliveries_total":                          {"stream_id", "outcome"},
		"ssf_sidecar_delivery_latency_seconds":                  {"stream_id", "le"},
	} {
		for _, l := range labels {
			if !ex.labels[fam][l] {
				t.Fatalf("after the demo and a rotation, %s has no sample labelled %s (labels %v)", fam, l, ex.labels[fam])
			}
		}
	}
	if ex.types["ssf_sidecar_store_up"] != "gauge" {
		t.Fatalf("ssf_sidecar_store_up is not exported")
	}
	return ex
}

// grafanaExprs returns every PromQL expression of a dashboard: the panels'
// targets (rows' nested panels too) and the template variables' queries.
func grafanaExprs(t *testing.T, path string) map[string]string {
	t.Helper()
	var dash struct {
		UID        string            `json:"uid"`
		Title      string            `json:"title"`
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if dash.UID == "" || dash.Title == "" {
		t.Errorf("%s: a dashboard needs a uid and a title", path)
	}
	type panel struct {
		ID      int               `json:"id"`
		Type    string            `json:"type"`
		Title   string            `json:"title"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	}
	exprs := map[string]string{}
	ids := map[int]bool{}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("%s: panel: %v", path, err)
			}
			if ids[p.ID] {
				t.Errorf("%s: panel id %d used twice", path, p.ID)
			}
			ids[p.ID] = true
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("%s: panel %q queries nothing", path, p.Title)
			}
			for _, tg := range p.Targets {
				exprs["panel "+p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		switch q := v.Query.(type) {
		case string:
			exprs["variable "+v.Name] = q
		case map[string]any:
			if s, _ := q["query"].(string); s != "" {
				exprs["variable "+v.Name] = s
			}
		}
	}
	return exprs
}

type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func TestMonitoringQueriesExportedMetrics(t *testing.T) {
	ex := monitoredSidecar(t)

	dashboards, _ := filepath.Glob(filepath.Join(deployDir, "grafana", "*.json"))
	if len(dashboards) == 0 {
		t.Fatal("no Grafana dashboard in deploy/grafana")
	}
	used := map[string]bool{}
	for _, d := range dashboards {
		exprs := grafanaExprs(t, d)
		if len(exprs) < 20 {
			t.Errorf("%s: only %d queries", d, len(exprs))
		}
		for where, expr := range exprs {
			for _, m := range ex.checkQuery(t.Errorf, filepath.Base(d)+" "+where, expr) {
				used[m] = true
			}
		}
	}
	// What the dashboard is for: each of these is shown.
	for _, m := range []string{
		"ssf_sidecar_sets_issued_total", "ssf_sidecar_deliveries_total", "ssf_sidecar_delivery_latency_seconds",
		"ssf_sidecar_outbox_backlog", "ssf_sidecar_outbox_oldest_age_seconds", "ssf_sidecar_outbox_dead_letter",
		"ssf_sidecar_dead_lettered_total", "ssf_sidecar_poller_lag_seconds", "ssf_sidecar_tap_misses_total",
		"ssf_sidecar_observer_misses_total", "ssf_sidecar_http_requests_total", "ssf_sidecar_upstream_errors_total",
		"ssf_sidecar_store_up",
	} {
		if !used[m] {
			t.Errorf("the dashboard does not show %s", m)
		}
	}

	rulesPath := filepath.Join(deployDir, "prometheus", "ssf-sidecar-rules.yaml")
	data, err := os.ReadFile(rulesPath)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(data, &rf); err != nil {
		t.Fatalf("%s: %v", rulesPath, err)
	}
	var alerts []string
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" {
				t.Errorf("rule %+v: want an alert name and an expression", r)
				continue
			}
			alerts = append(alerts, r.Alert)
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
				t.Errorf("alert %s: want a severity, a summary and a description", r.Alert)
			}
			if len(ex.checkQuery(t.Errorf, "alert "+r.Alert, r.Expr)) == 0 {
				t.Errorf("alert %s uses no sidecar metric", r.Alert)
			}
		}
	}
	// What README.md says is worth alerting on, and the store and key.
	for _, want := range []string{"SSFSidecarStreamFailing", "SSFSidecarBacklogOld", "SSFSidecarDeadLetterGrowing",
		"SSFSidecarPollerBehind", "SSFSidecarTapMisses", "SSFSidecarStoreDegraded", "SSFSidecarSigningKeyLeavingJWKS"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("no alert %s in %s", want, rulesPath)
		}
	}
}

// The checker itself finds what it must: unknown metrics and labels.
func TestMonitoringCheckerRejects(t *testing.T) {
	ex := exported{types: map[string]string{"ssf_sidecar_outbox_backlog": "gauge", "ssf_sidecar_delivery_latency_seconds": "histogram"},
		labels: map[string]map[string]bool{"ssf_sidecar_outbox_backlog": {"stream_id": true}, "ssf_sidecar_delivery_latency_seconds": {"stream_id": true, "le": true}}}
	for _, tc := range []struct {
		expr string
		ok   bool
	}{
		{`sum by (stream_id) (ssf_sidecar_outbox_backlog{job=~"$job", stream_id=~"$stream"})`, true},
		{`histogram_quantile(0.9, sum by (le) (rate(ssf_sidecar_delivery_latency_seconds_bucket[5m])))`, true},
		{`ssf_sidecar_outbox_backlogs`, false},
		{`ssf_sidecar_outbox_backlog{stream="x"}`, false},
		{`sum by (receiver) (ssf_sidecar_outbox_backlog)`, false},
		{`ssf_sidecar_delivery_latency_seconds_total`, false},
	} {
		var reports []string
		ex.checkQuery(func(format string, args ...any) { reports = append(reports, fmt.Sprintf(format, args...)) }, "case", tc.expr)
		if (len(reports) == 0) != tc.ok {
			t.Errorf("%s: reported %q, want ok=%v", tc.expr, reports, tc.ok)
		}
	}
}
