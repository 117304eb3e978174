package admin

import (
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestAdminHostNames: the Kubernetes admin Service's names pass the Host
// check; names public DNS can give out still do not.
func TestAdminHostNames(t *testing.T) {
	s := newServer(Config{AllowedHosts: []string{"admin.example.com"}})
	for host, want := range map[string]bool{
		"ssf-sidecar-admin:9090":                              true,
		"ssf-sidecar-admin.authentik.svc:9090":                true,
		"ssf-sidecar-admin.authentik.svc.cluster.local:9090":  true,
		"ssf-sidecar-admin.authentik.svc.cluster.local.:9090": true,
		"localhost:9090":                                      true,
		"127.0.0.1:9090":                                      true,
		"[::1]:9090":                                          true,
		"admin.example.com":                                   true,
		"evil.example":                                        false,
		"ssf-sidecar-admin.evil.io":                           false,
		"svc":                                                 true,
		"evil.svc.example":                                    false,
		"bad_name":                                            false,
		"":                                                    false,
	} {
		if got := s.hostAllowed(host); got != want {
			t.Errorf("hostAllowed(%q) = %v, want %v", host, got, want)
		}
	}
}

// TestSessionsFollowTheToken: a session is a random id, valid for the token
// it was opened with; rotating the token ends it, and it expires.
func TestSessionsFollowTheToken(t *testing.T) {
	var tok atomic.Value
	tok.Store("first-admin-token-0123456789")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h, err := New(Config{TokenFunc: func() string { return tok.Load().(string) }, Transmitter: &fakeTx{}, Keys: fakeKeys{}, Outbox: &fakeOutbox{},
		Ready: func() error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	get := func(hdr map[string]string) int {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/admin/streams", nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	resp, err := noRedirect.PostForm(srv.URL+"/admin/login", url.Values{"token": {"first-admin-token-0123456789"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookie := SessionCookie + "=" + resp.Cookies()[0].Value
	if got := get(map[string]string{"Cookie": cookie}); got != 200 {
		t.Fatalf("session refused: %d", got)
	}
	tok.Store("second-admin-token-0123456789")
	if got := get(map[string]string{"Cookie": cookie}); got != 401 {
		t.Fatalf("a session opened with the old token still works: %d", got)
	}
	if got := get(map[string]string{"Authorization": "Bearer first-admin-token-0123456789"}); got != 401 {
		t.Fatalf("the old token still works: %d", got)
	}
	if got := get(map[string]string{"Authorization": "Bearer second-admin-token-0123456789"}); got != 200 {
		t.Fatalf("the new token is refused: %d", got)
	}
	// A wrong token in the form answers the form again, with a message.
	resp, err = noRedirect.PostForm(srv.URL+"/admin/login", url.Values{"token": {"guess"}})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(b.String(), "not the admin token") {
		t.Fatalf("wrong token: %d %s %s", resp.StatusCode, resp.Header.Get("Content-Type"), b.String())
	}

	st := newSessionStore(func() time.Time { return now })
	id, _ := st.create("t")
	if !st.valid(id, "t") || st.valid(id, "u") || st.valid("other", "t") {
		t.Fatal("session validity")
	}
	now = now.Add(sessionTTL)
	if st.valid(id, "t") {
		t.Fatal("session outlived its time")
	}
}

// TestTimelineInTimeOrder: a SET queued at the head (a stream-updated
// announcement) is shown by when it was issued, not by queue position.
func TestTimelineInTimeOrder(t *testing.T) {
	w := newWorld(t, 0, nil, "")
	mk := func(seq int, age time.Duration) outbox.Record {
		r := record("s1", seq, "a@example.com")
		r.EnqueuedAt = testNow.Add(-age)
		return r
	}
	// History answers newest queue position first: 3, 2, then the head 1.
	w.ob.records["s1"] = []outbox.Record{mk(3, 3*time.Minute), mk(2, 2*time.Minute), mk(1, 0)}
	var body struct {
		Items []struct {
			JTI string `json:"jti"`
		} `json:"items"`
	}
	w.get(t, "/admin/dashboard/api/streams/s1/timeline", &body)
	var got []string
	for _, it := range body.Items {
		got = append(got, it.JTI)
	}
	if strings.Join(got, ",") != "jti-00001,jti-00002,jti-00003" {
		t.Fatalf("timeline order %v, want newest issued first", got)
	}
}

// TestVerificationSubjectNotMasked: a verification SET's subject is the
// stream id, not personal data, and is shown as it is.
func TestVerificationSubjectNotMasked(t *testing.T) {
	w := newWorld(t, 0, nil, "")
	r := record("s1", 1, "a@example.com")
	r.EventType = ssf.EventVerification
	r.Claims = json.RawMessage(`{"iat":1,"jti":"jti-00001","sub_id":{"format":"opaque","id":"stream-s1-id"},"events":{"` + ssf.EventVerification + `":{}}}`)
	w.ob.records["s1"] = []outbox.Record{r, record("s1", 2, "bob@example.com")}
	var body struct {
		Items []struct {
			Subject string `json:"subject"`
		} `json:"items"`
	}
	w.get(t, "/admin/dashboard/api/streams/s1/timeline", &body)
	if len(body.Items) != 2 || body.Items[0].Subject != "opaque stream-s1-id" || strings.Contains(body.Items[1].Subject, "bob@") {
		t.Fatalf("subjects %+v", body.Items)
	}
}

// FuzzAdminHost: the admin Host check never panics, and a name it lets in
// without an IP, localhost or --admin-hosts is one public DNS cannot hand
// out: a single DNS label, or one under .svc or .svc.cluster.local.
func FuzzAdminHost(f *testing.F) {
	for _, s := range []string{"ssf-sidecar-admin:9090", "a.b.svc.cluster.local.:1", "[::1]:9090", "admin.example.com",
		"evil.example", "bad_name", "[", "]:", "x..svc", ".svc", "svc.", "ADMIN.EXAMPLE.COM:443", "%00", "\xff.svc"} {
		f.Add(s)
	}
	s := newServer(Config{AllowedHosts: []string{"admin.example.com"}})
	f.Fuzz(func(t *testing.T, host string) {
		if !s.hostAllowed(host) {
			return
		}
		h := host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			h = hh
		}
		h = strings.Trim(h, "[]")
		if strings.EqualFold(h, "localhost") || net.ParseIP(h) != nil || strings.EqualFold(h, "admin.example.com") {
			return
		}
		lh := strings.ToLower(strings.TrimSuffix(h, "."))
		if strings.Contains(lh, ".") && !strings.HasSuffix(lh, ".svc") && !strings.HasSuffix(lh, ".svc.cluster.local") {
			t.Fatalf("%q let in: a public DNS name", host)
		}
		for _, l := range strings.Split(lh, ".") {
			if l == "" || strings.Trim(l, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
				t.Fatalf("%q let in: label %q is not a DNS label", host, l)
			}
		}
	})
}
