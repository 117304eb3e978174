package tap

import (
	"context"
	"errors"
	"time"
)

// PollerLease is the single-holder lease that lets one replica among
// several sharing a store read authentik's event API; the others stand by
// and take over, from the committed cursor, when the holder stops or its
// lease runs out. cmd adapts the outbox's store leases to it.
type PollerLease interface {
	// Acquire takes the named lease for holder for ttl, or extends it when
	// holder already has it. held is false (with a nil error) when another
	// holder has an unexpired lease; token is the lease's fencing token,
	// which grows with every change of holder.
	Acquire(ctx context.Context, name, holder string, ttl time.Duration) (token uint64, held bool, err error)
	// Release gives the lease up so a standby can take it at once.
	Release(ctx context.Context, name, holder string, token uint64) error
}

// PollerLeaseName is the lease the event-API poller holds.
const PollerLeaseName = "tap/event-poller"

// errLeaseLost stops a poll whose lease went to another replica.
var errLeaseLost = errors.New("tap: event-API poller lease lost to another replica")

// pollerLease is the poller goroutine's view of its lease. A nil
// *pollerLease (no PollerLease configured) always holds.
type pollerLease struct {
	t        *Tap
	held     bool
	token    uint64
	renewAt  time.Time
	standing bool // "standing by" was logged
}

func (t *Tap) newPollerLease() *pollerLease {
	if t.cfg.PollerLease == nil {
		return nil
	}
	return &pollerLease{t: t}
}

// hold takes or renews the lease when LeaseTTL/3 has passed since the last
// time, and reports whether this replica may poll. A change of holder is
// logged; on taking over, the directory is reloaded from the store, where
// the previous holder kept it current.
func (l *pollerLease) hold(ctx context.Context) (bool, error) {
	if l == nil {
		return true, nil
	}
	t := l.t
	now := t.cfg.Clock()
	if l.held && now.Before(l.renewAt) {
		return true, nil
	}
	token, held, err := t.cfg.PollerLease.Acquire(ctx, PollerLeaseName, t.cfg.LeaseHolder, t.cfg.PollerLeaseTTL)
	if err != nil {
		return false, err
	}
	switch {
	case held && (!l.held || token != l.token):
		t.log.Info("tap: event-API poller lease taken; polling from the committed cursor",
			"holder", t.cfg.LeaseHolder, "token", token)
		if err := t.dir.load(t.cfg.KV); err != nil {
			t.log.Warn("tap: reload the user directory after taking the poller lease", "err", err)
		}
	case !held && l.held:
		t.log.Warn("tap: event-API poller lease lost; standing by", "holder", t.cfg.LeaseHolder, "token", l.token)
		l.standing = true
	case !held && !l.standing:
		t.log.Info("tap: event-API poller lease held by another replica; standing by", "holder", t.cfg.LeaseHolder)
		l.standing = true
	}
	l.held = held
	if held {
		l.token, l.renewAt, l.standing = token, now.Add(t.cfg.PollerLeaseTTL/3), false
	}
	return held, nil
}

// keep is checked between events of a poll: false stops the poll (the
// lease is gone, or cannot be renewed).
func (l *pollerLease) keep(ctx context.Context) bool {
	if l == nil {
		return true
	}
	held, err := l.hold(ctx)
	if err != nil {
		l.t.log.Warn("tap: renew the event-API poller lease", "err", err)
		l.held = false
		return false
	}
	return held
}

// fence is the mark that makes a commit hold only while this replica still
// has the lease with the token it polls under: a poller paused past its
// lease, whose successor has moved on, can then neither move the cursor
// nor publish.
func (l *pollerLease) fence() []Mark {
	if l == nil {
		return nil
	}
	return []Mark{{Fence: Fence{Lease: PollerLeaseName, Token: l.token}}}
}

// lost is asked after a failed commit: it checks the lease again, at once,
// and reports whether it has gone to another replica (the commit was then
// refused by its fence; the poll stops and leaves the cursor to the new
// holder).
func (l *pollerLease) lost(ctx context.Context) bool {
	if l == nil {
		return false
	}
	token := l.token
	l.renewAt = time.Time{}
	held, err := l.hold(ctx)
	if err != nil || held && l.token == token {
		return false
	}
	l.t.stats.pollerFenced.Add(1)
	l.t.log.Warn("tap: event-API poller commit refused: the lease passed to another replica; stopping this poll",
		"holder", l.t.cfg.LeaseHolder, "token", token)
	return true
}

// renewDue is how long the poller may wait before the lease needs renewing
// (ok false: no lease held, nothing to renew).
func (l *pollerLease) renewDue() (time.Duration, bool) {
	if l == nil || !l.held {
		return 0, false
	}
	return max(0, l.renewAt.Sub(l.t.cfg.Clock())), true
}

// release gives the lease up when the poller stops.
func (l *pollerLease) release() {
	if l == nil || !l.held {
		return
	}
	l.held = false
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.t.cfg.PollerLease.Release(ctx, PollerLeaseName, l.t.cfg.LeaseHolder, l.token); err != nil {
		l.t.log.Info("tap: release the event-API poller lease", "err", err)
	}
}

// ReplicaLeasePrefix names each replica's liveness lease: a replica with
// a PollerLease holds ReplicaLeasePrefix+LeaseHolder for PollerLeaseTTL
// while it runs, renewing it every third of that. Another replica that
// can take it knows the holder is gone (its lease ran out, or it belonged
// to an earlier process on a store that tells) and reconciles the gone
// replica's open intents at once instead of after the grace period.
const ReplicaLeasePrefix = "tap/replica/"

// holdLiveness takes this replica's liveness lease before anything else
// runs, so that no intent of this run is ever seen without it.
func (t *Tap) holdLiveness(ctx context.Context) bool {
	if t.cfg.PollerLease == nil {
		return false
	}
	actx, cancel := context.WithTimeout(ctx, t.cfg.LookupTimeout)
	defer cancel()
	_, held, err := t.cfg.PollerLease.Acquire(actx, ReplicaLeasePrefix+t.cfg.LeaseHolder, t.cfg.LeaseHolder, t.cfg.PollerLeaseTTL)
	if err != nil {
		t.log.Warn("tap: take this replica's liveness lease", "err", err)
	}
	return held
}

// runLiveness renews the liveness lease until ctx ends. It is not released
// at the end: requests still in flight through the proxy may yet complete
// their intents, and the lease running out is the sign they cannot.
func (t *Tap) runLiveness(ctx context.Context, held bool) error {
	if t.cfg.PollerLease == nil {
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.cfg.After(max(t.cfg.PollerLeaseTTL/3, minRenewWait)):
		}
		_, ok, err := t.cfg.PollerLease.Acquire(ctx, ReplicaLeasePrefix+t.cfg.LeaseHolder, t.cfg.LeaseHolder, t.cfg.PollerLeaseTTL)
		switch {
		case err != nil && ctx.Err() == nil:
			t.log.Warn("tap: renew this replica's liveness lease", "err", err)
		case err == nil && ok != held:
			if !ok {
				t.log.Warn("tap: this replica's liveness lease was taken: another replica found it gone and may reconcile its open intents")
			}
			held = ok
		}
	}
}

// gone reports whether replica name (an intent's holder or claimer) is no
// longer running: this replica could take its liveness lease, which it
// then gives back at once. Unknown (no PollerLease, an intent from before
// holders were recorded, an error) is not gone. known caches the answers
// of one rescan.
func (t *Tap) gone(ctx context.Context, name string, known map[string]bool) bool {
	if t.cfg.PollerLease == nil || name == "" || name == t.cfg.LeaseHolder {
		return false
	}
	if g, ok := known[name]; ok {
		return g
	}
	lease := ReplicaLeasePrefix + name
	token, held, err := t.cfg.PollerLease.Acquire(ctx, lease, t.cfg.LeaseHolder, t.cfg.PollerLeaseTTL)
	if err == nil && held {
		if err := t.cfg.PollerLease.Release(ctx, lease, t.cfg.LeaseHolder, token); err != nil {
			t.log.Info("tap: give back a gone replica's liveness lease", "replica", name, "err", err)
		}
	}
	known[name] = err == nil && held
	return known[name]
}
