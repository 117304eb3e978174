package ssftest

import (
	"bytes"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// RunKeyStore runs the behaviour of generated signing keys kept sealed in
// a store (ssf.NewKeys with KeyConfig.Seal) on the stores newStore makes:
// processes starting at once generate one first key between them, a
// rotation made on one handle is used by another after Refresh, retired
// keys stay published for the overlap and go after it, private keys are
// stored only sealed, and a previous seal key still opens them. With an
// activation delay, a rotated-in key is published by every handle that
// has refreshed before any handle signs with it, and all of them switch
// to it at its activation time; RotateNow signs at once.
func RunKeyStore(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("GeneratedOnce", func(t *testing.T) { testKeysGeneratedOnce(t, newStore(t)) })
	t.Run("RotationSeenByAnother", func(t *testing.T) { testKeysRotationSeen(t, newStore(t)) })
	t.Run("PublishedEverywhereBeforeItSigns", func(t *testing.T) { testKeysPublishedBeforeSigning(t, newStore(t)) })
	t.Run("RetiredKeysKept", func(t *testing.T) { testKeysRetiredKept(t, newStore(t)) })
	t.Run("PrivateKeysSealed", func(t *testing.T) { testKeysSealed(t, newStore(t)) })
	t.Run("PreviousKey", func(t *testing.T) { testKeysPreviousSeal(t, newStore(t)) })
}

// clock is a settable clock for key overlaps.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newKeys(t *testing.T, kv ssf.KV, seal []byte, cl *clock, previous []byte) *ssf.Keys {
	t.Helper()
	k, err := ssf.NewKeys(ctx, keyConfig(kv, seal, cl, previous))
	if err != nil {
		t.Fatalf("NewKeys: %v", err)
	}
	return k
}

func keyConfig(kv ssf.KV, seal []byte, cl *clock, previous []byte) ssf.KeyConfig {
	cfg := ssf.KeyConfig{KV: kv, Seal: seal, PreviousSeal: previous, Overlap: time.Hour}
	if cl != nil {
		cfg.Clock = cl.Now
	}
	return cfg
}

func jwksKIDs(t *testing.T, k *ssf.Keys) []string {
	t.Helper()
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.Unmarshal(k.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, j := range set.Keys {
		out = append(out, j["kid"])
	}
	return out
}

func has(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

func testKeysGeneratedOnce(t *testing.T, st Store) {
	a, b := st.pair()
	handles := []ssf.KV{a, b, a, b}
	keys := make([]*ssf.Keys, len(handles))
	errs := make([]error, len(handles))
	var wg sync.WaitGroup
	for i, kv := range handles {
		wg.Add(1)
		go func() { defer wg.Done(); keys[i], errs[i] = ssf.NewKeys(ctx, keyConfig(kv, sealA, nil, nil)) }()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("process %d: NewKeys: %v", i, err)
		}
	}
	first := keys[0].CurrentKID()
	for i, k := range keys {
		if err := k.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
		if k.CurrentKID() != first || len(k.List()) != 1 {
			t.Fatalf("process %d signs with %s and publishes %v; process 0 with %s (more than one first key)", i, k.CurrentKID(), jwksKIDs(t, k), first)
		}
	}
	if n := len(rawValues(t, b, ssf.BucketKeys)); n != 1 {
		t.Fatalf("%d key records stored, want 1", n)
	}
	if k := newKeys(t, st.Open(), sealA, nil, nil); k.CurrentKID() != first {
		t.Fatalf("after a restart the key is %s, want %s", k.CurrentKID(), first)
	}
}

func testKeysRotationSeen(t *testing.T, st Store) {
	a, b := st.pair()
	ka := newKeys(t, a, sealA, nil, nil)
	kb := newKeys(t, b, sealA, nil, nil)
	old := ka.CurrentKID()
	if kb.CurrentKID() != old {
		t.Fatalf("handles start with different keys: %s, %s", old, kb.CurrentKID())
	}
	rot, err := ka.Rotate(ctx)
	if err != nil || rot.KID == old || !rot.Current {
		t.Fatalf("Rotate = %+v, %v", rot, err)
	}
	if ka.CurrentKID() != rot.KID {
		t.Fatal("the rotating handle does not sign with the new key")
	}
	if err := kb.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if kb.CurrentKID() != rot.KID {
		t.Fatalf("after Refresh the other handle signs with %s, want %s", kb.CurrentKID(), rot.KID)
	}
	if kids := jwksKIDs(t, kb); len(kids) != 2 || kids[0] != rot.KID || !has(kids, old) {
		t.Fatalf("the other handle's JWKS = %v, want %s first and %s still published", kids, rot.KID, old)
	}
	// A rotation by a handle that has not seen the last one makes no
	// second current key: both end on one.
	again, err := kb.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	stale, err := ka.Rotate(ctx) // ka has not refreshed since kb rotated
	if err != nil {
		t.Fatal(err)
	}
	_ = ka.Refresh(ctx)
	_ = kb.Refresh(ctx)
	if ka.CurrentKID() != kb.CurrentKID() || (stale.KID != again.KID && ka.CurrentKID() != stale.KID) {
		t.Fatalf("after concurrent rotations: a signs with %s, b with %s", ka.CurrentKID(), kb.CurrentKID())
	}
	if k := newKeys(t, st.Open(), sealA, nil, nil); k.CurrentKID() != ka.CurrentKID() {
		t.Fatalf("after a restart: %s, want %s", k.CurrentKID(), ka.CurrentKID())
	}
}

func testKeysRetiredKept(t *testing.T, st Store) {
	cl := &clock{now: time.Date(2026, 5, 1, 9, 0, 0, 0, time.UTC)}
	k := newKeys(t, st.Open(), sealA, cl, nil)
	old := k.CurrentKID()
	cl.Add(time.Minute)
	rotatedAt := cl.Now()
	rot, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cl.Add(59 * time.Minute) // one hour overlap: one minute left
	k = newKeys(t, st.Open(), sealA, cl, nil)
	list := k.List()
	if len(list) != 2 || list[0].KID != rot.KID || !list[0].Current || list[1].KID != old || list[1].Current {
		t.Fatalf("after a restart within the overlap List = %+v", list)
	}
	if !list[1].RetiredAt.Equal(rotatedAt) || !list[1].LeavesJWKSAt.Equal(rotatedAt.Add(time.Hour)) {
		t.Fatalf("retired key: retired %s, leaves %s; want %s and an hour later", list[1].RetiredAt, list[1].LeavesJWKSAt, rotatedAt)
	}
	if !has(jwksKIDs(t, k), old) {
		t.Fatal("a retired key left the JWKS within the overlap")
	}
	cl.Add(time.Minute)
	if has(jwksKIDs(t, k), old) {
		t.Fatal("a retired key is still published after the overlap")
	}
	kv := st.Open()
	k = newKeys(t, kv, sealA, cl, nil)
	if kids := jwksKIDs(t, k); len(kids) != 1 || kids[0] != rot.KID {
		t.Fatalf("after the overlap and a restart the JWKS = %v", kids)
	}
	if n := len(rawValues(t, kv, ssf.BucketKeys)); n != 1 {
		t.Fatalf("%d key records kept after the overlap, want 1 (the expired one dropped)", n)
	}
}

// testKeysSealed opens every stored key with the seal key (so the suite
// holds the real private key), checks it is the published one, and then
// that no stored byte holds it in any usual encoding.
func testKeysSealed(t *testing.T, st Store) {
	kv := st.Open()
	k := newKeys(t, kv, sealA, nil, nil)
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	_ = json.Unmarshal(k.JWKS(), &set)
	pub := map[string]string{}
	for _, j := range set.Keys {
		pub[j["kid"]] = j["n"]
	}
	sealer, err := ssf.NewSealer(sealA)
	if err != nil {
		t.Fatal(err)
	}
	stored := rawValues(t, kv, ssf.BucketKeys, ssf.BucketKeyCurrent)
	// Each key's private part as PEM, DER, the PEM body, base64 (standard
	// and URL) and hex of the DER, the private exponent and a prime.
	var secrets [][]byte
	forms := []string{"PEM", "DER", "PEM body", "base64 DER", "base64url DER", "hex DER", "d", "p", "base64url d"}
	opened := 0
	for name, v := range stored {
		if !strings.HasPrefix(name, ssf.BucketKeys+"/") {
			continue
		}
		kid, pemText, err := ssf.OpenSigningKey(sealer, v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		block, _ := pem.Decode(pemText)
		if block == nil {
			t.Fatalf("%s: the sealed value is not a PEM key", name)
		}
		priv, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		rk, ok := priv.(*rsa.PrivateKey)
		if !ok || base64.RawURLEncoding.EncodeToString(rk.N.Bytes()) != pub[kid] {
			t.Fatalf("%s: the sealed key is not the published key %s", name, kid)
		}
		opened++
		body := strings.Join(strings.Split(strings.TrimSpace(string(pemText)), "\n")[1:], "")
		secrets = append(secrets, pemText, block.Bytes, []byte(body[:len(body)-len("-----END PRIVATE KEY-----")]),
			[]byte(base64.StdEncoding.EncodeToString(block.Bytes)[8:200]),
			[]byte(base64.RawURLEncoding.EncodeToString(block.Bytes)[8:200]),
			[]byte(hex.EncodeToString(block.Bytes)[16:400]),
			bigBytes(rk.D), bigBytes(rk.Primes[0]),
			[]byte(base64.RawURLEncoding.EncodeToString(rk.D.Bytes())))
	}
	if opened != 2 {
		t.Fatalf("%d sealed keys opened, want 2 (current and retired)", opened)
	}
	for name, v := range stored {
		for _, form := range storedForms(v) {
			for i, s := range secrets {
				if bytes.Contains(form, s) {
					t.Fatalf("%s holds a private key in clear (as %s)", name, forms[i%len(forms)])
				}
			}
		}
		if strings.HasPrefix(name, ssf.BucketKeys+"/") && !bytes.Contains(v, []byte(`"sealed:v2:`+ssf.KeyID(sealA)+`:`)) {
			t.Fatalf("%s is not sealed under the seal key's id %s", name, ssf.KeyID(sealA))
		}
	}
	_, err = ssf.NewKeys(ctx, keyConfig(kv, sealB, nil, nil))
	if err == nil || !strings.Contains(err.Error(), "does not open") || strings.Contains(err.Error(), "PRIVATE") {
		t.Fatalf("NewKeys under another seal key = %v; want a clear refusal without the key", err)
	}
}

// storedForms is a stored value as it is, and the strings of its JSON
// decoded and run together, with and without their white space: a PEM
// kept in a JSON string has its line ends escaped.
func storedForms(v []byte) [][]byte {
	forms := [][]byte{v}
	var doc any
	if json.Unmarshal(v, &doc) != nil {
		return forms
	}
	var b strings.Builder
	var walk func(any)
	walk = func(x any) {
		switch x := x.(type) {
		case string:
			b.WriteString(x)
			b.WriteByte(0)
		case []any:
			for _, e := range x {
				walk(e)
			}
		case map[string]any:
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(doc)
	flat := strings.Map(func(r rune) rune {
		if r == ' ' || r == '\n' || r == '\r' || r == '\t' {
			return -1
		}
		return r
	}, b.String())
	return append(forms, []byte(b.String()), []byte(flat))
}

func bigBytes(n *big.Int) []byte { return n.Bytes()[:32] }

func testKeysPreviousSeal(t *testing.T, st Store) {
	kv := st.Open()
	old := newKeys(t, kv, sealA, nil, nil).CurrentKID()
	k := newKeys(t, kv, sealB, nil, sealA) // rotated seal: new current, old previous
	if k.CurrentKID() != old {
		t.Fatalf("with the previous seal key the current key is %s, want %s", k.CurrentKID(), old)
	}
	rot, err := k.Rotate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := rawValues(t, kv, ssf.BucketKeys)[ssf.BucketKeys+"/"+rot.KID]
	if !bytes.Contains(v, []byte(`"sealed:v2:`+ssf.KeyID(sealB)+`:`)) {
		t.Fatal("a key generated after the seal rotation is not sealed under the current seal key")
	}
	if _, err := ssf.NewKeys(ctx, keyConfig(kv, sealB, nil, nil)); err == nil || !strings.Contains(err.Error(), ssf.KeyID(sealA)) {
		t.Fatalf("NewKeys without the previous key, while a key is still sealed under it = %v; want an error naming key %s", err, ssf.KeyID(sealA))
	}
}

// signedKID signs a SET with k and returns the kid its header names.
func signedKID(t *testing.T, k *ssf.Keys) string {
	t.Helper()
	jws, err := k.Sign(ctx, []byte(`{"jti":"x"}`))
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := base64.RawURLEncoding.DecodeString(strings.Split(jws, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		KID string `json:"kid"`
	}
	if err := json.Unmarshal(hdr, &h); err != nil {
		t.Fatal(err)
	}
	return h.KID
}

// testKeysPublishedBeforeSigning: a key rotated in on handle a is
// published by a at once and by b after its next Refresh, while both
// still sign with the old key; at the activation time both switch, with
// no further Refresh, and keep the old key published for the overlap.
// (The handles' clock is a test clock; a database's own clock, which
// measures the time left to a handle that first reads the key, does not
// follow it, so every read here comes before the activation.)
func testKeysPublishedBeforeSigning(t *testing.T, st Store) {
	const activation = time.Minute
	cl := &clock{now: time.Now()}
	a, b := st.pair()
	cfg := func(kv ssf.KV) ssf.KeyConfig {
		c := keyConfig(kv, sealA, cl, nil)
		c.Activation = activation
		return c
	}
	ka, err := ssf.NewKeys(ctx, cfg(a))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := ssf.NewKeys(ctx, cfg(b))
	if err != nil {
		t.Fatal(err)
	}
	old := ka.CurrentKID()
	rot, err := ka.Rotate(ctx)
	if err != nil || rot.KID == old {
		t.Fatalf("Rotate = %+v, %v", rot, err)
	}
	if rot.Current || rot.ActivatesAt.IsZero() {
		t.Fatalf("Rotate = %+v: want a key that is not current yet, with its activation time", rot)
	}
	check := func(when string, k *ssf.Keys, name, signs string, publishes ...string) {
		t.Helper()
		if got := signedKID(t, k); got != signs {
			t.Fatalf("%s: %s signs with %s, want %s", when, name, got, signs)
		}
		kids := jwksKIDs(t, k)
		for _, p := range publishes {
			if !has(kids, p) {
				t.Fatalf("%s: %s publishes %v, without %s", when, name, kids, p)
			}
		}
	}
	check("just after the rotation", ka, "the rotating handle", old, old, rot.KID)
	if err := kb.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	check("after its refresh", kb, "the other handle", old, old, rot.KID)
	if l := kb.List(); len(l) != 2 || l[0].KID != old || !l[0].Current || l[1].KID != rot.KID || l[1].Current || l[1].ActivatesAt.IsZero() {
		t.Fatalf("the other handle lists %+v; want %s current and %s pending with its activation", l, old, rot.KID)
	}
	if st.Shared { // else opening another handle closes a and b
		c := newKeys(t, st.Open(), sealA, cl, nil)
		check("opened within the activation delay", c, "a third handle", old, old, rot.KID)
	}

	cl.Add(activation / 2)
	check("half way to the activation", ka, "the rotating handle", old, rot.KID)
	check("half way to the activation", kb, "the other handle", old, rot.KID)
	cl.Add(activation)
	check("after the activation", ka, "the rotating handle", rot.KID, rot.KID, old)
	check("after the activation", kb, "the other handle", rot.KID, rot.KID, old)
	if err := kb.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	check("after the activation and a refresh", kb, "the other handle", rot.KID, rot.KID, old)

	// A compromised key is replaced at once.
	now, err := kb.RotateNow(ctx)
	if err != nil || !now.Current {
		t.Fatalf("RotateNow = %+v, %v", now, err)
	}
	check("after RotateNow", kb, "the rotating handle", now.KID, now.KID, rot.KID)
	if err := ka.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	check("after RotateNow and a refresh", ka, "the other handle", now.KID, now.KID, rot.KID)
	check("after RotateNow and a restart", newKeys(t, st.Open(), sealA, cl, nil), "a new handle", now.KID, now.KID, rot.KID)
}
