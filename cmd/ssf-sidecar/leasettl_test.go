package main

import (
	"context"
	"strings"
	"testing"
)

// TestLeaseTTLFlag: --lease-ttl is 0 (the default) or at least a second;
// holders renew every third of it, so it need not cover a push attempt or
// a poll interval. A refusal names the flag.
func TestLeaseTTLFlag(t *testing.T) {
	base := []string{"config", "check", "--upstream", "http://127.0.0.1:1", "--data-dir", t.TempDir()}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--lease-ttl", "6s", "--push-timeout", "2s", "--poll-interval", "200ms"}, true},
		{[]string{"--lease-ttl", "0s"}, true},
		{[]string{"--lease-ttl", "3s", "--push-timeout", "10s", "--poll-interval", "1m"}, true},
		{[]string{"--lease-ttl", "999ms"}, false},
		{[]string{"--lease-ttl", "-1s"}, false},
	} {
		var out, errb strings.Builder
		code := run(context.Background(), append(append([]string{}, base...), tc.args...), &out, &errb)
		if tc.ok != (code == exitOK) {
			t.Errorf("%v: exit %d, %s", tc.args, code, errb.String())
		}
		if !tc.ok && !strings.Contains(errb.String(), "--lease-ttl") {
			t.Errorf("%v: the error does not name --lease-ttl: %s", tc.args, errb.String())
		}
	}
}
