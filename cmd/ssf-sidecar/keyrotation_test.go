package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// TestSigningKeyFileRotationAcrossRestarts runs README.md's procedure for
// rotating --signing-key files against the sidecar itself: one data dir,
// a restart per step, a push stream per step whose verification SET must
// verify with the JWKS a receiver fetched at the step before.
func TestSigningKeyFileRotationAcrossRestarts(t *testing.T) {
	dir := t.TempDir()
	keyFile := func(name string) string {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	oldPEM, newPEM := keyFile("old.pem"), keyFile("new.pem")
	dataDir := filepath.Join(dir, "data")

	type stepResult struct {
		jwks    map[string]*rsa.PublicKey
		current string
		set     string // the verification SET of the step's new stream
	}
	step := func(files ...string) stepResult {
		t.Helper()
		w, err := startDemoWorld(context.Background(), demoOptions{DataDir: dataDir, Mutate: func(c *sidecar.Config) { c.SigningKeys = files }})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		var r stepResult
		r.jwks = fetchPublishedKeys(t, w.Front+"/ssf/jwks.json")
		for _, k := range w.Sidecar.Keys().List() {
			if k.Current {
				r.current = k.KID
			}
		}
		ctx := context.Background()
		if _, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked}); err != nil {
			t.Fatal(err)
		}
		if err := w.Receiver.WaitFor(ctx, 1, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		r.set = w.Receiver.Received()[0].Compact
		if kid := kidOf(t, r.set); kid != r.current {
			t.Fatalf("signed by %s, the current key is %s", kid, r.current)
		}
		return r
	}
	kids := func(m map[string]*rsa.PublicKey) []string {
		var ks []string
		for k := range m {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		return ks
	}

	before := step(oldPEM)
	published := step(oldPEM, newPEM) // 2. publish the new key
	if published.current != before.current || len(published.jwks) != 2 {
		t.Fatalf("step 2: current %s (want the old %s), JWKS %v (want both)", published.current, before.current, kids(published.jwks))
	}
	if !verifiesWith(before.jwks, published.set) {
		t.Errorf("step 2: a receiver holding the JWKS from before cannot verify")
	}
	switched := step(newPEM, oldPEM) // 4. switch
	if switched.current == before.current || !slices.Contains(kids(published.jwks), switched.current) {
		t.Fatalf("step 4: current %s, want the new key of %v", switched.current, kids(published.jwks))
	}
	if !verifiesWith(published.jwks, switched.set) {
		t.Errorf("step 4: a receiver holding step 2's JWKS cannot verify the new key's SET")
	}
	if !verifiesWith(switched.jwks, before.set) {
		t.Errorf("step 4: SETs the old key signed no longer verify")
	}
	retired := step(newPEM) // 6. retire
	if got := kids(retired.jwks); !slices.Equal(got, []string{switched.current}) {
		t.Errorf("step 6: JWKS %v, want only the new key %s", got, switched.current)
	}
	if !verifiesWith(switched.jwks, retired.set) || verifiesWith(retired.jwks, before.set) {
		t.Errorf("step 6: the new key must verify with step 4's JWKS, and the old one no longer")
	}
}

// fetchPublishedKeys reads a JWKS as a receiver does (RSA keys by kid).
func fetchPublishedKeys(t *testing.T, url string) map[string]*rsa.PublicKey {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var set struct {
		Keys []struct{ Kid, N, E string }
	}
	if err := json.Unmarshal(body, &set); err != nil {
		t.Fatalf("jwks: %v %s", err, body)
	}
	out := map[string]*rsa.PublicKey{}
	for _, k := range set.Keys {
		n, _ := base64.RawURLEncoding.DecodeString(k.N)
		e, _ := base64.RawURLEncoding.DecodeString(k.E)
		out[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	return out
}

func verifiesWith(keys map[string]*rsa.PublicKey, compact string) bool {
	_, err := jwt.Parse(compact, func(tk *jwt.Token) (any, error) {
		kid, _ := tk.Header["kid"].(string)
		if k, ok := keys[kid]; ok {
			return k, nil
		}
		return nil, jwt.ErrTokenUnverifiable
	}, jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation())
	return err == nil
}

func kidOf(t *testing.T, compact string) string {
	t.Helper()
	tok, _, err := jwt.NewParser().ParseUnverified(compact, jwt.MapClaims{})
	if err != nil {
		t.Fatal(err)
	}
	kid, _ := tok.Header["kid"].(string)
	return kid
}
