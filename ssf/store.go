package ssf

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// KV is the persistence the ssf package needs: outbox.Store implements it.
type KV interface {
	// Commit applies the marks atomically.
	Commit(ctx context.Context, marks []outbox.Mark) error
	// Get returns a copy of the value, or (nil, nil) when absent.
	Get(bucket string, key []byte) ([]byte, error)
	// Scan calls fn for each key with the prefix, in key order.
	Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error
}

// Buckets the ssf package owns.
const (
	BucketStreams  = "ssf_streams"
	BucketSubjects = "ssf_subjects"
	BucketKeys     = "ssf_keys"
)

// StreamStore persists stream configurations and their subjects.
type StreamStore interface {
	PutStream(ctx context.Context, s StreamRecord) error
	GetStream(ctx context.Context, id string) (StreamRecord, bool, error)
	ListStreams(ctx context.Context) ([]StreamRecord, error)
	// DeleteStream removes the stream and its subjects.
	DeleteStream(ctx context.Context, id string) error
	// SetSubject records subj as added (included) or removed (excluded),
	// taking it out of the other list.
	SetSubject(ctx context.Context, streamID string, subj Subject, added bool) error
	// Subjects returns the stream's added and removed subjects.
	Subjects(ctx context.Context, streamID string) (added, removed []Subject, err error)
}

// kvStreamStore is the StreamStore on a KV.
type kvStreamStore struct {
	kv   KV
	seal *Sealer // nil: secrets stored as they are (tests)
}

// NewStreamStore returns the StreamStore kept in kv's buckets.
func NewStreamStore(kv KV) StreamStore { return kvStreamStore{kv: kv} }

// NewSealedStreamStore is NewStreamStore with each push stream's
// authorization_header sealed under key (see LoadOrCreateSealKey); values
// sealed under one of previous (an encryption key being rotated) are
// opened too, and sealed under key at their next write.
func NewSealedStreamStore(kv KV, key []byte, previous ...[]byte) (StreamStore, error) {
	s, err := NewSealer(key, previous...)
	if err != nil {
		return nil, err
	}
	return kvStreamStore{kv: kv, seal: s}, nil
}

// decode reads a stored stream, opening its sealed secret.
func (s kvStreamStore) decode(id string, b []byte) (StreamRecord, error) {
	var r StreamRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("decode stream %s: %w", id, err)
	}
	if s.seal != nil {
		h, err := s.seal.Open(r.AuthorizationHeader, r.ID)
		if err != nil {
			return r, fmt.Errorf("stream %s: %w", id, err)
		}
		r.AuthorizationHeader = h
	}
	return r, nil
}

func (s kvStreamStore) PutStream(ctx context.Context, r StreamRecord) error {
	if s.seal != nil {
		h, err := s.seal.Seal(r.AuthorizationHeader, r.ID)
		if err != nil {
			return fmt.Errorf("seal stream %s: %w", r.ID, err)
		}
		r.AuthorizationHeader = h
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode stream: %w", err)
	}
	if err := s.kv.Commit(ctx, []outbox.Mark{{Bucket: BucketStreams, Key: []byte(r.ID), Value: b}}); err != nil {
		return fmt.Errorf("store stream %s: %w", r.ID, err)
	}
	return nil
}

func (s kvStreamStore) GetStream(_ context.Context, id string) (StreamRecord, bool, error) {
	b, err := s.kv.Get(BucketStreams, []byte(id))
	if err != nil || b == nil {
		return StreamRecord{}, false, err
	}
	r, err := s.decode(id, b)
	if err != nil {
		return r, false, err
	}
	return r, true, nil
}

func (s kvStreamStore) ListStreams(context.Context) ([]StreamRecord, error) {
	var out []StreamRecord
	err := s.kv.Scan(BucketStreams, nil, func(k, v []byte) error {
		r, err := s.decode(string(k), v)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

func (s kvStreamStore) DeleteStream(ctx context.Context, id string) error {
	marks := []outbox.Mark{{Bucket: BucketStreams, Key: []byte(id), Delete: true},
		{Bucket: BucketVerifications, Key: []byte(id), Delete: true}}
	err := s.kv.Scan(BucketSubjects, []byte(id+"\x00"), func(k, _ []byte) error {
		marks = append(marks, outbox.Mark{Bucket: BucketSubjects, Key: append([]byte(nil), k...), Delete: true})
		return nil
	})
	if err != nil {
		return fmt.Errorf("scan subjects of %s: %w", id, err)
	}
	if err := s.kv.Commit(ctx, marks); err != nil {
		return fmt.Errorf("delete stream %s: %w", id, err)
	}
	return nil
}

func subjectKey(streamID, list string, subj Subject) []byte {
	h := sha256.Sum256([]byte(subj.key()))
	return []byte(streamID + "\x00" + list + "\x00" + hex.EncodeToString(h[:16]))
}

func (s kvStreamStore) SetSubject(ctx context.Context, streamID string, subj Subject, added bool) error {
	b, err := json.Marshal(subj)
	if err != nil {
		return err
	}
	in, out := "r", "a"
	if added {
		in, out = "a", "r"
	}
	marks := []outbox.Mark{
		{Bucket: BucketSubjects, Key: subjectKey(streamID, in, subj), Value: b},
		{Bucket: BucketSubjects, Key: subjectKey(streamID, out, subj), Delete: true},
	}
	if err := s.kv.Commit(ctx, marks); err != nil {
		return fmt.Errorf("store subject of %s: %w", streamID, err)
	}
	return nil
}

func (s kvStreamStore) Subjects(_ context.Context, streamID string) (added, removed []Subject, err error) {
	prefix := []byte(streamID + "\x00")
	err = s.kv.Scan(BucketSubjects, prefix, func(k, v []byte) error {
		subj, err := ParseSubject(v)
		if err != nil {
			return fmt.Errorf("decode subject of %s: %w", streamID, err)
		}
		if len(k) > len(prefix) && k[len(prefix)] == 'a' {
			added = append(added, subj)
		} else {
			removed = append(removed, subj)
		}
		return nil
	})
	return added, removed, err
}
