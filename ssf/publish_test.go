package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

var (
	alice = tap.User{PK: 7, UID: "uid-alice", Username: "alice", Email: "alice@example.com"}
	admin = tap.User{PK: 1, UID: "uid-admin", Username: "akadmin", Email: "admin@example.com"}
	when  = time.Date(2026, 2, 28, 10, 0, 0, 0, time.UTC)
)

// unitTransmitter is a transmitter on an in-memory store and a fake queue.
func unitTransmitter(t testing.TB, opts ...harnessOpt) (*Transmitter, *fakeQueue) {
	t.Helper()
	rs, err := ParseReceivers([]byte(testReceivers))
	if err != nil {
		t.Fatal(err)
	}
	q := newFakeQueue()
	clock := newClock()
	cfg := Config{Issuer: "https://tr.example/ssf", Receivers: rs, KV: newMemKV(), Queue: q, Keys: testKeys(t),
		Clock: clock.Now, NewID: seqIDs("j")}
	for _, o := range opts {
		o(&cfg)
	}
	tr, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return tr, q
}

// unitCreate creates a stream through the handler and drops the initial
// verification from the fake queue.
func unitCreate(t testing.TB, tr *Transmitter, q *fakeQueue, token, body string) string {
	t.Helper()
	rec := serve(tr, "POST", "/ssf/streams", token, body)
	if rec.Code != 201 {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	var w streamWire
	_ = json.Unmarshal(rec.Body.Bytes(), &w)
	q.take()
	return w.StreamID
}

func claimsOf(t *testing.T, s outbox.SET) (map[string]any, string, map[string]any) {
	t.Helper()
	var c map[string]any
	if err := json.Unmarshal(s.Claims, &c); err != nil {
		t.Fatal(err)
	}
	if c["jti"] != s.JTI {
		t.Errorf("claims jti %v != SET.JTI %s", c["jti"], s.JTI)
	}
	events := c["events"].(map[string]any)
	if len(events) != 1 {
		t.Fatalf("%d events", len(events))
	}
	for k, v := range events {
		return c, k, v.(map[string]any)
	}
	return nil, "", nil
}

func TestMapping(t *testing.T) {
	self := alice
	cases := []struct {
		name   string
		sig    tap.Signal
		event  string
		fields map[string]any
	}{
		{"logout by the user", tap.Signal{Kind: tap.KindSessionRevoked, Actor: &self, SessionHash: "abc"},
			EventSessionRevoked, map[string]any{"initiating_entity": "user", "reason_admin": map[string]any{"en": "The session was ended in authentik"}}},
		{"session deleted by admin", tap.Signal{Kind: tap.KindSessionRevoked, Actor: &admin, ReasonAdmin: "Admin ended the session", ReasonUser: "You were signed out"},
			EventSessionRevoked, map[string]any{"initiating_entity": "admin", "reason_admin": map[string]any{"en": "Admin ended the session"}, "reason_user": map[string]any{"en": "You were signed out"}}},
		{"authentik's own", tap.Signal{Kind: tap.KindSessionRevoked},
			EventSessionRevoked, map[string]any{"initiating_entity": "system"}},
		{"explicit initiator wins", tap.Signal{Kind: tap.KindSessionRevoked, Actor: &admin, Initiator: tap.InitiatorPolicy},
			EventSessionRevoked, map[string]any{"initiating_entity": "policy"}},
		{"password set by admin", tap.Signal{Kind: tap.KindPasswordChanged, Actor: &admin},
			EventCredentialChange, map[string]any{"credential_type": "password", "change_type": "update", "initiating_entity": "admin"}},
		{"password made unusable (lockdown)", tap.Signal{Kind: tap.KindPasswordChanged, Revoked: true},
			EventCredentialChange, map[string]any{"credential_type": "password", "change_type": "revoke", "initiating_entity": "system"}},
		{"totp added", tap.Signal{Kind: tap.KindMFAAdded, Actor: &self, Device: &tap.Device{Type: "totp", Name: "phone"}},
			EventCredentialChange, map[string]any{"credential_type": "app", "change_type": "create", "friendly_name": "phone"}},
		{"security key removed", tap.Signal{Kind: tap.KindMFARemoved, Actor: &self, Device: &tap.Device{Type: "webauthn", AAGUID: "ee882879-721c-4913-9775-3dfcce97072a"}},
			EventCredentialChange, map[string]any{"credential_type": "fido2-roaming", "change_type": "delete", "fido2_aaguid": "ee882879-721c-4913-9775-3dfcce97072a"}},
		{"platform authenticator", tap.Signal{Kind: tap.KindMFAAdded, Device: &tap.Device{Type: "webauthn", Platform: true}},
			EventCredentialChange, map[string]any{"credential_type": "fido2-platform"}},
		{"sms", tap.Signal{Kind: tap.KindMFAAdded, Device: &tap.Device{Type: "sms"}},
			EventCredentialChange, map[string]any{"credential_type": "phone-sms"}},
		{"duo", tap.Signal{Kind: tap.KindMFAAdded, Device: &tap.Device{Type: "duo"}},
			EventCredentialChange, map[string]any{"credential_type": "app"}},
		{"recovery codes", tap.Signal{Kind: tap.KindMFAAdded, Device: &tap.Device{Type: "static"}},
			EventCredentialChange, map[string]any{"credential_type": "app"}},
		{"email otp", tap.Signal{Kind: tap.KindMFARemoved, Device: &tap.Device{Type: "email"}},
			EventCredentialChange, map[string]any{"credential_type": "app", "change_type": "delete"}},
		{"login", tap.Signal{Kind: tap.KindSessionEstablished, Actor: &self},
			EventSessionEstablished, map[string]any{"initiating_entity": "user"}},
		{"disabled", tap.Signal{Kind: tap.KindAccountDisabled, Actor: &admin}, EventAccountDisabled, nil},
		{"enabled", tap.Signal{Kind: tap.KindAccountEnabled}, EventAccountEnabled, nil},
		{"deleted", tap.Signal{Kind: tap.KindAccountDeleted}, EventAccountPurged, nil},
		{"email changed", tap.Signal{Kind: tap.KindEmailChanged, OldEmail: "old@example.com", NewEmail: "new@example.com"},
			EventIdentifierChanged, map[string]any{"new-value": "new@example.com"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tr, q := unitTransmitter(t)
			id := unitCreate(t, tr, q, acmeTok, `{}`)
			s := c.sig
			s.ID, s.Time, s.Subject = "sig-1", when, alice
			if err := tr.Publish(context.Background(), s); err != nil {
				t.Fatal(err)
			}
			sets := q.take()
			if len(sets) != 1 {
				t.Fatalf("%d SETs", len(sets))
			}
			if sets[0].Key != "sig-1/"+id || sets[0].EventType != c.event || sets[0].StreamID != id {
				t.Errorf("SET key %q type %q stream %q", sets[0].Key, sets[0].EventType, sets[0].StreamID)
			}
			claims, typ, ev := claimsOf(t, sets[0])
			if typ != c.event {
				t.Fatalf("event %s, want %s", typ, c.event)
			}
			if ev["event_timestamp"] != float64(when.Unix()) {
				t.Errorf("event_timestamp %v", ev["event_timestamp"])
			}
			for k, v := range c.fields {
				got, _ := json.Marshal(ev[k])
				want, _ := json.Marshal(v)
				if string(got) != string(want) {
					t.Errorf("%s = %s, want %s", k, got, want)
				}
			}
			if typ == EventSessionRevoked || typ == EventCredentialChange {
				if ra, _ := ev["reason_admin"].(map[string]any); ra["en"] == "" || ra["en"] == nil {
					t.Error("reason_admin missing")
				}
			}
			wantSub := "alice@example.com"
			if typ == EventIdentifierChanged {
				wantSub = "old@example.com"
			}
			sub := claims["sub_id"].(map[string]any)
			if sub["format"] != "email" || sub["email"] != wantSub {
				t.Errorf("sub_id %v", sub)
			}
			if claims["txn"] != "sig-1" || claims["aud"] != acmeAud || claims["iss"] != "https://tr.example/ssf" {
				t.Errorf("txn/aud/iss %v %v %v", claims["txn"], claims["aud"], claims["iss"])
			}
			if _, ok := ev["subject"]; ok {
				t.Error("ssf profile carries the legacy subject")
			}
		})
	}
}

func TestPublishSubjectFormats(t *testing.T) {
	tr, q := unitTransmitter(t)
	unitCreate(t, tr, q, globexTok, `{}`)
	unitCreate(t, tr, q, legacyTok, `{}`)
	s := tap.Signal{ID: "sig-9", Kind: tap.KindSessionRevoked, Time: when, Subject: alice, SessionHash: "h123", RequestID: "req-1"}
	if err := tr.Publish(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	sets := q.take()
	if len(sets) != 2 {
		t.Fatalf("%d SETs", len(sets))
	}
	for _, set := range sets {
		c, _, ev := claimsOf(t, set)
		if c["txn"] != "req-1" {
			t.Errorf("txn %v", c["txn"])
		}
		sub, _ := json.Marshal(c["sub_id"])
		switch c["aud"] {
		case "globex":
			if string(sub) != `{"format":"iss_sub","iss":"https://auth.example/application/o/globex/","sub":"uid-alice"}` {
				t.Errorf("iss_sub subject %s", sub)
			}
		case "initech":
			if string(sub) != `{"format":"complex","session":{"format":"opaque","id":"h123"},"user":{"email":"alice@example.com","format":"email"}}` {
				t.Errorf("complex subject %s", sub)
			}
			inner, _ := json.Marshal(ev["subject"])
			if string(inner) != string(sub) {
				t.Errorf("legacy subject in event %s", inner)
			}
		default:
			t.Errorf("aud %v", c["aud"])
		}
	}
}

// mixedStreams creates acme streams that differ in what they want of a
// session revocation for alice: all of it, only credential changes,
// disabled, paused, and alice removed from its subjects.
func mixedStreams(t *testing.T, tr *Transmitter, q *fakeQueue) (all, onlyCred, disabled, paused, removed string) {
	t.Helper()
	all = unitCreate(t, tr, q, acmeTok, `{}`)
	onlyCred = unitCreate(t, tr, q, acmeTok, `{"events_requested":["`+EventCredentialChange+`"]}`)
	disabled = unitCreate(t, tr, q, acmeTok, `{"description":"disabled"}`)
	paused = unitCreate(t, tr, q, acmeTok, `{"description":"paused"}`)
	removed = unitCreate(t, tr, q, acmeTok, `{"description":"removed"}`)
	for id, status := range map[string]string{disabled: "disabled", paused: "paused"} {
		if rec := serve(tr, "POST", "/ssf/status", acmeTok, `{"stream_id":"`+id+`","status":"`+status+`"}`); rec.Code != 200 {
			t.Fatal(rec.Body)
		}
	}
	if rec := serve(tr, "POST", "/ssf/subjects:remove", acmeTok, `{"stream_id":"`+removed+`","subject":{"format":"email","email":"alice@example.com"}}`); rec.Code != 204 {
		t.Fatal(rec.Body)
	}
	return all, onlyCred, disabled, paused, removed
}

func TestPublishChoosesStreams(t *testing.T) {
	tr, q := unitTransmitter(t)
	all, onlyCred, _, paused, removed := mixedStreams(t, tr, q)
	trNone, qNone := unitTransmitter(t, func(c *Config) { c.DefaultSubjects = "NONE" })
	noneEmpty := unitCreate(t, trNone, qNone, acmeTok, `{}`)
	noneAdded := unitCreate(t, trNone, qNone, acmeTok, `{"description":"added"}`)
	noneComplex := unitCreate(t, trNone, qNone, acmeTok, `{"description":"complex"}`)
	if rec := serve(trNone, "POST", "/ssf/subjects:add", acmeTok, `{"stream_id":"`+noneAdded+`","subject":{"format":"email","email":"alice@example.com"}}`); rec.Code != 200 {
		t.Fatal(rec.Body)
	}
	// A complex subject naming only the session matches any user in it.
	if rec := serve(trNone, "POST", "/ssf/subjects:add", acmeTok, `{"stream_id":"`+noneComplex+`","subject":{"format":"complex","session":{"format":"opaque","id":"sess-1"}}}`); rec.Code != 200 {
		t.Fatal(rec.Body)
	}
	_ = noneEmpty
	cases := []struct {
		name string
		tr   *Transmitter
		q    *fakeQueue
		sig  tap.Signal
		want []string
	}{
		{"session revoked", tr, q, tap.Signal{Kind: tap.KindSessionRevoked, Subject: alice}, []string{all, paused}},
		{"credential change", tr, q, tap.Signal{Kind: tap.KindPasswordChanged, Subject: alice}, []string{all, onlyCred, paused}},
		{"another user", tr, q, tap.Signal{Kind: tap.KindSessionRevoked, Subject: admin}, []string{all, paused, removed}},
		// SSF §8.1.3.1: a member missing on either side matches anything,
		// so a session-only subject also matches an event with no session.
		{"NONE: added user", trNone, qNone, tap.Signal{Kind: tap.KindSessionRevoked, Subject: alice}, []string{noneAdded, noneComplex}},
		{"NONE: added user, other session", trNone, qNone, tap.Signal{Kind: tap.KindSessionRevoked, Subject: alice, SessionHash: "sess-9"}, []string{noneAdded}},
		{"NONE: session subject", trNone, qNone, tap.Signal{Kind: tap.KindSessionRevoked, Subject: admin, SessionHash: "sess-1"}, []string{noneComplex}},
		{"NONE: other session", trNone, qNone, tap.Signal{Kind: tap.KindSessionRevoked, Subject: admin, SessionHash: "sess-2"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := c.sig
			s.ID = "sig-" + c.name
			s.Marks = []tap.Mark{{Bucket: "tap_journal", Key: []byte("k"), Value: []byte("done")}}
			if err := c.tr.Publish(context.Background(), s); err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, set := range c.q.take() {
				got = append(got, set.StreamID)
			}
			slices.Sort(got)
			want := slices.Clone(c.want)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("streams %v, want %v", got, want)
			}
			c.q.mu.Lock()
			n := len(c.q.marks)
			last := c.q.marks[n-1]
			c.q.mu.Unlock()
			if last.Bucket != "tap_journal" || string(last.Value) != "done" {
				t.Errorf("marks not passed: %+v", last)
			}
		})
	}
}

func TestPublishAlwaysCommitsMarks(t *testing.T) {
	tr, q := unitTransmitter(t) // no streams at all
	s := tap.Signal{ID: "x", Kind: tap.KindAccountDeleted, Subject: alice,
		Marks: []tap.Mark{{Bucket: "tap_cursor", Key: []byte("c"), Value: []byte("42")}, {Bucket: "tap_journal", Key: []byte("j"), Delete: true}}}
	if err := tr.Publish(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	if q.calls != 1 || len(q.marks) != 2 || !q.marks[1].Delete || string(q.marks[0].Value) != "42" {
		t.Errorf("calls %d marks %+v", q.calls, q.marks)
	}
	q.err = errors.New("disk full")
	if err := tr.Publish(context.Background(), s); !errors.Is(err, q.err) {
		t.Errorf("Publish error %v does not wrap Enqueue's", err)
	}
	// An unknown kind still commits its marks.
	q.err = nil
	if err := tr.Publish(context.Background(), tap.Signal{ID: "y", Kind: "mystery", Marks: s.Marks}); err != nil || q.calls != 3 {
		t.Errorf("unknown kind: %v calls %d", err, q.calls)
	}
}

// TestPublishEndToEnd publishes through the real outbox and checks the
// polled SETs with the independent verifier, and that a replayed signal
// does not double its SET.
func TestPublishEndToEnd(t *testing.T) {
	h := newHarness(t)
	w := h.create(acmeTok, map[string]any{})
	sets := h.pollAll(acmeTok, w)
	var ack []string
	for jti := range sets {
		ack = append(ack, jti)
	}
	h.do("POST", w.Delivery.EndpointURL, acmeTok, map[string]any{"ack": ack, "maxEvents": 0})
	sigs := []tap.Signal{
		{ID: "s1", Kind: tap.KindSessionRevoked, Time: when, Subject: alice, Actor: &admin,
			Marks: []tap.Mark{{Bucket: "tap_test", Key: []byte("s1"), Value: []byte("done")}}},
		{ID: "s2", Kind: tap.KindMFARemoved, Time: when, Subject: alice, Actor: &alice, Device: &tap.Device{Type: "totp"}},
		{ID: "s3", Kind: tap.KindAccountDisabled, Time: when, Subject: alice, Actor: &admin},
	}
	for _, s := range append(sigs, sigs[0]) { // s1 twice: a replay
		if err := h.tr.Publish(context.Background(), s); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := h.store.Get("tap_test", []byte("s1")); err != nil || string(v) != "done" {
		t.Errorf("mark not committed: %q %v", v, err)
	}
	got := map[string]int{}
	for _, s := range h.pollAll(acmeTok, w) {
		d := h.checkSET(s, acmeAud)
		got[d.Type]++
		if d.Type != EventAccountDisabled { // the verifier parses CAEP and SSF events only
			h.independentVerify(s, acmeAud)
		}
	}
	want := map[string]int{EventSessionRevoked: 1, EventCredentialChange: 1, EventAccountDisabled: 1}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("%s: %d SETs, want %d (all: %v)", k, got[k], n, got)
		}
	}
}
