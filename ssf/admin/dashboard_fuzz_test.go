package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/labstack/echo/v4"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// FuzzDashboardClaims feeds stored claims and a search text through what
// the timeline and the detail view do with them: decoding, the subject
// summary, masking and the search. Nothing may panic, and a masked view
// must not show an email address's local part.
func FuzzDashboardClaims(f *testing.F) {
	f.Add([]byte(`{"sub_id":{"format":"email","email":"alice@example.com"},"events":{"x":{}}}`), "alice")
	f.Add([]byte(`{"sub_id":{"format":"complex","user":{"format":"iss_sub","iss":"i","sub":"s"},"session":{"format":"opaque","id":"7"}}}`), "jti")
	f.Add([]byte(`{"sub_id":{"format":"complex","user":{"format":"complex","user":{"format":"complex"}}}}`), "")
	f.Add([]byte(`{"sub_id":[1,2,{"email":"x@y"}],"email":"bob@example.org"}`), "BOB")
	f.Add([]byte(`null`), "q")
	f.Add([]byte(`[]`), strings.Repeat("é", 300))
	f.Add([]byte(`{"iat":1e400}`), "")
	f.Add([]byte(`{"sub_id":{"format":"email","email":"A<B>&C@x"}}`), "a<b")
	f.Add([]byte(`{"sub_id":{"format":"opaque","id":"ÉCOLE"}}`), "éco")
	f.Fuzz(func(t *testing.T, raw []byte, q string) {
		claims, err := decodeClaims(raw)
		if err != nil {
			return
		}
		masked := maskClaims(claims)
		out, err := json.Marshal(masked)
		if err != nil {
			t.Fatalf("masked claims do not encode: %v", err)
		}
		_ = subjectSummary(claims["sub_id"], false)
		_ = subjectSummary(claims["sub_id"], true)
		sq := parseSearch(q)
		if len(sq.text) > 200*utf8.UTFMax {
			t.Fatalf("search text not bounded: %d bytes", len(sq.text))
		}
		// The raw pre-check never rules out a record that matches, on
		// claims as this sidecar's encoder writes them.
		enc, err := json.Marshal(claims)
		if err != nil {
			t.Fatal(err)
		}
		if sq.matches("jti-1", claims) && !sq.mayMatch("jti-1", enc) {
			t.Fatalf("pre-check ruled out a match: q %q claims %s", sq.text, enc)
		}
		// An email under sub_id never shows whole in the masked view.
		if sub, ok := claims["sub_id"].(map[string]any); ok {
			if e, ok := sub["email"].(string); ok {
				if at := strings.LastIndexByte(e, '@'); at > 1 && strings.Contains(string(out), e) {
					enc, _ := json.Marshal(e)
					if strings.Contains(string(out), string(enc)) {
						t.Fatalf("email %q left unmasked in %s", e, out)
					}
				}
			}
		}
	})
}

// FuzzDashboardTimelineQuery sends arbitrary query parameters to the
// timeline: every answer is a clear 200, 400 or 404, never a 500.
func FuzzDashboardTimelineQuery(f *testing.F) {
	f.Add("limit=10&offset=5&q=user1")
	f.Add("limit=-1")
	f.Add("offset=99999999999999999999")
	f.Add("q=%00%ff&limit=1")
	f.Add("q=" + strings.Repeat("a", 5000))
	w := newWorld(f, 30, nil, "")
	e := echo.New()
	e.HTTPErrorHandler = (&server{cfg: Config{Logger: discardLogger()}}).errorHandler
	w.dash.Routes(e.Group("/admin"))
	f.Fuzz(func(t *testing.T, query string) {
		req := httptest.NewRequest(http.MethodGet, "/admin/dashboard/api/streams/s1/timeline", nil)
		req.URL.RawQuery = query
		rec := httptest.NewRecorder()
		e.ServeHTTP(rec, req)
		switch rec.Code {
		case 200, 400, 404:
		default:
			t.Fatalf("query %q: %d %s", query, rec.Code, rec.Body)
		}
	})
}

// BenchmarkDashboardTimeline compares, on a stream with 10,000 SETs in its
// history, the first page (what the page loads and re-loads on every live
// event) with a search that scans all of them.
func BenchmarkDashboardTimeline(b *testing.B) {
	w := newWorld(b, 10000, nil, "")
	e := echo.New()
	w.dash.Routes(e.Group("/admin"))
	run := func(b *testing.B, query string, want int) {
		for b.Loop() {
			req := httptest.NewRequestWithContext(context.Background(), http.MethodGet, "/admin/dashboard/api/streams/s1/timeline?"+query, nil)
			rec := httptest.NewRecorder()
			e.ServeHTTP(rec, req)
			if rec.Code != 200 {
				b.Fatalf("%d %s", rec.Code, rec.Body)
			}
			var got timelineBody
			if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil || len(got.Items) != want {
				b.Fatalf("items %d, want %d (%v)", len(got.Items), want, err)
			}
		}
	}
	b.Run("first-page-100", func(b *testing.B) { run(b, "limit=100", 100) })
	b.Run("page-at-9900", func(b *testing.B) { run(b, "limit=100&offset=9900", 100) })
	b.Run(fmt.Sprintf("search-%d", 10000), func(b *testing.B) { run(b, "q=user9999@", 1) })
}
