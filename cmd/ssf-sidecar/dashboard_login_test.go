package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestDashboardLoginInBrowser: with --admin-token, opening the dashboard
// leads to the token form (not JSON); a wrong token shows the form again
// with a message; the right one opens the dashboard with a session cookie
// that holds no token; "Log out" ends the session on the server.
func TestDashboardLoginInBrowser(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bctx, closeBrowser := newBrowser(t, ctx)
	defer closeBrowser()
	const token = "dashboard-admin-token-0123456789abcdef"
	s := startServe(t, map[string]string{"SSF_ADMIN_TOKEN": token}, "--data-dir", t.TempDir())
	page := s.admin + "/admin/dashboard/"
	step := func(name string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, scancel := context.WithTimeout(bctx, 20*time.Second)
		defer scancel()
		if err := chromedp.Do(sctx, actions...); err != nil {
			body, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
			t.Fatalf("%s: %v (page shows %q)", name, err, body)
		}
	}
	step("open the dashboard", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(`input#token`)))
	url, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`location.pathname`))
	if url != "/admin/login" {
		t.Errorf("the dashboard led to %q, want /admin/login", url)
	}
	step("wrong token", chromedp.SendKeys(chromedp.CSS(`input#token`), "not-the-token"),
		chromedp.Submit(chromedp.CSS(`input#token`)), chromedp.WaitVisible(chromedp.CSS(`p.error`)))
	msg, _ := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(`p.error`)))
	if !strings.Contains(msg, "not the admin token") {
		t.Errorf("wrong token message %q", msg)
	}
	step("right token", chromedp.SendKeys(chromedp.CSS(`input#token`), token),
		chromedp.Submit(chromedp.CSS(`input#token`)), chromedp.WaitVisible(chromedp.CSS(`#live.live:not(.off)`)),
		chromedp.WaitVisible(chromedp.CSS(`#logout`)))
	// The session cookie is HttpOnly: the page cannot read it (that it
	// holds an id and not the token is checked in ssf/admin).
	jsCookies, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.cookie`))
	if jsCookies != "" {
		t.Errorf("the page can read cookies: %q", jsCookies)
	}
	step("log out", chromedp.Click(chromedp.CSS(`#logout`)), chromedp.WaitVisible(chromedp.CSS(`input#token`)))
	// The old session is gone on the server: the dashboard asks again.
	step("dashboard after logout", chromedp.Navigate(page), chromedp.WaitVisible(chromedp.CSS(`input#token`)))
}
