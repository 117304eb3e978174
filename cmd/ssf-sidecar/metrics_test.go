package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/promtext"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// promSample matches one sample line of the text exposition format.
var promSample = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$`)

// scrape fetches /metrics and returns samples keyed by their printed
// series ("name{labels}"). It fails the test on a malformed line, a sample
// without HELP and TYPE, or a family declared twice.
func scrape(t *testing.T, adminURL string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain; version=0.0.4") {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	out := map[string]float64{}
	typed := map[string]string{}
	helped := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if f, ok := strings.CutPrefix(line, "# HELP "); ok {
			name, _, _ := strings.Cut(f, " ")
			if helped[name] {
				t.Fatalf("HELP of %s twice", name)
			}
			helped[name] = true
			continue
		}
		if f, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, typ, _ := strings.Cut(f, " ")
			if typed[name] != "" {
				t.Fatalf("TYPE of %s twice", name)
			}
			typed[name] = typ
			continue
		}
		m := promSample.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("malformed line %q", line)
		}
		base := m[1]
		if typed[base] == "" {
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(base, suf); ok && typed[b] == "histogram" {
					base = b
				}
			}
		}
		if typed[base] == "" || !helped[base] {
			t.Fatalf("sample %q before its HELP and TYPE", line)
		}
		if !strings.HasPrefix(base, "ssf_sidecar_") {
			t.Errorf("metric %s lacks the ssf_sidecar_ prefix", base)
		}
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("value of %q: %v", line, err)
		}
		out[m[1]+m[2]] = v
	}
	return out
}

// series prints a series key the way /metrics does.
func series(name string, labels ...string) string {
	var l [][2]string
	for i := 0; i+1 < len(labels); i += 2 {
		l = append(l, [2]string{labels[i], labels[i+1]})
	}
	return name + promtext.LabelString(l)
}

// sumOf adds every sample of a metric whose labels contain all of match.
func sumOf(m map[string]float64, name string, match ...string) float64 {
	var s float64
	for k, v := range m {
		n, labels, _ := strings.Cut(k, "{")
		if n != name {
			continue
		}
		ok := true
		for _, want := range match {
			if !strings.Contains(labels, want) {
				ok = false
			}
		}
		if ok {
			s += v
		}
	}
	return s
}

// TestMetricsAfterScriptedRun plays the demo script, then checks that the
// counters moved by exactly what happened: SETs by stream and event type,
// deliveries, latencies, tap signals, proxied requests; then one
// verification request moves its counters by one.
func TestMetricsAfterScriptedRun(t *testing.T) {
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx := context.Background()
	before := scrape(t, w.AdminURL)
	if v := sumOf(before, "ssf_sidecar_sets_issued_total"); v != 0 {
		t.Fatalf("SETs issued before anything happened: %v", v)
	}
	if _, err := runDemoScript(ctx, w, io.Discard, 15*time.Second); err != nil {
		t.Fatal(err)
	}
	got := w.Receiver.Received()
	streamID := ""
	byType := map[string]int{}
	for _, r := range got {
		for uri := range r.Claims["events"].(map[string]any) {
			byType[uri]++
		}
	}
	// The receiver's 202 is recorded (and the backlog shrinks) just after
	// the receiver saw the SET: scrape until the outbox caught up.
	var m map[string]float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = scrape(t, w.AdminURL)
		if sumOf(m, "ssf_sidecar_delivery_latency_seconds_count") >= float64(len(got)) && sumOf(m, "ssf_sidecar_outbox_backlog") == 0 ||
			time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	for k := range m {
		if rest, ok := strings.CutPrefix(k, `ssf_sidecar_sets_issued_total{stream_id="`); ok {
			streamID, _, _ = strings.Cut(rest, `"`)
			break
		}
	}
	if streamID == "" {
		t.Fatal("no SETs issued in the metrics")
	}
	for uri, n := range byType {
		if v := m[series("ssf_sidecar_sets_issued_total", "stream_id", streamID, "event_type", uri)]; v != float64(n) {
			t.Errorf("SETs issued of %s: %v, receiver got %d", uri, v, n)
		}
	}
	if v := sumOf(m, "ssf_sidecar_sets_issued_total"); v != float64(len(got)) {
		t.Errorf("SETs issued %v, receiver got %d", v, len(got))
	}
	if v := m[series("ssf_sidecar_deliveries_total", "stream_id", streamID, "outcome", "delivered")]; v != float64(len(got)) {
		t.Errorf("delivered %v, want %d", v, len(got))
	}
	if v := m[series("ssf_sidecar_delivery_latency_seconds_count", "stream_id", streamID)]; v != float64(len(got)) {
		t.Errorf("latency observations %v, want %d", v, len(got))
	}
	if v := m[series("ssf_sidecar_delivery_latency_seconds_bucket", "stream_id", streamID, "le", "+Inf")]; v != float64(len(got)) {
		t.Errorf("+Inf bucket %v, want %d", v, len(got))
	}
	// Every SET but the stream's verification came from a tap signal.
	if v := sumOf(m, "ssf_sidecar_tap_signals_total"); v != float64(len(got)-1) {
		t.Errorf("tap signals %v, want %d", v, len(got)-1)
	}
	if v := m[series("ssf_sidecar_http_requests_total", "route_class", "ssf", "code", "201")]; v != 1 {
		t.Errorf("stream creations counted %v, want 1", v)
	}
	ps := w.Sidecar.Proxy().Stats()
	if v := sumOf(m, "ssf_sidecar_http_requests_total", `route_class="observed"`); v != float64(ps.Observed) || v == 0 {
		t.Errorf("observed requests %v, proxy counted %d", v, ps.Observed)
	}
	if v := sumOf(m, "ssf_sidecar_http_requests_total", `route_class="ssf"`); v != float64(ps.SSF) {
		t.Errorf("SSF requests %v, proxy counted %d", v, ps.SSF)
	}
	if v, ok := m["ssf_sidecar_proxy_lane_requests_total"]; !ok || v != float64(ps.Lane) || ps.Lane > ps.Proxied {
		t.Errorf("lane requests %v (present %v), proxy counted %d of %d", v, ok, ps.Lane, ps.Proxied)
	}
	if v, ok := m["ssf_sidecar_management_limit_store_failures_total"]; !ok || v != 0 {
		t.Errorf("management limit store failures %v (present %v), want 0", v, ok)
	}
	if v := sumOf(m, "ssf_sidecar_http_request_duration_seconds_count"); v != sumOf(m, "ssf_sidecar_http_requests_total") {
		t.Errorf("duration observations %v != requests %v", v, sumOf(m, "ssf_sidecar_http_requests_total"))
	}
	for _, s := range []string{
		series("ssf_sidecar_outbox_backlog", "stream_id", streamID),
		series("ssf_sidecar_outbox_dead_letter", "stream_id", streamID),
	} {
		if v, ok := m[s]; !ok || v != 0 {
			t.Errorf("%s = %v (present %v), want 0", s, v, ok)
		}
	}
	if m["ssf_sidecar_poller_polls_total"] < 1 {
		t.Errorf("no polls counted")
	}
	if _, ok := m["ssf_sidecar_poller_lag_seconds"]; !ok {
		t.Error("no poller lag gauge")
	}

	// One verification request: +1 accepted, +1 verification SET, +1 delivered.
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/verify", map[string]any{"stream_id": streamID, "state": "s1"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(ctx, len(got)+1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	// The delivery hook runs once the outbox recorded the 2xx: poll.
	deadline = time.Now().Add(10 * time.Second)
	var m2 map[string]float64
	for {
		m2 = scrape(t, w.AdminURL)
		if m2[series("ssf_sidecar_delivery_latency_seconds_count", "stream_id", streamID)] > float64(len(got)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	delta := func(k string) float64 { return m2[k] - m[k] }
	for k, want := range map[string]float64{
		series("ssf_sidecar_verification_requests_total", "stream_id", streamID, "result", "accepted"):        1,
		series("ssf_sidecar_sets_issued_total", "stream_id", streamID, "event_type", ssf.EventVerification):   1,
		series("ssf_sidecar_deliveries_total", "stream_id", streamID, "outcome", "delivered"):                 1,
		series("ssf_sidecar_sets_issued_total", "stream_id", streamID, "event_type", ssf.EventSessionRevoked): 0,
		series("ssf_sidecar_http_requests_total", "route_class", "ssf", "code", "204"):                        1,
	} {
		if d := delta(k); d != want {
			t.Errorf("%s moved by %v, want %v", k, d, want)
		}
	}
}

// TestMetricsSeriesFollowStreams: counters alerts use exist at zero from
// the start, and a deleted stream's series end with it.
func TestMetricsSeriesFollowStreams(t *testing.T) {
	w := newSystem(t)
	id, err := w.CreatePushStream(context.Background(), []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(context.Background(), 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	m := scrape(t, w.AdminURL)
	for _, k := range []string{series("ssf_sidecar_observer_misses_total", "step", "before"), series("ssf_sidecar_observer_misses_total", "step", "after"),
		series("ssf_sidecar_outbox_fenced_total", "stream_id", id), series("ssf_sidecar_dead_lettered_total", "stream_id", id)} {
		if v, ok := m[k]; !ok || v != 0 {
			t.Errorf("%s = %v, %v; want a zero series", k, v, ok)
		}
	}
	if sumOf(m, "ssf_sidecar_sets_issued_total", "stream_id", id) == 0 {
		t.Fatal("no SET counted for the stream")
	}
	if code, _, errs := cli(t, "streams", "delete", id, "--admin-url", w.AdminURL); code != exitOK {
		t.Fatalf("delete: %s", errs)
	}
	for k := range scrape(t, w.AdminURL) {
		if strings.Contains(k, id) {
			t.Errorf("series of the deleted stream remains: %s", k)
		}
	}
}
