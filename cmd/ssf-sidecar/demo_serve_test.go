package main

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDemoServeAuthentik: `demo --serve-authentik` runs the simulated
// authentik on its own, and `serve` put in front of it as printed proxies
// it, with the event-API poller on.
func TestDemoServeAuthentik(t *testing.T) {
	addr, err := freeAddr()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"demo", "--serve-authentik", "--authentik-listen", addr}, out, out) }()
	defer func() {
		cancel()
		if code := <-done; code != exitOK {
			t.Errorf("demo --serve-authentik exited %d", code)
		}
	}()
	tokenRE := regexp.MustCompile(`SSF_AUTHENTIK_TOKEN=(\S+) SSF_AUTHENTIK_SECRET_KEY=(\S+)`)
	deadline := time.Now().Add(10 * time.Second)
	for !tokenRE.MatchString(out.String()) {
		if time.Now().After(deadline) {
			t.Fatalf("no serve command printed:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	m := tokenRE.FindStringSubmatch(out.String())
	if !strings.Contains(out.String(), "--upstream http://"+addr) {
		t.Fatalf("output:\n%s", out.String())
	}
	s := startServe(t, map[string]string{"SSF_AUTHENTIK_TOKEN": m[1], "SSF_AUTHENTIK_SECRET_KEY": m[2]},
		"--upstream", "http://"+addr, "--data-dir", t.TempDir())
	req, _ := http.NewRequest(http.MethodGet, s.front+"/api/v3/core/users/me/", nil)
	req.Header.Set("Authorization", "Bearer "+m[1])
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("authentik through the sidecar: %d", resp.StatusCode)
	}
	_, body := getBody(t, s.admin+"/healthz")
	if !strings.Contains(body, `"upstream":{"status":"ok"`) {
		t.Fatalf("healthz: %s", body)
	}
}
