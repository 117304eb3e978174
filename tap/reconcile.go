package tap

import (
	"cmp"
	"context"
	"errors"
	"strconv"
	"time"
)

// openGrace is how long an open intent of this process is left alone: a
// Before that overran the proxy's deadline never gets its After, so such an
// intent is reconciled like a crashed one once this has passed.
const openGrace = time.Minute

// rescan walks the journal: completed intents whose signals were not yet
// published are published; intents left open by a crash between
// forwarding and the outcome (of this replica, or of another that died)
// are reconciled against authentik; stale ones are dropped. Another
// replica's entries, and open ones, are left alone until takeoverGrace has
// passed since they were last touched, and then claimed first (see
// takeoverGrace). It also prunes old dedup records.
func (t *Tap) rescan(ctx context.Context) error {
	entries, err := t.journalScan()
	if err != nil {
		return err
	}
	var firstErr error
	known := map[string]bool{}
	for _, in := range entries {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if h := t.hook().journalRead; h != nil {
			h(in.ID)
		}
		err = t.resolve(ctx, in, known)
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if marks := t.pruneDedup(); len(marks) > 0 {
		t.dedupMu.Lock()
		err := t.cfg.KV.Commit(ctx, marks)
		t.dedupMu.Unlock()
		if err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// resolve acts on one journal entry found by a rescan (known: which
// replicas this rescan found gone).
func (t *Tap) resolve(ctx context.Context, in *intent, known map[string]bool) error {
	now := t.cfg.Clock()
	switch {
	case now.Sub(in.Created) > t.cfg.IntentMaxAge:
		t.stats.misses.Add(1)
		return t.journalDrop(ctx, in)
	case in.Outcome == outcomeCompleted && t.owner(in):
		return t.process(ctx, in, SourceTraffic)
	case in.Created.Before(t.started) && in.Claimer == "" &&
		(in.Outcome == outcomeCompleted || in.Holder == "" || in.Holder == t.cfg.LeaseHolder):
		// From before this replica started: a completed one is taken at
		// once (if its holder is alive after all, the claim makes it back
		// off), and so is an open one left by this replica's previous run
		// (a stable LeaseHolder) or written before entries named their
		// holder. Another's open one may be a request still in flight.
	case now.Sub(in.touched()) < takeoverGrace && !t.gone(ctx, cmp.Or(in.Claimer, in.Holder), known):
		// Its holder's request may still be in flight, or its holder (or
		// claimer) is still publishing it.
		return nil
	}
	if !t.owner(in) || in.Claimer == "" {
		ok, err := t.claim(ctx, in)
		if err != nil || !ok {
			return err // !ok: another replica claimed it first
		}
		if in.Holder != t.cfg.LeaseHolder {
			t.stats.takenOver.Add(1)
			t.log.Info("tap: took over an intent another replica left", "intent", in.ID, "holder", in.Holder)
		}
	}
	if in.Outcome == outcomeCompleted {
		return t.process(ctx, in, SourceTraffic)
	}
	rctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
	defer cancel()
	return t.reconcile(rctx, in)
}

// reconcile decides whether an open intent's action happened, asking
// authentik about the object it was about to change. Actions authentik
// leaves no trace of in its objects (logout, password, enrolment, device
// creation) are left to the event API and dropped here (counted as misses).
func (t *Tap) reconcile(ctx context.Context, in *intent) error {
	if t.cfg.Token == "" {
		t.stats.misses.Add(1) // nothing to ask authentik with
		return t.journalDrop(ctx, in)
	}
	cr := t.api.tokenCreds()
	happened := false
	switch in.Op {
	case opSessionDelete:
		if len(in.Sessions) == 1 {
			_, err := t.fetchSession(ctx, cr, in.Sessions[0].UUID)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err // authentik unreachable: try again later
			}
			happened = errors.Is(err, ErrNotFound)
		}
	case opSessionBulk:
		var still []sessionRef
		for _, ref := range in.Sessions {
			_, err := t.fetchSession(ctx, cr, ref.UUID)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			if errors.Is(err, ErrNotFound) {
				still = append(still, ref)
			}
		}
		in.Sessions, in.BulkUsers = still, nil
		happened = len(still) > 0
	case opUserDelete:
		_, err := t.fetchUser(ctx, cr, in.Subject.PK)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		happened = errors.Is(err, ErrNotFound)
	case opUserUpdate:
		pk, _ := strconv.ParseInt(in.ObjectID, 10, 64)
		u, err := t.fetchUser(ctx, cr, pk)
		if err != nil {
			if errors.Is(err, ErrNotFound) {
				break
			}
			return err
		}
		in.After = userState{Email: u.Email, IsActive: u.IsActive == nil || *u.IsActive, Known: u.IsActive != nil}
		happened = true // classification emits only what actually differs
	case opDeviceDelete:
		if in.Device != nil && in.Device.PK != "" {
			var d akDevice
			err := t.api.getJSON(ctx, cr, "/authenticators/admin/"+in.Device.Type+"/"+in.Device.PK+"/", nil, &d)
			if err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			happened = errors.Is(err, ErrNotFound)
		}
	}
	t.stats.reconciled.Add(1)
	if !happened {
		if in.Op != opSessionDelete && in.Op != opUserDelete && in.Op != opUserUpdate &&
			in.Op != opDeviceDelete && in.Op != opSessionBulk {
			t.stats.misses.Add(1)
		}
		return t.journalDrop(ctx, in)
	}
	// The action happened while the request was in flight, right after the
	// intent was written: that, not now, is its time (and what the event
	// API's record of it will be compared with).
	in.Outcome, in.Done = outcomeCompleted, in.Created
	t.log.Info("tap: reconciled an intent left open", "intent", in.ID, "op", string(in.Op))
	return t.process(ctx, in, SourceReconcile)
}
