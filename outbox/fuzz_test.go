package outbox

import (
	"bytes"
	"net/url"
	"testing"
)

func FuzzDecodePollRequest(f *testing.F) {
	for _, s := range []string{
		``,
		`{}`,
		`{"maxEvents":10,"returnImmediately":true}`,
		`{"maxEvents":0,"ack":["a","b"]}`,
		`{"ack":["4d3559ec67504aaba65d40b0363faad8"],"setErrs":{"3d0c3cf797584bd193bd0fb1bd4e7d30":{"err":"invalid_key","description":"The key used to sign the SET is unknown"}}}`,
		`{"maxEvents":-1}`,
		`{"maxEvents":1.5}`,
		`{"maxEvents":"3"}`,
		`{"returnImmediately":null}`,
		`{"ack":[1]}`,
		`{"setErrs":{"j":{}}}`,
		`[]`,
		`null`,
		`{"a":1} {"b":2}`,
		`{"maxEvents":1e3}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, err := DecodePollRequest(bytes.NewReader(body), 4096)
		if err != nil {
			if _, ok := err.(*PollRequestError); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if req.MaxEvents != nil && *req.MaxEvents < 0 {
			t.Fatalf("negative maxEvents %d accepted", *req.MaxEvents)
		}
		for _, j := range req.Ack {
			if j == "" {
				t.Fatal("empty ack jti accepted")
			}
		}
		for j, e := range req.SetErrs {
			if j == "" || e.Err == "" {
				t.Fatalf("setErrs entry %q=%+v accepted", j, e)
			}
		}
		if len(body) > 4096 {
			t.Fatal("body over the limit accepted")
		}
	})
}

func FuzzParsePushError(f *testing.F) {
	for _, s := range []string{
		`{"err":"invalid_request","description":"body not a SET"}`,
		`{"err":"invalid_key"}`,
		`{"description":"no code"}`,
		`{"err":""}`,
		`{"err":5}`,
		`not json`,
		``,
		`{"err":"a"}{"err":"b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		code, _, err := ParsePushError(body)
		if err == nil && code == "" {
			t.Fatal("empty code without error")
		}
	})
}

func FuzzCheckEndpointURL(f *testing.F) {
	for _, s := range []string{"https://receiver.example/e", "https://127.0.0.1/", "https://0x7f.1/",
		"https://[::ffff:10.0.0.1]/", "http://x/", "https://2130706433/", "https://a.localhost/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if CheckEndpointURL(raw, false) == nil {
			// Anything accepted without allowPrivate must also be accepted with it.
			if err := CheckEndpointURL(raw, true); err != nil {
				t.Fatalf("%q accepted strictly but refused leniently: %v", raw, err)
			}
			// A literal address accepted must not be forbidden.
			if a, ok := parseHostAddr(hostOf(raw)); ok && forbiddenAddr(a) {
				t.Fatalf("%q: forbidden address %v accepted", raw, a)
			}
		}
	})
}

func TestParsePushError(t *testing.T) {
	tests := []struct {
		body, code, desc string
		ok               bool
	}{
		{`{"err":"invalid_audience","description":"aud mismatch"}`, "invalid_audience", "aud mismatch", true},
		{`{"err":"access_denied"}`, "access_denied", "", true},
		{`{"description":"x"}`, "", "", false},
		{`{"err":7}`, "", "", false},
		{`<html>`, "", "", false},
	}
	for _, tc := range tests {
		code, desc, err := ParsePushError([]byte(tc.body))
		if (err == nil) != tc.ok || code != tc.code || desc != tc.desc {
			t.Errorf("ParsePushError(%s) = %q %q %v", tc.body, code, desc, err)
		}
	}
}

func TestDecodePollRequest(t *testing.T) {
	tests := []struct {
		body  string
		field string // "" and ok: accepted
		ok    bool
		check func(PollRequest) bool
	}{
		{body: ``, ok: true, check: func(r PollRequest) bool { return r.MaxEvents == nil && !r.ReturnImmediately }},
		{body: `{"maxEvents":0}`, ok: true, check: func(r PollRequest) bool { return r.MaxEvents != nil && *r.MaxEvents == 0 }},
		{body: `{"maxEvents":5,"returnImmediately":true,"ack":["a"],"setErrs":{"b":{"err":"invalid_key","description":"d"}}}`, ok: true,
			check: func(r PollRequest) bool {
				return *r.MaxEvents == 5 && r.ReturnImmediately && r.Ack[0] == "a" && r.SetErrs["b"].Description == "d"
			}},
		{body: `{"future":"ignored"}`, ok: true, check: func(r PollRequest) bool { return r.MaxEvents == nil }},
		{body: `{"maxEvents":-1}`, field: "maxEvents"},
		{body: `{"maxEvents":2.5}`, field: "maxEvents"},
		{body: `{"returnImmediately":"yes"}`, field: "returnImmediately"},
		{body: `{"ack":"a"}`, field: "ack"},
		{body: `{"setErrs":{"j":{"description":"no err"}}}`, field: "setErrs.j"},
		{body: `{"setErrs":[]}`, field: "setErrs"},
		{body: `[1]`},
		{body: `{} x`},
	}
	for _, tc := range tests {
		req, err := DecodePollRequest(bytes.NewReader([]byte(tc.body)), 1024)
		if tc.ok {
			if err != nil || !tc.check(req) {
				t.Errorf("%s: %+v, %v", tc.body, req, err)
			}
			continue
		}
		pe, isPE := err.(*PollRequestError)
		if !isPE || pe.Field != tc.field {
			t.Errorf("%s: error %v, want field %q", tc.body, err, tc.field)
		}
	}
	big := append([]byte(`{"ack":["`), bytes.Repeat([]byte("a"), 2000)...)
	if _, err := DecodePollRequest(bytes.NewReader(append(big, `"]}`...)), 1024); err == nil {
		t.Error("oversized body accepted")
	}
}

func hostOf(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// FuzzDecodeRecord feeds damaged stored records to the decoder: it must
// refuse them with an error, and whatever it accepts must survive another
// round through the stored form.
func FuzzDecodeRecord(f *testing.F) {
	f.Add(encodeRecord(nil, fullRecord()))
	f.Add(encodeRecord(nil, &Record{JTI: "j"}))
	f.Add([]byte(`{"jti":"j","stream_id":"s","seq":3,"claims":{},"state":"queued"}`))
	f.Add([]byte{recordV1, 0x80})
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := decodeRecord(v)
		if err != nil {
			return
		}
		again, err := decodeRecord(encodeRecord(nil, r))
		if err != nil {
			t.Fatalf("re-encoded record refused: %v", err)
		}
		if again.JTI != r.JTI || again.Seq != r.Seq || string(again.Claims) != string(r.Claims) ||
			len(again.Attempts) != len(r.Attempts) || len(again.Labels) != len(r.Labels) || !again.QueuedAt.Equal(r.QueuedAt) {
			t.Fatalf("round trip changed the record:\n%+v\n%+v", r, again)
		}
	})
}
