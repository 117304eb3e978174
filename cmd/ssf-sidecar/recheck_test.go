package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// TestDirectoryRecheckOption: --directory-recheck / SSF_DIRECTORY_RECHECK
// default to 5m, take a duration, 0 turns the re-check off, and a negative
// or malformed value is refused.
func TestDirectoryRecheckOption(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want time.Duration
		err  string
	}{
		{name: "default", want: 5 * time.Minute},
		{name: "flag", args: []string{"--directory-recheck", "90s"}, want: 90 * time.Second},
		{name: "env", env: map[string]string{"SSF_DIRECTORY_RECHECK": "1h"}, want: time.Hour},
		{name: "flag over env", args: []string{"--directory-recheck", "2m"}, env: map[string]string{"SSF_DIRECTORY_RECHECK": "1h"}, want: 2 * time.Minute},
		{name: "off", args: []string{"--directory-recheck", "0"}, want: 0},
		{name: "negative", args: []string{"--directory-recheck", "-1m"}, err: "directory-recheck"},
		{name: "malformed", env: map[string]string{"SSF_DIRECTORY_RECHECK": "often"}, err: "directory-recheck"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _, err := resolveArgs(t, tc.args, tc.env)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one naming %s", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.DirectoryRecheck != tc.want {
				t.Fatalf("DirectoryRecheck = %v, want %v", c.DirectoryRecheck, tc.want)
			}
		})
	}
}

// TestDirectoryRecheckReachesTap: the option decides whether a background
// deactivation (an LDAP sync: no event, no traffic) becomes an
// account-disabled SET. On, the SET comes; at 0, the poller keeps polling
// and none comes.
func TestDirectoryRecheckReachesTap(t *testing.T) {
	run := func(t *testing.T, recheck time.Duration) (*demoWorld, authentiktest.User) {
		w, err := startDemoWorld(context.Background(), demoOptions{DataDir: t.TempDir(), Receivers: systemReceivers(),
			PollInterval: 50 * time.Millisecond, Mutate: func(c *sidecar.Config) { c.DirectoryRecheck = recheck }})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
		ctx := context.Background()
		if _, err := w.CreatePushStream(ctx, []string{ssf.EventAccountDisabled}); err != nil {
			t.Fatal(err)
		}
		if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		u, err := w.AK.AddUser(authentiktest.UserSpec{Username: "synced", Email: "synced@example.com", Password: "synced-password-1"})
		if err != nil {
			t.Fatal(err)
		}
		// The re-check reports changes of users the directory knows: an
		// admin edit through the sidecar makes the tap look the user up.
		if status, _ := w.call(t, w.AK.AdminToken(), "PATCH", fmt.Sprintf("/api/v3/core/users/%d/", u.PK), map[string]any{"name": "Synced User"}); status != 200 {
			t.Fatalf("PATCH user: %d", status)
		}
		waitPolls(t, w, 3)
		if err := w.AK.SystemDisableUser(u.PK); err != nil {
			t.Fatal(err)
		}
		return w, u
	}
	t.Run("on", func(t *testing.T) {
		w, u := run(t, time.Nanosecond)
		deadline := time.Now().Add(20 * time.Second)
		for !hasSET(w.Receiver.Received(), "account-disabled", u.Email) {
			if time.Now().After(deadline) {
				t.Fatalf("no account-disabled SET for a background deactivation; got %v", summarize(w.Receiver.Received()))
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("off", func(t *testing.T) {
		w, u := run(t, 0)
		// Each poll would have run a re-check page: ten polls are ten
		// chances the re-check had, were it on.
		waitPolls(t, w, 10)
		if hasSET(w.Receiver.Received(), "account-disabled", u.Email) {
			t.Fatalf("--directory-recheck 0 still re-read the directory: %v", summarize(w.Receiver.Received()))
		}
	})
}

// waitPolls waits until the sidecar has read authentik's event API n more
// times.
func waitPolls(t *testing.T, w *demoWorld, n int) {
	t.Helper()
	const path = "/api/v3/events/events/"
	start := w.AK.Requests(path)
	deadline := time.Now().Add(20 * time.Second)
	for w.AK.Requests(path) < start+n {
		if time.Now().After(deadline) {
			t.Fatalf("the poller did not read the event API %d times", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
