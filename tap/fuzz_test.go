package tap

import (
	"net/http"
	"testing"
	"time"
)

func FuzzDecodeSessionCookie(f *testing.F) {
	good, _ := SignSessionCookie(SessionClaims{SID: "abc", Subject: "uid1", Authenticated: true}, "k")
	f.Add(good, "k")
	f.Add(good, "")
	f.Add("e30.e30.", "")
	f.Add("eyJhbGciOiJub25lIn0.eyJzaWQiOiJ4In0.", "")
	f.Add("a.b.c", "k")
	f.Add("", "")
	f.Fuzz(func(t *testing.T, value, key string) {
		c, verified, err := DecodeSessionCookie(value, key)
		if err != nil {
			if verified || c.SID != "" {
				t.Fatalf("error with claims: %v %+v", verified, c)
			}
			return
		}
		if c.SID == "" {
			t.Fatal("accepted a cookie without sid")
		}
		if verified && key == "" {
			t.Fatal("verified without a key")
		}
		if len(c.SessionHash()) != 64 {
			t.Fatal("bad hash")
		}
	})
}

func FuzzParseStageRequest(f *testing.F) {
	f.Add([]byte(`{"component":"ak-stage-prompt","password":"x","password_repeat":"x"}`))
	f.Add([]byte(`{"component":"ak-stage-authenticator-totp","code":"123456"}`))
	f.Add([]byte(`{"component":"ak-stage-authenticator-validate"}`))
	f.Add([]byte(`{"component":1}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`{"component":"ak-stage-prompt","email":" new@example.com ","username":"x"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		a, err := parseStageRequest(body)
		if err != nil && (a.kind != "" || a.dtype != "" || a.email != "") {
			t.Fatalf("error with result %+v", a)
		}
		if a.kind == stageMFA && !deviceTypes[a.dtype] {
			t.Fatalf("unknown device type %q", a.dtype)
		}
		if a.kind == stageEmail && a.email == "" {
			t.Fatal("email stage without an email")
		}
	})
}

func FuzzResponseBodies(f *testing.F) {
	f.Add([]byte(`{"component":"xak-flow-redirect","to":"/"}`))
	f.Add([]byte(`{"component":"ak-stage-prompt","response_errors":{"password":[{"string":"x","code":"invalid"}]}}`))
	f.Add([]byte(`{"pk":3,"uid":"u","username":"a","email":"a@x","is_active":false}`))
	f.Add([]byte(`{"pk":7,"name":"k","user":{"pk":3},"confirmed":true}`))
	f.Add([]byte(`{"pk":"a1b2","name":"k","user":3}`))
	f.Add([]byte(`{"deleted":2}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, body []byte) {
		_ = stageCompleted(http.StatusOK, "ak-stage-prompt", body)
		if u, err := parseUserBody(body); err == nil && u.PK <= 0 {
			t.Fatal("user without pk accepted")
		}
		_ = deactivates(body)
		if n, err := parseBulkDeleted(body); err == nil && n < 0 {
			t.Fatal("negative count accepted")
		}
	})
}

func FuzzSessionEnded(f *testing.F) {
	f.Add("authentik_session=; Max-Age=0", "h")
	f.Add("authentik_session=a.b.c; Path=/", "h")
	f.Add("other=1", "h")
	f.Fuzz(func(t *testing.T, setCookie, hash string) {
		h := http.Header{"Set-Cookie": {setCookie}}
		_ = sessionEnded(h, hash, "", time.Unix(0, 0))
		_ = sessionEnded(h, hash, "k", time.Unix(0, 0))
	})
}

func FuzzDecodeEventPage(f *testing.F) {
	f.Add([]byte(`{"pagination":{"next":2,"previous":0,"count":3,"current":1,"total_pages":2},"results":[` +
		`{"pk":"0c85fb30-59a1-4b9c-845b-ac75248a0cc2","user":{"pk":3,"email":"a@x","username":"a"},"action":"logout","app":"authentik.events.signals","context":{"http_request":{"path":"/x","method":"GET"}},"created":"2026-11-26T16:53:10.303842Z"},` +
		`{"pk":"7a9e612e13bb41c9873058feceffe624","user":{"pk":1},"action":"model_updated","app":"authentik.events.middleware","context":{"model":{"app":"authentik_core","model_name":"user","pk":3,"name":"a"}},"created":"2026-11-26T16:53:10Z"}]}`))
	f.Add([]byte(`{"pagination":{"next":0},"results":[]}`))
	f.Add([]byte(`{"results":[{"pk":"x","action":"login"}]}`))
	f.Add([]byte(`{"pagination":{"next":1.5},"results":[]}`))
	f.Add([]byte(`{"pagination":{"next":2.0},"results":[]}`))
	f.Add([]byte(`{"results":[{"pk":"x","action":"login","created":"2026-01-01T00:00:00Z","user":"str","context":[1]}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodeEventPage(body)
		if err != nil {
			return
		}
		if p.Next < 0 {
			t.Fatal("negative next")
		}
		for _, e := range p.Events {
			if e.PK == "" || e.Action == "" || e.Created.IsZero() {
				t.Fatalf("incomplete event accepted: %+v", e)
			}
			_ = normalizeDeviceType(e.Action)
			if e.Context.Model != nil {
				_ = rawPK(e.Context.Model.PK)
			}
		}
	})
}

func FuzzParseAKVersion(f *testing.F) {
	for _, s := range []string{"2026.2.2", "2025.8.0-rc1", "2024.12", "", "x.y", "2026.13.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseAKVersion(s)
		if err == nil && (v.year < 2000 || v.month < 1 || v.month > 12) {
			t.Fatalf("%q accepted as %+v", s, v)
		}
	})
}
