package authentiktest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
)

// csrfTransport repeats the authentik_csrf cookie in X-authentik-CSRF on
// unsafe requests, as authentik's web UI does.
type csrfTransport struct {
	jar  http.CookieJar
	base http.RoundTripper
}

func (t csrfTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if unsafeMethod(r.Method) && r.Header.Get(CSRFHeader) == "" {
		for _, c := range t.jar.Cookies(r.URL) {
			if c.Name == CSRFCookieName {
				r = r.Clone(r.Context())
				r.Header.Set(CSRFHeader, c.Value)
			}
		}
	}
	return t.base.RoundTrip(r)
}

// NewBrowser returns an http.Client that behaves like authentik's web UI: a
// cookie jar, the CSRF header on unsafe requests, and no redirect following
// (flows answer redirects in JSON; 302s are returned to the caller).
func NewBrowser() *http.Client {
	jar, _ := cookiejar.New(nil) // never fails without options
	return &http.Client{
		Jar:           jar,
		Transport:     csrfTransport{jar: jar, base: http.DefaultTransport},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// FlowResult is a decoded flow executor answer.
type FlowResult struct {
	Status    int
	Component string
	Body      map[string]any
	// Redirected is true when the POST was answered with a 302 to the
	// executor itself and the result is that of the follow-up GET.
	Redirected bool
}

// RunFlow sends one flow executor request for slug to baseURL with client:
// GET when body is nil, else POST of body as JSON. Like a browser, it
// follows the executor's 302 to its own URL (a stage that is not the last)
// with a GET.
func RunFlow(ctx context.Context, client *http.Client, baseURL, slug string, body any) (FlowResult, error) {
	u := strings.TrimSuffix(baseURL, "/") + "/api/v3/flows/executor/" + url.PathEscape(slug) + "/?query="
	var raw []byte
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return FlowResult{}, fmt.Errorf("authentiktest: flow body: %w", err)
		}
		raw = b
	}
	res, loc, err := flowRequest(ctx, client, u, slug, raw)
	if err != nil || res.Status != http.StatusFound {
		return res, err
	}
	next, perr := url.Parse(loc)
	if perr != nil || (next.Host != "" && !strings.HasPrefix(u, next.Scheme+"://"+next.Host)) ||
		next.Path != "/api/v3/flows/executor/"+slug+"/" {
		return res, nil // a redirect elsewhere: the caller decides
	}
	base, _ := url.Parse(u)
	res, _, err = flowRequest(ctx, client, base.ResolveReference(next).String(), slug, nil)
	res.Redirected = true
	return res, err
}

// flowRequest sends one executor request (GET when body is nil) and
// decodes a JSON answer; a redirect's Location is returned undecoded.
func flowRequest(ctx context.Context, client *http.Client, u, slug string, body []byte) (FlowResult, string, error) {
	method := http.MethodGet
	var rd io.Reader
	if body != nil {
		method, rd = http.MethodPost, bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return FlowResult{}, "", fmt.Errorf("authentiktest: flow request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return FlowResult{}, "", fmt.Errorf("authentiktest: flow %s: %w", slug, err)
	}
	defer resp.Body.Close()
	res := FlowResult{Status: resp.StatusCode}
	if resp.StatusCode == http.StatusFound {
		_, _ = io.Copy(io.Discard, resp.Body)
		return res, resp.Header.Get("Location"), nil
	}
	if err := json.NewDecoder(resp.Body).Decode(&res.Body); err != nil {
		return res, "", fmt.Errorf("authentiktest: flow %s: decode answer (status %d): %w", slug, resp.StatusCode, err)
	}
	res.Component, _ = res.Body["component"].(string)
	return res, "", nil
}

// Login logs in through the authentication flow at baseURL (the simulator
// itself, or a proxy in front of it) and returns a browser-like client
// holding the session cookie. loginSlug is the authentication flow's slug.
func Login(ctx context.Context, baseURL, loginSlug, username, password string) (*http.Client, error) {
	c := NewBrowser()
	if _, err := RunFlow(ctx, c, baseURL, loginSlug, nil); err != nil {
		return nil, err
	}
	res, err := RunFlow(ctx, c, baseURL, loginSlug, map[string]any{
		"component": "ak-stage-identification", "uid_field": username, "password": password})
	if err != nil {
		return nil, err
	}
	if res.Component != "xak-flow-redirect" {
		return nil, fmt.Errorf("authentiktest: login %s: got %q, want xak-flow-redirect", username, res.Component)
	}
	return c, nil
}

// Login logs username in directly at the simulator.
func (s *Server) Login(username, password string) (*http.Client, error) {
	return Login(context.Background(), s.URL(), s.Flows().Authentication, username, password)
}

// SecretKey returns authentik's SECRET_KEY the cookies are signed with.
func (s *Server) SecretKey() string { return s.cfg.SecretKey }

// CookieValue returns the value of the named cookie the client holds for
// baseURL, or "".
func CookieValue(client *http.Client, baseURL, name string) string {
	if client.Jar == nil {
		return ""
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return ""
	}
	for _, c := range client.Jar.Cookies(u) {
		if c.Name == name {
			return c.Value
		}
	}
	return ""
}
