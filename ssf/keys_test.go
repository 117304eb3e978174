package ssf

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

func TestThumbprintRFC7638(t *testing.T) {
	// The example of RFC 7638 §3.1.
	j := map[string]string{"kty": "RSA", "e": "AQAB",
		"n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"}
	if got := thumbprint(j); got != "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs" {
		t.Errorf("thumbprint %s", got)
	}
}

func writePEM(t *testing.T, typ string, der []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), strings.ReplaceAll(typ, " ", "_")+".pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKeyFiles(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	pkcs8, _ := x509.MarshalPKCS8PrivateKey(rsaKey)
	sec1, _ := x509.MarshalECPrivateKey(ecKey)
	sec1384, _ := x509.MarshalECPrivateKey(p384)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	_ = os.WriteFile(garbage, []byte("not a key"), 0o600)
	cases := []struct {
		name    string
		file    string
		alg     string
		wantErr string
	}{
		{"PKCS#1 RSA", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(rsaKey)), "RS256", ""},
		{"PKCS#8 RSA", writePEM(t, "PRIVATE KEY", pkcs8), "RS256", ""},
		{"SEC1 P-256", writePEM(t, "EC PRIVATE KEY", sec1), "ES256", ""},
		{"RSA 1024", writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(small)), "", "at least 2048"},
		{"P-384", writePEM(t, "EC PRIVATE KEY", sec1384), "", "only P-256"},
		{"public key", writePEM(t, "PUBLIC KEY", []byte{1}), "", "unsupported PEM block"},
		{"garbage", garbage, "", "no PEM block"},
		{"missing file", filepath.Join(t.TempDir(), "nope.pem"), "", "cannot read"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := KeyConfig{Files: []string{c.file}}
			err := cfg.Validate()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Validate: %v, want %q", err, c.wantErr)
				}
				if _, err := NewKeys(context.Background(), cfg); err == nil {
					t.Error("NewKeys accepted it")
				}
				return
			}
			k, err := NewKeys(context.Background(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			compact, err := k.Sign(context.Background(), []byte(`{"iss":"x"}`))
			if err != nil {
				t.Fatal(err)
			}
			var set struct{ Keys []json.RawMessage }
			_ = json.Unmarshal(k.JWKS(), &set)
			kid, pub, err := parseJWK(set.Keys[0])
			if err != nil || kid != k.CurrentKID() {
				t.Fatalf("jwks: %v %s", err, kid)
			}
			tok, err := jwt.Parse(compact, func(tk *jwt.Token) (any, error) { return pub, nil },
				jwt.WithValidMethods([]string{c.alg}))
			if err != nil || tok.Header["kid"] != kid || tok.Header["typ"] != "secevent+jwt" {
				t.Errorf("signature: %v header %v", err, tok.Header)
			}
			if _, err := k.Rotate(context.Background()); !errors.Is(err, ErrOperatorManaged) {
				t.Errorf("Rotate on files: %v", err)
			}
		})
	}
	t.Run("every problem at once", func(t *testing.T) {
		err := KeyConfig{Files: []string{cases[3].file, cases[7].file}, Overlap: -1}.Validate()
		for _, want := range []string{"2048", "cannot read", "overlap"} {
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("error %v lacks %q", err, want)
			}
		}
		if err := (KeyConfig{}).Validate(); err == nil || !strings.Contains(err.Error(), "data dir") {
			t.Errorf("empty config: %v", err)
		}
	})
	t.Run("first signs, others published", func(t *testing.T) {
		k, err := NewKeys(context.Background(), KeyConfig{Files: []string{cases[2].file, cases[0].file}})
		if err != nil {
			t.Fatal(err)
		}
		list := k.List()
		if len(list) != 2 || !list[0].Current || list[0].Alg != "ES256" || list[1].Current || list[1].Source != "file" {
			t.Errorf("list %+v", list)
		}
		var set struct{ Keys []map[string]string }
		_ = json.Unmarshal(k.JWKS(), &set)
		if len(set.Keys) != 2 {
			t.Errorf("jwks has %d keys", len(set.Keys))
		}
		for _, jk := range set.Keys {
			if jk["d"] != "" || jk["p"] != "" {
				t.Error("private material published")
			}
		}
	})
}

func TestGeneratedKeyLifecycle(t *testing.T) {
	dir := t.TempDir()
	clock := newClock()
	open := func() (*outbox.Store, *Keys) {
		t.Helper()
		st, err := outbox.Open(filepath.Join(dir, "db"), outbox.StoreOptions{NoSync: true})
		if err != nil {
			t.Fatal(err)
		}
		k, err := NewKeys(context.Background(), KeyConfig{DataDir: dir, KV: st, Overlap: time.Hour, Clock: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		return st, k
	}
	st, k := open()
	first := k.CurrentKID()
	files, _ := filepath.Glob(filepath.Join(dir, "signing-key-*.pem"))
	if len(files) != 1 {
		t.Fatalf("key files %v", files)
	}
	if fi, _ := os.Stat(files[0]); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode().Perm())
	}
	st.Close()
	st, k = open()
	if k.CurrentKID() != first {
		t.Fatal("generated key not reused after restart")
	}
	info, err := k.Rotate(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if info.KID == first || !info.Current || k.CurrentKID() != info.KID {
		t.Fatalf("rotate: %+v", info)
	}
	list := k.List()
	if len(list) != 2 || list[1].KID != first || list[1].RetiredAt.IsZero() || !list[1].LeavesJWKSAt.Equal(clock.Now().Add(time.Hour)) {
		t.Fatalf("after rotate: %+v", list)
	}
	if !strings.Contains(string(k.JWKS()), first) {
		t.Error("retired key left the JWKS during the overlap")
	}
	st.Close()
	clock.Advance(30 * time.Minute)
	st, k = open()
	if k.CurrentKID() != info.KID || !strings.Contains(string(k.JWKS()), first) {
		t.Errorf("restart during overlap: current %s jwks %s", k.CurrentKID(), k.JWKS())
	}
	clock.Advance(31 * time.Minute)
	if strings.Contains(string(k.JWKS()), first) || len(k.List()) != 1 {
		t.Error("retired key still published after the overlap")
	}
	st.Close()
	st, k = open()
	defer st.Close()
	files, _ = filepath.Glob(filepath.Join(dir, "signing-key-*.pem"))
	if len(files) != 1 || k.CurrentKID() != info.KID {
		t.Errorf("after overlap and restart: files %v current %s", files, k.CurrentKID())
	}
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
