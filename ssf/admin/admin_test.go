package admin

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

func newAdmin(t *testing.T, token string, ready error) (http.Handler, *fakeTx) {
	t.Helper()
	tx := &fakeTx{streams: []ssf.Stream{{ID: "s1", Receiver: "acme", Status: ssf.StatusEnabled}}}
	h, err := New(Config{
		Token: token, Transmitter: tx, Keys: fakeKeys{}, Outbox: &fakeOutbox{},
		Ready: func() error { return ready },
		Health: []Check{
			{Name: "store", Run: func(context.Context) error { return nil }},
			{Name: "upstream", Run: func(context.Context) error { return errors.New("authentik unreachable") }},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return h, tx
}

type adminReq struct {
	method, path, remote, host, origin, auth, ctype, site string
}

func (r adminReq) do(h http.Handler) *httptest.ResponseRecorder {
	var body *strings.Reader
	if r.method == http.MethodPost {
		body = strings.NewReader(`{"reason":"r"}`)
	} else {
		body = strings.NewReader("")
	}
	req := httptest.NewRequest(r.method, r.path, body)
	req.RemoteAddr = r.remote
	if req.RemoteAddr == "" {
		req.RemoteAddr = "127.0.0.1:5555"
	}
	req.Host = r.host
	if req.Host == "" {
		req.Host = "127.0.0.1:9090"
	}
	if r.origin != "" {
		req.Header.Set("Origin", r.origin)
	}
	if r.auth != "" {
		req.Header.Set("Authorization", r.auth)
	}
	if r.ctype != "" {
		req.Header.Set("Content-Type", r.ctype)
	}
	if r.site != "" {
		req.Header.Set("Sec-Fetch-Site", r.site)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func TestAdminGuard(t *testing.T) {
	noToken, _ := newAdmin(t, "", nil)
	withToken, _ := newAdmin(t, "admin-secret-token", nil)
	cases := []struct {
		name string
		h    http.Handler
		r    adminReq
		want int
	}{
		{"loopback without a configured token", noToken, adminReq{method: "GET", path: "/admin/streams"}, 200},
		{"remote peer without a configured token", noToken, adminReq{method: "GET", path: "/admin/streams", remote: "10.1.2.3:4000"}, 401},
		{"DNS rebinding Host", noToken, adminReq{method: "GET", path: "/admin/streams", host: "evil.example:9090"}, 403},
		{"localhost Host", noToken, adminReq{method: "GET", path: "/admin/streams", host: "localhost:9090"}, 200},
		{"foreign Origin", noToken, adminReq{method: "GET", path: "/admin/streams", origin: "https://evil.example"}, 403},
		{"same Origin", noToken, adminReq{method: "GET", path: "/admin/streams", origin: "http://127.0.0.1:9090"}, 200},
		{"cross-site fetch metadata", noToken, adminReq{method: "GET", path: "/admin/streams", site: "cross-site"}, 403},
		{"form POST without JSON", noToken, adminReq{method: "POST", path: "/admin/streams/s1/pause", ctype: "application/x-www-form-urlencoded"}, 403},
		{"JSON POST", noToken, adminReq{method: "POST", path: "/admin/streams/s1/pause", ctype: "application/json"}, 200},
		{"token required, none sent", withToken, adminReq{method: "GET", path: "/admin/streams"}, 401},
		{"token required, wrong one", withToken, adminReq{method: "GET", path: "/admin/streams", auth: "Bearer nope"}, 401},
		{"token required, right one from afar", withToken, adminReq{method: "GET", path: "/admin/streams", remote: "10.1.2.3:4000", auth: "Bearer admin-secret-token"}, 200},
		{"token in the query string is not a token", withToken, adminReq{method: "GET", path: "/admin/streams?access_token=admin-secret-token"}, 401},
		{"unknown stream", noToken, adminReq{method: "GET", path: "/admin/streams/nope"}, 404},
		{"healthz needs no token", withToken, adminReq{method: "GET", path: "/healthz", remote: "10.1.2.3:4000"}, 200},
		{"readyz needs no token", withToken, adminReq{method: "GET", path: "/readyz", remote: "10.1.2.3:4000"}, 200},
		{"bad limit", noToken, adminReq{method: "GET", path: "/admin/outbox/s1/dlq?limit=-3"}, 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := tc.r.do(tc.h)
			if rec.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", rec.Code, tc.want, rec.Body.String())
			}
			if rec.Code == 401 && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("401 without a Bearer challenge")
			}
			if strings.Contains(rec.Body.String(), "admin-secret-token") {
				t.Errorf("response echoes the admin token")
			}
		})
	}
}

func TestAdminStatusChangesAndHealth(t *testing.T) {
	h, tx := newAdmin(t, "", errors.New("store closed"))
	rec := adminReq{method: "POST", path: "/admin/streams/s1/pause", ctype: "application/json"}.do(h)
	if rec.Code != 200 || tx.streams[0].Status != ssf.StatusPaused || tx.streams[0].Reason != "r" {
		t.Fatalf("pause: %d %+v", rec.Code, tx.streams[0])
	}
	rec = adminReq{method: "POST", path: "/admin/streams/s1/resume", ctype: "application/json"}.do(h)
	if rec.Code != 200 || tx.streams[0].Status != ssf.StatusEnabled {
		t.Fatalf("resume: %d %+v", rec.Code, tx.streams[0])
	}
	rec = adminReq{method: "GET", path: "/healthz"}.do(h)
	var health struct {
		Status string `json:"status"`
		Checks map[string]struct {
			Status, Error string
		} `json:"checks"`
	}
	if rec.Code != 200 || json.Unmarshal(rec.Body.Bytes(), &health) != nil {
		t.Fatalf("healthz: %d %s", rec.Code, rec.Body)
	}
	if health.Status != "degraded" || health.Checks["upstream"].Status != "failing" || health.Checks["store"].Status != "ok" {
		t.Fatalf("healthz details: %+v", health)
	}
	if rec = (adminReq{method: "GET", path: "/readyz"}).do(h); rec.Code != 503 {
		t.Fatalf("readyz with the store closed: %d", rec.Code)
	}
}
