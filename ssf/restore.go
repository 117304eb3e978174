package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// A data dir is three things that belong together: the store, the
// generated signing keys (signing-key-*.pem) and the key that seals push
// secrets (stream-secrets.key). A restore that brings back only some of
// them is found here before anything is generated next to sealed data, and
// repaired only when the operator asks.

// MissingKey is a generated signing key the store lists whose file is gone.
type MissingKey struct {
	KID     string `json:"kid"`
	File    string `json:"file"`
	Current bool   `json:"current"`
}

// RestoreProblems is what a data dir lacks for its store.
type RestoreProblems struct {
	// MissingKeys are generated keys whose files are missing (expired
	// retired keys are not counted: they are dropped anyway).
	MissingKeys []MissingKey `json:"missing_signing_keys,omitempty"`
	// SealKeyMissing: stream-secrets.key is absent while streams hold
	// secrets sealed with it.
	SealKeyMissing bool `json:"seal_key_missing,omitempty"`
	// SealKeyWrong: stream-secrets.key is there but does not open them.
	SealKeyWrong bool `json:"seal_key_wrong,omitempty"`
	// SealedStreams are the streams whose push secret cannot be opened.
	SealedStreams []string `json:"streams_with_unreadable_secret,omitempty"`
}

// OK reports whether nothing is missing.
func (p RestoreProblems) OK() bool {
	return len(p.MissingKeys) == 0 && !p.SealKeyMissing && !p.SealKeyWrong
}

// Describe says what is missing, naming files and streams, without secrets.
func (p RestoreProblems) Describe(dataDir string) string {
	var parts []string
	if len(p.MissingKeys) > 0 {
		var cur, other []string
		for _, m := range p.MissingKeys {
			if m.Current {
				cur = append(cur, m.File)
			} else {
				other = append(other, m.File)
			}
		}
		if len(cur) > 0 {
			parts = append(parts, fmt.Sprintf("the current signing key file %s is missing from %s", strings.Join(cur, ", "), dataDir))
		}
		if len(other) > 0 {
			parts = append(parts, fmt.Sprintf("%d retired signing key file(s) still published in the JWKS are missing (%s)", len(other), strings.Join(other, ", ")))
		}
	}
	if p.SealKeyMissing {
		parts = append(parts, fmt.Sprintf("%s is missing from %s, but %d stream(s) hold push secrets sealed with it (%s)", SecretKeyFile, dataDir, len(p.SealedStreams), strings.Join(p.SealedStreams, ", ")))
	}
	if p.SealKeyWrong {
		parts = append(parts, fmt.Sprintf("%s in %s does not open the push secrets of %d stream(s) (%s): it is not the key they were sealed with", SecretKeyFile, dataDir, len(p.SealedStreams), strings.Join(p.SealedStreams, ", ")))
	}
	return strings.Join(parts, "; ")
}

// CheckRestore reports what the data dir lacks for the store kv. With
// operator-managed keys (operatorKeys) the generated keys are not checked.
func CheckRestore(kv KV, dataDir string, operatorKeys bool, overlap time.Duration, now time.Time) (RestoreProblems, error) {
	var p RestoreProblems
	if !operatorKeys {
		metas, err := loadKeyMetas(kv)
		if err != nil {
			return p, err
		}
		var current *keyMeta
		for i, m := range metas {
			if m.RetiredAt.IsZero() && (current == nil || m.Created.After(current.Created)) {
				current = &metas[i]
			}
		}
		for _, m := range metas {
			if !m.RetiredAt.IsZero() && !now.Before(m.RetiredAt.Add(overlap)) {
				continue
			}
			if _, err := os.Stat(filepath.Join(dataDir, m.File)); errors.Is(err, fs.ErrNotExist) {
				p.MissingKeys = append(p.MissingKeys, MissingKey{KID: m.KID, File: m.File, Current: current != nil && current.KID == m.KID})
			}
		}
		sort.Slice(p.MissingKeys, func(i, j int) bool { return p.MissingKeys[i].Current && !p.MissingKeys[j].Current })
	}
	sealed, err := sealedStreams(kv)
	if err != nil {
		return p, err
	}
	if len(sealed) == 0 {
		return p, nil
	}
	key, err := os.ReadFile(filepath.Join(dataDir, SecretKeyFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		p.SealKeyMissing, p.SealedStreams = true, sealed
		return p, nil
	case err != nil:
		return p, fmt.Errorf("read %s: %w", filepath.Join(dataDir, SecretKeyFile), err)
	}
	s, err := newSealer(key)
	if err != nil {
		p.SealKeyWrong, p.SealedStreams = true, sealed
		return p, nil
	}
	bad, err := unopenedStreams(kv, s)
	if err != nil {
		return p, err
	}
	if len(bad) > 0 {
		p.SealKeyWrong, p.SealedStreams = true, bad
	}
	return p, nil
}

// sealedStreams lists the streams whose stored push secret is sealed.
func sealedStreams(kv KV) ([]string, error) {
	var out []string
	err := kv.Scan(BucketStreams, nil, func(k, v []byte) error {
		var r StreamRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode stream %s: %w", k, err)
		}
		if IsSealed(r.AuthorizationHeader) {
			out = append(out, r.ID)
		}
		return nil
	})
	return out, err
}

// unopenedStreams lists the sealed streams s cannot open.
func unopenedStreams(kv KV, s *Sealer) ([]string, error) {
	var out []string
	err := kv.Scan(BucketStreams, nil, func(k, v []byte) error {
		var r StreamRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decode stream %s: %w", k, err)
		}
		if _, err := s.Open(r.AuthorizationHeader, r.ID); err != nil {
			out = append(out, r.ID)
		}
		return nil
	})
	return out, err
}

// LostSecretReason is the pause reason of a stream whose push secret was
// dropped by RepairRestore.
const LostSecretReason = "push authorization_header lost in a restore: update the stream with a new one, then resume it"

// RepairRestore fixes what CheckRestore found, as the operator chose:
// forgetKeys drops the records of missing signing key files (a new current
// key is generated at the next start when the current one was among them);
// dropSecrets clears the push secrets that cannot be opened, pauses those
// streams with LostSecretReason (their SETs are held, not lost) and, when
// stream-secrets.key is missing, creates a new one. It returns what was
// done; problems not chosen are left as they are.
func RepairRestore(ctx context.Context, kv KV, dataDir string, p RestoreProblems, forgetKeys, dropSecrets bool, now time.Time) ([]string, error) {
	var done []string
	var marks []outbox.Mark
	if forgetKeys {
		for _, m := range p.MissingKeys {
			marks = append(marks, outbox.Mark{Bucket: BucketKeys, Key: []byte(m.KID), Delete: true})
			done = append(done, fmt.Sprintf("forgot signing key %s (file %s)", m.KID, m.File))
		}
	}
	if dropSecrets && (p.SealKeyMissing || p.SealKeyWrong) {
		for _, id := range p.SealedStreams {
			b, err := kv.Get(BucketStreams, []byte(id))
			if err != nil {
				return done, err
			}
			if b == nil {
				continue
			}
			var r StreamRecord
			if err := json.Unmarshal(b, &r); err != nil {
				return done, fmt.Errorf("decode stream %s: %w", id, err)
			}
			r.AuthorizationHeader = ""
			if r.Status != StatusDisabled {
				r.Status = StatusPaused
			}
			r.Reason, r.Updated = LostSecretReason, now
			nb, err := json.Marshal(r)
			if err != nil {
				return done, err
			}
			marks = append(marks, outbox.Mark{Bucket: BucketStreams, Key: []byte(id), Value: nb})
			done = append(done, fmt.Sprintf("dropped the push secret of stream %s and paused it (the receiver must set a new authorization_header, then resume)", id))
		}
	}
	if len(marks) > 0 {
		if err := kv.Commit(ctx, marks); err != nil {
			return nil, fmt.Errorf("repair: %w", err)
		}
	}
	keyPath := filepath.Join(dataDir, SecretKeyFile)
	if dropSecrets && p.SealKeyWrong {
		// A key file that is not a key at all cannot open anything:
		// keep it aside and start a new one.
		if b, err := os.ReadFile(keyPath); err == nil {
			if _, serr := newSealer(b); serr != nil {
				aside := keyPath + ".unusable-" + now.UTC().Format("20060102T150405Z")
				if err := os.Rename(keyPath, aside); err != nil {
					return done, fmt.Errorf("move the unusable %s aside: %w", SecretKeyFile, err)
				}
				done = append(done, "moved the unusable "+SecretKeyFile+" to "+filepath.Base(aside))
				p.SealKeyMissing = true
			}
		}
	}
	if dropSecrets && p.SealKeyMissing {
		if _, err := LoadOrCreateSealKey(dataDir); err != nil {
			return done, err
		}
		done = append(done, "created a new "+SecretKeyFile)
	}
	return done, nil
}
