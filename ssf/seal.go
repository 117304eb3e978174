package ssf

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// A push stream's authorization_header must survive a restart, so it is
// stored — sealed with AES-256-GCM under a key kept in its own 0600 file in
// the data dir, never in the database. A copy of the database alone reveals
// no receiver secret.

// SecretKeyFile is the name of the sealing key's file in the data dir.
const SecretKeyFile = "stream-secrets.key"

// Sealed values: "sealed:v2:<key id>:<base64 nonce+ciphertext>", and the
// older "sealed:v1:<base64>" that names no key (still opened).
const (
	sealedPrefix   = "sealed:v1:"
	sealedPrefixV2 = "sealed:v2:"
)

// LoadOrCreateSealKey reads the sealing key from dataDir, creating it (mode
// 0600) on first use.
func LoadOrCreateSealKey(dataDir string) ([]byte, error) {
	path := filepath.Join(dataDir, SecretKeyFile)
	key, err := os.ReadFile(path)
	if err == nil {
		if len(key) != 32 {
			return nil, fmt.Errorf("%s: want 32 bytes, found %d", path, len(key))
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	key = make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	if _, err := f.Write(key); err != nil {
		f.Close()
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return nil, err
	}
	return key, f.Close()
}

// Sealer seals the secrets a store keeps (AES-256-GCM). A sealed value
// names the key that sealed it (KeyID), so that with a previous key given
// during a rotation each value is opened by the right key at once, and a
// re-keying can tell what is already sealed under the current one.
type Sealer struct {
	keys []sealKey // the current key first, then the previous ones
}

type sealKey struct {
	id   string
	aead cipher.AEAD
}

// KeyID is a short fingerprint of a seal key: safe to print, it tells keys
// apart without revealing them.
func KeyID(key []byte) string {
	h := sha256.Sum256(append([]byte("ssf-sidecar seal key id\x00"), key...))
	return hex.EncodeToString(h[:4])
}

// NewSealer seals with current (32 bytes) and opens with current or any of
// previous (nil previous keys are left out).
func NewSealer(current []byte, previous ...[]byte) (*Sealer, error) {
	s := &Sealer{}
	for i, key := range append([][]byte{current}, previous...) {
		if i > 0 && key == nil {
			continue
		}
		block, err := aes.NewCipher(key)
		if err != nil || len(key) != 32 {
			if i == 0 {
				return nil, fmt.Errorf("seal key: want 32 bytes, got %d", len(key))
			}
			return nil, fmt.Errorf("previous seal key: want 32 bytes, got %d", len(key))
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		s.keys = append(s.keys, sealKey{id: KeyID(key), aead: aead})
	}
	return s, nil
}

// newSealer is NewSealer with one key.
func newSealer(key []byte) (*Sealer, error) { return NewSealer(key) }

// CurrentID is the KeyID of the key new values are sealed with.
func (s *Sealer) CurrentID() string { return s.keys[0].id }

// IsSealed tells a sealed value from a secret stored as it is.
func IsSealed(stored string) bool {
	return strings.HasPrefix(stored, sealedPrefix) || strings.HasPrefix(stored, sealedPrefixV2)
}

// SealedWith returns the KeyID a sealed value names ("" for a value sealed
// before values named their key, or one not sealed at all).
func SealedWith(stored string) string {
	rest, ok := strings.CutPrefix(stored, sealedPrefixV2)
	if !ok {
		return ""
	}
	id, _, _ := strings.Cut(rest, ":")
	return id
}

// Seal returns the sealed form of a non-empty secret under the current
// key; aad binds it to its place (a stream id) so that a value cannot be
// moved to another one. A value already sealed is returned as it is.
func (s *Sealer) Seal(secret, aad string) (string, error) {
	if secret == "" || IsSealed(secret) {
		return secret, nil
	}
	k := s.keys[0]
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := k.aead.Seal(nonce, nonce, []byte(secret), []byte(aad))
	return sealedPrefixV2 + k.id + ":" + base64.RawStdEncoding.EncodeToString(out), nil
}

// Open reverses Seal, with the key the value names (a value sealed before
// values named their key: with each key in turn). A value stored before
// sealing existed is returned as it is (and sealed on its next write). The
// error never contains the value.
func (s *Sealer) Open(stored, aad string) (string, error) {
	var body string
	keys := s.keys
	if rest, ok := strings.CutPrefix(stored, sealedPrefixV2); ok {
		id, b, ok := strings.Cut(rest, ":")
		if !ok {
			return "", errors.New("sealed secret is malformed")
		}
		keys = nil
		for _, k := range s.keys {
			if k.id == id {
				keys = append(keys, k)
			}
		}
		if len(keys) == 0 {
			return "", fmt.Errorf("sealed secret was sealed under key %s, which is not among the keys given (%s): "+
				"was %s replaced, or is the previous encryption key missing?", id, s.ids(), SecretKeyFile)
		}
		body = b
	} else if b, ok := strings.CutPrefix(stored, sealedPrefix); ok {
		body = b
	} else {
		return stored, nil
	}
	raw, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil || len(raw) < s.keys[0].aead.NonceSize() {
		return "", errors.New("sealed secret is malformed")
	}
	for _, k := range keys {
		n := k.aead.NonceSize()
		if plain, err := k.aead.Open(nil, raw[:n], raw[n:], []byte(aad)); err == nil {
			return string(plain), nil
		}
	}
	return "", errors.New("sealed secret does not open with the keys given (" + s.ids() + "): was " + SecretKeyFile + " replaced, or the encryption key changed?")
}

func (s *Sealer) ids() string {
	ids := make([]string, len(s.keys))
	for i, k := range s.keys {
		ids[i] = k.id
	}
	return strings.Join(ids, ", ")
}
