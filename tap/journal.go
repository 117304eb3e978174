package tap

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// outcome of a journaled intent.
const (
	outcomeOpen      = ""
	outcomeCompleted = "completed"
)

// sessionRef is one authenticated session an intent is about to revoke.
type sessionRef struct {
	UUID  string `json:"uuid"`
	Owner User   `json:"owner"`
	Hash  string `json:"hash,omitempty"` // sha256(sid) when its cookie was seen
}

// userState is what a user update may change.
type userState struct {
	Email    string `json:"email"`
	IsActive bool   `json:"is_active"`
	Known    bool   `json:"known"`
}

// intent is a journal entry: what a tapped request is about to do, and
// after the response what it did. It holds only derived facts — ids,
// hashes and states, never cookies, tokens or passwords.
type intent struct {
	ID          string    `json:"id"`
	Op          op        `json:"op"`
	Created     time.Time `json:"created"`
	RequestID   string    `json:"request_id,omitempty"`
	TraceParent string    `json:"traceparent,omitempty"`
	Caller      User      `json:"caller"`
	// Subject is the user acted on (the caller for logout and flows).
	Subject     User         `json:"subject"`
	SessionHash string       `json:"session_hash,omitempty"`
	Sessions    []sessionRef `json:"sessions,omitempty"`
	// BulkUsers are the users of a bulk_delete whose sessions could not be
	// listed beforehand.
	BulkUsers []User    `json:"bulk_users,omitempty"`
	Device    *Device   `json:"device,omitempty"`
	Stage     stageKind `json:"stage,omitempty"`
	Before    userState `json:"before"`
	After     userState `json:"after"`
	// Via says how a logout started, when a redirect to it was seen.
	Via string `json:"via,omitempty"`
	// Unconfirmed marks a logout whose cookie was only verified locally:
	// the session may have ended before, so the logout counts only when
	// authentik recorded it for the user under AuthentikID.
	Unconfirmed bool   `json:"unconfirmed,omitempty"`
	AuthentikID string `json:"authentik_id,omitempty"`
	// ObjectID is the path's object id (user pk, session uuid, device pk).
	ObjectID string `json:"object_id,omitempty"`

	Outcome string    `json:"outcome,omitempty"`
	Done    time.Time `json:"done,omitempty"`

	// Holder is the replica (Config.LeaseHolder) that journaled the
	// intent; it alone acts on it until the intent has been left alone for
	// takeoverGrace. Then any replica may claim it: Claimer and ClaimedAt
	// name the one that did and when, and a claim goes stale the same way.
	Holder    string    `json:"holder,omitempty"`
	Claimer   string    `json:"claimer,omitempty"`
	ClaimedAt time.Time `json:"claimed_at,omitempty"`
	// Emitted are the ids of the intent's signals already published, so
	// whoever finishes it does not publish them again.
	Emitted []string `json:"emitted,omitempty"`

	// stored is the entry as last written or read. Every write after the
	// first is conditioned on it, so of two replicas acting on one entry
	// the second finds it changed and backs off.
	stored []byte
}

// Ownership of journal entries among replicas sharing a store.
//
// An intent's holder completes and publishes it. An entry nobody has
// touched (created, claimed) for takeoverGrace — its holder died, or is
// stuck in a request past every deadline — is claimed by whichever replica
// rescans first: it rewrites the entry with itself as claimer, on the
// condition that the entry is still what it read. Of two survivors, one
// claim lands and the other is refused. Every later write of the entry
// (the holder's late outcome, each signal's publish, the final delete) is
// conditioned on the entry as its writer last saw it, so the replica that
// lost a claim, or the holder that comes back after one, cannot publish.
const takeoverGrace = openGrace

// touched is when the entry was last created or claimed, on the writing
// replicas' clocks.
func (in *intent) touched() time.Time {
	if in.ClaimedAt.After(in.Created) {
		return in.ClaimedAt
	}
	return in.Created
}

// owner reports whether this replica may act on the entry without
// claiming it: it journaled it, or claimed it.
func (t *Tap) owner(in *intent) bool {
	if in.Claimer != "" {
		return in.Claimer == t.cfg.LeaseHolder
	}
	return in.Holder == t.cfg.LeaseHolder
}

// journalPut writes in. The first write (Before) is unconditioned; every
// later one holds only while the entry is as this replica last saw it.
func (t *Tap) journalPut(ctx context.Context, in *intent, first bool, extra ...Mark) error {
	m, b, err := in.guardPut()
	if err != nil {
		return err
	}
	if first {
		m.IfValue, m.Expect = false, nil
	}
	if err := t.cfg.KV.Commit(ctx, append([]Mark{m}, extra...)); err != nil {
		return fmt.Errorf("tap: journal intent %s: %w", in.ID, err)
	}
	in.stored = b
	return nil
}

// guardPut is the mark that rewrites the entry as in now is, on the
// condition that it still holds what was last seen.
func (in *intent) guardPut() (Mark, []byte, error) {
	b, err := json.Marshal(in)
	if err != nil {
		return Mark{}, nil, fmt.Errorf("tap: encode intent: %w", err)
	}
	return Mark{Bucket: BucketJournal, Key: []byte(in.ID), Value: b, IfValue: true, Expect: in.stored}, b, nil
}

// guardDelete removes the entry, on the condition that it still holds
// what was last seen.
func (in *intent) guardDelete() Mark {
	return Mark{Bucket: BucketJournal, Key: []byte(in.ID), Delete: true, IfValue: true, Expect: in.stored}
}

// moved reports, after a refused commit, whether the entry is no longer
// what this replica last saw: another one claimed or finished it.
func (t *Tap) moved(in *intent) bool {
	cur, err := t.cfg.KV.Get(BucketJournal, []byte(in.ID))
	return err == nil && !sameValue(cur, in.stored)
}

// claim makes this replica the entry's claimer. It returns false, with no
// error, when another replica changed the entry first.
func (t *Tap) claim(ctx context.Context, in *intent) (bool, error) {
	c := *in
	c.Claimer, c.ClaimedAt = t.cfg.LeaseHolder, t.cfg.Clock().UTC()
	m, b, err := c.guardPut()
	if err != nil {
		return false, err
	}
	if err := t.cfg.KV.Commit(ctx, []Mark{m}); err != nil {
		if t.moved(in) {
			return false, nil
		}
		return false, fmt.Errorf("tap: claim intent %s: %w", in.ID, err)
	}
	in.Claimer, in.ClaimedAt, in.stored = c.Claimer, c.ClaimedAt, b
	return true, nil
}

// journalDrop deletes the entry as last seen; an entry another replica has
// changed meanwhile is left to it.
func (t *Tap) journalDrop(ctx context.Context, in *intent, extra ...Mark) error {
	if err := t.cfg.KV.Commit(ctx, append(extra, in.guardDelete())); err != nil {
		if t.moved(in) {
			return nil
		}
		return fmt.Errorf("tap: close intent %s: %w", in.ID, err)
	}
	in.stored = nil
	return nil
}

// journalScan returns every journal entry.
func (t *Tap) journalScan() ([]*intent, error) {
	var out []*intent
	err := t.cfg.KV.Scan(BucketJournal, nil, func(k, v []byte) error {
		var in intent
		if err := json.Unmarshal(v, &in); err != nil || in.ID == "" {
			t.log.Warn("dropping unreadable journal entry", "key", string(k))
			return nil
		}
		in.stored = append([]byte(nil), v...)
		out = append(out, &in)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tap: scan journal: %w", err)
	}
	return out, nil
}
