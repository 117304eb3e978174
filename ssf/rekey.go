package ssf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// RekeyReport counts what Rekey found and sealed again. It holds no
// secret: ids and counts only.
type RekeyReport struct {
	// PushSecrets counts the streams holding an authorization_header;
	// PushSecretsResealed those Rekey sealed again under the current key
	// (the others already were).
	PushSecrets         int `json:"push_secrets"`
	PushSecretsResealed int `json:"push_secrets_resealed"`
	// SigningKeys counts the generated signing keys sealed in the store;
	// SigningKeysResealed those Rekey sealed again.
	SigningKeys         int `json:"signing_keys"`
	SigningKeysResealed int `json:"signing_keys_resealed"`
	// StreamKeyID and SigningKeyID are the KeyIDs everything is sealed
	// under now.
	StreamKeyID  string `json:"stream_key_id"`
	SigningKeyID string `json:"signing_key_id"`
}

// Resealed is the number of values Rekey wrote.
func (r RekeyReport) Resealed() int { return r.PushSecretsResealed + r.SigningKeysResealed }

// Unopened names a sealed value that opens with none of the keys given:
// its kind ("stream" or "signing key") and id, never the value.
type Unopened struct {
	Kind, ID string
	// SealedWith is the KeyID the value names ("" for one that names none).
	SealedWith string
}

// UnopenedError is Rekey's refusal: these values open with none of the
// keys, so nothing was written.
type UnopenedError struct{ Values []Unopened }

func (e *UnopenedError) Error() string {
	parts := make([]string, len(e.Values))
	for i, u := range e.Values {
		parts[i] = u.Kind + " " + u.ID
		if u.SealedWith != "" {
			parts[i] += " (sealed under key " + u.SealedWith + ")"
		}
	}
	return fmt.Sprintf("%d sealed value(s) open with neither the current nor the previous encryption key, so nothing was re-sealed: %s",
		len(e.Values), strings.Join(parts, ", "))
}

// Rekey seals every secret kv keeps again under the current key of its
// sealer: each push stream's authorization_header under streams, each
// generated signing key's private part under keys. Values already sealed
// under the current key are only checked to open; values stored in clear
// (from before sealing) are sealed too. Everything is written in one
// commit, each record on condition that it is still what was read, so a
// concurrent change fails the whole commit (outbox.ErrCondition) and
// nothing is written; running Rekey again is the remedy, and a second run
// after a complete one writes nothing. When any value opens with none of
// the keys, Rekey writes nothing and returns an *UnopenedError naming them.
func Rekey(ctx context.Context, kv KV, streams, keys *Sealer) (RekeyReport, error) {
	rep := RekeyReport{StreamKeyID: streams.CurrentID(), SigningKeyID: keys.CurrentID()}
	var marks []outbox.Mark
	var bad []Unopened
	reseal := func(bucket string, key, old []byte, field string, s *Sealer, aad string, kind, id string) (bool, error) {
		var rec map[string]json.RawMessage
		if err := json.Unmarshal(old, &rec); err != nil {
			return false, fmt.Errorf("decode %s %s: %w", kind, id, err)
		}
		var stored string
		if raw, ok := rec[field]; ok {
			if err := json.Unmarshal(raw, &stored); err != nil {
				return false, fmt.Errorf("decode %s %s: %s is not a string", kind, id, field)
			}
		}
		if stored == "" {
			return false, nil
		}
		plain, err := s.Open(stored, aad)
		if err != nil {
			bad = append(bad, Unopened{Kind: kind, ID: id, SealedWith: SealedWith(stored)})
			return true, nil
		}
		if IsSealed(stored) && SealedWith(stored) == s.CurrentID() {
			return true, nil
		}
		sealed, err := s.Seal(plain, aad)
		if err != nil {
			return false, fmt.Errorf("seal %s %s: %w", kind, id, err)
		}
		if !IsSealed(sealed) {
			// A secret that looks sealed but opened as itself.
			return false, fmt.Errorf("%s %s: its %s cannot be sealed", kind, id, field)
		}
		rec[field], _ = json.Marshal(sealed)
		nv, err := json.Marshal(rec)
		if err != nil {
			return false, err
		}
		marks = append(marks, outbox.Mark{Bucket: bucket, Key: append([]byte(nil), key...), Value: nv,
			IfValue: true, Expect: append([]byte(nil), old...)})
		return true, nil
	}
	err := kv.Scan(BucketStreams, nil, func(k, v []byte) error {
		var r struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(v, &r)
		n := len(marks)
		has, err := reseal(BucketStreams, k, v, "authorization_header", streams, r.ID, "stream", string(k))
		if has {
			rep.PushSecrets++
		}
		if len(marks) > n {
			rep.PushSecretsResealed++
		}
		return err
	})
	if err != nil {
		return RekeyReport{}, fmt.Errorf("rekey streams: %w", err)
	}
	err = kv.Scan(BucketKeys, nil, func(k, v []byte) error {
		var m keyMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("decode signing key %s: %w", k, err)
		}
		n := len(marks)
		has, err := reseal(BucketKeys, k, v, "sealed", keys, signingKeyAAD(m.KID), "signing key", string(k))
		if has {
			rep.SigningKeys++
		}
		if len(marks) > n {
			rep.SigningKeysResealed++
		}
		return err
	})
	if err != nil {
		return RekeyReport{}, fmt.Errorf("rekey signing keys: %w", err)
	}
	if len(bad) > 0 {
		sort.Slice(bad, func(i, j int) bool { return bad[i].Kind+bad[i].ID < bad[j].Kind+bad[j].ID })
		return RekeyReport{}, &UnopenedError{Values: bad}
	}
	if len(marks) == 0 {
		return rep, nil
	}
	if err := kv.Commit(ctx, marks); err != nil {
		if errors.Is(err, outbox.ErrCondition) {
			return RekeyReport{}, fmt.Errorf("rekey: a stream or signing key changed while re-sealing, nothing was written (run it again): %w", err)
		}
		return RekeyReport{}, fmt.Errorf("rekey: %w", err)
	}
	return rep, nil
}
