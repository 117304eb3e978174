package ssf

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"slices"
	"testing"

	"github.com/golang-jwt/jwt/v5"
)

// jwksVerifier is a receiver's view of one fetched JWKS, decoded without
// the package's own JWK code: it verifies a SET by its kid.
type jwksVerifier map[string]*rsa.PublicKey

func fetchJWKS(t *testing.T, k *Keys) jwksVerifier {
	t.Helper()
	var set struct {
		Keys []struct{ Kty, Kid, N, E string }
	}
	if err := json.Unmarshal(k.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	v := jwksVerifier{}
	for _, jk := range set.Keys {
		n, err1 := base64.RawURLEncoding.DecodeString(jk.N)
		e, err2 := base64.RawURLEncoding.DecodeString(jk.E)
		if jk.Kty != "RSA" || err1 != nil || err2 != nil {
			t.Fatalf("JWK %+v", jk)
		}
		v[jk.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	return v
}

func (v jwksVerifier) kids() []string {
	var ks []string
	for k := range v {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

// verifies reports whether a receiver holding this JWKS accepts the SET.
func (v jwksVerifier) verifies(compact string) bool {
	_, err := jwt.Parse(compact, func(tk *jwt.Token) (any, error) {
		kid, _ := tk.Header["kid"].(string)
		if pub, ok := v[kid]; ok {
			return pub, nil
		}
		return nil, jwt.ErrTokenUnverifiable
	}, jwt.WithValidMethods([]string{"RS256"}))
	return err == nil
}

// TestOperatorKeyRotationProcedure follows README.md's "Rotating
// operator-supplied signing keys" step by step; each step is a restart with
// a new --signing-key list. A receiver that fetched the JWKS at any step
// must verify what the sidecar signs at the next one.
func TestOperatorKeyRotationProcedure(t *testing.T) {
	ctx := context.Background()
	keyFile := func() string {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		return writePEM(t, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k))
	}
	oldFile, newFile := keyFile(), keyFile()
	restart := func(files ...string) *Keys {
		t.Helper()
		k, err := NewKeys(ctx, KeyConfig{Files: files})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	sign := func(k *Keys) string {
		t.Helper()
		s, err := k.Sign(ctx, []byte(`{"iss":"https://sso.example.com/ssf","jti":"x"}`))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	// Before: --signing-key old.pem.
	k0 := restart(oldFile)
	oldKID := k0.CurrentKID()
	jwks0, set0 := fetchJWKS(t, k0), sign(k0)

	// Step 1: --signing-key old.pem,new.pem: the new key is published, the
	// old one still signs.
	k1 := restart(oldFile, newFile)
	if k1.CurrentKID() != oldKID {
		t.Fatalf("step 1: the second file signs (kid %s), want the first (%s)", k1.CurrentKID(), oldKID)
	}
	jwks1, set1 := fetchJWKS(t, k1), sign(k1)
	if len(jwks1) != 2 {
		t.Fatalf("step 1: JWKS has %v, want both keys", jwks1.kids())
	}
	newKID := ""
	for _, kid := range jwks1.kids() {
		if kid != oldKID {
			newKID = kid
		}
	}
	if !jwks0.verifies(set1) {
		t.Errorf("step 1: a receiver with the JWKS from before cannot verify a SET signed after the restart")
	}

	// Step 2 (after receivers have refreshed their JWKS): --signing-key
	// new.pem,old.pem: the new key signs, the old one is still published.
	k2 := restart(newFile, oldFile)
	if k2.CurrentKID() != newKID {
		t.Fatalf("step 2: kid %s signs, want the new key %s", k2.CurrentKID(), newKID)
	}
	jwks2, set2 := fetchJWKS(t, k2), sign(k2)
	if !jwks1.verifies(set2) {
		t.Errorf("step 2: a receiver with step 1's JWKS cannot verify the new key's SET")
	}
	for i, s := range []string{set0, set1} {
		if !jwks2.verifies(s) {
			t.Errorf("step 2: a SET signed by the old key (step %d) no longer verifies", i)
		}
	}

	// Step 3 (after the overlap): --signing-key new.pem.
	k3 := restart(newFile)
	jwks3, set3 := fetchJWKS(t, k3), sign(k3)
	if got := jwks3.kids(); !slices.Equal(got, []string{newKID}) {
		t.Errorf("step 3: JWKS has %v, want only the new key", got)
	}
	if !jwks2.verifies(set3) || !jwks3.verifies(set2) {
		t.Errorf("step 3: the new key's SETs must verify with step 2's and step 3's JWKS")
	}
	if jwks3.verifies(set1) {
		t.Errorf("step 3: the old key is still accepted after it was removed")
	}

	// Why the order matters: replacing the file in one restart signs with a
	// key that receivers holding the old JWKS do not know.
	direct := restart(newFile)
	if jwks0.verifies(sign(direct)) {
		t.Errorf("swapping the key in one step should strand receivers with the old JWKS; the check is broken")
	}
}
