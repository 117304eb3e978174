package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// chromiumPath finds Debian's Chromium. On CI (CI=true) a missing browser
// fails the test; locally it skips.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("SSF_CHROMIUM"), "/usr/bin/chromium", "chromium", "chromium-browser"} {
		if p == "" {
			continue
		}
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("Chromium is not installed (apt-get install chromium); the dashboard browser test cannot run")
	}
	t.Skip("Chromium is not installed and CI is not set: skipping the dashboard browser test")
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile.
func newBrowser(t *testing.T, ctx context.Context) (context.Context, context.CancelFunc) {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1500, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	if err := chromedp.Do(bctx); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("start Chromium: %v", err)
	}
	return bctx, func() { cancelBrowser(); cancelAlloc() }
}

// screenshots saves full-page screenshots in a folder that outlives the
// test, and prints where.
type screenshots struct {
	t   *testing.T
	dir string
}

func (s *screenshots) take(ctx context.Context, name string) {
	s.t.Helper()
	buf, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		s.t.Errorf("screenshot %s: %v", name, err)
		return
	}
	p := filepath.Join(s.dir, name+".png")
	if err := os.WriteFile(p, buf, 0o644); err != nil {
		s.t.Errorf("save screenshot: %v", err)
		return
	}
	s.t.Logf("screenshot: %s", p)
}

// switchableReceiver answers 400 invalid_audience (the SET dead-letters at
// once) until healed, then 202.
type switchableReceiver struct {
	healed atomic.Bool
	got    atomic.Int64
}

func (r *switchableReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	_, _ = io.Copy(io.Discard, req.Body)
	r.got.Add(1)
	if !r.healed.Load() {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, `{"err":"invalid_audience","description":"not for us"}`)
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

// adminJSON reads one admin API resource over plain HTTP.
func adminJSON(t *testing.T, ctx context.Context, w *demoWorld, path string, out any) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, w.AdminURL+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

func streamStatus(t *testing.T, ctx context.Context, w *demoWorld, id string) string {
	var st struct {
		Status string `json:"status"`
	}
	adminJSON(t, ctx, w, "/admin/streams/"+id, &st)
	return st.Status
}

// TestDashboardInBrowser drives the dashboard in Chromium against the
// simulated authentik behind the sidecar: the streams show, a logout made
// through the proxy appears without a reload, pause / resume and replay
// work, and a cross-site page cannot change anything.
func TestDashboardInBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	shots := &screenshots{t: t}
	var err error
	if shots.dir, err = os.MkdirTemp("", "ssf-dashboard-screenshots-"); err != nil {
		t.Fatal(err)
	}
	bctx, closeBrowser := newBrowser(t, ctx)
	defer closeBrowser()

	w, err := startDemoWorld(ctx, demoOptions{DataDir: t.TempDir(), PollInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		// The page is still open here: its live connection must not hold
		// the admin server's graceful shutdown until its deadline.
		if err := w.Close(); err != nil {
			t.Errorf("sidecar shutdown with a dashboard open: %v", err)
		}
	}()

	events := []string{ssf.EventSessionEstablished, ssf.EventSessionRevoked, ssf.EventCredentialChange}
	good, err := w.CreatePushStream(ctx, events)
	if err != nil {
		t.Fatal(err)
	}
	bad := &switchableReceiver{}
	badSrv := httptest.NewServer(bad)
	defer badSrv.Close()
	var badStream struct {
		StreamID string `json:"stream_id"`
	}
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": badSrv.URL + "/events"},
		"events_requested": events, "description": "receiver that refuses the audience",
	}, &badStream); err != nil {
		t.Fatal(err)
	}
	if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "alice-password-1"}); err != nil {
		t.Fatal(err)
	}

	page := w.AdminURL + "/admin/dashboard/"
	goodRow := fmt.Sprintf(`#streams tr[data-stream=%q]`, good)
	badRow := fmt.Sprintf(`#streams tr[data-stream=%q]`, badStream.StreamID)
	wait := func(step, sel string) {
		t.Helper()
		wctx, wcancel := context.WithTimeout(bctx, 20*time.Second)
		defer wcancel()
		if err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
			shots.take(bctx, "failed-"+step)
			msg, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector("#message").textContent`))
			t.Fatalf("%s: %s did not appear: %v (page says %q)", step, sel, err, msg)
		}
	}

	// click clicks once the element is there; a live update may replace
	// the row between finding the node and clicking it, so that is retried.
	click := func(sel string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			wctx, wcancel := context.WithTimeout(bctx, 20*time.Second)
			err := chromedp.Do(wctx, chromedp.WaitVisible(chromedp.CSS(sel)), chromedp.Click(chromedp.CSS(sel)))
			wcancel()
			if err == nil {
				return
			}
			if !strings.Contains(err.Error(), "node") || time.Now().After(deadline) {
				shots.take(bctx, "failed-click")
				t.Fatalf("click %s: %v", sel, err)
			}
		}
	}

	// 1. The page shows both streams, and the live connection is up.
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatal(err)
	}
	wait("streams", goodRow)
	wait("streams", badRow)
	wait("live", `#live.live:not(.off)`)
	// No admin token, no session: nothing to log out of.
	if hidden, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector("#logout").hidden`)); err != nil || !hidden {
		t.Errorf("Log out is offered without an admin token (hidden=%v, %v)", hidden, err)
	}
	if msg, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector("#message").textContent`)); msg == "Loading…" {
		t.Errorf("still Loading… with the streams shown")
	}
	// Select the good stream's timeline and mark the page so a reload
	// would show.
	click(goodRow + ` button[data-action="view"]`)
	if err := chromedp.Do(bctx, chromedp.Evaluate[chromedp.Void](`window.__noReload = "kept"`)); err != nil {
		t.Fatal(err)
	}
	wait("verification in timeline", `#timeline tr.set-row[data-event="verification"]`)
	shots.take(bctx, "1-streams")

	// 2. alice logs in and out through the proxy; the SETs appear live.
	w.logInAndOut(t, "alice", "alice-password-1")
	wait("logout in timeline", `#timeline tr.set-row[data-event="session-revoked"][data-state="delivered"]`)
	kept, err := chromedp.Run(bctx, chromedp.Evaluate[string](`window.__noReload || ""`))
	if err != nil {
		t.Fatal(err)
	}
	subject, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#timeline tr.set-row[data-event="session-revoked"] td.subject`)))
	if err != nil {
		t.Fatal(err)
	}
	if kept != "kept" {
		t.Errorf("the page reloaded to show the logout (marker %q)", kept)
	}
	if strings.Contains(subject, "alice@example.com") || !strings.Contains(subject, "***") {
		t.Errorf("subject should be masked by default, page shows %q", subject)
	}
	// Reveal on an explicit click.
	click(`#timeline tr.set-row[data-event="session-revoked"] button[data-action="claims"]`)
	wait("claims", `#timeline tr.claims-row button[data-action="reveal"]`)
	click(`#timeline tr.claims-row button[data-action="reveal"]`)
	wait("revealed", `#timeline tr.claims-row button[data-action="reveal"]:disabled`)
	claims, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`#timeline tr.claims-row pre`)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(claims, "alice@example.com") || !strings.Contains(claims, "session-revoked") {
		t.Errorf("revealed claims lack the subject or the event:\n%s", claims)
	}
	shots.take(bctx, "2-logout-live")

	// Search by user: alice's SETs stay, the verification SET goes.
	if err := chromedp.Do(bctx, chromedp.SetValue(chromedp.CSS("#q"), "ALICE@example")); err != nil {
		t.Fatal(err)
	}
	click(`#search button[type="submit"]`)
	wait("search", `#page-info`)
	pollCtx, pollCancel := context.WithTimeout(bctx, 15*time.Second)
	err = chromedp.Do(pollCtx, chromedp.Poll[chromedp.Void](
		`document.querySelectorAll('#timeline tr.set-row').length > 0 && !document.querySelector('#timeline tr.set-row[data-event="verification"]')`,
		chromedp.WithPollingTimeout(15*time.Second)))
	pollCancel()
	if err != nil {
		shots.take(bctx, "failed-search")
		t.Fatalf("search by user: %v", err)
	}
	shots.take(bctx, "2b-search")
	click(`#clear-search`)
	wait("search cleared", `#timeline tr.set-row[data-event="verification"]`)

	// 3. Pause and resume through the buttons.
	click(goodRow + ` button[data-action="pause"]`)
	wait("paused", goodRow+`[data-status="paused"]`)
	if got := streamStatus(t, ctx, w, good); got != "paused" {
		t.Errorf("after Pause the admin API says %q", got)
	}
	shots.take(bctx, "3-paused")
	click(goodRow + ` button[data-action="resume"]`)
	wait("resumed", goodRow+`[data-status="enabled"]`)
	if got := streamStatus(t, ctx, w, good); got != "enabled" {
		t.Errorf("after Resume the admin API says %q", got)
	}
	// Verify queues a verification SET, which shows up live.
	before := len(w.Receiver.Received())
	click(goodRow + ` button[data-action="verify"]`)
	pollCtx, pollCancel = context.WithTimeout(bctx, 15*time.Second)
	err = chromedp.Do(pollCtx, chromedp.Poll[chromedp.Void](
		`document.querySelectorAll('#timeline tr.set-row[data-event="verification"][data-state="delivered"]').length >= 2`,
		chromedp.WithPollingTimeout(15*time.Second)))
	pollCancel()
	if err != nil {
		shots.take(bctx, "failed-verify")
		t.Fatalf("verify: %v", err)
	}
	if after := len(w.Receiver.Received()); after <= before {
		t.Errorf("the receiver got no SET after Verify (%d before, %d after)", before, after)
	}

	// 4. The refusing receiver's SETs are in the dead letter; once it is
	// healed, Replay all delivers them.
	click(badRow + ` button[data-action="view"]`)
	wait("dead letter", `#dlq tr[data-dead]`)
	var deadBefore []struct {
		JTI string `json:"jti"`
	}
	adminJSON(t, ctx, w, "/admin/outbox/"+badStream.StreamID+"/dlq", &deadBefore)
	if len(deadBefore) == 0 {
		t.Fatal("the dashboard shows a dead letter the admin API does not have")
	}
	shots.take(bctx, "4-dead-letter")
	bad.healed.Store(true)
	click(`#replay-all`)
	wait("replayed", `#no-dlq:not([hidden])`)
	wait("delivered after replay", fmt.Sprintf(`#timeline tr.set-row[data-jti=%q][data-state="delivered"]`, deadBefore[0].JTI))
	var deadAfter []json.RawMessage
	adminJSON(t, ctx, w, "/admin/outbox/"+badStream.StreamID+"/dlq", &deadAfter)
	if len(deadAfter) != 0 {
		t.Errorf("dead letter after replay: %d left", len(deadAfter))
	}
	shots.take(bctx, "5-replayed")

	// Purge takes two clicks: a dead verification SET is gone after them.
	bad.healed.Store(false)
	click(badRow + ` button[data-action="verify"]`)
	wait("dead again", `#dlq tr[data-dead]`)
	click(`#purge-all`)
	wait("purge armed", `#purge-all.armed`)
	var deadArmed []json.RawMessage
	adminJSON(t, ctx, w, "/admin/outbox/"+badStream.StreamID+"/dlq", &deadArmed)
	if len(deadArmed) != 1 {
		t.Errorf("one click on Purge all changed the dead letter: %d left, want 1", len(deadArmed))
	}
	click(`#purge-all.armed`)
	wait("purged", `#no-dlq:not([hidden])`)
	adminJSON(t, ctx, w, "/admin/outbox/"+badStream.StreamID+"/dlq", &deadAfter)
	if len(deadAfter) != 0 {
		t.Errorf("dead letter after purge: %d left", len(deadAfter))
	}

	// A stream with 10,000 SETs: the page shows one page of 100 at a time,
	// pages on, and finds one user among them.
	busy := fillStream(t, ctx, w, 10000)
	busyRow := fmt.Sprintf(`#streams tr[data-stream=%q]`, busy)
	click(busyRow + ` button[data-action="view"]`)
	wait("busy stream", `#timeline tr.set-row[data-jti="bulk-09999"]`)
	countRows := func() int {
		n, err := chromedp.Run(bctx, chromedp.Evaluate[int](`document.querySelectorAll('#timeline tr.set-row').length`))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := countRows(); n != 100 {
		t.Errorf("busy stream renders %d rows, want one page of 100", n)
	}
	click(`#older`)
	wait("older page", `#timeline tr.set-row[data-jti="bulk-09899"]`)
	if n := countRows(); n != 100 {
		t.Errorf("second page renders %d rows", n)
	}
	if err := chromedp.Do(bctx, chromedp.SetValue(chromedp.CSS("#q"), "user4242@")); err != nil {
		t.Fatal(err)
	}
	click(`#search button[type="submit"]`)
	wait("search among 10,000", `#timeline tr.set-row[data-jti="bulk-04242"]`)
	if n := countRows(); n != 1 {
		t.Errorf("search for one user among 10,000 shows %d rows", n)
	}
	shots.take(bctx, "5b-10000-sets-search")

	// 5. A page on another origin posts a form to the pause route: refused.
	evil := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(rw, `<!doctype html><form id="f" method="post" action="%s/admin/streams/%s/pause">
<input name="reason" value="csrf"></form><script>document.getElementById("f").submit()</script>`, w.AdminURL, good)
	}))
	defer evil.Close()
	if err := chromedp.Do(bctx, chromedp.Navigate(evil.URL)); err != nil {
		t.Fatal(err)
	}
	// The form navigates the tab to the admin answer; wait for it.
	wctx, wcancel := context.WithTimeout(bctx, 15*time.Second)
	err = chromedp.Do(wctx, chromedp.Poll[chromedp.Void](`document.location.href.includes("/admin/streams/") && document.body && document.body.innerText.length > 0`,
		chromedp.WithPollingTimeout(15*time.Second)))
	wcancel()
	body := ""
	if err == nil {
		body, err = chromedp.Run(bctx, chromedp.Text(chromedp.CSS("body")))
	}
	if err != nil {
		t.Fatalf("cross-site form did not reach the admin listener: %v", err)
	}
	if !strings.Contains(body, "refused") && !strings.Contains(body, "forbidden") {
		t.Errorf("cross-site form answer: %s", body)
	}
	if got := streamStatus(t, ctx, w, good); got != "enabled" {
		t.Errorf("a cross-site form changed the stream to %q", got)
	}
	shots.take(bctx, "6-cross-site-refused")

	// Back on the dashboard, live, for the shutdown check above.
	if err := chromedp.Do(bctx, chromedp.Navigate(page)); err != nil {
		t.Fatal(err)
	}
	wait("live again", `#live.live:not(.off)`)
}

// TestDashboardRefusesCrossSite checks the dashboard's own state-changing
// route and the admin routes its buttons use against cross-site requests
// over plain HTTP.
func TestDashboardRefusesCrossSite(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	w, err := startDemoWorld(ctx, demoOptions{DataDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		path    string
		headers map[string]string
		want    int
	}{
		{"form post, no JSON", "/admin/streams/" + id + "/pause", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}, http.StatusForbidden},
		{"foreign origin", "/admin/streams/" + id + "/pause", map[string]string{"Content-Type": "application/json", "Origin": "http://evil.example"}, http.StatusForbidden},
		{"cross-site fetch", "/admin/outbox/" + id + "/replay", map[string]string{"Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, http.StatusForbidden},
		{"logout from elsewhere", "/admin/dashboard/logout", map[string]string{"X-SSF-Admin": "1", "Origin": "http://127.0.0.1:1"}, http.StatusForbidden},
		{"rebinding host", "/admin/dashboard/logout", map[string]string{"X-SSF-Admin": "1", "Host": "evil.example"}, http.StatusForbidden},
		{"same origin", "/admin/dashboard/logout", map[string]string{"X-SSF-Admin": "1", "Origin": w.AdminURL}, http.StatusNoContent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, w.AdminURL+tc.path, strings.NewReader("{}"))
			for k, v := range tc.headers {
				if k == "Host" {
					req.Host = v
					continue
				}
				req.Header.Set(k, v)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("got %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	if got := streamStatus(t, ctx, w, id); got != "enabled" {
		t.Errorf("stream status changed to %q by refused requests", got)
	}
}

// fillStream creates a poll stream (nothing is delivered, so every SET
// stays in the timeline) and enqueues n SETs for n users straight into the
// outbox, in batches.
func fillStream(tb testing.TB, ctx context.Context, w *demoWorld, n int) string {
	tb.Helper()
	var st struct {
		StreamID string `json:"stream_id"`
	}
	if _, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPollURN},
		"events_requested": []string{ssf.EventSessionRevoked}, "description": "a busy poll stream",
	}, &st); err != nil {
		tb.Fatal(err)
	}
	const batch = 2000
	for start := 0; start < n; start += batch {
		var sets []outbox.SET
		for i := start; i < min(start+batch, n); i++ {
			jti := fmt.Sprintf("bulk-%05d", i)
			claims, _ := json.Marshal(map[string]any{
				"iss": w.Front + "/ssf", "aud": "https://receiver.demo.example/", "iat": time.Now().Unix(), "jti": jti,
				"sub_id": map[string]any{"format": "complex",
					"user":    map[string]any{"format": "email", "email": fmt.Sprintf("user%d@example.com", i)},
					"session": map[string]any{"format": "opaque", "id": fmt.Sprintf("session-%d", i)}},
				"events": map[string]any{ssf.EventSessionRevoked: map[string]any{"initiating_entity": "admin"}},
			})
			sets = append(sets, outbox.SET{StreamID: st.StreamID, JTI: jti, EventType: ssf.EventSessionRevoked, Claims: claims,
				Labels: map[string]string{"source": "event_api", "initiator": "admin", "kind": "session_revoked"}})
		}
		if err := w.Sidecar.Outbox().Enqueue(ctx, sets, nil); err != nil {
			tb.Fatal(err)
		}
	}
	return st.StreamID
}

// BenchmarkDashboardTimeline10k measures the timeline API through the
// admin listener, real store underneath, on a stream with 10,000 SETs: the
// first page (what an open page re-loads on live events), a deep page, and
// a search that scans them all.
func BenchmarkDashboardTimeline10k(b *testing.B) {
	ctx := context.Background()
	w, err := startDemoWorld(ctx, demoOptions{DataDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	id := fillStream(b, ctx, w, 10000)
	for _, bc := range []struct {
		name, query string
		want        int
	}{
		{"first-page", "limit=100", 100},
		{"page-at-9800", "limit=100&offset=9800", 100},
		{"search-user", "q=user4242@", 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				var got struct {
					Items []json.RawMessage `json:"items"`
				}
				resp, err := http.Get(w.AdminURL + "/admin/dashboard/api/streams/" + id + "/timeline?" + bc.query)
				if err != nil {
					b.Fatal(err)
				}
				err = json.NewDecoder(resp.Body).Decode(&got)
				resp.Body.Close()
				if err != nil || len(got.Items) != bc.want {
					b.Fatalf("%d items, want %d (%v)", len(got.Items), bc.want, err)
				}
			}
		})
	}
}
