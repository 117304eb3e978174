package ssf

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseReceivers(t *testing.T) {
	rs, err := ParseReceivers([]byte(testReceivers))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 4 {
		t.Fatalf("%d receivers", len(rs))
	}
	acme, globex, initech, umbrella := rs[0], rs[1], rs[2], rs[3]
	if acme.Audience != "https://acme.example/" || acme.SubjectFormat != "email" || acme.Profile != "ssf" || !acme.RequireScopes {
		t.Errorf("acme %+v", acme)
	}
	if !slices.Equal(acme.Tokens[1].Scopes, []string{"ssf.read"}) {
		t.Errorf("acme read token scopes %v", acme.Tokens[1].Scopes)
	}
	if globex.Audience != "globex" || !slices.Equal(globex.Tokens[0].Scopes, []string{ScopeManage, ScopeRead}) || globex.Tokens[0].Value != "globex-token" {
		t.Errorf("globex %+v", globex)
	}
	if initech.Profile != "legacy" || initech.SubjectFormat != "complex" {
		t.Errorf("initech %+v", initech)
	}
	if umbrella.RequireScopes || umbrella.OAuthClientIDs[0] != "umbrella-client" {
		t.Errorf("umbrella %+v", umbrella)
	}
	if strings.Contains(acme.Tokens[0].String(), "acme-manage") {
		t.Error("Token.String shows the value")
	}

	js := `{"receivers":[{"name":"j","tokens":[{"value":"t1","scopes":["ssf.read"]}],"subject_format":"iss_sub","subject_iss":"https://a.example/"}]}`
	rs, err = ParseReceivers([]byte(js))
	if err != nil || len(rs) != 1 || rs[0].SubjectIss != "https://a.example/" {
		t.Fatalf("JSON: %v %+v", err, rs)
	}
}

func TestParseReceiversErrors(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"empty", ``, []string{"empty"}},
		{"no receivers", `receivers: []`, []string{"no receivers"}},
		{"not yaml", `receivers: [`, []string{"cannot parse"}},
		{"unknown key", "receivers:\n  - name: a\n    tokens: [x]\n    colour: red\n", []string{"colour"}},
		{"everything wrong at once", `
receivers:
  - tokens: ["same-secret-token"]
  - name: b
    tokens: ["same-secret-token", {value: "", scopes: []}, "has space"]
    subject_format: uuid
    profile: modern
  - name: b
    oauth_client_ids: [c1]
  - name: d
    oauth_client_ids: [c1]
    subject_format: iss_sub
  - name: e
  - name: f
    tokens: [{value: v, scopes: [admin]}]
    subject_iss: "not a url"
`, []string{"receiver #1: missing name", `receiver "b": token #1 is the same as a token of receiver #1`,
			`token #2 is empty`, `token #2 has no scopes`, `token #3 contains whitespace`, `unknown subject_format "uuid"`,
			`unknown profile "modern"`, `receiver "b": duplicate name`, `oauth client id "c1" is also listed`,
			`subject_format iss_sub needs subject_iss`, `receiver "e": has neither tokens nor oauth_client_ids`,
			`unknown scope "admin"`, `subject_iss "not a url" is not an absolute URL`}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseReceivers([]byte(c.in))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), "same-secret-token") {
				t.Error("error shows a token value")
			}
		})
	}
}

func TestLoadReceivers(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.yaml")
	if err := os.WriteFile(p, []byte(testReceivers), 0o600); err != nil {
		t.Fatal(err)
	}
	if rs, err := LoadReceivers(p); err != nil || len(rs) != 4 {
		t.Errorf("load: %v", err)
	}
	if _, err := LoadReceivers(p + ".missing"); err == nil || !strings.Contains(err.Error(), "receivers file") {
		t.Errorf("missing: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	err := Config{Issuer: "not a url", OAuthIssuer: "relative", DefaultSubjects: "SOME", MaxBody: -1,
		Receivers: []Receiver{{Name: "a", Tokens: []Token{{Value: "x"}}}, {Name: "a", Tokens: []Token{{Value: "x"}}}}}.Validate()
	for _, w := range []string{"issuer", "oauth issuer", "ALL or NONE", "max body", "store", "queue", "signing keys", "listed twice", "also has"} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("error lacks %q: %v", w, err)
		}
	}
	if err := (Config{Issuer: "https://x.example/ssf?a=b", KV: newMemKV(), Queue: newFakeQueue(), Keys: &Keys{}}).Validate(); err == nil {
		t.Error("issuer with query accepted")
	}
}

// TestReceiverValueErrorsHideTokens: a token written where a scope, subject
// format or profile belongs is refused without being quoted; a misspelt
// word is still quoted so the mistake can be seen.
func TestReceiverValueErrorsHideTokens(t *testing.T) {
	const secret = "Zq8Xv3+misplaced/TokenValue=="
	for _, field := range []string{
		`tokens: [{value: "` + acmeTok + `", scopes: ["` + secret + `"]}]`,
		`tokens: ["` + acmeTok + `"]` + "\n    subject_format: \"" + secret + `"`,
		`tokens: ["` + acmeTok + `"]` + "\n    profile: \"" + secret + `"`,
	} {
		_, err := ParseReceivers([]byte("receivers:\n  - name: acme\n    " + field + "\n"))
		if err == nil || strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), "not shown") {
			t.Errorf("%s: error %v; want a refusal that does not quote the value", strings.ReplaceAll(field, secret, "<secret>"), err)
		}
	}
	_, err := ParseReceivers([]byte("receivers:\n  - name: acme\n    tokens: [\"" + acmeTok + "\"]\n    profile: legasy\n"))
	if err == nil || !strings.Contains(err.Error(), `"legasy"`) {
		t.Errorf("a misspelt profile: %v; want it quoted", err)
	}
}
