package sidecar

import (
	"fmt"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// pollerLagFactor is how many poll intervals may pass without the poller
// catching up before /healthz reports it as failing.
const pollerLagFactor = 10

// minPollerLagLimit keeps a short poll interval from flagging ordinary
// jitter (authentik's event writes and one slow page).
const minPollerLagLimit = time.Minute

// pollerHealth is the poller's /healthz detail: failing when it has not
// caught up for more than pollerLagFactor intervals (at least a minute).
func pollerHealth(on bool, s tap.Stats, interval time.Duration) error {
	if !on {
		return nil // off without --authentik-token; serve logs that at start
	}
	limit := max(pollerLagFactor*interval, minPollerLagLimit)
	if s.PollLag > limit {
		return fmt.Errorf("event-API poller is %s behind (limit %s; %d failed polls)", s.PollLag.Round(time.Second), limit, s.PollErrors)
	}
	return nil
}
