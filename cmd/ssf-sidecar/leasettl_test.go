package main

import (
	"context"
	"strings"
	"testing"
)

// TestLeaseTTLFlag: --lease-ttl is accepted when a working holder can
// renew in time (at least 3× --push-timeout and --poll-interval) and
// refused with a message naming both otherwise.
func TestLeaseTTLFlag(t *testing.T) {
	base := []string{"config", "check", "--upstream", "http://127.0.0.1:1", "--data-dir", t.TempDir()}
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--lease-ttl", "6s", "--push-timeout", "2s", "--poll-interval", "200ms"}, true},
		{[]string{"--lease-ttl", "0s"}, true},
		{[]string{"--lease-ttl", "5s", "--push-timeout", "2s", "--poll-interval", "200ms"}, false},
		{[]string{"--lease-ttl", "20s", "--push-timeout", "2s"}, true},
		{[]string{"--lease-ttl", "12s", "--push-timeout", "2s"}, false}, // --poll-interval 5s
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
