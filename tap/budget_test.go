package tap

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestJunkNeverCostsAConfirmedCaller: anonymous junk from one address
// (malformed cookies, which are refused locally, then bearer tokens
// authentik refuses) must not stop an admin at the same address from being
// observed: the admin's session revocation still produces its SET.
func TestJunkNeverCostsAConfirmedCaller(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.RateBurst = 2; c.RatePerIP = 0.0001 }})
	alice := e.user("alice")
	sess, _ := e.session(alice.PK)
	const zero = "/api/v3/core/authenticated_sessions/00000000-0000-0000-0000-000000000000/"
	before := e.ak.Requests("/api/v3/core/users/me/")
	for range 25 {
		e.do("DELETE", zero, "", "a.b.c", "")
	}
	if n := e.ak.Requests("/api/v3/core/users/me/") - before; n != 0 {
		t.Errorf("malformed cookies cost %d look-ups, want 0", n)
	}
	for i := range 6 {
		e.do("DELETE", zero, "", "", fmt.Sprintf("junk-%d", i))
	}
	// The same refused token again is answered from memory.
	n := e.ak.Requests("/api/v3/core/users/me/")
	e.do("DELETE", zero, "", "", "junk-0")
	if d := e.ak.Requests("/api/v3/core/users/me/") - n; d != 0 {
		t.Errorf("a token refused a moment ago was looked up again (%d)", d)
	}
	e.do("DELETE", "/api/v3/core/authenticated_sessions/"+sess.UUID+"/", "", "", e.ak.AdminToken())
	e.settle()
	checkSignals(t, e.rec.signals(), []want{
		{kind: KindSessionRevoked, source: SourceTraffic, subject: int64(alice.PK), initiator: InitiatorAdmin, sessionUUID: sess.UUID},
	})
	if e.tap.Stats().RateLimited == 0 {
		t.Error("over-budget look-ups were not counted")
	}
}

// TestRefusedLowPrivilegeCallerThrottled: a confirmed caller whose tapped
// actions authentik refuses (a non-admin calling set_password on someone
// else) makes the sidecar look the target up with its own token; once the
// caller's budget is spent, those look-ups run one at a time instead of as
// fast as the caller sends.
func TestRefusedLowPrivilegeCallerThrottled(t *testing.T) {
	var mu sync.Mutex
	inFlight, peak := 0, 0
	slowLookups := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			target := r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/api/v3/core/users/") &&
				!strings.HasSuffix(r.URL.Path, "/me/")
			if target {
				mu.Lock()
				inFlight++
				peak = max(peak, inFlight)
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
				defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
			}
			next.ServeHTTP(w, r)
		})
	}
	e := newEnv(t, envOpts{wrap: slowLookups, mutate: func(c *Config) { c.RateBurst = 2; c.RatePerIP = 0.0001 }})
	alice := e.user("alice")
	mallory := e.user("mallory")
	_, cookie := e.session(mallory.PK)
	path := fmt.Sprintf("/api/v3/core/users/%d/set_password/", alice.PK)
	for range 3 {
		if resp := e.do("POST", path, `{"password":"x"}`, cookie, ""); resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusNotFound {
			t.Fatalf("set_password by a non-admin: %d", resp.StatusCode)
		}
	}
	mu.Lock()
	peak = 0
	mu.Unlock()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.do("POST", path, `{"password":"x"}`, cookie, "")
		}()
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if peak > 1 {
		t.Errorf("%d look-ups on the refused caller's behalf ran at once, want 1", peak)
	}
	if e.tap.Stats().RateLimited == 0 {
		t.Error("held look-ups were not counted")
	}
	if n := len(e.rec.signals()); n != 0 {
		t.Errorf("refused actions produced %d signals", n)
	}
}

// TestHeldLookupPastTheBoundIsAMiss: an over-budget look-up still waiting
// when the before-bound ends is counted as a miss, not taken for an
// unauthenticated caller.
func TestHeldLookupPastTheBoundIsAMiss(t *testing.T) {
	e := newEnv(t, envOpts{mutate: func(c *Config) { c.RateBurst = 1; c.RatePerIP = 0.0001 }})
	e.tap.limiter.spend("192.0.2.1")
	e.tap.overBudget <- struct{}{} // another over-budget look-up holds the slot
	defer func() { <-e.tap.overBudget }()
	r := httptest.NewRequest(http.MethodDelete, "/api/v3/core/authenticated_sessions/00000000-0000-0000-0000-000000000001/", nil)
	r.RemoteAddr = "192.0.2.1:4242"
	r.Header.Set("Authorization", "Bearer "+e.ak.AdminToken())
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	misses, untrusted := e.tap.Stats().Misses, e.tap.Stats().Untrusted
	if st := e.tap.Before(ctx, r, nil); st != nil {
		t.Fatalf("Before returned %v past its bound", st)
	}
	if got := e.tap.Stats(); got.Misses != misses+1 || got.Untrusted != untrusted {
		t.Errorf("misses %d -> %d, untrusted %d -> %d; want one miss and no untrusted caller", misses, got.Misses, untrusted, got.Untrusted)
	}
}
