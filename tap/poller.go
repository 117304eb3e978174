package tap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// cursorKey is the poller's high-water mark in BucketCursor.
var cursorKey = []byte("events")

// cursor is the poller's high-water mark: the `created` of the newest event
// processed, and the pks of all events processed at exactly that instant
// (several events can share a timestamp).
type cursor struct {
	Time time.Time `json:"time"`
	IDs  []string  `json:"ids,omitempty"`
}

func (c cursor) seen(e akEvent) bool {
	if e.Created.Before(c.Time) {
		return true
	}
	return e.Created.Equal(c.Time) && slices.Contains(c.IDs, e.PK)
}

func (c cursor) advance(e akEvent) cursor {
	if e.Created.After(c.Time) {
		return cursor{Time: e.Created, IDs: []string{e.PK}}
	}
	return cursor{Time: c.Time, IDs: append(slices.Clone(c.IDs), e.PK)}
}

func (c cursor) mark() Mark {
	b, _ := json.Marshal(c)
	return Mark{Bucket: BucketCursor, Key: cursorKey, Value: b}
}

// loadCursor reads the cursor; a fresh data dir starts at now - Backfill.
func (t *Tap) loadCursor(ctx context.Context, lease *pollerLease) (cursor, error) {
	b, err := t.cfg.KV.Get(BucketCursor, cursorKey)
	if err != nil {
		return cursor{}, fmt.Errorf("tap: read cursor: %w", err)
	}
	if b != nil {
		var c cursor
		if err := json.Unmarshal(b, &c); err == nil && !c.Time.IsZero() {
			return c, nil
		}
		t.log.Warn("tap: unreadable poller cursor; starting at now")
	}
	c := cursor{Time: t.cfg.Clock().Add(-t.cfg.Backfill).UTC()}
	if t.cfg.Backfill == 0 {
		// "Now" in authentik's terms: its newest record, so a clock skew
		// between the two hosts cannot hide the first events.
		newest, err := t.newestEvents(ctx)
		if err != nil {
			return cursor{}, err
		}
		c = cursor{Time: time.Unix(0, 0).UTC()} // no records yet: everything to come is new
		if len(newest) > 0 {
			c = cursor{Time: newest[0].Created}
			for _, e := range newest {
				if e.Created.Equal(c.Time) {
					c.IDs = append(c.IDs, e.PK)
				}
			}
		}
	}
	if err := t.cfg.KV.Commit(ctx, append(lease.fence(), c.mark())); err != nil {
		if lease.lost(ctx) {
			return cursor{}, errLeaseLost
		}
		return cursor{}, fmt.Errorf("tap: store cursor: %w", err)
	}
	return c, nil
}

// minRenewWait spaces renewals of a lease (very) much shorter than any
// real one, so that it cannot spin.
const minRenewWait = 10 * time.Millisecond

// runPoller reads the event API every PollInterval, backing off while
// authentik is unreachable and catching up after.
func (t *Tap) runPoller(ctx context.Context) error {
	if t.cfg.Token == "" {
		t.log.Warn("tap: no authentik token: event-API poller is off; only traffic is observed")
		return nil
	}
	t.readVersion(ctx)
	lease := t.newPollerLease()
	defer lease.release()
	failures := 0
	wait := time.Duration(0)
	seeded := false
	for {
		// While waiting for the next poll, the lease is renewed on time
		// (a PollInterval longer than a third of the TTL would let it lapse).
		next := t.cfg.Clock().Add(wait)
		for renew := true; renew; {
			d := max(0, next.Sub(t.cfg.Clock()))
			due, holding := lease.renewDue()
			renew = holding && due < d
			if renew {
				d = max(due, minRenewWait)
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.cfg.After(d):
			case <-t.pollKick:
				renew = false
			}
			if renew && !lease.keep(ctx) {
				break // lost: stand by from the next round
			}
		}
		held, err := lease.hold(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			failures++
			t.stats.pollErrors.Add(1)
			wait = backoff(t.cfg.PollInterval, failures, t.cfg.MaxBackoff)
			t.log.Warn("tap: event-API poller lease", "err", err, "retry_in", wait)
			continue
		}
		if !held {
			// Standing by: keeping up is the holder's job, not ours.
			t.stats.caughtUp.Store(t.cfg.Clock().UnixNano())
			wait = t.cfg.PollInterval
			continue
		}
		if !seeded {
			seeded = t.seedDirectory(ctx) == nil
		}
		if err := t.pollWith(ctx, lease); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, errLeaseLost) {
				wait = t.cfg.PollInterval
				continue
			}
			failures++
			t.stats.pollErrors.Add(1)
			wait = backoff(t.cfg.PollInterval, failures, t.cfg.MaxBackoff)
			t.log.Warn("tap: event-API poll failed", "err", err, "retry_in", wait)
			continue
		}
		if err := t.recheckPage(ctx, lease); err != nil && ctx.Err() == nil {
			t.log.Info("tap: directory re-check", "err", err)
		}
		failures = 0
		t.stats.polls.Add(1)
		wait = t.cfg.PollInterval
	}
}

// recheckPage reads the next page of the directory re-check, when a pass is
// due or under way, and reports what changed for users the directory knows:
// authentik's background work (LDAP/SCIM sync, source mappings) changes
// is_active and email without any event. One page per poll keeps the pace
// at PollInterval; a pass ends with a short page, and the next one starts
// DirectoryRecheck after the last began.
func (t *Tap) recheckPage(ctx context.Context, lease *pollerLease) error {
	if t.cfg.DirectoryRecheck < 0 {
		return nil
	}
	now := t.cfg.Clock()
	if t.recheck.page == 0 {
		if now.Before(t.recheck.next) {
			return nil
		}
		t.recheck.page, t.recheck.next = 1, now.Add(t.cfg.DirectoryRecheck)
	}
	q := url.Values{"page_size": {strconv.Itoa(t.cfg.PageSize)}, "page": {strconv.Itoa(t.recheck.page)},
		"include_groups": {"false"}, "ordering": {"pk"}}
	var page akPage[akUser]
	rctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
	defer cancel()
	if err := t.api.getJSON(rctx, t.api.tokenCreds(), "/core/users/", q, &page); err != nil {
		t.recheck.page = 0 // start over at the next pass
		return err
	}
	if len(page.Results) < t.cfg.PageSize || page.Pagination.Next == 0 {
		t.recheck.page = 0
	} else {
		t.recheck.page++
	}
	for _, u := range page.Results {
		if !lease.keep(ctx) {
			return errLeaseLost
		}
		before, known := t.dir.userState(u.PK)
		if !known || before.UID == "" {
			continue
		}
		b := userState{Email: before.Email, IsActive: before.IsActive == nil || *before.IsActive, Known: before.IsActive != nil}
		a := userState{Email: u.Email, IsActive: u.IsActive == nil || *u.IsActive, Known: u.IsActive != nil}
		subj := u.user()
		id := "r:" + t.cfg.NewID()
		sigs := userChangeSignals(b, a, func(suffix string, kind Kind) Signal {
			return Signal{ID: id + suffix, Kind: kind, Source: SourceEventAPI, Time: now.UTC(), Subject: subj,
				Initiator: InitiatorSystem}
		})
		t.dir.noteUser(u)
		for i := range sigs {
			sigs[i].ReasonAdmin += " (seen on re-reading the user; authentik recorded no event)"
			if err := t.emit(ctx, sigs[i], lease.fence()); err != nil {
				if lease.lost(ctx) {
					return errLeaseLost
				}
				return err
			}
		}
	}
	if marks := t.dir.drain(); len(marks) > 0 {
		return t.cfg.KV.Commit(ctx, append(lease.fence(), marks...))
	}
	return nil
}

// PollNow asks the poller for an immediate poll (tests, the admin API).
func (t *Tap) PollNow() {
	select {
	case t.pollKick <- struct{}{}:
	default:
	}
}

// pollOnce polls once without a lease.
func (t *Tap) pollOnce(ctx context.Context) error { return t.pollWith(ctx, nil) }

// pollWith pages back, newest first, to the cursor, then processes what is
// new oldest first. Each signal commits the cursor moved past its event;
// events that map to nothing move it in one commit at the end. With a
// lease, it stops (errLeaseLost, leaving the cursor to the new holder)
// when the lease cannot be kept between two events.
func (t *Tap) pollWith(ctx context.Context, lease *pollerLease) error {
	started := t.cfg.Clock()
	cur, err := t.loadCursor(ctx, lease)
	if err != nil {
		return err
	}
	fresh, err := t.fetchSince(ctx, cur, lease)
	if err != nil {
		return err
	}
	dirty := false
	round := startPollRoundSpan(ctx, len(fresh))
	defer round.end()
	for _, e := range fresh {
		if !lease.keep(ctx) {
			return errLeaseLost
		}
		began := time.Now()
		ectx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
		sigs, err := t.eventSignals(ectx, e)
		cancel()
		if err != nil {
			if !t.poisoned(e.PK) {
				round.fail(e, err)
				return t.flushCursor(ctx, lease, cur, dirty, fmt.Errorf("tap: event %s: %w", e.PK, err))
			}
			// The same record failed maxEventAttempts polls in a row: skip
			// it rather than stall every later event behind it.
			t.stats.misses.Add(1)
			t.log.Error("tap: giving up on an event-API record", "event", e.PK, "action", e.Action, "err", err)
			round.skipped(e, "gave up after repeated failures")
			sigs = nil
		}
		next := cur.advance(e)
		if len(sigs) == 0 {
			round.skipped(e, "no signal")
		} else {
			// A record that yields signals starts the trace its SETs'
			// deliveries join, linked to the poll round that read it.
			sctx, span := startEventSpan(ctx, e.PK, e.Action, began, round.span)
			if h := t.hook().eventSignals; h != nil {
				h(e.PK)
			}
			for i := range sigs {
				// Every SET of the poll is fenced, not only the one that
				// moves the cursor.
				extra := lease.fence()
				if i == len(sigs)-1 {
					extra = append(extra, next.mark())
				}
				if err := t.emit(sctx, sigs[i], extra); err != nil {
					endSpan(span, err)
					if lease.lost(ctx) {
						return errLeaseLost
					}
					return t.flushCursor(ctx, lease, cur, dirty, err)
				}
			}
			endSpan(span, nil)
		}
		dirty = len(sigs) == 0
		cur = next
	}
	if err := t.flushCursor(ctx, lease, cur, dirty, nil); err != nil {
		return err
	}
	// Everything authentik had recorded when this poll began is read.
	t.stats.caughtUp.Store(started.UnixNano())
	return nil
}

// flushCursor commits a cursor moved past events without signals.
func (t *Tap) flushCursor(ctx context.Context, lease *pollerLease, cur cursor, dirty bool, cause error) error {
	marks := t.dir.drain()
	if dirty {
		marks = append(marks, cur.mark())
	}
	if len(marks) > 0 {
		if err := t.cfg.KV.Commit(ctx, append(lease.fence(), marks...)); err != nil && cause == nil {
			if lease.lost(ctx) {
				return errLeaseLost
			}
			cause = fmt.Errorf("tap: store cursor: %w", err)
		}
	}
	return cause
}

// fetchSince pages through /events/events/ ordered newest first until it
// reaches events the cursor has seen. New events arriving while it pages
// shift older ones onto later pages; the pk set drops those repeats.
func (t *Tap) fetchSince(ctx context.Context, cur cursor, lease *pollerLease) ([]akEvent, error) {
	seen := map[string]bool{}
	var fresh []akEvent
	q := url.Values{"ordering": {"-created"}, "page_size": {strconv.Itoa(t.cfg.PageSize)}}
	if !t.noActionsFilter.Load() {
		for _, a := range t.pollActions(ctx) {
			q.Add("actions", a)
		}
	}
	for page := 1; page <= t.cfg.MaxPages; page++ {
		if page > 1 && !lease.keep(ctx) {
			return nil, errLeaseLost
		}
		q.Set("page", strconv.Itoa(page))
		var raw json.RawMessage
		pctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
		err := t.api.getJSON(pctx, t.api.tokenCreds(), "/events/events/", q, &raw)
		cancel()
		if err != nil {
			return nil, err
		}
		p, err := decodeEventPage(raw)
		if err != nil {
			return nil, err
		}
		reached := false
		for _, e := range p.Events {
			if cur.seen(e) {
				if e.Created.Before(cur.Time) {
					reached = true
				}
				continue
			}
			if !seen[e.PK] {
				seen[e.PK] = true
				fresh = append(fresh, e)
			}
		}
		if reached || p.Next <= page || len(p.Events) == 0 {
			break
		}
		if page == t.cfg.MaxPages {
			t.stats.misses.Add(1)
			t.log.Error("tap: event-API backlog exceeds MaxPages; older events in the gap are skipped",
				"max_pages", t.cfg.MaxPages, "page_size", t.cfg.PageSize)
		}
	}
	slices.SortStableFunc(fresh, func(a, b akEvent) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.PK, b.PK)
	})
	return fresh, nil
}

// legacyActions are the wanted actions that authentik 2026.2's `actions`
// enum has; asking for a value the enum lacks is a 400 there.
var legacyActions = []string{"logout", "login", "password_set", "model_created", "model_updated", "model_deleted"}

// pollActions returns the configured actions this authentik knows, read once
// from /events/events/actions/ (the newer ones exist from 2026.8). When that
// list cannot be read, only the actions every supported version has are
// asked for.
func (t *Tap) pollActions(ctx context.Context) []string {
	t.actionsMu.Lock()
	defer t.actionsMu.Unlock()
	if t.actions != nil {
		return t.actions
	}
	var known []struct {
		Name      string `json:"name"`
		Component string `json:"component"`
	}
	actx, cancel := context.WithTimeout(ctx, t.cfg.LookupTimeout)
	err := t.api.getJSON(actx, t.api.tokenCreds(), "/events/events/actions/", nil, &known)
	cancel()
	if err != nil {
		if !t.actionsLogged {
			t.actionsLogged = true
			t.log.Info("tap: event actions list unavailable; asking only for actions all versions have (tried again each poll, said once)", "err", err)
		}
		out := []string{}
		for _, a := range t.cfg.Actions {
			if slices.Contains(legacyActions, a) {
				out = append(out, a)
			}
		}
		return out // not cached: try the list again next poll
	}
	have := map[string]bool{}
	for _, k := range known {
		have[k.Component], have[k.Name] = true, true
	}
	t.actions = []string{}
	for _, a := range t.cfg.Actions {
		if have[a] {
			t.actions = append(t.actions, a)
		}
	}
	return t.actions
}

// maxEventAttempts is how many polls in a row one record may fail before it
// is skipped.
const maxEventAttempts = 5

// poisoned counts a failure of the record and reports whether it has failed
// maxEventAttempts times in a row.
func (t *Tap) poisoned(pk string) bool {
	if t.failPK != pk {
		t.failPK, t.failCount = pk, 0
	}
	t.failCount++
	return t.failCount >= maxEventAttempts
}

// seedDirectory adds the users authentik lists (up to half the directory's
// bound) that the directory does not know yet, so that a model_updated for
// a user the sidecar never looked up can still be compared.
func (t *Tap) seedDirectory(ctx context.Context) error {
	pages := max(1, t.cfg.CacheSize/2/t.cfg.PageSize)
	sctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
	defer cancel()
	users, err := listAll[akUser](sctx, t.api, t.api.tokenCreds(), "/core/users/",
		url.Values{"page_size": {strconv.Itoa(t.cfg.PageSize)}, "include_groups": {"false"}, "ordering": {"pk"}}, pages)
	if err != nil {
		t.log.Info("tap: could not seed the user directory", "err", err)
		return err
	}
	for _, u := range users {
		t.dir.addUser(u)
	}
	if marks := t.dir.drain(); len(marks) > 0 {
		return t.cfg.KV.Commit(ctx, marks)
	}
	return nil
}

// newestEvents reads the first page of the event list, newest first.
func (t *Tap) newestEvents(ctx context.Context) ([]akEvent, error) {
	q := url.Values{"ordering": {"-created"}, "page_size": {strconv.Itoa(t.cfg.PageSize)}, "page": {"1"}}
	var raw json.RawMessage
	pctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
	defer cancel()
	if err := t.api.getJSON(pctx, t.api.tokenCreds(), "/events/events/", q, &raw); err != nil {
		return nil, err
	}
	p, err := decodeEventPage(raw)
	if err != nil {
		return nil, err
	}
	return p.Events, nil
}
