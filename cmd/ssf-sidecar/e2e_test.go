package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/sgnl-ai/caep.dev/secevent/pkg/parser"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// Whole-system tests: the simulated authentik, the real sidecar (proxy,
// tap, transmitter, outbox on bbolt) and receivers, over HTTP.

var sessionValue = regexp.MustCompile(`session=\S+ `)

const pollReceiverToken = "poll-receiver-token-0123456789abcdef"

func systemReceivers() []ssf.Receiver {
	return []ssf.Receiver{
		{Name: "push-rx", Audience: "https://push.rx.example/", SubjectFormat: ssf.SubjectFormatComplex, Profile: ssf.ProfileSSF,
			Tokens: []ssf.Token{{Value: demoReceiverToken, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}},
		{Name: "poll-rx", Audience: "poll-rx", SubjectFormat: ssf.SubjectFormatEmail, Profile: ssf.ProfileSSF,
			Tokens: []ssf.Token{{Value: pollReceiverToken, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}},
		{Name: "legacy-rx", Audience: "legacy-rx", SubjectFormat: ssf.SubjectFormatEmail, Profile: ssf.ProfileLegacy,
			Tokens: []ssf.Token{{Value: "legacy-receiver-token-0123456789", Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}}},
	}
}

func newSystem(t *testing.T) *demoWorld {
	t.Helper()
	w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(), PollInterval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// call sends an SSF request with a given token.
func (w *demoWorld) call(t *testing.T, token, method, path string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = strings.NewReader(string(b))
	}
	req, _ := http.NewRequest(method, w.Front+path, rd)
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

// settle waits until the tap has polled authentik's event API twice after
// the last action and every push queue is empty, so anything that could
// still arrive (a duplicate from the second source) has arrived.
func (w *demoWorld) settle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for round := 0; round < 2; round++ {
		n := w.Sidecar.Tap().Stats().Polls
		w.Sidecar.Tap().PollNow()
		for w.Sidecar.Tap().Stats().Polls <= n {
			if time.Now().After(deadline) {
				t.Fatal("the event-API poller did not poll")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for {
		stats, err := w.Sidecar.Outbox().AllStats(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		busy := false
		for _, s := range stats {
			if s.Method == "push" && s.Backlog > 0 {
				busy = true
			}
		}
		if !busy {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("push queues did not drain: %+v", stats)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// logInAndOut logs a user in and out through the sidecar — the proxy and
// the event API both see the logout — and returns the session cookie the
// browser held.
func (w *demoWorld) logInAndOut(t *testing.T, username, password string) string {
	t.Helper()
	ctx := context.Background()
	browser, err := authentiktest.Login(ctx, w.Front, w.AK.Flows().Authentication, username, password)
	if err != nil {
		t.Fatal(err)
	}
	cookie := authentiktest.CookieValue(browser, w.Front, "authentik_session")
	if _, err := authentiktest.RunFlow(ctx, browser, w.Front, w.AK.Flows().Invalidation, nil); err != nil {
		t.Fatal(err)
	}
	return cookie
}

func summarize(sets []receivedSET) []string {
	var out []string
	for _, s := range sets {
		if s.Event == "verification" {
			continue
		}
		out = append(out, fmt.Sprintf("%s/%s/%s", s.Event, s.Initiator, sessionValue.ReplaceAllString(s.Subject, "session=* ")))
	}
	sort.Strings(out)
	return out
}

func (w *demoWorld) independentVerify(t *testing.T, compact, aud string) {
	t.Helper()
	resp, err := http.Get(w.Front + "/ssf/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	jwks, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	p := parser.NewParser(parser.WithJWKSJSON(jwks), parser.WithExpectedIssuer(w.Front+"/ssf"), parser.WithExpectedAudience(aud))
	if _, err := p.ParseSecEvent(compact); err != nil {
		t.Errorf("independent verifier refused a SET: %v", err)
	}
}

// pollAll drains a poll stream, acknowledging as it goes.
func (w *demoWorld) pollAll(t *testing.T, token, endpoint string) []receivedSET {
	t.Helper()
	var out []receivedSET
	var ack []string
	for i := 0; i < 50; i++ {
		code, body := w.call(t, token, http.MethodPost, strings.TrimPrefix(endpoint, w.Front), map[string]any{"returnImmediately": true, "ack": ack, "maxEvents": 5})
		if code != http.StatusOK {
			t.Fatalf("poll: %d %s", code, body)
		}
		var pr struct {
			Sets          map[string]string `json:"sets"`
			MoreAvailable bool              `json:"moreAvailable"`
		}
		if err := json.Unmarshal(body, &pr); err != nil {
			t.Fatal(err)
		}
		ack = ack[:0]
		for jti, compact := range pr.Sets {
			s, err := w.Receiver.Verify(context.Background(), compact)
			if err != nil {
				t.Fatalf("polled SET does not verify: %v", err)
			}
			if s.JTI != jti {
				t.Fatalf("sets map key %q is not the SET's jti %q", jti, s.JTI)
			}
			out = append(out, s)
			ack = append(ack, jti)
		}
		if len(pr.Sets) == 0 && !pr.MoreAvailable {
			return out
		}
	}
	t.Fatal("poll stream never ran dry")
	return nil
}

// TestSystemEachActionExactlyOnce drives every action through the proxy (or,
// for actions the proxy never sees, directly in authentik) and checks the
// exact SETs each kind of receiver gets: once each, whichever sources saw
// the action.
func TestSystemEachActionExactlyOnce(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	all := []string{ssf.EventSessionRevoked, ssf.EventCredentialChange, ssf.EventAccountDisabled, ssf.EventAccountEnabled,
		ssf.EventAccountPurged, ssf.EventIdentifierChanged}
	// push-rx: push, complex subjects.
	if _, err := w.CreatePushStream(ctx, all); err != nil {
		t.Fatal(err)
	}
	// poll-rx: poll (no delivery given), email subjects.
	code, body := w.call(t, pollReceiverToken, http.MethodPost, "/ssf/streams", map[string]any{"events_requested": all})
	if code != http.StatusCreated {
		t.Fatalf("poll stream: %d %s", code, body)
	}
	var pollStream struct {
		Delivery struct {
			Method      string `json:"method"`
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	json.Unmarshal(body, &pollStream)
	if pollStream.Delivery.Method != ssf.MethodPollURN || !strings.HasPrefix(pollStream.Delivery.EndpointURL, w.Front+"/ssf/") {
		t.Fatalf("poll stream delivery: %+v", pollStream.Delivery)
	}
	if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	users := map[string]authentiktest.User{}
	for _, name := range []string{"alice", "bob", "carol", "dave", "erin"} {
		u, err := w.AK.AddUser(authentiktest.UserSpec{Username: name, Email: name + "@example.com", Password: name + "-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		users[name] = u
	}
	// alice logs in and out: the proxy and the event API both see the logout.
	w.logInAndOut(t, "alice", "alice-password-1")
	// An admin sets bob's password (both sources) and revokes bob's session
	// (only the traffic: authentik logs nothing for it).
	resp, _, err := w.AdminDo(ctx, http.MethodPost, fmt.Sprintf("/api/v3/core/users/%d/set_password/", users["bob"].PK), `{"password":"Admin-set-1"}`)
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("set_password: %v %v", resp, err)
	}
	sess, _, err := w.AK.IssueSession(users["bob"].PK)
	if err != nil {
		t.Fatal(err)
	}
	resp, _, err = w.AdminDo(ctx, http.MethodDelete, "/api/v3/core/authenticated_sessions/"+sess.UUID+"/", "")
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("session delete: %v %v", resp, err)
	}
	// authentik disables carol on its own (a source sync): no event. Her
	// browser's next request makes authentik (2025.4+) log her out, and that
	// logout of a now inactive user is the event API's first trace of the
	// disable. The sidecar compares against what it knew of carol (from her
	// login).
	carol, err := authentiktest.Login(ctx, w.Front, w.AK.Flows().Authentication, "carol", "carol-password-1")
	if err != nil {
		t.Fatal(err)
	}
	w.settle(t)
	if err := w.AK.SystemDisableUser(users["carol"].PK); err != nil {
		t.Fatal(err)
	}
	if resp, err := carol.Get(w.Front + "/api/v3/core/users/me/"); err == nil {
		resp.Body.Close()
	}
	// An admin changes dave's email and deletes erin.
	resp, _, err = w.AdminDo(ctx, http.MethodPatch, fmt.Sprintf("/api/v3/core/users/%d/", users["dave"].PK), `{"email":"dave.new@example.com"}`)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("email change: %v %v", resp, err)
	}
	resp, _, err = w.AdminDo(ctx, http.MethodDelete, fmt.Sprintf("/api/v3/core/users/%d/", users["erin"].PK), "")
	if err != nil || resp.StatusCode != http.StatusNoContent {
		t.Fatalf("user delete: %v %v", resp, err)
	}

	const actions = 7
	if err := w.Receiver.WaitFor(ctx, 1+actions, 20*time.Second); err != nil {
		t.Fatalf("%v: got %v", err, summarize(w.Receiver.Received()))
	}
	w.settle(t)

	pushed := w.Receiver.Received()
	wantPush := []string{
		"account-disabled//user=carol@example.com",
		"account-purged//user=erin@example.com",
		"credential-change/admin/user=bob@example.com",
		"identifier-changed//dave@example.com",
		"session-revoked/admin/session=* user=bob@example.com",
		"session-revoked/system/user=carol@example.com",
		"session-revoked/user/session=* user=alice@example.com",
	}
	if g := summarize(pushed); strings.Join(g, "\n") != strings.Join(wantPush, "\n") {
		t.Errorf("push receiver got:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(wantPush, "\n  "))
	}
	for _, s := range pushed {
		checkSETShape(t, s, w.Front+"/ssf", "https://push.rx.example/")
		if strings.HasPrefix(s.Event, "session-") || s.Event == "credential-change" || s.Event == "verification" {
			w.independentVerify(t, s.Compact, "https://push.rx.example/")
		}
		body := eventBody(s)
		switch s.Event {
		case "identifier-changed":
			if body["new-value"] != "dave.new@example.com" {
				t.Errorf("identifier-changed new-value = %v", body["new-value"])
			}
		case "credential-change":
			if body["credential_type"] != "password" || body["change_type"] != "update" {
				t.Errorf("credential-change body = %v", body)
			}
			if r, _ := body["reason_admin"].(map[string]any); len(r) == 0 {
				t.Errorf("credential-change without reason_admin: %v", body)
			}
		case "session-revoked":
			if r, _ := body["reason_admin"].(map[string]any); len(r) == 0 {
				t.Errorf("session-revoked without reason_admin: %v", body)
			}
			if _, ok := body["event_timestamp"].(float64); !ok {
				t.Errorf("session-revoked without event_timestamp: %v", body)
			}
		}
	}

	polled := w.pollAll(t, pollReceiverToken, pollStream.Delivery.EndpointURL)
	wantPoll := []string{
		"account-disabled//carol@example.com",
		"account-purged//erin@example.com",
		"credential-change/admin/bob@example.com",
		"identifier-changed//dave@example.com",
		"session-revoked/admin/bob@example.com",
		"session-revoked/system/carol@example.com",
		"session-revoked/user/alice@example.com",
	}
	if g := summarize(polled); strings.Join(g, "\n") != strings.Join(wantPoll, "\n") {
		t.Errorf("poll receiver got:\n  %s\nwant:\n  %s", strings.Join(g, "\n  "), strings.Join(wantPoll, "\n  "))
	}
	for _, s := range polled {
		checkSETShape(t, s, w.Front+"/ssf", "poll-rx")
	}
	// Acknowledged SETs are gone.
	if again := w.pollAll(t, pollReceiverToken, pollStream.Delivery.EndpointURL); len(again) != 0 {
		t.Errorf("acknowledged SETs handed out again: %d", len(again))
	}
}

func eventBody(s receivedSET) map[string]any {
	for _, v := range s.Claims["events"].(map[string]any) {
		m, _ := v.(map[string]any)
		return m
	}
	return nil
}

// checkSETShape asserts what every SET must be, by our own reading of the
// specs: header typ/alg/kid, iss, aud, iat, jti, txn, sub_id, one event, no
// sub or exp.
func checkSETShape(t *testing.T, s receivedSET, iss, aud string) {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(s.Compact, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Header["typ"] != "secevent+jwt" || tok.Header["alg"] != "RS256" || tok.Header["kid"] == "" {
		t.Errorf("header %v", tok.Header)
	}
	c := s.Claims
	if c["iss"] != iss || c["aud"] != aud {
		t.Errorf("iss %v aud %v", c["iss"], c["aud"])
	}
	for _, k := range []string{"iat", "jti", "txn", "sub_id", "events"} {
		if _, ok := c[k]; !ok {
			t.Errorf("%s SET lacks %s", s.Event, k)
		}
	}
	for _, k := range []string{"sub", "exp"} {
		if _, ok := c[k]; ok {
			t.Errorf("%s SET carries %s", s.Event, k)
		}
	}
}

// TestSystemStreamsGetOnlyWhatTheyAskFor: a stream that did not request an
// event type, or removed a subject, gets nothing of it; the legacy profile
// also carries the subject inside the event.
func TestSystemStreamsGetOnlyWhatTheyAskFor(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	// push-rx asks for credential changes only.
	if _, err := w.CreatePushStream(ctx, []string{ssf.EventCredentialChange}); err != nil {
		t.Fatal(err)
	}
	// legacy-rx polls session revocations, and removes alice.
	code, body := w.call(t, "legacy-receiver-token-0123456789", http.MethodPost, "/ssf/streams", map[string]any{"events_requested": []string{ssf.EventSessionRevoked}})
	if code != http.StatusCreated {
		t.Fatalf("legacy stream: %d %s", code, body)
	}
	var st struct {
		StreamID string `json:"stream_id"`
		Delivery struct {
			EndpointURL string `json:"endpoint_url"`
		} `json:"delivery"`
	}
	json.Unmarshal(body, &st)
	code, body = w.call(t, "legacy-receiver-token-0123456789", http.MethodPost, "/ssf/subjects:remove",
		map[string]any{"stream_id": st.StreamID, "subject": map[string]any{"format": "email", "email": "alice@example.com"}})
	if code != http.StatusNoContent {
		t.Fatalf("remove subject: %d %s", code, body)
	}
	// Drain the creation-time verification SET.
	w.pollAll(t, "legacy-receiver-token-0123456789", st.Delivery.EndpointURL)

	for _, name := range []string{"alice", "bob"} {
		if _, err := w.AK.AddUser(authentiktest.UserSpec{Username: name, Email: name + "@example.com", Password: name + "-password-1"}); err != nil {
			t.Fatal(err)
		}
		w.logInAndOut(t, name, name+"-password-1")
	}
	w.settle(t)
	// The push stream asked for credential changes only: just its verification.
	if g := summarize(w.Receiver.Received()); len(g) != 0 {
		t.Errorf("push stream got events it did not request: %v", g)
	}
	polled := w.pollAll(t, "legacy-receiver-token-0123456789", st.Delivery.EndpointURL)
	if g := summarize(polled); strings.Join(g, ",") != "session-revoked/user/bob@example.com" {
		t.Fatalf("legacy stream got %v, want bob's logout only", g)
	}
	inner, _ := eventBody(polled[0])["subject"].(map[string]any)
	if inner == nil {
		t.Fatalf("legacy profile: no subject inside the event: %v", eventBody(polled[0]))
	}
	if _, ok := polled[0].Claims["sub_id"]; !ok {
		t.Errorf("legacy profile must keep the top-level sub_id too")
	}
}
