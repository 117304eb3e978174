package ssf

import (
	"strings"
	"testing"
)

func TestParseSubject(t *testing.T) {
	cases := []struct {
		in      string
		wantErr string
	}{
		{`{"format":"email","email":"user@example.com"}`, ""},
		{`{"format":"email","email":"User <user@example.com>"}`, "addr-spec"},
		{`{"format":"email","email":""}`, "non-empty"},
		{`{"format":"email"}`, "non-empty"},
		{`{"format":"email","email":"a@b.example","extra":1}`, "unexpected member"},
		{`{"format":"iss_sub","iss":"https://issuer.example.com/","sub":"145234573"}`, ""},
		{`{"format":"iss_sub","iss":"https://issuer.example.com/"}`, `"sub"`},
		{`{"format":"iss_sub","iss":"no scheme","sub":"x"}`, "iss must be a URI"},
		{`{"format":"opaque","id":"11112222333344445555"}`, ""},
		{`{"format":"opaque","id":5}`, "non-empty string"},
		{`{"format":"phone_number","phone_number":"+12065550100"}`, ""},
		{`{"format":"phone_number","phone_number":"206-555-0100"}`, "E.164"},
		{`{"format":"phone","phone_number":"+12065550100"}`, "not supported"},
		{`{"format":"account","uri":"acct:example.user@service.example.com"}`, ""},
		{`{"format":"account","uri":"mailto:x@y"}`, "acct:"},
		{`{"format":"did","url":"did:example:123456"}`, ""},
		{`{"format":"uri","uri":"https://user.example.com/"}`, ""},
		{`{"format":"uri","uri":"relative/path"}`, "absolute"},
		{`{"format":"jwt_id","iss":"https://idp.example/","jti":"B70BA622"}`, ""},
		{`{"format":"ip-addresses","ip-addresses":["10.29.37.75","2001:db8::1"]}`, ""},
		{`{"format":"ip-addresses","ip-addresses":["nope"]}`, "not an IP"},
		{`{"format":"aliases","identifiers":[{"format":"email","email":"a@b.example"},{"format":"phone_number","phone_number":"+12065550100"}]}`, ""},
		{`{"format":"aliases","identifiers":[]}`, "non-empty array"},
		{`{"format":"aliases","identifiers":[{"format":"aliases","identifiers":[{"format":"opaque","id":"x"}]}]}`, "nested"},
		{`{"format":"complex","user":{"format":"email","email":"a@b.example"},"session":{"format":"opaque","id":"s"},"tenant":{"format":"opaque","id":"t"}}`, ""},
		{`{"format":"complex"}`, "no members"},
		{`{"format":"complex","user":{"format":"complex","x":{"format":"opaque","id":"1"}}}`, "nested"},
		{`{"format":"complex","user":"a@b"}`, "JSON object"},
		{`{"email":"a@b.example"}`, "format"},
		{`[]`, "JSON object"},
		{`null`, "JSON object"},
		{`{"format":"opaque","id":"` + strings.Repeat("x", 5000) + `"}`, "larger"},
	}
	for _, c := range cases {
		t.Run(c.in[:min(len(c.in), 60)], func(t *testing.T) {
			s, err := ParseSubject([]byte(c.in))
			if c.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				// Round trip: the canonical form parses to the same subject.
				again, err := ParseSubject([]byte(s.key()))
				if err != nil || again.key() != s.key() {
					t.Errorf("round trip: %v %s", err, again.key())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("error %v, want %q", err, c.wantErr)
			}
		})
	}
}

func TestSubjectMatches(t *testing.T) {
	p := func(s string) Subject {
		t.Helper()
		v, err := ParseSubject([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	email := p(`{"format":"email","email":"a@b.example"}`)
	other := p(`{"format":"email","email":"c@d.example"}`)
	issSub := p(`{"format":"iss_sub","iss":"https://i.example/","sub":"1"}`)
	userSess := p(`{"format":"complex","user":{"format":"email","email":"a@b.example"},"session":{"format":"opaque","id":"s1"}}`)
	userSess2 := p(`{"format":"complex","user":{"format":"email","email":"a@b.example"},"session":{"format":"opaque","id":"s2"}}`)
	sessOnly := p(`{"format":"complex","session":{"format":"opaque","id":"s1"}}`)
	tenant := p(`{"format":"complex","tenant":{"format":"opaque","id":"t1"}}`)
	aliases := p(`{"format":"aliases","identifiers":[{"format":"iss_sub","iss":"https://i.example/","sub":"1"},{"format":"email","email":"a@b.example"}]}`)
	cases := []struct {
		name string
		a, b Subject
		want bool
	}{
		{"identical simple", email, email, true},
		{"different value", email, other, false},
		{"different format", email, issSub, false},
		{"simple vs complex user", email, userSess, true},
		{"complex user mismatch", other, userSess, false},
		{"same user other session", userSess, userSess2, false},
		{"missing member is wildcard", sessOnly, userSess, true},
		{"session only vs other session", sessOnly, userSess2, false},
		{"disjoint members match", tenant, userSess, true},
		{"aliases any", aliases, issSub, true},
		{"aliases none", aliases, other, false},
		{"aliases inside complex", Subject{Format: "complex", Members: map[string]Subject{"user": aliases}}, email, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.a.Matches(c.b); got != c.want {
				t.Errorf("a.Matches(b) = %v", got)
			}
			if got := c.b.Matches(c.a); got != c.want {
				t.Errorf("b.Matches(a) = %v (not symmetric)", got)
			}
		})
	}
}
