package main

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"unicode"
)

// minEncryptionKey is the least key material accepted, in bytes.
const minEncryptionKey = 32

// encryptionKey reads the key that seals secrets in the database, from
// SSF_ENCRYPTION_KEY or --encryption-key-file (one of them). Errors never
// contain the key.
func (c Config) encryptionKey() ([]byte, error) {
	k, err := readEncryptionKey("--encryption-key-file", "SSF_ENCRYPTION_KEY", c.EncryptionKeyFile, c.EncryptionKey)
	if err == nil && k == nil {
		err = errors.New("--database-url needs an encryption key for the secrets it stores: --encryption-key-file FILE or SSF_ENCRYPTION_KEY " +
			"(at least 32 random bytes as 64+ hex digits or base64, e.g. from: openssl rand -hex 32)")
	}
	return k, err
}

// previousEncryptionKey reads the key being rotated out, from
// SSF_PREVIOUS_ENCRYPTION_KEY or --previous-encryption-key-file: values
// sealed under it are still opened, and ssf-sidecar rekey seals them again
// under the current key. It is nil when neither is given.
func (c Config) previousEncryptionKey() ([]byte, error) {
	k, err := readEncryptionKey("--previous-encryption-key-file", "SSF_PREVIOUS_ENCRYPTION_KEY", c.PreviousEncryptionKeyFile, c.PreviousEncryptionKey)
	if err != nil || k == nil {
		return k, err
	}
	if cur, cerr := c.encryptionKey(); cerr == nil && bytes.Equal(cur, k) {
		return nil, errors.New("--previous-encryption-key-file / SSF_PREVIOUS_ENCRYPTION_KEY holds the current encryption key: give the key being rotated out, or neither")
	}
	return k, nil
}

// readEncryptionKey reads a key given as the text of env or in the file
// flag names (one of them); nil without either.
func readEncryptionKey(flagName, env, file, text string) ([]byte, error) {
	switch {
	case text != "" && file != "":
		return nil, fmt.Errorf("give the key once: %s or %s, not both", flagName, env)
	case text != "":
		k, err := parseEncryptionKey(text)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", env, err)
		}
		return k, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}
		k, err := parseEncryptionKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", flagName, file, err)
		}
		return k, nil
	}
	return nil, nil
}

// Purposes of the keys derived from the encryption key.
const (
	pushHeaderPurpose  = "ssf-sidecar stream secrets v1"
	signingKeysPurpose = "ssf-sidecar signing keys v1"
)

// sealKeys derives the stream-secret and signing-key seal keys from an
// encryption key (nil for a nil key).
func sealKeys(encKey []byte) (streams, keys []byte) {
	if encKey == nil {
		return nil, nil
	}
	return deriveKey(encKey, pushHeaderPurpose), deriveKey(encKey, signingKeysPurpose)
}

// parseEncryptionKey reads at least minEncryptionKey bytes written as hex
// digits or base64 (standard or URL alphabet, padded or not); whitespace
// anywhere is ignored.
func parseEncryptionKey(text string) ([]byte, error) {
	s := strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, text)
	if s == "" {
		return nil, errors.New("the encryption key is empty")
	}
	var key []byte
	if isHex(s) && len(s)%2 == 0 {
		key, _ = hex.DecodeString(s)
	} else {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			if b, err := enc.DecodeString(s); err == nil {
				key = b
				break
			}
		}
		if key == nil {
			return nil, errors.New("the encryption key is neither hex digits nor base64")
		}
	}
	if len(key) < minEncryptionKey {
		return nil, fmt.Errorf("the encryption key holds %d bytes, at least %d are needed (64 hex digits, or 44 base64 characters)", len(key), minEncryptionKey)
	}
	return key, nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F') {
			return false
		}
	}
	return true
}

// deriveKey derives a 32-byte key for one purpose from the operator's
// encryption key (HKDF-SHA256), so each use has a key of its own.
func deriveKey(master []byte, purpose string) []byte {
	k, err := hkdf.Key(sha256.New, master, nil, purpose, 32)
	if err != nil {
		panic(err) // only for a length HKDF cannot give; 32 always fits
	}
	return k
}
