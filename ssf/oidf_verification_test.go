package ssf

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// suitePushReceiver is the suite's push endpoint: it answers every push
// 202 with an empty body and keeps the pushes in arrival order.
type suitePushReceiver struct {
	srv    *httptest.Server
	pushes chan pushed
}

func newSuitePushReceiver(t *testing.T) *suitePushReceiver {
	rx := &suitePushReceiver{pushes: make(chan pushed, 64)}
	rx.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		auth, present := r.Header["Authorization"]
		p := pushed{body: string(b), contentType: r.Header.Get("Content-Type")}
		if present {
			p.auth = auth[0]
		} else {
			p.auth = "<none>"
		}
		rx.pushes <- p
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(rx.srv.Close)
	return rx
}

// next waits for the next push, as lookupNextPushRequest does (the suite
// waits up to 5 s; real time here is generous, the order is what counts).
func (rx *suitePushReceiver) next(t *testing.T) pushed {
	t.Helper()
	select {
	case p := <-rx.pushes:
		return p
	case <-time.After(30 * time.Second):
		t.Fatal("no push arrived")
		return pushed{}
	}
}

// runOutbox runs the harness's outbox until the test ends.
func (h *harness) runOutbox() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.ob.Run(ctx) }()
	h.t.Cleanup(func() {
		cancel()
		<-done
	})
}

// verificationState checks a verification SET the way
// verifyParsedVerificationEventCommon does and returns its state (nil
// when unsolicited).
func (h *harness) verificationSET(compact, streamID string) (state any, jti string) {
	h.t.Helper()
	d := h.checkSET(compact, acmeAud)
	h.independentVerify(compact, acmeAud)
	if d.Type != EventVerification {
		h.t.Fatalf("SET is %s, want a verification", d.Type)
	}
	sub, _ := d.Claims["sub_id"].(map[string]any)
	if sub["format"] != "opaque" || sub["id"] != streamID {
		h.t.Errorf("sub_id %v, want opaque %s", sub, streamID)
	}
	jti, _ = d.Claims["jti"].(string)
	return d.Event["state"], jti
}

// TestOIDFVerificationPush is
// openid-ssf-transmitter-stream-verification-push with HEAD's
// authorization_header ("Bearer push_token_<uuid>") and 5.1.39's, which
// has no scheme and must be sent verbatim: the unsolicited verification
// pushed after create carries no state, the solicited one the state asked
// for, and every push carries exactly the configured header.
func TestOIDFVerificationPush(t *testing.T) {
	for _, header := range []string{"Bearer push_token_0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a", "push_token_0f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"} {
		t.Run(header, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
			h.runOutbox()
			rx := newSuitePushReceiver(t)
			const auth = "Bearer " + acmeTok
			var created map[string]any
			h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(suiteEventsHEAD, suiteDescription,
				map[string]string{"method": MethodPushURN, "endpoint_url": rx.srv.URL + "/test/a/x/ssf-push", "authorization_header": header}))).
				requireJSON(t, "create", &created)
			id := created["stream_id"].(string)
			p := rx.next(t)
			if p.auth != header {
				t.Errorf("push Authorization %q, want %q verbatim", p.auth, header)
			}
			if state, _ := h.verificationSET(p.body, id); state != nil {
				t.Errorf("unsolicited verification carries state %v", state)
			}
			h.trigger(auth, id, "st-push-1")
			p = rx.next(t)
			if p.auth != header {
				t.Errorf("push Authorization %q, want %q verbatim", p.auth, header)
			}
			if state, _ := h.verificationSET(p.body, id); state != "st-push-1" {
				t.Errorf("solicited verification state %v", state)
			}
		})
	}
}

// TestOIDFVerificationPushNoAuth is
// …-verification-error-push-no-auth: a stream created without
// authorization_header gets pushes without an Authorization header.
func TestOIDFVerificationPushNoAuth(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
	h.runOutbox()
	rx := newSuitePushReceiver(t)
	const auth = "Bearer " + acmeTok
	var created map[string]any
	h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(suiteEventsHEAD, suiteDescription,
		map[string]string{"method": MethodPushURN, "endpoint_url": rx.srv.URL + "/ssf-push"}))).requireJSON(t, "create", &created)
	id := created["stream_id"].(string)
	rx.next(t) // unsolicited
	h.trigger(auth, id, "st-noauth")
	p := rx.next(t)
	if p.auth != "<none>" {
		t.Errorf("push carries Authorization %q", p.auth)
	}
	if state, _ := h.verificationSET(p.body, id); state != "st-noauth" {
		t.Errorf("state %v", state)
	}
}

// trigger is OIDSSFTriggerVerificationEvent: POST verification_endpoint
// with the stream id and a state; anything but 204 stops the module.
func (h *harness) trigger(auth, id, state string) {
	h.t.Helper()
	h.suite("POST", "/ssf/verify", auth, `{"stream_id":"`+id+`","state":"`+state+`"}`).expect(h.t, "trigger "+state, 204)
}

// suitePoll posts a poll request to the stream's poll URL and returns the
// SETs in document order with the decoded response.
func (h *harness) suitePoll(auth, pollURL, body string) (order []string, sets map[string]string) {
	h.t.Helper()
	r := h.suite("POST", mustPath(h.t, pollURL), auth, body)
	r.requireJSON(h.t, "poll", nil)
	order, _ = docOrder(h.t, r.body)
	var pr outbox.PollResponse
	if err := json.Unmarshal(r.body, &pr); err != nil {
		h.t.Fatal(err)
	}
	return order, pr.Sets
}

// pollCreate creates a poll stream as the suite does and returns its id and
// poll URL, checking the poll URL has the issuer's scheme and host.
func (h *harness) pollCreate(auth string, events []string) (id, pollURL string, created map[string]any) {
	h.t.Helper()
	h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(events, suiteDescription, pollDelivery))).requireJSON(h.t, "create", &created)
	d := created["delivery"].(map[string]any)
	return created["stream_id"].(string), d["endpoint_url"].(string), created
}

// TestOIDFVerificationPollOnly is
// openid-ssf-transmitter-stream-verification-poll-only: create, wait 5 s,
// trigger (204), wait 5 s, one poll {"maxEvents":10,"returnImmediately":true}
// that must hold the solicited SET; the first SET is that one, since a
// poll stream gets no unsolicited verification.
func TestOIDFVerificationPollOnly(t *testing.T) {
	const auth = "bearer " + acmeTok
	h := newHarness(t)
	id, pollURL, _ := h.pollCreate(auth, suiteEventsHEAD)
	h.clock.Advance(5 * time.Second)
	h.trigger(auth, id, "st-only")
	h.clock.Advance(5 * time.Second)
	order, sets := h.suitePoll(auth, pollURL, `{"maxEvents":10,"returnImmediately":true}`)
	if len(order) != 1 {
		t.Fatalf("poll returned %d SETs, want the solicited one", len(order))
	}
	if state, _ := h.verificationSET(sets[order[0]], id); state != "st-only" {
		t.Errorf("first SET state %v", state)
	}
}

// TestOIDFVerificationPollAndAck is
// …-stream-verification-poll-and-ack: poll, a second trigger after the
// advertised min_verification_interval (HEAD waits for it, from the create
// response), then one request that acks everything from the first poll and
// polls: it answers the second SET and never an acked one.
func TestOIDFVerificationPollAndAck(t *testing.T) {
	const auth = "Bearer " + acmeTok
	h := newHarness(t)
	id, pollURL, created := h.pollCreate(auth, suiteEventsHEAD)
	interval := time.Duration(created["min_verification_interval"].(float64)) * time.Second
	h.clock.Advance(5 * time.Second)
	h.trigger(auth, id, "st-1")
	h.clock.Advance(5 * time.Second)
	first, _ := h.suitePoll(auth, pollURL, `{"maxEvents":10,"returnImmediately":true}`)
	if len(first) == 0 {
		t.Fatal("first poll empty")
	}
	h.clock.Advance(interval)
	h.trigger(auth, id, "st-2")
	h.clock.Advance(5 * time.Second)
	order, sets := h.suitePoll(auth, pollURL, jsonBody(map[string]any{"maxEvents": 10, "returnImmediately": true, "ack": first}))
	if len(order) != 1 {
		t.Fatalf("poll and ack returned %v", order)
	}
	for _, jti := range order {
		if slices.Contains(first, jti) {
			t.Errorf("acked SET %s handed out again", jti)
		}
	}
	if state, _ := h.verificationSET(sets[order[0]], id); state != "st-2" {
		t.Errorf("state %v, want st-2", state)
	}
}

// TestOIDFVerificationAckOnly is …-stream-verification-ack-only: the
// solicited SET is in the first poll, and the ack-only request
// {"maxEvents":0,"returnImmediately":true,"ack":[…]} answers 200 with a
// JSON body (a 204 would fail the suite's call).
func TestOIDFVerificationAckOnly(t *testing.T) {
	const auth = "Bearer " + acmeTok
	h := newHarness(t)
	id, pollURL, _ := h.pollCreate(auth, suiteEventsHEAD)
	h.trigger(auth, id, "st-ack")
	order, sets := h.suitePoll(auth, pollURL, `{"maxEvents":10,"returnImmediately":true}`)
	if len(order) != 1 {
		t.Fatalf("poll %v", order)
	}
	if state, _ := h.verificationSET(sets[order[0]], id); state != "st-ack" {
		t.Errorf("state %v", state)
	}
	r := h.suite("POST", mustPath(t, pollURL), auth, jsonBody(map[string]any{"maxEvents": 0, "returnImmediately": true, "ack": order}))
	var body map[string]any
	r.expect(t, "ack only", 200)
	r.requireJSON(t, "ack only", &body)
	if s, ok := body["sets"].(map[string]any); !ok || len(s) != 0 {
		t.Errorf("ack-only answer %s", r.body)
	}
	if _, ok := body["moreAvailable"]; ok {
		t.Errorf("moreAvailable sent while false: %s", r.body)
	}
	h.clock.Advance(time.Hour)
	if again, _ := h.suitePoll(auth, pollURL, `{"returnImmediately":true}`); len(again) != 0 {
		t.Errorf("acked SET handed out again: %v", again)
	}
}

// TestOIDF5139EventsPoll is 5.1.39's openid-ssf-transmitter-events over
// poll: three verification requests on one stream about 6 s apart (t=5,
// 11.2 and 18.1 s in the published log), each of which must be 204 (the
// suite never retries nor reads Retry-After), and after each, 5 s later: a
// poll whose FIRST SET must carry state #1; an ack-only request; a poll
// with an empty ack list whose FIRST SET must carry state #3.
func TestOIDF5139EventsPoll(t *testing.T) {
	const auth = "bearer " + acmeTok
	h := newHarness(t)
	id, pollURL, _ := h.pollCreate(auth, suiteEvents5139)
	trigger := func(at time.Duration, state string) {
		t.Helper()
		h.clock.Advance(at)
		h.trigger(auth, id, state)
		h.clock.Advance(5 * time.Second)
	}
	trigger(5*time.Second, "st-1")
	order, sets := h.suitePoll(auth, pollURL, `{"returnImmediately":true,"maxEvents":10}`)
	if len(order) == 0 {
		t.Fatal("first poll empty")
	}
	if state, _ := h.verificationSET(sets[order[0]], id); state != "st-1" {
		t.Fatalf("first SET of poll #1 has state %v, want st-1", state)
	}
	trigger(1200*time.Millisecond, "st-2") // t = 11.2 s
	r := h.suite("POST", mustPath(t, pollURL), auth, jsonBody(map[string]any{"maxEvents": 0, "returnImmediately": true, "ack": order[:1]}))
	r.requireJSON(t, "ack only", nil)
	trigger(1900*time.Millisecond, "st-3") // t = 18.1 s
	order, sets = h.suitePoll(auth, pollURL, `{"maxEvents":10,"returnImmediately":true,"ack":[]}`)
	if len(order) == 0 {
		t.Fatal("third poll empty")
	}
	// 5.1.39 takes the first SET as the answer to its latest request. The
	// SET of request #2 was never handed out (the ack-only request asked
	// for none), so request #3 replaced it.
	var states []any
	for _, jti := range order {
		s, _ := h.verificationSET(sets[jti], id)
		states = append(states, s)
	}
	if !slices.Equal(states, []any{"st-3"}) {
		t.Fatalf("poll #3 states %v, want [st-3]", states)
	}
}

// TestOIDF5139EventsPush is 5.1.39's openid-ssf-transmitter-events over
// push (and, without authorization_header, its
// openid-ssf-transmitter-push-no-auth): one trigger right after create;
// the suite validates whatever push arrived last, and its state must match.
func TestOIDF5139EventsPush(t *testing.T) {
	for _, header := range []string{"push_token_5c4b3a29-1807-4f6e-8d5c-4b3a29180766", ""} {
		t.Run("authorization "+header, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.AllowPrivateEndpoints = true })
			h.runOutbox()
			rx := newSuitePushReceiver(t)
			const auth = "bearer " + acmeTok
			delivery := map[string]string{"method": MethodPushURN, "endpoint_url": rx.srv.URL + "/ssf-push"}
			want := "<none>"
			if header != "" {
				delivery["authorization_header"] = header
				want = header
			}
			var created map[string]any
			h.suite("POST", "/ssf/streams", auth, jsonBody(createBody(suiteEvents5139, suiteDescription, delivery))).requireJSON(t, "create", &created)
			id := created["stream_id"].(string)
			h.trigger(auth, id, "st-5139")
			// Pushed in order: the unsolicited one, unless the request
			// replaced it before it was handed out, then the solicited.
			for n := 1; ; n++ {
				p := rx.next(t)
				if p.auth != want {
					t.Errorf("Authorization %q, want %q", p.auth, want)
				}
				state, _ := h.verificationSET(p.body, id)
				if state == "st-5139" {
					break
				}
				if state != nil || n > 1 {
					t.Fatalf("push %d has state %v before the solicited one", n, state)
				}
			}
		})
	}
}

// mustPath keeps the path and query of a URL the transmitter handed out.
func mustPath(t testing.TB, u string) string {
	t.Helper()
	pu, err := url.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	return pu.RequestURI()
}

// docOrder returns the jtis of a poll response's "sets" in document order.
func docOrder(t testing.TB, body []byte) ([]string, map[string]json.RawMessage) {
	t.Helper()
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil {
		t.Fatalf("poll response is not a JSON object: %v: %s", err, body)
	}
	dec := json.NewDecoder(bytes.NewReader(top["sets"]))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("sets is not an object: %s", body)
	}
	var out []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tok.(string))
		var v string
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
	}
	return out, top
}
