package authentiktest

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"
)

func TestFailModesRestartAndCounts(t *testing.T) {
	s, _ := newTestServer(t, nil)
	me := s.URL() + "/api/v3/core/users/me/"
	wantStatus(t, do(t, nil, "GET", me, s.AdminToken(), nil), http.StatusOK)

	s.SetFailMode(Fail503)
	wantStatus(t, do(t, nil, "GET", me, s.AdminToken(), nil), http.StatusServiceUnavailable)

	s.SetFailMode(FailClose)
	req, _ := http.NewRequest("GET", me, nil)
	if resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("FailClose answered %d", resp.StatusCode)
	}
	s.SetFailMode(FailNone)
	wantStatus(t, do(t, nil, "GET", me, s.AdminToken(), nil), http.StatusOK)
	if n := s.Requests("/api/v3/core/users/me/"); n != 4 {
		t.Fatalf("counted %d requests, want 4", n)
	}

	alice := mustUser(t, s, UserSpec{Username: "alice", Password: "pw"})
	c, err := s.Login("alice", "pw")
	if err != nil {
		t.Fatal(err)
	}
	addr := s.Addr()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(me); err == nil {
		t.Fatal("closed server answered")
	}
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	if s.Addr() != addr {
		t.Fatalf("restart moved from %s to %s", addr, s.Addr())
	}
	// state survives: the old cookie still works
	r := do(t, c, "GET", me, "", nil)
	wantStatus(t, r, http.StatusOK)
	if _, ok := s.User(alice.PK); !ok {
		t.Fatal("user lost across restart")
	}
	s.ResetRequestCounts()
	if s.Requests("/api/v3/core/users/me/") != 0 || len(s.RequestCounts()) != 0 {
		t.Fatal("counts not reset")
	}
}

func TestDelayHonoursClientDeadline(t *testing.T) {
	s, _ := newTestServer(t, nil)
	s.SetDelay(time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", s.URL()+"/api/v3/core/brands/current/", nil)
	_, err := http.DefaultClient.Do(req)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	s.SetDelay(0)
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/core/brands/current/", "", nil), http.StatusOK)
}

func TestConcurrentUse(t *testing.T) {
	s, _ := newTestServer(t, nil)
	for i := 0; i < 4; i++ {
		mustUser(t, s, UserSpec{Username: "u" + itoa(i), Password: "pw"})
	}
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			c, err := s.Login("u"+itoa(i), "pw")
			if err != nil {
				errs <- err
				return
			}
			if _, err := RunFlow(context.Background(), c, s.URL(), s.Flows().Invalidation, nil); err != nil {
				errs <- err
			}
			_ = s.Events()
			_ = s.Sessions(i + 3)
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(s.EventsByAction("logout")); n != 4 {
		t.Fatalf("logouts %d, want 4", n)
	}
}

func TestDeterministicIDs(t *testing.T) {
	ids := func() []string {
		s, _ := newTestServer(t, nil)
		u := mustUser(t, s, UserSpec{Username: "a", Password: "p"})
		se, _, err := s.IssueSession(u.PK)
		if err != nil {
			t.Fatal(err)
		}
		pk, _ := s.RecordEvent(EventSpec{Action: "custom_x"})
		return []string{u.UUID, u.UID, se.UUID, se.SID, pk}
	}
	a, b := ids(), ids()
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("ids differ with the same seed: %v vs %v", a, b)
		}
	}
}

func TestFailModeForPrefix(t *testing.T) {
	s, _ := newTestServer(t, nil)
	s.SetFailModeFor("/api/v3/events/", Fail503)
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/events/events/", s.AdminToken(), nil), http.StatusServiceUnavailable)
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/core/users/me/", s.AdminToken(), nil), http.StatusOK)
	s.SetFailModeFor("/api/v3/events/", FailNone)
	wantStatus(t, do(t, nil, "GET", s.URL()+"/api/v3/events/events/", s.AdminToken(), nil), http.StatusOK)
}
