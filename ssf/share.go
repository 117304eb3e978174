package ssf

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// Sharer converts the ssf package's records of a one-replica data dir
// (push secrets sealed with stream-secrets.key, generated signing keys in
// files) into the form kept in a shared database (both sealed with keys
// derived from the operator's encryption key), for ssf-sidecar
// migrate-store. It never returns a secret in an error.
type Sharer struct {
	dataDir           string
	from, to, keySeal *Sealer

	currentKID string
	currentAt  time.Time
	keys       int
}

// NewSharer converts records of dataDir: fromSeal is its
// stream-secrets.key (nil when the data dir has none), streamSeal and
// keySeal the database's keys for stream secrets and signing keys.
func NewSharer(dataDir string, fromSeal, streamSeal, keySeal []byte) (*Sharer, error) {
	s := &Sharer{dataDir: dataDir}
	var err error
	if fromSeal != nil {
		if s.from, err = newSealer(fromSeal); err != nil {
			return nil, err
		}
	}
	if s.to, err = newSealer(streamSeal); err != nil {
		return nil, err
	}
	if s.keySeal, err = newSealer(keySeal); err != nil {
		return nil, err
	}
	return s, nil
}

// Convert returns the value to store in the database for key of bucket
// (the value itself for buckets that hold nothing sealed).
func (s *Sharer) Convert(bucket string, key, value []byte) ([]byte, error) {
	switch bucket {
	case BucketStreams:
		return s.stream(string(key), value)
	case BucketKeys:
		return s.key(value)
	}
	return value, nil
}

func (s *Sharer) stream(id string, value []byte) ([]byte, error) {
	var r StreamRecord
	if err := json.Unmarshal(value, &r); err != nil {
		return nil, fmt.Errorf("stream %s: %w", id, err)
	}
	if r.AuthorizationHeader != "" {
		plain := r.AuthorizationHeader
		if s.from != nil {
			var err error
			if plain, err = s.from.Open(r.AuthorizationHeader, r.ID); err != nil {
				return nil, fmt.Errorf("stream %s: %w", id, err)
			}
		} else if IsSealed(plain) {
			return nil, fmt.Errorf("stream %s: its authorization_header is sealed, but the data dir has no %s", id, SecretKeyFile)
		}
		h, err := s.to.Seal(plain, r.ID)
		if err != nil {
			return nil, fmt.Errorf("seal stream %s: %w", id, err)
		}
		r.AuthorizationHeader = h
	}
	return json.Marshal(r)
}

func (s *Sharer) key(value []byte) ([]byte, error) {
	var m keyMeta
	if err := json.Unmarshal(value, &m); err != nil {
		return nil, fmt.Errorf("signing key record: %w", err)
	}
	if m.Sealed == "" {
		if m.File == "" {
			return nil, fmt.Errorf("signing key %s: its record names no key file", m.KID)
		}
		pemBytes, err := os.ReadFile(filepath.Join(s.dataDir, m.File))
		if err != nil {
			var pe *os.PathError
			if errors.As(err, &pe) {
				return nil, fmt.Errorf("signing key %s: %s: %w", m.KID, pe.Path, pe.Err)
			}
			return nil, fmt.Errorf("signing key %s: %w", m.KID, err)
		}
		if _, err := parsePrivateKeyPEM(pemBytes); err != nil {
			return nil, fmt.Errorf("signing key %s: the key file %s does not parse", m.KID, m.File)
		}
		if m.Sealed, err = s.keySeal.Seal(string(pemBytes), signingKeyAAD(m.KID)); err != nil {
			return nil, fmt.Errorf("seal signing key %s: %w", m.KID, err)
		}
		m.File = ""
	}
	s.keys++
	// The current key of a data dir is the newest one not retired (as
	// readGenerated picks it without a pointer).
	if m.RetiredAt.IsZero() && (s.currentKID == "" || m.Created.After(s.currentAt)) {
		s.currentKID, s.currentAt = m.KID, m.Created
	}
	return json.Marshal(m)
}

// CurrentKey is the record that names the current generated key in the
// database (bucket, key, value); ok is false when no key was converted or
// none is current.
func (s *Sharer) CurrentKey() (bucket string, key, value []byte, ok bool) {
	if s.currentKID == "" {
		return "", nil, nil, false
	}
	return BucketKeyCurrent, currentKey, []byte(s.currentKID), true
}

// Keys counts the signing keys converted.
func (s *Sharer) Keys() int { return s.keys }
