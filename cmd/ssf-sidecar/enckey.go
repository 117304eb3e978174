package main

import (
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
	switch {
	case c.EncryptionKey != "" && c.EncryptionKeyFile != "":
		return nil, errors.New("give the encryption key once: --encryption-key-file or SSF_ENCRYPTION_KEY, not both")
	case c.EncryptionKey != "":
		k, err := parseEncryptionKey(c.EncryptionKey)
		if err != nil {
			return nil, fmt.Errorf("SSF_ENCRYPTION_KEY: %w", err)
		}
		return k, nil
	case c.EncryptionKeyFile != "":
		b, err := os.ReadFile(c.EncryptionKeyFile)
		if err != nil {
			return nil, fmt.Errorf("--encryption-key-file: %w", err)
		}
		k, err := parseEncryptionKey(string(b))
		if err != nil {
			return nil, fmt.Errorf("--encryption-key-file %s: %w", c.EncryptionKeyFile, err)
		}
		return k, nil
	}
	return nil, errors.New("--database-url needs an encryption key for the secrets it stores: --encryption-key-file FILE or SSF_ENCRYPTION_KEY " +
		"(at least 32 random bytes as 64+ hex digits or base64, e.g. from: openssl rand -hex 32)")
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
