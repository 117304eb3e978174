package admin

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

var testNow = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)

type fakeTx struct {
	mu      sync.Mutex
	streams []ssf.Stream
}

func (f *fakeTx) AdminStreams(context.Context) ([]ssf.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]ssf.Stream(nil), f.streams...), nil
}

func (f *fakeTx) AdminStream(_ context.Context, id string) (ssf.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.streams {
		if s.ID == id {
			return s, nil
		}
	}
	return ssf.Stream{}, ssf.ErrNotFound
}

func (f *fakeTx) AdminSetStatus(_ context.Context, id, status, reason string) (ssf.Stream, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.streams {
		if f.streams[i].ID == id {
			f.streams[i].Status, f.streams[i].Reason = status, reason
			return f.streams[i], nil
		}
	}
	return ssf.Stream{}, ssf.ErrNotFound
}

func (f *fakeTx) AdminDeleteStream(context.Context, string) error   { return nil }
func (f *fakeTx) AdminVerify(context.Context, string, string) error { return nil }

type fakeOutbox struct {
	stats   []outbox.StreamStats
	records map[string][]outbox.Record // newest first
	reads   int
}

func (f *fakeOutbox) Stats(_ context.Context, id string) (outbox.StreamStats, error) {
	for _, s := range f.stats {
		if s.StreamID == id {
			return s, nil
		}
	}
	return outbox.StreamStats{StreamID: id}, nil
}
func (f *fakeOutbox) AllStats(context.Context) ([]outbox.StreamStats, error) { return f.stats, nil }
func (f *fakeOutbox) DeadLetters(context.Context, string, int) ([]outbox.DeadLetter, error) {
	return nil, nil
}
func (f *fakeOutbox) Replay(context.Context, string, []string) (int, error) { return 0, nil }
func (f *fakeOutbox) Purge(context.Context, string, []string) (int, error)  { return 0, nil }
func (f *fakeOutbox) History(_ context.Context, id string, limit int) ([]outbox.Record, error) {
	r := f.records[id]
	if len(r) > limit {
		r = r[:limit]
	}
	f.reads += len(r)
	return r, nil
}

type fakeKeys struct{}

func (fakeKeys) List() []ssf.KeyInfo                         { return nil }
func (fakeKeys) Rotate(context.Context) (ssf.KeyInfo, error) { return ssf.KeyInfo{}, nil }
func (fakeKeys) RotateNow(context.Context) (ssf.KeyInfo, error) {
	return ssf.KeyInfo{}, nil
}

const (
	revokedURI  = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
	validParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
)

// record builds a stored SET for user i of a stream.
func record(stream string, seq int, email string) outbox.Record {
	claims := fmt.Sprintf(`{"iss":"https://sidecar.example/ssf","aud":"r","iat":%d,"jti":"jti-%05d",
		"sub_id":{"format":"complex","user":{"format":"email","email":%q},"session":{"format":"opaque","id":"sess-%d"}},
		"events":{%q:{"initiating_entity":"admin"}}}`, testNow.Unix()-int64(seq), seq, email, seq, revokedURI)
	return outbox.Record{JTI: fmt.Sprintf("jti-%05d", seq), StreamID: stream, Seq: uint64(seq), EventType: revokedURI,
		Claims: json.RawMessage(claims), Labels: map[string]string{"source": "traffic", "initiator": "admin", "kind": "logout"},
		TraceParent: validParent, State: outbox.StateDelivered, EnqueuedAt: testNow,
		AttemptCount: 1, Attempts: []outbox.Attempt{{Time: testNow, StatusCode: 202, Latency: 3 * time.Millisecond, Outcome: "delivered"}}}
}

// world is a dashboard mounted on a real admin server.
type world struct {
	tx   *fakeTx
	ob   *fakeOutbox
	dash *Dashboard
	srv  *httptest.Server
}

func newWorld(t testing.TB, n int, mut func(*DashboardConfig), token string) *world {
	t.Helper()
	w := &world{
		tx: &fakeTx{streams: []ssf.Stream{
			{ID: "s1", Receiver: "acme", Status: "enabled", DeliveryMethod: ssf.MethodPushURN,
				EndpointURL: "https://hooks.acme.example/ssf?token=SECRET-IN-QUERY", EventsDelivered: []string{revokedURI}},
			{ID: "s2", Receiver: "globex", Status: "paused", Reason: "maintenance", DeliveryMethod: "urn:ietf:rfc:8936"},
		}},
		ob: &fakeOutbox{stats: []outbox.StreamStats{{StreamID: "s1", Delivered: 7, Backlog: 2, LastError: "503"}},
			records: map[string][]outbox.Record{}},
	}
	for i := n; i >= 1; i-- {
		w.ob.records["s1"] = append(w.ob.records["s1"], record("s1", i, fmt.Sprintf("user%d@example.com", i)))
	}
	cfg := DashboardConfig{
		Transmitter: func() Transmitter { return w.tx },
		Outbox:      func() Outbox { return w.ob },
		Clock:       func() time.Time { return testNow },
	}
	if mut != nil {
		mut(&cfg)
	}
	var err error
	w.dash, err = NewDashboard(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Token: token, Transmitter: w.tx, Keys: fakeKeys{}, Outbox: w.ob,
		Ready: func() error { return nil }, Extra: w.dash.Routes})
	if err != nil {
		t.Fatal(err)
	}
	w.srv = httptest.NewServer(h)
	t.Cleanup(func() { w.dash.Close(); w.srv.Close() })
	return w
}

func (w *world) get(t testing.TB, path string, out any) int {
	t.Helper()
	resp, err := http.Get(w.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(b, out); err != nil {
			t.Fatalf("GET %s: %v\n%s", path, err, b)
		}
	}
	return resp.StatusCode
}

func TestDashboardConfigValidate(t *testing.T) {
	err := DashboardConfig{TraceURL: "ftp://x/{trace}", MaxPages: -1}.Validate()
	if err == nil {
		t.Fatal("want errors")
	}
	for _, want := range []string{"Transmitter is required", "Outbox is required", "must contain {trace_id}", "absolute http(s) URL", "must not be negative"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate() = %v, lacks %q", err, want)
		}
	}
	ok := DashboardConfig{Transmitter: func() Transmitter { return nil }, Outbox: func() Outbox { return nil },
		TraceURL: "https://tempo.example/trace/{trace_id}"}
	if err := ok.Validate(); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestDashboardPageAndAssets(t *testing.T) {
	w := newWorld(t, 1, nil, "")
	for _, tc := range []struct{ path, ctype, contains string }{
		{"/admin/dashboard/", "text/html", `<script src="app.js"`},
		{"/admin/dashboard/app.js", "text/javascript", "EventSource"},
		{"/admin/dashboard/app.css", "text/css", "--accent"},
	} {
		resp, err := http.Get(w.srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), tc.ctype) || !strings.Contains(string(b), tc.contains) {
			t.Errorf("%s: %d %s, body has %q: %v", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), tc.contains, strings.Contains(string(b), tc.contains))
		}
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: CSP %q", tc.path, csp)
		}
		// Nothing is loaded from another origin.
		if strings.Contains(string(b), "http://") || strings.Contains(string(b), "https://") {
			t.Errorf("%s refers to an external URL", tc.path)
		}
	}
}

func TestDashboardOverview(t *testing.T) {
	w := newWorld(t, 1, func(c *DashboardConfig) { c.TraceURL = "https://tempo.example/trace/{trace_id}" }, "")
	var got overviewBody
	if code := w.get(t, "/admin/dashboard/api/overview", &got); code != 200 {
		t.Fatalf("overview: %d", code)
	}
	if len(got.Streams) != 2 {
		t.Fatalf("streams: %+v", got.Streams)
	}
	s1, s2 := got.Streams[0], got.Streams[1]
	if s1.EndpointHost != "hooks.acme.example" || s1.Method != "push" || s1.Outbox.Delivered != 7 || s1.Outbox.Backlog != 2 || s1.Outbox.LastError != "503" {
		t.Errorf("s1 = %+v", s1)
	}
	if s2.Status != "paused" || s2.Reason != "maintenance" || s2.Method != "poll" || s2.EndpointHost != "" {
		t.Errorf("s2 = %+v", s2)
	}
	if got.TraceURL != "https://tempo.example/trace/{trace_id}" || !got.Now.Equal(testNow) {
		t.Errorf("trace url %q now %v", got.TraceURL, got.Now)
	}
	raw, _ := json.Marshal(got)
	if strings.Contains(string(raw), "SECRET-IN-QUERY") {
		t.Error("overview leaks the endpoint's query string")
	}
}

func TestDashboardStarting(t *testing.T) {
	d, err := NewDashboard(DashboardConfig{Transmitter: func() Transmitter { return nil }, Outbox: func() Outbox { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	e := echo.New()
	d.Routes(e.Group("/admin"))
	for _, p := range []string{"/admin/dashboard/api/overview", "/admin/dashboard/api/streams/s1/timeline", "/admin/dashboard/api/streams/s1/sets/x"} {
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("%s while starting: %d", p, rec.Code)
		}
	}
}

func TestDashboardTimeline(t *testing.T) {
	w := newWorld(t, 250, func(c *DashboardConfig) { c.TraceURL = "https://tempo.example/trace/{trace_id}" }, "")
	cases := []struct {
		name      string
		query     string
		code      int
		wantJTIs  []string // first and last of the page
		wantCount int
		more      bool
	}{
		{"first page", "limit=100", 200, []string{"jti-00250", "jti-00151"}, 100, true},
		{"last page", "limit=100&offset=200", 200, []string{"jti-00050", "jti-00001"}, 50, false},
		{"default limit", "", 200, []string{"jti-00250", "jti-00151"}, 100, true},
		{"search by jti", "q=jti-00042", 200, []string{"jti-00042", "jti-00042"}, 1, false},
		{"search by user, any case", "q=USER17@", 200, []string{"jti-00017", "jti-00017"}, 1, false},
		{"search by user prefix pages", "q=user1&limit=5", 200, []string{"jti-00199", "jti-00195"}, 5, true},
		{"search finds nothing", "q=nobody", 200, nil, 0, false},
		{"event format is not a match", "q=email", 200, nil, 0, false},
		{"limit too large", "limit=100000", 400, nil, 0, false},
		{"limit not a number", "limit=abc", 400, nil, 0, false},
		{"negative offset", "offset=-1", 400, nil, 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got timelineBody
			code := w.get(t, "/admin/dashboard/api/streams/s1/timeline?"+tc.query, &got)
			if code != tc.code {
				t.Fatalf("code %d, want %d", code, tc.code)
			}
			if code != 200 {
				return
			}
			if len(got.Items) != tc.wantCount || got.More != tc.more {
				t.Fatalf("items %d more %v, want %d %v", len(got.Items), got.More, tc.wantCount, tc.more)
			}
			if tc.wantCount > 0 && (got.Items[0].JTI != tc.wantJTIs[0] || got.Items[len(got.Items)-1].JTI != tc.wantJTIs[1]) {
				t.Errorf("page %s..%s, want %v", got.Items[0].JTI, got.Items[len(got.Items)-1].JTI, tc.wantJTIs)
			}
		})
	}
	var page timelineBody
	w.get(t, "/admin/dashboard/api/streams/s1/timeline?limit=1", &page)
	it := page.Items[0]
	if it.Event != "session-revoked" || it.Source != "traffic" || it.Initiator != "admin" || it.State != outbox.StateDelivered {
		t.Errorf("item = %+v", it)
	}
	if it.Subject != "session: opaque s***, user: email u***@example.com" {
		t.Errorf("subject %q is not masked as expected", it.Subject)
	}
	if !it.IssuedAt.Equal(testNow.Add(-250 * time.Second)) {
		t.Errorf("issued at %v", it.IssuedAt)
	}
	if it.TraceID != "4bf92f3577b34da6a3ce929d0e0e4736" || it.TraceLink != "https://tempo.example/trace/4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace %q %q", it.TraceID, it.TraceLink)
	}
	if len(it.Attempts) != 1 || it.Attempts[0].StatusCode != 202 || it.Attempts[0].Latency != 3*time.Millisecond {
		t.Errorf("attempts %+v", it.Attempts)
	}
	if code := w.get(t, "/admin/dashboard/api/streams/nope/timeline", nil); code != 404 {
		t.Errorf("unknown stream: %d", code)
	}
}

func TestDashboardTimelineReadsOnlyWhatItShows(t *testing.T) {
	w := newWorld(t, 300, func(c *DashboardConfig) { c.MaxTimeline = 120 }, "")
	var got timelineBody
	w.ob.reads = 0
	w.get(t, "/admin/dashboard/api/streams/s1/timeline?limit=10", &got)
	if w.ob.reads != 11 {
		t.Errorf("first page read %d records, want 11 (page + one to know there is more)", w.ob.reads)
	}
	w.ob.reads = 0
	w.get(t, "/admin/dashboard/api/streams/s1/timeline?q=user1", &got)
	if w.ob.reads != 121 || !got.Truncated || got.Scanned != 120 {
		t.Errorf("search read %d, truncated %v scanned %d; want the 120 limit (and one to know there is more)", w.ob.reads, got.Truncated, got.Scanned)
	}
	// Exactly the limit: nothing was left out.
	w.ob.records["s1"] = w.ob.records["s1"][:120]
	w.get(t, "/admin/dashboard/api/streams/s1/timeline?q=user1", &got)
	if got.Truncated || got.Scanned != 120 {
		t.Errorf("at exactly the limit: truncated %v scanned %d", got.Truncated, got.Scanned)
	}
	if code := w.get(t, "/admin/dashboard/api/streams/s1/timeline?offset=121", nil); code != 400 {
		t.Errorf("offset past the limit: %d", code)
	}
}

func TestDashboardSetDetailReadsLittle(t *testing.T) {
	w := newWorld(t, 500, nil, "")
	w.ob.reads = 0
	if code := w.get(t, "/admin/dashboard/api/streams/s1/sets/jti-00450?within=100", nil); code != 200 {
		t.Fatalf("detail: %d", code)
	}
	if w.ob.reads != 100 {
		t.Errorf("detail on the first page read %d records, want 100", w.ob.reads)
	}
}

func TestDashboardNoTraceLinkWithoutTemplate(t *testing.T) {
	w := newWorld(t, 1, nil, "")
	var got timelineBody
	w.get(t, "/admin/dashboard/api/streams/s1/timeline", &got)
	if got.Items[0].TraceLink != "" || got.Items[0].TraceID == "" {
		t.Errorf("trace id %q link %q", got.Items[0].TraceID, got.Items[0].TraceLink)
	}
}

func TestDashboardSetDetail(t *testing.T) {
	w := newWorld(t, 3, nil, "")
	w.ob.records["s1"] = append(w.ob.records["s1"], outbox.Record{JTI: "broken", StreamID: "s1", Claims: json.RawMessage(`[1,2]`)})
	cases := []struct {
		path        string
		code        int
		contains    []string
		notContains []string
	}{
		{"/admin/dashboard/api/streams/s1/sets/jti-00002", 200,
			[]string{`"u***@example.com"`, `"s***"`, `"revealed":false`, "session-revoked", `"format":"email"`},
			[]string{"user2@example.com", "sess-2"}},
		{"/admin/dashboard/api/streams/s1/sets/jti-00002?reveal=1", 200,
			[]string{"user2@example.com", "sess-2", `"revealed":true`}, nil},
		{"/admin/dashboard/api/streams/s1/sets/jti-00003?within=1", 200, []string{`"jti":"jti-00003"`}, nil},
		{"/admin/dashboard/api/streams/s1/sets/jti-00001?within=1", 200, []string{`"jti":"jti-00001"`}, nil},
		{"/admin/dashboard/api/streams/s1/sets/jti-00001?within=0", 400, nil, nil},
		{"/admin/dashboard/api/streams/s1/sets/unknown", 404, nil, nil},
		{"/admin/dashboard/api/streams/s9/sets/jti-00002", 404, nil, nil},
		{"/admin/dashboard/api/streams/s1/sets/broken", 422, nil, nil},
	}
	for _, tc := range cases {
		resp, err := http.Get(w.srv.URL + tc.path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("%s: %d, want %d: %s", tc.path, resp.StatusCode, tc.code, b)
			continue
		}
		for _, s := range tc.contains {
			if !strings.Contains(string(b), s) {
				t.Errorf("%s lacks %s:\n%s", tc.path, s, b)
			}
		}
		for _, s := range tc.notContains {
			if strings.Contains(string(b), s) {
				t.Errorf("%s shows %s unmasked:\n%s", tc.path, s, b)
			}
		}
	}
}

func TestMaskValue(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice@example.com", "a***@example.com"},
		{"@example.com", "@***"},
		{"x@", "x***"},
		{"8f3c21", "8***"},
		{"élodie@exemple.fr", "é***@exemple.fr"},
		{"", ""},
	} {
		if got := maskValue(tc.in); got != tc.want {
			t.Errorf("maskValue(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSubjectSummary(t *testing.T) {
	for _, tc := range []struct {
		sub            string
		masked, reveal string
	}{
		{`{"format":"email","email":"bob@x.org"}`, "email b***@x.org", "email bob@x.org"},
		{`{"format":"iss_sub","iss":"https://idp","sub":"42"}`, "iss_sub 4***", "iss_sub 42"},
		{`{"format":"complex","user":{"format":"email","email":"bob@x.org"},"tenant":{"format":"opaque","id":"t1"}}`,
			"tenant: opaque t***, user: email b***@x.org", "tenant: opaque t1, user: email bob@x.org"},
		{`"not an object"`, "", ""},
		{`{"format":"complex","user":"flat"}`, "", ""},
	} {
		var v any
		if err := json.Unmarshal([]byte(tc.sub), &v); err != nil {
			t.Fatal(err)
		}
		if got := subjectSummary(v, false); got != tc.masked {
			t.Errorf("masked %s = %q, want %q", tc.sub, got, tc.masked)
		}
		if got := subjectSummary(v, true); got != tc.reveal {
			t.Errorf("revealed %s = %q, want %q", tc.sub, got, tc.reveal)
		}
	}
}

func TestTraceID(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{validParent, "4bf92f3577b34da6a3ce929d0e0e4736"},
		{"00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""},
		{"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", ""},
		{"garbage", ""},
		{"", ""},
	} {
		if got := traceID(tc.in); got != tc.want {
			t.Errorf("traceID(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// sseReader reads server-sent events from a live connection.
type sseReader struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openLive(t *testing.T, w *world) *sseReader {
	t.Helper()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, w.srv.URL+"/admin/dashboard/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("live: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	t.Cleanup(func() { resp.Body.Close() })
	r := &sseReader{resp: resp, sc: bufio.NewScanner(resp.Body)}
	if kind, _ := r.next(t); kind != "hello" {
		t.Fatalf("first event %q, want hello", kind)
	}
	return r
}

// next returns the next event's name and data, skipping comments.
func (r *sseReader) next(t *testing.T) (string, LiveEvent) {
	t.Helper()
	var kind string
	var ev LiveEvent
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			kind = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &ev); err != nil {
				t.Fatalf("bad event data %q: %v", line, err)
			}
		case line == "" && kind != "":
			return kind, ev
		}
	}
	t.Fatalf("live connection ended: %v", r.sc.Err())
	return "", ev
}

// waitSubscribers polls until n pages are connected.
func waitSubscribers(t *testing.T, d *Dashboard, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for d.live.count() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d live pages, want %d", d.live.count(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestDashboardLiveEvents(t *testing.T) {
	w := newWorld(t, 0, nil, "")
	r := openLive(t, w)
	h := w.dash.Hooks()
	h.OnEnqueue("s1", 2, 0)
	h.OnAttempt("s1", "j1", validParent, outbox.Attempt{StatusCode: 400, Latency: 1500 * time.Microsecond, Outcome: "dead"})
	h.OnDeadLetter("s1", "j1", "invalid_audience")
	h.OnDelivered("s1", "j2", time.Second)
	h.OnBackoff("s2", testNow.Add(time.Minute), "connection refused")
	want := []LiveEvent{
		{Kind: "enqueue", StreamID: "s1", Queued: 2},
		{Kind: "attempt", StreamID: "s1", JTI: "j1", Status: 400, Outcome: "dead", LatencyMS: 1.5},
		{Kind: "dead", StreamID: "s1", JTI: "j1", Reason: "invalid_audience"},
		{Kind: "delivered", StreamID: "s1", JTI: "j2"},
		{Kind: "backoff", StreamID: "s2", Reason: "connection refused"},
	}
	for _, wv := range want {
		kind, ev := r.next(t)
		wv.At = testNow
		if kind != wv.Kind || !ev.At.Equal(testNow) {
			t.Errorf("event %q at %v, want %q", kind, ev.At, wv.Kind)
		}
		ev.At = testNow
		if ev != wv {
			t.Errorf("event = %+v, want %+v", ev, wv)
		}
	}
}

func TestDashboardLiveSlowPageNeverBlocks(t *testing.T) {
	w := newWorld(t, 0, func(c *DashboardConfig) { c.Buffer = 4 }, "")
	// A subscriber that never reads: publishing must not wait for it.
	sub, ok := w.dash.live.subscribe()
	if !ok {
		t.Fatal("subscribe refused")
	}
	h := w.dash.Hooks()
	done := make(chan struct{})
	go func() {
		for i := 0; i < 1000; i++ {
			h.OnDelivered("s1", fmt.Sprint(i), 0)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("publishing blocked on a page that does not read")
	}
	if len(sub.ch) != 4 || !sub.lagged.Load() || w.dash.live.dropped.Load() != 996 {
		t.Errorf("buffered %d lagged %v dropped %d", len(sub.ch), sub.lagged.Load(), w.dash.live.dropped.Load())
	}
	w.dash.live.unsubscribe(sub)

	// A real page that fell behind is told to re-fetch.
	r := openLive(t, w)
	waitSubscribers(t, w.dash, 1)
	w.dash.live.mu.Lock()
	for s := range w.dash.live.subs {
		s.lagged.Store(true)
	}
	w.dash.live.mu.Unlock()
	h.OnDelivered("s1", "after-lag", 0)
	if kind, _ := r.next(t); kind != "resync" {
		t.Errorf("lagging page got %q, want resync", kind)
	}
	h.OnDelivered("s1", "next", 0)
	if kind, ev := r.next(t); kind != "delivered" || ev.JTI != "next" {
		t.Errorf("after resync: %q %+v", kind, ev)
	}
}

func TestDashboardLivePageLimitAndClose(t *testing.T) {
	w := newWorld(t, 0, func(c *DashboardConfig) { c.MaxPages = 1 }, "")
	r := openLive(t, w)
	if code := w.get(t, "/admin/dashboard/events", nil); code != http.StatusServiceUnavailable {
		t.Errorf("second page: %d, want 503", code)
	}
	w.dash.Close()
	for r.sc.Scan() {
	}
	waitSubscribers(t, w.dash, 0)
}

func TestDashboardBehindToken(t *testing.T) {
	const token = "admin-token-0123456789"
	w := newWorld(t, 1, nil, token)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	do := func(method, path string, hdr map[string]string, body string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, w.srv.URL+path, strings.NewReader(body))
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	// A session comes from the login form; the cookie holds its id, never the token.
	logIn := func() string {
		t.Helper()
		login, err := noRedirect.PostForm(w.srv.URL+"/admin/login", url.Values{"token": {token}})
		if err != nil {
			t.Fatal(err)
		}
		login.Body.Close()
		if len(login.Cookies()) != 1 || login.Cookies()[0].Value == token {
			t.Fatalf("login cookies %+v", login.Cookies())
		}
		return SessionCookie + "=" + login.Cookies()[0].Value
	}
	cookie := logIn()
	for _, tc := range []struct {
		name   string
		method string
		path   string
		hdr    map[string]string
		want   int
	}{
		{"page without token", "GET", "/admin/dashboard/", nil, 401},
		{"page without token, in a browser", "GET", "/admin/dashboard/", map[string]string{"Accept": "text/html,application/xhtml+xml"}, 303},
		{"the token itself as the cookie", "GET", "/admin/dashboard/api/overview", map[string]string{"Cookie": SessionCookie + "=" + token}, 401},
		{"live without token", "GET", "/admin/dashboard/events?x", nil, 401},
		{"wrong cookie", "GET", "/admin/dashboard/api/overview", map[string]string{"Cookie": SessionCookie + "=nope"}, 401},
		{"page with cookie", "GET", "/admin/dashboard/", map[string]string{"Cookie": cookie}, 200},
		{"api with bearer", "GET", "/admin/dashboard/api/overview", map[string]string{"Authorization": "Bearer " + token}, 200},
		{"logout as a form", "POST", "/admin/dashboard/logout", map[string]string{"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}, 403},
		{"logout cross-origin", "POST", "/admin/dashboard/logout", map[string]string{"Cookie": cookie, "X-SSF-Admin": "1", "Origin": "https://evil.example"}, 403},
		{"logout cross-site", "POST", "/admin/dashboard/logout", map[string]string{"Cookie": cookie, "X-SSF-Admin": "1", "Sec-Fetch-Site": "same-site"}, 403},
		{"logout", "POST", "/admin/dashboard/logout", map[string]string{"Cookie": cookie, "X-SSF-Admin": "1"}, 204},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := do(tc.method, tc.path, tc.hdr, "{}").StatusCode; got != tc.want {
				t.Errorf("%s %s: %d, want %d", tc.method, tc.path, got, tc.want)
			}
		})
	}
	cookie = logIn()
	resp := do("POST", "/admin/dashboard/logout", map[string]string{"Cookie": cookie, "X-SSF-Admin": "1"}, "")
	if c := resp.Cookies(); len(c) != 1 || c[0].Name != SessionCookie || c[0].MaxAge >= 0 || c[0].Value != "" {
		t.Errorf("logout cookies %+v", resp.Cookies())
	}
	// Logging out ended the session on the server: the old cookie is dead.
	if got := do("GET", "/admin/dashboard/api/overview", map[string]string{"Cookie": cookie}, "").StatusCode; got != 401 {
		t.Errorf("session still valid after logout: %d", got)
	}
}

// loginServer mounts the login handlers as the admin server would.
func loginServer(t *testing.T, token string) *httptest.Server {
	s := newServer(Config{Token: token})
	s.cfg.Logger = discardLogger()
	e := echo.New()
	e.HTTPErrorHandler = s.errorHandler
	s.mountLogin(e)
	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)
	return srv
}

func TestDashboardLogin(t *testing.T) {
	const token = "admin-token-0123456789"
	srv := loginServer(t, token)
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(form url.Values, hdr map[string]string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/admin/login", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			if k == "Host" {
				req.Host = v
				continue
			}
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	for _, tc := range []struct {
		name   string
		form   url.Values
		hdr    map[string]string
		want   int
		cookie bool
	}{
		{"right token", url.Values{"token": {token}}, nil, http.StatusSeeOther, true},
		{"right token, same origin", url.Values{"token": {token}}, map[string]string{"Origin": srv.URL}, http.StatusSeeOther, true},
		{"wrong token", url.Values{"token": {"guess"}}, nil, http.StatusUnauthorized, false},
		{"no token", url.Values{}, nil, http.StatusUnauthorized, false},
		{"cross-origin", url.Values{"token": {token}}, map[string]string{"Origin": "https://evil.example"}, http.StatusForbidden, false},
		{"cross-site", url.Values{"token": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}, http.StatusForbidden, false},
		{"rebinding host", url.Values{"token": {token}}, map[string]string{"Host": "evil.example"}, http.StatusForbidden, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(tc.form, tc.hdr)
			if resp.StatusCode != tc.want {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.want)
			}
			cs := resp.Cookies()
			if !tc.cookie {
				if len(cs) != 0 {
					t.Errorf("cookie set on refusal: %+v", cs)
				}
				return
			}
			if len(cs) != 1 {
				t.Fatalf("cookies %+v", cs)
			}
			c := cs[0]
			if c.Name != SessionCookie || c.Value == token || len(c.Value) < 40 || !c.HttpOnly || c.SameSite != http.SameSiteStrictMode || c.Path != "/admin" || c.MaxAge <= 0 {
				t.Errorf("cookie %+v", c)
			}
			if loc := resp.Header.Get("Location"); loc != "/admin/dashboard/" {
				t.Errorf("redirect to %q", loc)
			}
		})
	}
	resp, err := http.Get(srv.URL + "/admin/login")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(b), `name="token"`) || !strings.Contains(string(b), `type="password"`) {
		t.Errorf("login page %d:\n%s", resp.StatusCode, b)
	}
	css, err := http.Get(srv.URL + "/admin/login.css")
	if err != nil {
		t.Fatal(err)
	}
	css.Body.Close()
	if css.StatusCode != 200 || !strings.HasPrefix(css.Header.Get("Content-Type"), "text/css") {
		t.Errorf("login stylesheet: %d %s", css.StatusCode, css.Header.Get("Content-Type"))
	}
	// Without a configured token the form only forwards to the page.
	open := loginServer(t, "")
	req, _ := http.NewRequest(http.MethodPost, open.URL+"/admin/login", strings.NewReader("token=x"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	r2, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != http.StatusSeeOther || len(r2.Cookies()) != 0 {
		t.Errorf("login without a token: %d %+v", r2.StatusCode, r2.Cookies())
	}
}

// TestDashboardLiveEndsOnServerShutdown: an open page must not hold
// http.Server.Shutdown until its deadline.
func TestDashboardLiveEndsOnServerShutdown(t *testing.T) {
	w := newWorld(t, 0, nil, "")
	srv := &http.Server{Handler: w.srv.Config.Handler}
	ln := httptest.NewUnstartedServer(nil).Listener
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+ln.Addr().String()+"/admin/dashboard/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := &sseReader{resp: resp, sc: bufio.NewScanner(resp.Body)}
	if kind, _ := r.next(t); kind != "hello" {
		t.Fatalf("first event %q", kind)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a live page open: %v", err)
	}
	if err := <-served; err != http.ErrServerClosed {
		t.Errorf("Serve: %v", err)
	}
}
