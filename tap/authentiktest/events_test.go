package authentiktest

import (
	"net/http"
	"net/url"
	"testing"
	"time"
)

func listEvents(t *testing.T, s *Server, query string) schemaPage[schemaEvent] {
	t.Helper()
	var page schemaPage[schemaEvent]
	r := do(t, nil, "GET", s.URL()+"/api/v3/events/events/"+query, s.AdminToken(), nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &page)
	page.check(t)
	for _, e := range page.Results {
		e.check(t)
	}
	return page
}

func TestEventsLogoutRecordedWithHTTPContext(t *testing.T) {
	s, clk := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	old := CookieValue(c, s.URL(), SessionCookieName)
	clk.Advance(time.Second)
	res, err := RunFlow(t.Context(), c, s.URL(), s.Flows().Invalidation, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Component != "xak-flow-redirect" {
		t.Fatalf("logout answered %q", res.Component)
	}
	now := CookieValue(c, s.URL(), SessionCookieName)
	claims, err := ParseSessionCookie(s.SecretKey(), now)
	if err != nil || now == old || claims.Authenticated || claims.Subject != "anonymous" {
		t.Fatalf("cookie after logout: %+v %v", claims, err)
	}
	oldClaims, _ := ParseSessionCookie(s.SecretKey(), old)
	if _, ok := s.SessionBySID(oldClaims.SID); ok {
		t.Fatal("session survived logout")
	}

	page := listEvents(t, s, "?actions=logout")
	if len(page.Results) != 1 {
		t.Fatalf("logout events: %d", len(page.Results))
	}
	e := page.Results[0]
	if e.User["pk"] != float64(alice.PK) || e.User["username"] != "alice" || e.User["email"] != "alice@example.com" {
		t.Fatalf("logout user = %v", e.User)
	}
	hr, _ := e.Context["http_request"].(map[string]any)
	if hr == nil || hr["path"] != "/api/v3/flows/executor/"+s.Flows().Invalidation+"/" || hr["method"] != "GET" {
		t.Fatalf("http_request = %v", e.Context["http_request"])
	}
	if *e.Created != "2026-11-26T12:00:01.123456Z" || *e.App != "authentik.events.signals" {
		t.Fatalf("created %s app %s", *e.Created, *e.App)
	}
	// Logging out again (anonymous now) records a logout of AnonymousUser,
	// as authentik's logout() does for anyone.
	if _, err := RunFlow(t.Context(), c, s.URL(), s.Flows().Invalidation, nil); err != nil {
		t.Fatal(err)
	}
	lo := s.EventsByAction("logout")
	if len(lo) != 2 || lo[1].User["username"] != "AnonymousUser" {
		t.Fatalf("logout events after anonymous logout: %+v", lo)
	}
}

func TestEventsPagination(t *testing.T) {
	s, clk := newTestServer(t, nil)
	var pks []string
	for i := 0; i < 5; i++ {
		pk, err := s.RecordEvent(EventSpec{Action: "custom_test"})
		if err != nil {
			t.Fatal(err)
		}
		pks = append(pks, pk)
		clk.Advance(time.Millisecond)
	}
	tests := []struct {
		name                                      string
		query                                     string
		count, current, total, next, prev, si, ei float64
		first                                     string
	}{
		{"newest first by default", "?page_size=2", 5, 1, 3, 2, 0, 1, 2, pks[4]},
		{"middle page", "?page_size=2&page=2", 5, 2, 3, 3, 1, 3, 4, pks[2]},
		{"last page", "?page_size=2&page=3", 5, 3, 3, 0, 2, 5, 5, pks[0]},
		{"ascending", "?ordering=created&page_size=2", 5, 1, 3, 2, 0, 1, 2, pks[0]},
		{"empty filter", "?actions=logout", 0, 1, 1, 0, 0, 0, 0, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := listEvents(t, s, tc.query)
			pg := p.Pagination
			got := []float64{*pg.Count, *pg.Current, *pg.TotalPages, *pg.Next, *pg.Previous, *pg.StartIndex, *pg.EndIndex}
			want := []float64{tc.count, tc.current, tc.total, tc.next, tc.prev, tc.si, tc.ei}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("pagination %v, want %v", got, want)
				}
			}
			if tc.first != "" && *p.Results[0].PK != tc.first {
				t.Fatalf("first pk %s, want %s", *p.Results[0].PK, tc.first)
			}
		})
	}
	for _, q := range []string{"?page=4&page_size=2", "?page=0", "?page=x"} {
		r := do(t, nil, "GET", s.URL()+"/api/v3/events/events/"+q, s.AdminToken(), nil)
		wantStatus(t, r, http.StatusNotFound)
	}
}

func TestEventsPagesShiftWhenNewEventsArrive(t *testing.T) {
	s, clk := newTestServer(t, nil)
	for i := 0; i < 4; i++ {
		if _, err := s.RecordEvent(EventSpec{Action: "custom_old"}); err != nil {
			t.Fatal(err)
		}
		clk.Advance(time.Second)
	}
	p1 := listEvents(t, s, "?page_size=2&page=1")
	// Two newer events arrive between the page reads.
	for i := 0; i < 2; i++ {
		if _, err := s.RecordEvent(EventSpec{Action: "custom_new"}); err != nil {
			t.Fatal(err)
		}
	}
	p2 := listEvents(t, s, "?page_size=2&page=2")
	// Page 2 now holds what page 1 held: the shift a poller must survive.
	if *p2.Results[0].PK != *p1.Results[0].PK || *p2.Results[1].PK != *p1.Results[1].PK {
		t.Fatalf("page 2 after inserts = %v, want page 1's %v", pkList(p2.Results), pkList(p1.Results))
	}
	if *p2.Pagination.Count != 6 {
		t.Fatalf("count %v", *p2.Pagination.Count)
	}
}

func TestEventsEqualTimestampsStableOrder(t *testing.T) {
	s, _ := newTestServer(t, nil)
	at := t0.Add(time.Hour)
	for i := 0; i < 6; i++ {
		if _, err := s.RecordEvent(EventSpec{Action: "custom_tie", Created: at}); err != nil {
			t.Fatal(err)
		}
	}
	all := pkList(listEvents(t, s, "").Results)
	var paged []string
	for page := 1; page <= 3; page++ {
		paged = append(paged, pkList(listEvents(t, s, "?page_size=2&page="+itoa(page)).Results)...)
	}
	seen := map[string]bool{}
	for i := range all {
		if all[i] != paged[i] {
			t.Fatalf("paging equal timestamps is not stable: %v vs %v", all, paged)
		}
		seen[paged[i]] = true
	}
	if len(seen) != 6 {
		t.Fatalf("pages repeat or miss events: %v", paged)
	}
	// The tie order is by pk, not by insertion: both orderings agree on ties.
	asc := pkList(listEvents(t, s, "?ordering=created").Results)
	for i := range asc {
		if asc[i] != all[i] {
			t.Fatalf("tie order differs between orderings: %v vs %v", asc, all)
		}
	}
}

func pkList(es []schemaEvent) []string {
	var out []string
	for _, e := range es {
		out = append(out, *e.PK)
	}
	return out
}

func TestEventsFilters(t *testing.T) {
	s, clk := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw"})
	d, err := s.AddDevice(DeviceSpec{Type: DeviceWebAuthn, UserPK: alice.PK, Name: "key"})
	if err != nil {
		t.Fatal(err)
	}
	admin := s.AdminToken()
	// login records model_updated (last_login, by alice) and login at one instant
	if _, err := s.Login("alice", "pw"); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Second)
	wantStatus(t, do(t, nil, "PATCH", s.URL()+"/api/v3/core/users/"+itoa(alice.PK)+"/", admin, map[string]any{"name": "Alice"}), http.StatusOK)
	clk.Advance(time.Second)
	wantStatus(t, do(t, nil, "DELETE", s.URL()+"/api/v3/authenticators/admin/webauthn/"+itoa(d.PK)+"/", admin, nil), http.StatusNoContent)
	tests := []struct {
		query string
		want  []string // actions, newest first
	}{
		{"?actions=model_updated&actions=model_deleted", []string{"model_deleted", "model_updated", "model_updated"}},
		{"?action=MODEL_", []string{"model_deleted", "model_updated", "model_updated"}},
		{"?actions=login", []string{"login"}},
		{"?username=akadmin", []string{"model_deleted", "model_updated"}},
		{"?username=alice&actions=login", []string{"login"}},
		{"?context_model_name=webauthndevice", []string{"model_deleted"}},
		{"?context_model_app=authentik_core&context_model_pk=" + itoa(alice.PK) + "&username=akadmin", []string{"model_updated"}},
		{"?context_model_pk=999", nil},
		{"?" + url.Values{"client_ip": {"127.0.0.1"}, "actions": {"model_deleted", "login"}}.Encode(), []string{"model_deleted", "login"}},
		{"?" + url.Values{"client_ip": {"10.0.0.1"}}.Encode(), nil},
	}
	for _, tc := range tests {
		t.Run(tc.query, func(t *testing.T) {
			p := listEvents(t, s, tc.query)
			var got []string
			for _, e := range p.Results {
				got = append(got, *e.Action)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("actions %v, want %v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("actions %v, want %v", got, tc.want)
				}
			}
		})
	}
}

func TestEventsNeedAdmin(t *testing.T) {
	s, _ := newTestServer(t, nil)
	u := mustUser(t, s, UserSpec{Username: "u", Password: "p"})
	if _, err := s.RecordEvent(EventSpec{Action: "custom_x", UserPK: u.PK}); err != nil {
		t.Fatal(err)
	}
	tok, err := s.MintToken(u.PK)
	if err != nil {
		t.Fatal(err)
	}
	var p schemaPage[schemaEvent]
	r := do(t, nil, "GET", s.URL()+"/api/v3/events/events/", tok, nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &p)
	if len(p.Results) != 0 {
		t.Fatalf("non-admin sees %d events", len(p.Results))
	}
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/events/events/", "", nil), http.StatusForbidden)
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/events/events/", "wrong-token", nil), http.StatusForbidden)
}

func TestPyTimeFormatsLikeDRF(t *testing.T) {
	tests := []struct {
		in   time.Time
		want string
	}{
		{time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.UTC), "2026-05-01T12:00:00.123456Z"},
		{time.Date(2026, 5, 1, 12, 0, 0, 1000, time.UTC), "2026-05-01T12:00:00.000001Z"},
		// Python's isoformat drops a zero fraction entirely.
		{time.Date(2026, 5, 1, 12, 0, 0, 999, time.UTC), "2026-05-01T12:00:00Z"},
		{time.Date(2026, 5, 1, 14, 0, 0, 500000000, time.FixedZone("CEST", 2*3600)), "2026-05-01T12:00:00.500000Z"},
	}
	for _, tc := range tests {
		if got := pyTime(tc.in); got != tc.want {
			t.Errorf("pyTime(%v) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
