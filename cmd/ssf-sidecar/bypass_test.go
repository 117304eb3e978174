package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// bypassRequest is one spelling of a tapped action, sent as raw bytes.
type bypassRequest struct {
	method, target string
	header         []string // extra "Name: value" lines
	body           string
	bodyDelay      time.Duration // the body comes this much after the head
}

// send writes r to addr and returns the status (0: the connection closed
// without an answer).
func (r bypassRequest) send(t *testing.T, addr string) int {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(15 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n", r.method, r.target, addr)
	for _, h := range r.header {
		b.WriteString(h + "\r\n")
	}
	if r.body != "" && !hasHeader(r.header, "transfer-encoding") && !hasHeader(r.header, "content-length") {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(r.body))
	}
	b.WriteString("\r\n")
	if _, err := c.Write([]byte(b.String())); err != nil {
		t.Fatal(err)
	}
	if r.bodyDelay > 0 {
		time.Sleep(r.bodyDelay)
	}
	if _, err := c.Write([]byte(r.body)); err != nil {
		return 0
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func hasHeader(lines []string, name string) bool {
	for _, l := range lines {
		if strings.HasPrefix(strings.ToLower(l), name+":") {
			return true
		}
	}
	return false
}

// spellings returns the ways of writing path (an origin-form target under
// /api/v3/) that the table tries: target forms and path variants.
func spellings(addr, path string) map[string]string {
	return map[string]string{
		"origin-form":           path,
		"absolute-form":         "http://" + addr + path,
		"opaque":                "x:y:" + path,
		"opaque-no-slash":       "x:" + path[1:],
		"double-slash":          "/" + path,
		"inner double slash":    strings.Replace(path, "/v3/", "/v3//", 1),
		"dot segment":           strings.Replace(path, "/v3/", "/v3/./", 1),
		"dot-dot segment":       strings.Replace(path, "/v3/", "/v3/x/../", 1),
		"trailing dot":          path + ".",
		"escaped letter":        strings.Replace(path, "/api/", "/%61pi/", 1),
		"escaped slash":         strings.Replace(path, "/v3/", "/v3%2F", 1),
		"upper-case escape hex": strings.Replace(path, "/api/", "/%61%70i/", 1),
	}
}

// TestTapBypassTable: every tapped action, in every spelling the review
// tried (target forms, path variants, method tricks, framing tricks, a
// slow body), is either refused before authentik acts on it or produces
// its SET.
func TestTapBypassTable(t *testing.T) {
	w, addr, admin, newUser := bypassWorld(t, 100*time.Millisecond)
	actions := []bypassAction{
		{"revoke a session", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			s, _, err := w.AK.IssueSession(u.PK)
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "DELETE", target: target("/api/v3/core/authenticated_sessions/" + s.UUID + "/"), header: []string{admin}}
			return req, func() bool { _, ok := w.AK.Session(s.UUID); return !ok }, []string{"session-revoked"}
		}},
		{"set a password", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			before := u.PasswordChangeDate
			req := bypassRequest{method: "POST", target: target(fmt.Sprintf("/api/v3/core/users/%d/set_password/", u.PK)),
				header: []string{admin}, body: `{"password":"Admin-set-1"}`}
			return req, func() bool { now, _ := w.AK.User(u.PK); return !now.PasswordChangeDate.Equal(before) }, []string{"credential-change"}
		}},
		{"log out through the invalidation flow", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			s, cookie, err := w.AK.IssueSession(u.PK)
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "GET", target: target("/api/v3/flows/executor/" + w.AK.Flows().Invalidation + "/?query="),
				header: []string{"Cookie: authentik_session=" + cookie}}
			return req, func() bool { _, ok := w.AK.Session(s.UUID); return !ok }, []string{"session-revoked"}
		}},
		{"delete an MFA device", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			d, err := w.AK.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: u.PK})
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "DELETE", target: target(fmt.Sprintf("/api/v3/authenticators/admin/totp/%d/", d.PK)), header: []string{admin}}
			return req, func() bool { _, ok := w.AK.Device(authentiktest.DeviceTOTP, d.PK); return !ok }, []string{"credential-change"}
		}},
		{"deactivate a user", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			// authentik ends the user's sessions too, without a trace of its own.
			if _, _, err := w.AK.IssueSession(u.PK); err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "PATCH", target: target(fmt.Sprintf("/api/v3/core/users/%d/", u.PK)),
				header: []string{admin}, body: `{"is_active": false}`}
			return req, func() bool { now, _ := w.AK.User(u.PK); return !now.IsActive }, []string{"account-disabled", "session-revoked"}
		}},
	}
	type variant struct {
		name   string
		target func(string) string
		tweak  func(*bypassRequest)
	}
	var variants []variant
	for name := range spellings(addr, "/api/v3/x/") {
		name := name
		variants = append(variants, variant{name: name, target: func(p string) string { return spellings(addr, p)[name] }})
	}
	origin := func(p string) string { return p }
	variants = append(variants,
		variant{"lower-case method", origin, func(r *bypassRequest) { r.method = strings.ToLower(r.method) }},
		variant{"method override header", origin, func(r *bypassRequest) {
			r.header = append(r.header, "X-HTTP-Method-Override: "+r.method)
			r.method = "POST"
		}},
		variant{"content-length and chunked", origin, func(r *bypassRequest) {
			r.header = append(r.header, fmt.Sprintf("Content-Length: %d", len(r.body)+5), "Transfer-Encoding: chunked")
			r.body = fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(r.body), r.body)
		}},
		variant{"obs-folded content-length", origin, func(r *bypassRequest) {
			r.header = append(r.header, fmt.Sprintf("Content-Length:\r\n %d", len(r.body)))
		}},
		variant{"slow body", origin, func(r *bypassRequest) { r.bodyDelay = 1500 * time.Millisecond }},
		variant{"chunked body", origin, func(r *bypassRequest) {
			if r.body != "" {
				r.header = append(r.header, "Content-Type: application/json", "Transfer-Encoding: chunked")
				r.body = fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(r.body), r.body)
			}
		}},
	)
	var acted []bypassPending
	for _, a := range actions {
		for _, v := range variants {
			row := a.name + " / " + v.name
			u := newUser()
			req, happened, events := a.build(u, v.target)
			if v.tweak != nil {
				v.tweak(&req)
			}
			status := req.send(t, addr)
			if happened() {
				acted = append(acted, bypassPending{row, u, events})
				continue
			}
			if status/100 == 2 {
				t.Errorf("%s: answered %d but authentik did not act", row, status)
			}
		}
	}
	if len(acted) == 0 {
		t.Fatal("no spelling ran the action at all: the table tests nothing")
	}
	// Every action authentik ran must have produced its SET.
	waitForSETs(t, w, acted)
	t.Logf("%d rows ran the action and produced its SET; the others were refused or not run", len(acted))
}

// bypassAction builds the request of one row for a target spelling and
// reports, after it ran, whether authentik acted and which SET events
// must then name the user.
type bypassAction struct {
	name  string
	build func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string)
}

// bypassWorld starts a sidecar in front of the simulated authentik with a
// push stream for every event the table checks, its event-API poller
// reading every poll.
func bypassWorld(t *testing.T, poll time.Duration) (w *demoWorld, addr, admin string, newUser func() authentiktest.User) {
	t.Helper()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(), PollInterval: poll})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	ctx := context.Background()
	all := []string{ssf.EventSessionRevoked, ssf.EventCredentialChange, ssf.EventAccountDisabled}
	if _, err := w.CreatePushStream(ctx, all); err != nil {
		t.Fatal(err)
	}
	if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	addr = strings.TrimPrefix(w.Front, "http://")
	admin = "Authorization: Bearer " + w.AK.AdminToken()
	n := 0
	newUser = func() authentiktest.User {
		n++
		name := fmt.Sprintf("u%d", n)
		u, err := w.AK.AddUser(authentiktest.UserSpec{Username: name, Email: name + "@example.com", Password: name + "-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		return u
	}
	return w, addr, admin, newUser
}

// waitForSETs waits until every SET event each acted row expects names its
// user, failing the rows whose SET does not come.
func waitForSETs(t *testing.T, w *demoWorld, acted []bypassPending) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range acted {
		for _, event := range p.events {
			for !hasSET(w.Receiver.Received(), event, p.user.Email) {
				if time.Now().After(deadline) {
					t.Errorf("%s: authentik acted but no %s SET names %s; got %v", p.row, event, p.user.Email, summarize(w.Receiver.Received()))
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
	}
}

type bypassPending struct {
	row    string
	user   authentiktest.User
	events []string
}

// TestTapBypassTableTrafficOnly: spellings that authentik reads as Python
// and Django do (HEAD as GET, the last of duplicate cookies, ids in any
// script's digits or between spaces, booleans as strings) are refused or
// produce their SET from the traffic alone. The poller reads the event
// API once at start and then not within the test, so a row the tap
// misreads cannot be rescued by authentik's event log.
func TestTapBypassTableTrafficOnly(t *testing.T) {
	w, addr, admin, newUser := bypassWorld(t, time.Hour)
	origin := func(p string) string { return p }
	arabic := func(n int) string { // n in Arabic-Indic digits, percent-encoded
		var b strings.Builder
		for _, d := range strconv.Itoa(n) {
			b.WriteString(url.PathEscape(string('\u0660' + d - '0')))
		}
		return b.String()
	}
	var decoys []authentiktest.User
	singles := []bypassAction{
		{"log out through the invalidation flow with HEAD", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			// Django's View runs get() for HEAD: the logout stage runs.
			s, cookie, err := w.AK.IssueSession(u.PK)
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "HEAD", target: target("/api/v3/flows/executor/" + w.AK.Flows().Invalidation + "/?query="),
				header: []string{"Cookie: authentik_session=" + cookie}}
			return req, func() bool { _, ok := w.AK.Session(s.UUID); return !ok }, []string{"session-revoked"}
		}},
		{"log out with a decoy session cookie first", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			// Django keeps the last of two cookies of one name: the SET
			// must name u, whose session authentik ends, not the decoy.
			decoy := newUser()
			_, decoyCookie, err := w.AK.IssueSession(decoy.PK)
			if err != nil {
				t.Fatal(err)
			}
			s, cookie, err := w.AK.IssueSession(u.PK)
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "GET", target: target("/api/v3/flows/executor/" + w.AK.Flows().Invalidation + "/?query="),
				header: []string{"Cookie: authentik_session=" + decoyCookie + "; authentik_session=" + cookie}}
			decoys = append(decoys, decoy)
			return req, func() bool { _, ok := w.AK.Session(s.UUID); return !ok }, []string{"session-revoked"}
		}},
		{"set a password, user id in Arabic-Indic digits", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			before := u.PasswordChangeDate
			req := bypassRequest{method: "POST", target: target("/api/v3/core/users/" + arabic(u.PK) + "/set_password/"),
				header: []string{admin}, body: `{"password":"Admin-set-1"}`}
			return req, func() bool { now, _ := w.AK.User(u.PK); return !now.PasswordChangeDate.Equal(before) }, []string{"credential-change"}
		}},
		{"deactivate a user, user id between spaces", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			req := bypassRequest{method: "PATCH", target: target(fmt.Sprintf("/api/v3/core/users/%%20%d%%20/", u.PK)),
				header: []string{admin}, body: `{"is_active": false}`}
			return req, func() bool { now, _ := w.AK.User(u.PK); return !now.IsActive }, []string{"account-disabled"}
		}},
		{"delete an MFA device, device id in Arabic-Indic digits", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			d, err := w.AK.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: u.PK})
			if err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "DELETE", target: target("/api/v3/authenticators/admin/totp/" + arabic(d.PK) + "/"), header: []string{admin}}
			return req, func() bool { _, ok := w.AK.Device(authentiktest.DeviceTOTP, d.PK); return !ok }, []string{"credential-change"}
		}},
		{"deactivate a user with the string \"false\"", func(u authentiktest.User, target func(string) string) (bypassRequest, func() bool, []string) {
			// authentik ends the user's sessions too: the tap must read
			// "false" as false to list them before they go.
			if _, _, err := w.AK.IssueSession(u.PK); err != nil {
				t.Fatal(err)
			}
			req := bypassRequest{method: "PATCH", target: target(fmt.Sprintf("/api/v3/core/users/%d/", u.PK)),
				header: []string{admin}, body: `{"is_active": "false"}`}
			return req, func() bool { now, _ := w.AK.User(u.PK); return !now.IsActive }, []string{"account-disabled", "session-revoked"}
		}},
	}
	var acted []bypassPending
	for _, a := range singles {
		u := newUser()
		req, happened, events := a.build(u, origin)
		status := req.send(t, addr)
		if !happened() {
			// Each spelling is one authentik acts on: a row it refuses
			// would test nothing.
			t.Errorf("%s: authentik did not act (status %d)", a.name, status)
			continue
		}
		acted = append(acted, bypassPending{a.name, u, events})
	}
	waitForSETs(t, w, acted)
	for _, d := range decoys {
		if hasSET(w.Receiver.Received(), "session-revoked", d.Email) {
			t.Errorf("a session-revoked SET names %s, whose session authentik did not end", d.Email)
		}
	}
}

func hasSET(sets []receivedSET, event, email string) bool {
	for _, s := range sets {
		if s.Event == event && strings.Contains(s.Subject, email) {
			return true
		}
	}
	return false
}
