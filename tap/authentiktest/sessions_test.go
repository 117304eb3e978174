package authentiktest

import (
	"net/http"
	"testing"
)

func TestSessionsListGetDeleteAndPermissions(t *testing.T) {
	s, _ := newTestServer(t, nil)
	alice := mustUser(t, s, UserSpec{Username: "alice", Email: "alice@example.com", Password: "pw-a"})
	bob := mustUser(t, s, UserSpec{Username: "bob", Email: "bob@example.com", Password: "pw-b"})
	ca, err := s.Login("alice", "pw-a")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := s.Login("bob", "pw-b")
	if err != nil {
		t.Fatal(err)
	}
	admin := s.AdminToken()
	base := s.URL() + "/api/v3/core/authenticated_sessions/"

	// admin sees both, filter by username narrows
	var page schemaPage[schemaSession]
	r := do(t, nil, "GET", base, admin, nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &page)
	page.check(t)
	if len(page.Results) != 2 {
		t.Fatalf("admin sees %d sessions, want 2", len(page.Results))
	}
	for _, se := range page.Results {
		se.check(t)
	}
	page = schemaPage[schemaSession]{}
	do(t, nil, "GET", base+"?user__username=bob", admin, nil).decode(t, &page)
	if len(page.Results) != 1 || *page.Results[0].User != bob.PK {
		t.Fatalf("filtered: %+v", page.Results)
	}
	bobUUID := page.Results[0].UUID

	// alice sees only her own, marked current
	page = schemaPage[schemaSession]{}
	do(t, ca, "GET", base, "", nil).decode(t, &page)
	if len(page.Results) != 1 || *page.Results[0].User != alice.PK || !*page.Results[0].Current {
		t.Fatalf("alice's list: %+v", page.Results)
	}
	aliceUUID := page.Results[0].UUID

	// alice cannot see or delete bob's session
	wantStatus(t, do(t, ca, "GET", base+bobUUID+"/", "", nil), http.StatusNotFound)
	wantStatus(t, do(t, ca, "DELETE", base+bobUUID+"/", "", nil), http.StatusNotFound)
	// a cookie-authenticated delete without the CSRF header is refused
	plain := &http.Client{Jar: ca.Jar}
	wantStatus(t, do(t, plain, "DELETE", base+aliceUUID+"/", "", nil), http.StatusForbidden)
	// bulk delete is for admins
	wantStatus(t, do(t, ca, "DELETE", base+"bulk_delete/?user_pks="+itoa(bob.PK), "", nil), http.StatusForbidden)

	// admin gets and deletes bob's session: 204, the cookie stops working, no event
	var one schemaSession
	r = do(t, nil, "GET", base+bobUUID+"/", admin, nil)
	wantStatus(t, r, http.StatusOK)
	r.decode(t, &one)
	one.check(t)
	before := len(s.Events())
	wantStatus(t, do(t, nil, "DELETE", base+bobUUID+"/", admin, nil), http.StatusNoContent)
	wantStatus(t, do(t, cb, "GET", s.URL()+"/api/v3/core/users/me/", "", nil), http.StatusForbidden)
	wantStatus(t, do(t, nil, "DELETE", base+bobUUID+"/", admin, nil), http.StatusNotFound)
	if len(s.Events()) != before {
		t.Fatalf("session deletion recorded events: %+v", s.Events()[before:])
	}
	if _, ok := s.Session(bobUUID); ok {
		t.Fatal("deleted session still present")
	}
	// alice may delete her own session
	wantStatus(t, do(t, ca, "DELETE", base+aliceUUID+"/", "", nil), http.StatusNoContent)
	wantStatus(t, do(t, ca, "GET", s.URL()+"/api/v3/core/users/me/", "", nil), http.StatusForbidden)
}

func TestSessionsBulkDelete(t *testing.T) {
	s, _ := newTestServer(t, nil)
	a := mustUser(t, s, UserSpec{Username: "a", Password: "p"})
	b := mustUser(t, s, UserSpec{Username: "b", Password: "p"})
	c := mustUser(t, s, UserSpec{Username: "c", Password: "p"})
	for _, pk := range []int{a.PK, a.PK, b.PK, c.PK} {
		if _, _, err := s.IssueSession(pk); err != nil {
			t.Fatal(err)
		}
	}
	base := s.URL() + "/api/v3/core/authenticated_sessions/bulk_delete/"
	tests := []struct {
		query string
		code  int
		want  int
	}{
		{"", http.StatusBadRequest, 0},
		{"?user_pks=x", http.StatusBadRequest, 0},
		{"?user_pks=" + itoa(a.PK) + "&user_pks=" + itoa(b.PK), http.StatusOK, 3},
		{"?user_pks=" + itoa(a.PK), http.StatusOK, 0},
	}
	for _, tc := range tests {
		r := do(t, nil, "DELETE", base+tc.query, s.AdminToken(), nil)
		wantStatus(t, r, tc.code)
		if tc.code == http.StatusOK {
			var out struct {
				Deleted *int `json:"deleted"`
			}
			r.decode(t, &out)
			if out.Deleted == nil || *out.Deleted != tc.want {
				t.Fatalf("%s: deleted %v, want %d", tc.query, out.Deleted, tc.want)
			}
		}
	}
	if len(s.Sessions(c.PK)) != 1 || len(s.Sessions(a.PK)) != 0 {
		t.Fatal("bulk delete touched the wrong users")
	}
}
