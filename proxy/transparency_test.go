package proxy

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestTransparency sends each request once straight to the upstream and once
// through the proxy, and requires the upstream to have seen the same thing
// (bar X-Forwarded-*) and the client to have got the same answer.
func TestTransparency(t *testing.T) {
	up := reflectUpstream(t)
	_, base := startProxy(t, Config{Upstream: mustURL(t, up.URL)})

	type tc struct {
		name    string
		method  string
		path    string // raw, sent as-is on the request line
		header  map[string][]string
		body    string
		chunked bool
		status  int
	}
	cases := []tc{
		{name: "get", method: "GET", path: "/api/v3/core/users/me/", status: 200},
		{name: "encoded path and query", method: "GET", path: "/a%2Fb/c%20d/%E2%82%AC;x?q=%2F%26&r=1+2&r=3", status: 200},
		{name: "double slash and dot segments kept", method: "GET", path: "/x//y/./../z%2e%2e/", status: 200},
		{name: "post json", method: "POST", path: "/api/v3/flows/executor/default-invalidation/?query=next%3D%2F",
			header: map[string][]string{"Content-Type": {"application/json"}}, body: `{"component":"ak-stage-password","password":"s3cret"}`, status: 200},
		{name: "put chunked", method: "PUT", path: "/upload", body: strings.Repeat("chunk-", 5000), chunked: true, status: 201},
		{name: "delete", method: "DELETE", path: "/api/v3/core/authenticated_sessions/abc/", status: 204},
		{name: "patch", method: "PATCH", path: "/api/v3/core/users/7/", body: `{"is_active":false}`, status: 200},
		{name: "custom method", method: "PROPFIND", path: "/dav/", status: 207},
		{name: "other method", method: "PURGE", path: "/cache", status: 200},
		{name: "head", method: "HEAD", path: "/static/dist/poly.js", status: 200},
		{name: "options", method: "OPTIONS", path: "/api/v3/", status: 200},
		{name: "redirect", method: "GET", path: "/flows/-/default/invalidation/", status: 302},
		{name: "not modified", method: "GET", path: "/static/x.css", header: map[string][]string{"If-None-Match": {`"abc"`}}, status: 304},
		{name: "client error", method: "GET", path: "/missing", status: 404},
		{name: "server error", method: "POST", path: "/boom", body: "x", status: 500},
		{name: "headers and cookies", method: "GET", path: "/if/admin/", status: 200, header: map[string][]string{
			"Cookie":             {"authentik_session=eyJhbGciOi.eyJzaWQiOiJ4In0.sig; authentik_csrf=tok; authentik_language=de"},
			"Authorization":      {"Bearer ak-token-value"},
			"X-Authentik-Csrf":   {"tok"},
			"Accept":             {"text/html", "application/json;q=0.9"},
			"Accept-Encoding":    {"gzip, br"},
			"X-Custom-Multi":     {"a", "b", "c"},
			"User-Agent":         {"Mozilla/5.0 (test)"},
			"X-Large":            {strings.Repeat("L", 16<<10)},
			"Te":                 {"trailers"},
			"X-Request-Id":       {"req-1"},
			"Sec-Fetch-Mode":     {"navigate"},
			"If-Modified-Since":  {"Tue, 01 Jan 2030 00:00:00 GMT"},
			"X-Authentik-Remote": {"10.0.0.9"},
		}},
		{name: "no user agent", method: "GET", path: "/noua", status: 200, header: map[string][]string{"User-Agent": {""}}},
	}
	client := noRedirect()
	do := func(t *testing.T, c tc, target string) (*http.Response, []byte) {
		t.Helper()
		var body io.Reader
		if c.body != "" {
			body = strings.NewReader(c.body)
			if c.chunked {
				body = io.MultiReader(body) // hides the length: chunked upload
			}
		}
		req, err := http.NewRequest(c.method, target, body)
		if err != nil {
			t.Fatal(err)
		}
		req.URL.Opaque = "" // keep the raw path exactly
		req.URL.RawPath = ""
		req.URL.Path = ""
		req.URL.Opaque = c.path
		if i := strings.IndexByte(c.path, '?'); i >= 0 {
			req.URL.Opaque, req.URL.RawQuery = c.path[:i], c.path[i+1:]
		}
		req.Host = "auth.example.test"
		for k, vv := range c.header {
			req.Header[k] = vv
		}
		st, _ := json.Marshal(c.status)
		req.Header.Set("X-Want-Status", string(st))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, target, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp, b
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dResp, dBody := do(t, c, up.URL)
			pResp, pBody := do(t, c, base)

			if dResp.StatusCode != c.status || pResp.StatusCode != c.status {
				t.Fatalf("status direct=%d proxied=%d, want %d", dResp.StatusCode, pResp.StatusCode, c.status)
			}
			if d := headerDiff(dResp.Header, pResp.Header, "Date", "Content-Length"); d != "" {
				t.Errorf("response headers differ: %s", d)
			}
			if pResp.ContentLength >= 0 && c.method != "HEAD" && pResp.ContentLength != int64(len(pBody)) {
				t.Errorf("Content-Length %d for a body of %d bytes", pResp.ContentLength, len(pBody))
			}
			if len(dBody) == 0 {
				if len(pBody) != 0 {
					t.Errorf("proxied body %q, direct none", pBody)
				}
				return
			}
			var dSeen, pSeen seen
			if err := json.Unmarshal(dBody, &dSeen); err != nil {
				t.Fatalf("direct body: %v", err)
			}
			if err := json.Unmarshal(pBody, &pSeen); err != nil {
				t.Fatalf("proxied body: %v (%q)", err, pBody)
			}
			if dSeen.Method != pSeen.Method || dSeen.RequestURI != pSeen.RequestURI || dSeen.Host != pSeen.Host ||
				dSeen.Body != pSeen.Body || dSeen.ContentLength != pSeen.ContentLength || dSeen.Proto != pSeen.Proto {
				t.Errorf("upstream saw different requests:\ndirect  %+v\nproxied %+v", dSeen, pSeen)
			}
			if c.chunked && pSeen.ContentLength != -1 {
				t.Errorf("chunked upload arrived with length %d", pSeen.ContentLength)
			}
			if d := headerDiff(dSeen.Header, pSeen.Header, "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"); d != "" {
				t.Errorf("upstream saw different headers: %s", d)
			}
			want := map[string]string{"X-Forwarded-For": "127.0.0.1", "X-Forwarded-Proto": "http", "X-Forwarded-Host": "auth.example.test"}
			for k, v := range want {
				if got := pSeen.Header[k]; len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestRouting checks that only paths under the SSF prefixes reach the SSF
// handler and that every other path and method is proxied.
func TestRouting(t *testing.T) {
	up := reflectUpstream(t)
	ssf := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-From", "ssf")
		_, _ = io.WriteString(w, r.Method+" "+r.URL.Path)
	})
	s, base := startProxy(t, Config{Upstream: mustURL(t, up.URL), SSF: ssf,
		SSFPrefixes: []string{"/ssf/", "/.well-known/ssf-configuration/ssf"}})
	cases := []struct {
		method, path string
		ssf          bool
	}{
		{"GET", "/ssf/streams", true},
		{"POST", "/ssf/streams/status", true},
		{"DELETE", "/ssf/streams", true},
		{"GET", "/ssf", true},
		{"GET", "/.well-known/ssf-configuration/ssf", true},
		{"GET", "/.well-known/ssf-configuration", false},
		{"GET", "/.well-known/openid-configuration", false},
		{"GET", "/ssfx", false},
		{"GET", "/api/v3/ssf/", false},
		{"PURGE", "/anything", false},
		{"GET", "/", false},
	}
	client := noRedirect()
	for _, c := range cases {
		req, _ := http.NewRequest(c.method, base+c.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		got := resp.Header.Get("X-From") == "ssf"
		if got != c.ssf {
			t.Errorf("%s %s: ssf=%v, want %v (status %d, body %.80q)", c.method, c.path, got, c.ssf, resp.StatusCode, b)
		}
	}
	st := s.Stats()
	if st.SSF != 5 || st.Proxied != uint64(len(cases)-5) {
		t.Errorf("stats %+v", st)
	}
}
