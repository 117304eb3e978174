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
}

func (t *Tap) journalPut(ctx context.Context, in *intent, extra ...Mark) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fmt.Errorf("tap: encode intent: %w", err)
	}
	marks := append([]Mark{{Bucket: BucketJournal, Key: []byte(in.ID), Value: b}}, extra...)
	if err := t.cfg.KV.Commit(ctx, marks); err != nil {
		return fmt.Errorf("tap: journal intent %s: %w", in.ID, err)
	}
	return nil
}

func journalDelete(id string) Mark {
	return Mark{Bucket: BucketJournal, Key: []byte(id), Delete: true}
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
		out = append(out, &in)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tap: scan journal: %w", err)
	}
	return out, nil
}
