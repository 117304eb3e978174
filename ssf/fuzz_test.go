package ssf

import (
	"strings"
	"testing"
)

var streamSeeds = []string{
	`{}`,
	`{"events_requested":["https://schemas.openid.net/secevent/caep/event-type/session-revoked"],"description":"d"}`,
	`{"delivery":{"method":"urn:ietf:rfc:8935","endpoint_url":"https://rx.example/e","authorization_header":"Bearer x"}}`,
	`{"stream_id":"s","iss":"https://x","aud":["a","b"],"events_delivered":[],"delivery":{"method":"urn:ietf:rfc:8936"}}`,
	`{"delivery":null,"description":null}`, `{"events_requested":[1,2]}`, `{"delivery":{"method":5}}`, `[]`, `null`, `"x"`, `{`,
}

func FuzzDecodeStreamRequest(f *testing.F) {
	for _, s := range streamSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := decodeStreamRequest(b)
		if err != nil {
			return
		}
		if req.Delivery != nil && req.Delivery.Method == "" {
			t.Fatal("delivery without method accepted")
		}
		// Comparing against a stream never panics either.
		_ = checkTransmitterFields(req, streamWire{Iss: "https://x", Aud: "a", EventsDelivered: []string{}})
	})
}

func FuzzDecodeStatusRequest(f *testing.F) {
	for _, s := range []string{`{"stream_id":"s","status":"paused","reason":"r"}`, `{"status":"enabled"}`, `{"status":"sleepy"}`, `{"status":1}`, `[]`, `{`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeStatusRequest(b)
		if err == nil && s.Status != StatusEnabled && s.Status != StatusPaused && s.Status != StatusDisabled {
			t.Fatalf("status %q accepted", s.Status)
		}
	})
}

func FuzzDecodeSubjectRequest(f *testing.F) {
	for _, s := range []string{
		`{"stream_id":"s","subject":{"format":"email","email":"example.user@example.com"},"verified":true}`,
		`{"stream_id":"s","subject":{"format":"complex","user":{"format":"iss_sub","iss":"https://i/","sub":"1"}}}`,
		`{"stream_id":"s","subject":null}`, `{"stream_id":"s","subject":{"format":"aliases","identifiers":[]}}`, `{"verified":"yes"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := decodeSubjectRequest(b)
		if err == nil && (req.StreamID == "" || req.Subject.Format == "") {
			t.Fatalf("incomplete request accepted: %+v", req)
		}
	})
}

func FuzzDecodeVerifyRequest(f *testing.F) {
	for _, s := range []string{`{"stream_id":"s","state":"abc"}`, `{"stream_id":"s"}`, `{"stream_id":""}`, `{"state":1}`, `1`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := decodeVerifyRequest(b)
		if err == nil && req.StreamID == "" {
			t.Fatal("empty stream_id accepted")
		}
	})
}

func FuzzParseSubject(f *testing.F) {
	for _, s := range []string{
		`{"format":"email","email":"a@b.example"}`, `{"format":"phone_number","phone_number":"+12065550100"}`,
		`{"format":"account","uri":"acct:a@b"}`, `{"format":"aliases","identifiers":[{"format":"opaque","id":"x"}]}`,
		`{"format":"complex","user":{"format":"opaque","id":"x"},"session":{"format":"opaque","id":"y"}}`,
		`{"format":"ip-addresses","ip-addresses":["::1"]}`, `{"format":"did","url":"did:x:y"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSubject(b)
		if err != nil {
			return
		}
		// A valid subject re-encodes to a valid subject that matches itself.
		again, err := ParseSubject([]byte(s.key()))
		if err != nil {
			t.Fatalf("canonical form %s does not parse: %v", s.key(), err)
		}
		if !s.Matches(again) {
			t.Fatalf("subject does not match its canonical form: %s", s.key())
		}
	})
}

func FuzzParseReceivers(f *testing.F) {
	f.Add([]byte(testReceivers))
	f.Add([]byte(`{"receivers":[{"name":"a","tokens":["t"]}]}`))
	f.Add([]byte("receivers:\n  - name: a\n    tokens: [{value: v, scopes: [ssf.read]}]\n"))
	f.Add([]byte("receivers: {}"))
	f.Add([]byte("receivers:\n  - name: a\n    tokens: [t]\n    max_streams: 1\n"))
	f.Add([]byte("receivers:\n  - name: a\n    tokens: [t]\n    max_streams: -3\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rs, err := ParseReceivers(b)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, r := range rs {
			if r.Name == "" || r.Audience == "" {
				t.Fatalf("receiver without name or audience accepted: %+v", r)
			}
			if r.MaxStreams < 0 {
				t.Fatalf("negative max_streams accepted: %d", r.MaxStreams)
			}
			for _, tk := range r.Tokens {
				if tk.Value == "" || seen[tk.Value] || strings.ContainsAny(tk.Value, " \t\r\n") {
					t.Fatalf("bad or duplicate token accepted")
				}
				seen[tk.Value] = true
			}
		}
	})
}

// FuzzHandlers sends arbitrary bodies to every management endpoint: any
// answer is fine except a 5xx or a panic.
func FuzzHandlers(f *testing.F) {
	for _, s := range streamSeeds {
		f.Add(uint8(0), s)
	}
	f.Add(uint8(3), `{"stream_id":"j0001","status":"paused"}`)
	f.Add(uint8(4), `{"stream_id":"j0001","subject":{"format":"email","email":"a@b.example"}}`)
	f.Add(uint8(6), `{"stream_id":"j0001","state":"x"}`)
	f.Add(uint8(7), `{"returnImmediately":true,"ack":["x"]}`)
	routes := []struct{ method, path string }{
		{"POST", "/ssf/streams"}, {"PATCH", "/ssf/streams"}, {"PUT", "/ssf/streams"}, {"POST", "/ssf/status"},
		{"POST", "/ssf/subjects:add"}, {"POST", "/ssf/subjects:remove"}, {"POST", "/ssf/verify"}, {"POST", "/ssf/poll/j0001"},
	}
	f.Fuzz(func(t *testing.T, route uint8, body string) {
		tr, q := unitTransmitter(t, func(c *Config) { c.AllowPrivateEndpoints = true })
		unitCreate(t, tr, q, acmeTok, `{}`)
		r := routes[int(route)%len(routes)]
		rec := serve(tr, r.method, r.path, acmeTok, body)
		if rec.Code >= 500 {
			t.Fatalf("%s %s → %d: %s", r.method, r.path, rec.Code, rec.Body)
		}
	})
}
