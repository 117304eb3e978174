package ssf

import (
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// checkSuiteSET is validateSetCommonAfterParsing plus the CAEP checks of
// openid-ssf-transmitter-stream-caep-interop: RS256, typ exactly
// secevent+jwt, one event, no sub or exp, iss exactly the issuer, iat
// present and not after now (no skew allowed), aud within the stream's,
// the event type CAEP or SSF (never RISC), event_timestamp a number,
// initiating_entity one of admin/user/policy/system, reason_admin and
// reason_user non-empty objects of strings, credential-change with
// credential_type and change_type.
func (h *harness) checkSuiteSET(compact string) decodedSET {
	t := h.t
	t.Helper()
	d := h.checkSET(compact, acmeAud) // signature, typ, alg, sub, exp, iss, aud, iat not in the future
	if d.Header["typ"] != "secevent+jwt" {
		t.Errorf("typ %q, want exactly secevent+jwt", d.Header["typ"])
	}
	if !strings.HasPrefix(d.Type, caepBase) && !strings.HasPrefix(d.Type, ssfBase) {
		t.Errorf("event type %s is neither CAEP nor SSF on a stream that asked only for CAEP", d.Type)
	}
	if !strings.HasPrefix(d.Type, caepBase) {
		return d
	}
	h.independentVerify(compact, acmeAud)
	if v, ok := d.Event["event_timestamp"]; ok {
		if _, num := v.(float64); !num {
			t.Errorf("event_timestamp %v is not a number", v)
		}
	}
	if v, ok := d.Event["initiating_entity"]; ok {
		switch v {
		case "admin", "user", "policy", "system":
		default:
			t.Errorf("initiating_entity %v", v)
		}
	}
	for _, f := range []string{"reason_admin", "reason_user"} {
		v, ok := d.Event[f]
		if !ok {
			continue
		}
		m, _ := v.(map[string]any)
		if len(m) == 0 {
			t.Errorf("%s %v is not a non-empty object", f, v)
		}
		for _, s := range m {
			if _, str := s.(string); !str {
				t.Errorf("%s member %v is not a string", f, s)
			}
		}
	}
	if d.Type == EventCredentialChange {
		for _, f := range []string{"credential_type", "change_type"} {
			if _, ok := d.Event[f].(string); !ok {
				t.Errorf("credential-change %s %v is not a string", f, d.Event[f])
			}
		}
	}
	return d
}

// TestOIDFStreamCaepInterop is openid-ssf-transmitter-stream-caep-interop
// over poll: a stream asking for the three CAEP interoperability types
// (one the sidecar does not produce); events_delivered holds CAEP types;
// the operator triggers events of every kind, RISC ones included; a poll
// that must hold the solicited verification, then polls acknowledging the
// previous batch until every expected type has arrived, a final ack-only
// poll and a delete. No RISC SET ever reaches the stream, and every SET
// passes the suite's checks.
func TestOIDFStreamCaepInterop(t *testing.T) {
	const auth = "Bearer " + acmeTok
	h := newHarness(t)
	h.suiteCleanUp(auth)
	id, pollURL, created := h.pollCreate(auth, suiteEventsHEAD)
	h.checkStreamConfig("create", created)
	delivered, _ := created["events_delivered"].([]any)
	var expected []string
	for _, e := range delivered {
		if s, _ := e.(string); strings.HasPrefix(s, caepBase) {
			expected = append(expected, s)
		}
	}
	if len(expected) == 0 {
		t.Fatalf("events_delivered %v holds no CAEP type", delivered)
	}
	var read map[string]any
	h.suite("GET", "/ssf/streams?stream_id="+id, auth, "").requireJSON(t, "read", &read)
	h.checkStreamConfig("read", read)
	h.suite("GET", "/ssf/status?stream_id="+id, auth, "").expect(t, "read status", 200)
	h.clock.Advance(5 * time.Second)
	h.trigger(auth, id, "st-caep")
	// "Trigger these events on the transmitter now": every kind of action.
	bob := tap.User{PK: 8, UID: "uid-bob", Username: "bob", Email: "bob@example.com"}
	for i, s := range []tap.Signal{
		{Kind: tap.KindAccountDisabled, Subject: alice, Actor: &bob},
		{Kind: tap.KindSessionRevoked, Subject: alice, SessionHash: strings.Repeat("b", 64)},
		{Kind: tap.KindEmailChanged, Subject: alice, OldEmail: "alice@example.com", NewEmail: "alice@new.example"},
		{Kind: tap.KindPasswordChanged, Subject: alice, Actor: &bob},
		{Kind: tap.KindAccountEnabled, Subject: alice},
		{Kind: tap.KindMFAAdded, Subject: alice, Device: &tap.Device{Type: "totp", Name: "phone"}},
		{Kind: tap.KindAccountDeleted, Subject: bob},
		{Kind: tap.KindSessionEstablished, Subject: alice},
	} {
		s.ID = "caep-" + string(rune('a'+i))
		s.Time = h.clock.Now().Add(-time.Second)
		if err := h.tr.Publish(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	h.clock.Advance(5 * time.Second)
	order, sets := h.suitePoll(auth, pollURL, `{"maxEvents":10,"returnImmediately":true}`)
	solicited := false
	seen := map[string]int{}
	var batch []string
	for _, jti := range order {
		d := h.checkSuiteSET(sets[jti])
		seen[d.Type]++
		solicited = solicited || (d.Type == EventVerification && d.Event["state"] == "st-caep")
		batch = append(batch, jti)
	}
	if !solicited {
		t.Fatalf("the first poll lacks the solicited verification: %v", seen)
	}
	for range 12 {
		all := true
		for _, e := range expected {
			if e != eventDeviceCompliance && seen[e] == 0 {
				all = false
			}
		}
		if all {
			break
		}
		h.clock.Advance(5 * time.Second)
		order, sets = h.suitePoll(auth, pollURL, jsonBody(map[string]any{"maxEvents": 10, "returnImmediately": true, "ack": batch}))
		batch = batch[:0]
		for _, jti := range order {
			d := h.checkSuiteSET(sets[jti])
			seen[d.Type]++
			batch = append(batch, jti)
		}
	}
	h.suite("POST", mustPath(t, pollURL), auth, jsonBody(map[string]any{"maxEvents": 0, "returnImmediately": true, "ack": batch})).
		requireJSON(t, "final ack", nil)
	// Of what the sidecar produces, the stream got exactly the CAEP types it
	// asked for: one session-revoked, two credential-changes, nothing else.
	if seen[EventSessionRevoked] != 1 || seen[EventCredentialChange] != 2 || seen[EventVerification] != 1 || len(seen) != 3 {
		t.Errorf("stream got %v", seen)
	}
	h.suite("DELETE", "/ssf/streams?stream_id="+id, auth, "").expect(t, "delete", 204)
}
