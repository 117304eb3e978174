package ssf

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
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

const sealedPrefix = "sealed:v1:"

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

// sealer encrypts and decrypts stored secrets.
type sealer struct{ aead cipher.AEAD }

func newSealer(key []byte) (*sealer, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("seal key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal returns the sealed form of a non-empty secret; aad binds it to its
// stream so a value cannot be moved to another one.
func (s *sealer) seal(secret, aad string) (string, error) {
	if secret == "" || strings.HasPrefix(secret, sealedPrefix) {
		return secret, nil
	}
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", err
	}
	out := s.aead.Seal(nonce, nonce, []byte(secret), []byte(aad))
	return sealedPrefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// open reverses seal. A value stored before sealing existed is returned as
// it is (and sealed on its next write).
func (s *sealer) open(stored, aad string) (string, error) {
	if !strings.HasPrefix(stored, sealedPrefix) {
		return stored, nil
	}
	raw, err := base64.RawStdEncoding.DecodeString(strings.TrimPrefix(stored, sealedPrefix))
	if err != nil || len(raw) < s.aead.NonceSize() {
		return "", errors.New("sealed secret is malformed")
	}
	plain, err := s.aead.Open(nil, raw[:s.aead.NonceSize()], raw[s.aead.NonceSize():], []byte(aad))
	if err != nil {
		return "", errors.New("sealed secret does not open with this data dir's key (was " + SecretKeyFile + " replaced?)")
	}
	return string(plain), nil
}
