package sidecar

import (
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

func TestPollerHealth(t *testing.T) {
	cases := []struct {
		name     string
		on       bool
		lag      time.Duration
		interval time.Duration
		fail     bool
	}{
		{"off", false, time.Hour, 5 * time.Second, false},
		{"fresh", true, 2 * time.Second, 5 * time.Second, false},
		{"within ten intervals", true, 49 * time.Second, 5 * time.Second, false},
		{"ten intervals but under the one-minute floor", true, 55 * time.Second, 5 * time.Second, false},
		{"beyond ten intervals", true, 61 * time.Second, 5 * time.Second, true},
		{"long interval", true, 9 * time.Minute, time.Minute, false},
		{"long interval, far behind", true, 11 * time.Minute, time.Minute, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := pollerHealth(tc.on, tap.Stats{PollLag: tc.lag, PollErrors: 3}, tc.interval)
			if (err != nil) != tc.fail {
				t.Fatalf("err %v, want failing %v", err, tc.fail)
			}
			if err != nil && !strings.Contains(err.Error(), "3 failed polls") {
				t.Errorf("detail %q lacks the failed polls", err)
			}
		})
	}
}
