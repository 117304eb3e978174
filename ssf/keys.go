package ssf

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	storekv "github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// minRSABits is the smallest RSA key accepted (CAEP interoperability
// profile §2.6).
const minRSABits = 2048

// KeyConfig configures the signing keys.
type KeyConfig struct {
	// Files are PEM private keys (PKCS#1, PKCS#8 or SEC1): the first signs,
	// the others are only published. Empty means a generated key.
	Files []string
	// DataDir holds generated keys (mode 0600), unless Seal is set.
	DataDir string
	// Seal, when set (32 bytes), keeps generated private keys in the store
	// sealed with it instead of in files: the store is then a database
	// that several replicas share, and each of them loads the same keys.
	// A rotation made on one is published by the others at their next
	// Refresh and signs on all of them from its activation (Activation).
	Seal []byte
	// PreviousSeal, with Seal, is the seal key being rotated out: keys
	// sealed under it are still opened (see Rekey); new ones are sealed
	// under Seal.
	PreviousSeal []byte
	// KV keeps the metadata of generated keys (required without Files).
	KV KV
	// Overlap is how long a retired generated key stays in the JWKS.
	Overlap time.Duration
	// Activation is how long a rotated-in generated key is only published
	// before it signs. Replicas sharing a store need it longer than their
	// Refresh interval, so that every one of them publishes the new key
	// before any signs with it; they all switch at the activation time,
	// which is recorded on the store's clock. Zero (one process: nobody
	// to wait for) signs with the new key at once.
	Activation time.Duration
	Clock      func() time.Time
	Logger     *slog.Logger
	// Rand is the randomness for key generation (default crypto/rand).
	Rand io.Reader
}

// Validate reports every problem of the configuration at once.
func (c KeyConfig) Validate() error {
	var errs []error
	for _, f := range c.Files {
		if _, err := loadKeyFile(f); err != nil {
			errs = append(errs, err)
		}
	}
	if len(c.Files) == 0 {
		if c.DataDir == "" && c.Seal == nil {
			errs = append(errs, errors.New("signing keys: a data dir is needed to store the generated key"))
		}
		if c.Seal != nil && len(c.Seal) != 32 {
			errs = append(errs, errors.New("signing keys: the seal key must be 32 bytes"))
		}
		if c.PreviousSeal != nil && (c.Seal == nil || len(c.PreviousSeal) != 32) {
			errs = append(errs, errors.New("signing keys: a previous seal key must be 32 bytes, and goes with a seal key"))
		}
		if c.KV == nil {
			errs = append(errs, errors.New("signing keys: a store is needed for generated keys"))
		}
	}
	if c.Overlap < 0 {
		errs = append(errs, errors.New("signing keys: key overlap must not be negative"))
	}
	if c.Activation < 0 {
		errs = append(errs, errors.New("signing keys: key activation delay must not be negative"))
	}
	return errors.Join(errs...)
}

// KeyInfo describes one signing key for operators.
type KeyInfo struct {
	KID       string    `json:"kid"`
	Alg       string    `json:"alg"`
	Source    string    `json:"source"` // "file" or "generated"
	Created   time.Time `json:"created"`
	Current   bool      `json:"current"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// LeavesJWKSAt is when a retired key stops being published.
	LeavesJWKSAt time.Time `json:"leaves_jwks_at,omitzero"`
	// ActivatesAt, on a key that is published but does not sign yet, is
	// when it starts to sign (on the store's clock).
	ActivatesAt time.Time `json:"activates_at,omitzero"`
}

type keyMeta struct {
	KID  string `json:"kid"`
	Alg  string `json:"alg"`
	File string `json:"file"`
	// Sealed is the private key (PKCS#8 PEM) sealed with KeyConfig.Seal,
	// when it is kept in the store rather than in File.
	Sealed    string    `json:"sealed,omitempty"`
	Created   time.Time `json:"created"`
	RetiredAt time.Time `json:"retired_at,omitzero"`
	// ActivatesAt is when a rotated-in key starts to sign, on the store's
	// clock (zero: at once); until then Replaces signs.
	ActivatesAt time.Time `json:"activates_at,omitzero"`
	Replaces    string    `json:"replaces,omitempty"`
}

type signingKey struct {
	meta   keyMeta
	signer crypto.Signer
	method jwt.SigningMethod
	jwk    map[string]string
}

// Keys holds the signing keys: it signs SETs (outbox.Signer) and publishes
// the JWKS.
type Keys struct {
	cfg      KeyConfig
	operator bool
	log      *slog.Logger

	mu   sync.RWMutex
	keys []*signingKey // the signing key first
	// pending is a rotated-in key, in keys (so published) but not signing
	// before switchAt (on cfg.Clock); the first Sign or read from then on
	// makes it the signing key.
	pending  *signingKey
	switchAt time.Time
	// With Seal: the sealer, and the current-key pointer as last read
	// (every generation is conditional on it, so replicas never make two
	// current keys).
	sealer  *Sealer
	pointer []byte
}

// BucketKeyCurrent holds the kid of the current generated key (key
// "current") when keys are sealed in a shared store.
const BucketKeyCurrent = "ssf_key_current"

var currentKey = []byte("current")

var _ outbox.Signer = (*Keys)(nil)

// NewKeys loads the configured key files, or loads the generated keys
// (generating an RSA-2048 key on first start).
func NewKeys(ctx context.Context, cfg KeyConfig) (*Keys, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	k := &Keys{cfg: cfg, operator: len(cfg.Files) > 0, log: orDiscard(cfg.Logger)}
	if cfg.Seal != nil && !k.operator {
		var err error
		var prev [][]byte
		if cfg.PreviousSeal != nil {
			prev = append(prev, cfg.PreviousSeal)
		}
		if k.sealer, err = NewSealer(cfg.Seal, prev...); err != nil {
			return nil, err
		}
	}
	if k.operator {
		now := cfg.Clock()
		for _, f := range cfg.Files {
			sk, err := loadKeyFile(f)
			if err != nil {
				return nil, err
			}
			sk.meta.Created = now
			k.keys = append(k.keys, sk)
		}
		return k, nil
	}
	if err := k.loadGenerated(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Keys) loadGenerated(ctx context.Context) error {
	for try := 0; ; try++ {
		keys, current, pointer, drop, err := k.readGenerated()
		if err != nil {
			return err
		}
		if len(drop) > 0 {
			marks := make([]outbox.Mark, 0, len(drop))
			for _, m := range drop {
				marks = append(marks, outbox.Mark{Bucket: BucketKeys, Key: []byte(m.KID), Delete: true})
				if m.File != "" {
					_ = os.Remove(filepath.Join(k.cfg.DataDir, m.File))
				}
			}
			if err := k.cfg.KV.Commit(ctx, marks); err != nil {
				return fmt.Errorf("signing keys: drop expired keys: %w", err)
			}
		}
		k.keys, k.pointer = keys, pointer
		if current != nil {
			k.adopt(k.resolve(ctx, keys, current, "", time.Time{}))
			return nil
		}
		_, err = k.generate(ctx, nil, 0)
		if errors.Is(err, outbox.ErrCondition) && try < 3 {
			continue // another replica generated the first key: use it
		}
		return err
	}
}

// readGenerated reads the generated keys from the store: the ones still
// published, the current one, the current-key pointer and the expired
// ones to drop. It changes nothing.
func (k *Keys) readGenerated() (keys []*signingKey, current *signingKey, pointer []byte, drop []keyMeta, err error) {
	// The pointer first: a key and the pointer naming it commit together,
	// so the records read after it include the key it names. Read the
	// other way round, a key made current in between would be missed, and
	// the replica would make a key of its own current over it.
	if k.sealer != nil {
		if pointer, err = k.cfg.KV.Get(BucketKeyCurrent, currentKey); err != nil {
			return nil, nil, nil, nil, fmt.Errorf("signing keys: %w", err)
		}
	}
	metas, err := loadKeyMetas(k.cfg.KV)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	now := k.cfg.Clock()
	for _, m := range metas {
		if !m.RetiredAt.IsZero() && !now.Before(m.RetiredAt.Add(k.cfg.Overlap)) {
			drop = append(drop, m)
			continue
		}
		sk, err := k.loadGeneratedKey(m)
		if err != nil {
			return nil, nil, nil, nil, fmt.Errorf("signing keys: generated key %s: %w", m.KID, err)
		}
		sk.meta = m
		switch {
		case pointer != nil:
			if m.KID == string(pointer) {
				current = sk
			}
		case m.RetiredAt.IsZero() && (current == nil || m.Created.After(current.meta.Created)):
			current = sk
		}
		keys = append(keys, sk)
	}
	return keys, current, pointer, drop, nil
}

// loadGeneratedKey opens a generated key: sealed in its record, or in its
// file in the data dir.
func (k *Keys) loadGeneratedKey(m keyMeta) (*signingKey, error) {
	if m.Sealed == "" {
		return loadKeyFile(filepath.Join(k.cfg.DataDir, m.File))
	}
	if k.sealer == nil {
		return nil, errors.New("the key is sealed in the store, but no encryption key is configured")
	}
	pemText, err := k.sealer.Open(m.Sealed, signingKeyAAD(m.KID))
	if err != nil {
		return nil, fmt.Errorf("the sealed key does not open with the configured encryption key (sealed under key %s, given %s): "+
			"a wrong encryption key, or one the database was re-keyed away from?", orUnnamed(SealedWith(m.Sealed)), k.sealer.ids())
	}
	return parsePrivateKeyPEM([]byte(pemText))
}

// Refresh reads the generated keys again, so a rotation another replica
// made is used here too: the current key signs, retired ones stay in the
// JWKS for the overlap. Only with Seal (a shared store); otherwise it does
// nothing.
func (k *Keys) Refresh(ctx context.Context) error {
	if k.operator || k.sealer == nil {
		return nil
	}
	keys, current, pointer, _, err := k.readGenerated()
	if err != nil {
		return err
	}
	if current == nil {
		return nil // keep signing with what we have
	}
	k.mu.RLock()
	signing := k.keys[0].meta.KID
	var known time.Time
	if k.pending != nil && k.pending.meta.KID == current.meta.KID {
		known = k.switchAt
	}
	k.mu.RUnlock()
	act := k.resolve(ctx, keys, current, signing, known)
	k.mu.Lock()
	defer k.mu.Unlock()
	if act.sign.meta.KID != k.keys[0].meta.KID {
		k.log.InfoContext(ctx, "signing key changed on another replica", slog.String("kid", act.sign.meta.KID))
	}
	if act.pending != nil && (k.pending == nil || k.pending.meta.KID != act.pending.meta.KID) {
		k.log.InfoContext(ctx, "signing key rotated on another replica: published, signs from its activation",
			slog.String("kid", act.pending.meta.KID), slog.Time("activates_at", act.pending.meta.ActivatesAt))
	}
	k.keys, k.pointer = keys, pointer
	k.adopt(act)
	return nil
}

// activation is what signs now and what is published to sign later.
type activation struct {
	sign, pending *signingKey
	switchAt      time.Time // on cfg.Clock
}

// resolve tells, for the key the store names current, which key signs
// now: the current one, unless its activation lies ahead, when the key it
// replaces signs until then. signing is the kid this process signs with
// (a key it already switched to stays the signing key) and known the
// switch time it computed before for the same pending key. The time left
// is measured on the store's clock, the one the activation was recorded
// on, so replicas whose clocks disagree still switch together.
func (k *Keys) resolve(ctx context.Context, keys []*signingKey, current *signingKey, signing string, known time.Time) activation {
	at := current.meta.ActivatesAt
	if at.IsZero() || current.meta.KID == signing {
		return activation{sign: current}
	}
	var replaced *signingKey
	for _, sk := range keys {
		if sk.meta.KID == current.meta.Replaces {
			replaced = sk
		}
	}
	if replaced == nil {
		return activation{sign: current} // nothing else to sign with
	}
	if !known.IsZero() {
		return activation{sign: replaced, pending: current, switchAt: known}
	}
	left := at.Sub(k.storeNow(ctx))
	if left <= 0 {
		return activation{sign: current} // activated before we looked
	}
	return activation{sign: replaced, pending: current, switchAt: k.cfg.Clock().Add(left)}
}

// adopt makes act's keys the signing and pending ones (k.mu held, or
// during NewKeys).
func (k *Keys) adopt(act activation) {
	k.putCurrentFirst(act.sign)
	k.pending, k.switchAt = act.pending, act.switchAt
	k.promoteLocked(k.cfg.Clock())
}

// promoteLocked makes the pending key the signing key once its time has
// come (k.mu held for writing).
func (k *Keys) promoteLocked(now time.Time) {
	if k.pending == nil || now.Before(k.switchAt) {
		return
	}
	p := k.pending
	k.pending, k.switchAt = nil, time.Time{}
	k.putCurrentFirst(p)
	k.log.Info("signing key activated", slog.String("kid", p.meta.KID))
}

// signer returns the key that signs at now, switching to the pending one
// when its time has come.
func (k *Keys) signer(now time.Time) *signingKey {
	k.mu.RLock()
	sk, due := k.keys[0], k.pending != nil && !now.Before(k.switchAt)
	k.mu.RUnlock()
	if !due {
		return sk
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.promoteLocked(now)
	return k.keys[0]
}

// storeNow is the store's own clock when it has one that every replica
// agrees on (a database's now()), else cfg.Clock.
func (k *Keys) storeNow(ctx context.Context) time.Time {
	if b, ok := k.cfg.KV.(interface{ Backend() storekv.Backend }); ok {
		var now time.Time
		var has bool
		err := b.Backend().View(ctx, func(tx storekv.Tx) error { now, has = tx.Now(); return nil })
		if err == nil && has {
			return now
		}
	}
	return k.cfg.Clock()
}

// RunRefresh calls Refresh every interval until ctx ends (shared stores).
func (k *Keys) RunRefresh(ctx context.Context, every time.Duration) error {
	if k.operator || k.sealer == nil {
		<-ctx.Done()
		return nil
	}
	repeat(ctx, every, k.log, "signing keys: refresh from the store", k.Refresh)
	return nil
}

// loadKeyMetas reads the records of the generated keys.
func loadKeyMetas(kv KV) ([]keyMeta, error) {
	var metas []keyMeta
	err := kv.Scan(BucketKeys, nil, func(_, v []byte) error {
		var m keyMeta
		if err := json.Unmarshal(v, &m); err != nil {
			return fmt.Errorf("decode key metadata: %w", err)
		}
		metas = append(metas, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("signing keys: %w", err)
	}
	return metas, nil
}

func (k *Keys) putCurrentFirst(cur *signingKey) {
	out := []*signingKey{cur}
	for _, sk := range k.keys {
		if sk != cur {
			out = append(out, sk)
		}
	}
	k.keys = out
}

// generate creates a new RSA-2048 key, stores it 0600 in the data dir (or
// sealed in the store) and records it as current, retiring prev (if any)
// in the same commit. With a delay and a prev, the new key is published at
// once and signs only delay later (its activation, recorded on the store's
// clock): prev signs until then, and a key still pending from an earlier
// rotation is retired unused. k.mu is held.
func (k *Keys) generate(ctx context.Context, prev *signingKey, delay time.Duration) (*signingKey, error) {
	priv, err := rsa.GenerateKey(k.cfg.Rand, minRSABits)
	if err != nil {
		return nil, fmt.Errorf("signing keys: generate: %w", err)
	}
	sk, err := newSigningKey(priv)
	if err != nil {
		return nil, err
	}
	now := k.cfg.Clock()
	sk.meta.Created = now
	if prev == nil {
		delay = 0
	}
	if delay > 0 {
		sk.meta.ActivatesAt, sk.meta.Replaces = k.storeNow(ctx).Add(delay), prev.meta.KID
	}
	retired := now.Add(delay) // prev signs until the new key does
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("signing keys: encode: %w", err)
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	var path string
	if k.sealer != nil {
		if sk.meta.Sealed, err = k.sealer.Seal(string(pemBytes), signingKeyAAD(sk.meta.KID)); err != nil {
			return nil, fmt.Errorf("signing keys: seal: %w", err)
		}
	} else {
		sk.meta.File = "signing-key-" + sk.meta.KID + ".pem"
		if err := os.MkdirAll(k.cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("signing keys: %w", err)
		}
		path = filepath.Join(k.cfg.DataDir, sk.meta.File)
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, pemBytes, 0o600); err != nil {
			return nil, fmt.Errorf("signing keys: write key: %w", err)
		}
		if err := os.Rename(tmp, path); err != nil {
			return nil, fmt.Errorf("signing keys: write key: %w", err)
		}
	}
	marks := []outbox.Mark{metaMark(sk.meta)}
	if prev != nil {
		pm := prev.meta
		pm.RetiredAt = retired
		marks = append(marks, metaMark(pm))
	}
	abandoned := k.pending
	if abandoned != nil {
		am := abandoned.meta
		am.RetiredAt = now
		marks = append(marks, metaMark(am))
	}
	if k.sealer != nil {
		// Only if no other replica made a key current since we looked.
		marks = append(marks, outbox.Mark{Bucket: BucketKeyCurrent, Key: currentKey, Value: []byte(sk.meta.KID),
			IfValue: true, Expect: k.pointer})
	}
	if err := k.cfg.KV.Commit(ctx, marks); err != nil {
		if path != "" {
			_ = os.Remove(path)
		}
		return nil, fmt.Errorf("signing keys: record key: %w", err)
	}
	if k.sealer != nil {
		k.pointer = []byte(sk.meta.KID)
	}
	if prev != nil {
		prev.meta.RetiredAt = retired
	}
	if abandoned != nil {
		abandoned.meta.RetiredAt = now
	}
	k.pending, k.switchAt = nil, time.Time{}
	if delay == 0 {
		k.keys = append([]*signingKey{sk}, k.keys...)
		k.log.InfoContext(ctx, "signing key generated", slog.String("kid", sk.meta.KID))
		return sk, nil
	}
	k.keys = append([]*signingKey{k.keys[0], sk}, k.keys[1:]...)
	k.pending, k.switchAt = sk, now.Add(delay)
	k.log.InfoContext(ctx, "signing key generated: published, signs from its activation",
		slog.String("kid", sk.meta.KID), slog.Time("activates_at", sk.meta.ActivatesAt))
	return sk, nil
}

// OpenSigningKey opens a record of BucketKeys whose private key is sealed
// in the store: it returns the key's kid and its PKCS#8 PEM. For checks
// and tools; the error never contains the key.
func OpenSigningKey(s *Sealer, record []byte) (kid string, pemText []byte, err error) {
	var m keyMeta
	if err := json.Unmarshal(record, &m); err != nil {
		return "", nil, fmt.Errorf("signing key record: %w", err)
	}
	if m.Sealed == "" {
		return m.KID, nil, fmt.Errorf("signing key %s is not sealed in its record", m.KID)
	}
	p, err := s.Open(m.Sealed, signingKeyAAD(m.KID))
	if err != nil {
		return m.KID, nil, fmt.Errorf("signing key %s: %w", m.KID, err)
	}
	return m.KID, []byte(p), nil
}

// signingKeyAAD binds a sealed private key to its kid.
func signingKeyAAD(kid string) string { return "signing-key:" + kid }

func orUnnamed(id string) string {
	if id == "" {
		return "unnamed"
	}
	return id
}

func metaMark(m keyMeta) outbox.Mark {
	b, _ := json.Marshal(m)
	return outbox.Mark{Bucket: BucketKeys, Key: []byte(m.KID), Value: b}
}

// Rotate generates a new key and makes it current: it is published at once
// and signs from its activation (KeyConfig.Activation after now, at once
// without one), the previous key signing until then and staying in the
// JWKS for the configured overlap after. Operator-managed keys cannot be
// rotated here (ErrOperatorManaged).
func (k *Keys) Rotate(ctx context.Context) (KeyInfo, error) {
	return k.rotate(ctx, k.cfg.Activation)
}

// RotateNow is Rotate with the new key signing at once, on this replica
// and on each other one at its next Refresh: for a key that must stop
// signing now (compromised). Receivers that fetch the JWKS from a replica
// that has not refreshed yet reject SETs until it has.
func (k *Keys) RotateNow(ctx context.Context) (KeyInfo, error) {
	return k.rotate(ctx, 0)
}

func (k *Keys) rotate(ctx context.Context, delay time.Duration) (KeyInfo, error) {
	if k.operator {
		return KeyInfo{}, ErrOperatorManaged
	}
	k.mu.Lock()
	k.promoteLocked(k.cfg.Clock())
	sk, err := k.generate(ctx, k.keys[0], delay)
	if errors.Is(err, outbox.ErrCondition) {
		// Another replica rotated meanwhile: its key is the new one.
		k.mu.Unlock()
		if rerr := k.Refresh(ctx); rerr != nil {
			return KeyInfo{}, rerr
		}
		k.mu.RLock()
		defer k.mu.RUnlock()
		if k.pending != nil {
			return k.info(k.pending, false), nil
		}
		return k.info(k.keys[0], true), nil
	}
	defer k.mu.Unlock()
	if err != nil {
		return KeyInfo{}, err
	}
	k.pruneLocked(ctx)
	return k.info(sk, k.keys[0] == sk), nil
}

// pruneLocked forgets retired keys whose overlap has passed.
func (k *Keys) pruneLocked(ctx context.Context) {
	now := k.cfg.Clock()
	kept := k.keys[:1]
	var drop []outbox.Mark
	for _, sk := range k.keys[1:] {
		if k.expired(sk, now) {
			drop = append(drop, outbox.Mark{Bucket: BucketKeys, Key: []byte(sk.meta.KID), Delete: true})
			if sk.meta.File != "" {
				_ = os.Remove(filepath.Join(k.cfg.DataDir, sk.meta.File))
			}
			continue
		}
		kept = append(kept, sk)
	}
	k.keys = kept
	if len(drop) > 0 {
		if err := k.cfg.KV.Commit(ctx, drop); err != nil {
			k.log.WarnContext(ctx, "cannot drop expired signing keys", slog.Any("error", err))
		}
	}
}

func (k *Keys) expired(sk *signingKey, now time.Time) bool {
	return !k.operator && !sk.meta.RetiredAt.IsZero() && !now.Before(sk.meta.RetiredAt.Add(k.cfg.Overlap))
}

// Sign signs the claims with the current key as a compact JWS with header
// typ secevent+jwt, alg and kid.
func (k *Keys) Sign(_ context.Context, claims []byte) (string, error) {
	claims, err := stampIat(claims, k.cfg.Clock())
	if err != nil {
		return "", err
	}
	sk := k.signer(k.cfg.Clock())
	hdr, _ := json.Marshal(map[string]string{"alg": sk.method.Alg(), "kid": sk.meta.KID, "typ": "secevent+jwt"})
	signing := b64(hdr) + "." + b64(claims)
	sig, err := sk.method.Sign(signing, sk.signer)
	if err != nil {
		return "", fmt.Errorf("sign SET: %w", err)
	}
	return signing + "." + b64(sig), nil
}

// stampIat sets the iat claim to the signing time: a SET is signed when it
// is handed out (each push attempt, each poll), and its iat says when it
// was issued in that form. The time of the event stays in toe and, for
// CAEP, event_timestamp; the jti never changes.
func stampIat(claims []byte, now time.Time) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(claims, &m); err != nil || m == nil {
		return nil, errors.New("sign SET: claims are not a JSON object")
	}
	m["iat"] = json.RawMessage(strconv.FormatInt(now.Unix(), 10))
	return json.Marshal(m)
}

// CurrentKID returns the kid of the signing key.
func (k *Keys) CurrentKID() string {
	return k.signer(k.cfg.Clock()).meta.KID
}

// JWKS returns the JSON Web Key Set of the published public keys: the
// signing key first, a pending one (rotated in, not signing yet) and the
// retired ones within their overlap.
func (k *Keys) JWKS() []byte {
	now := k.cfg.Clock()
	k.signer(now)
	k.mu.RLock()
	defer k.mu.RUnlock()
	set := struct {
		Keys []map[string]string `json:"keys"`
	}{Keys: []map[string]string{}}
	for _, sk := range k.keys {
		if k.expired(sk, now) {
			continue
		}
		set.Keys = append(set.Keys, sk.jwk)
	}
	b, _ := json.Marshal(set)
	return b
}

// List describes every key the JWKS publishes, the signing one first.
func (k *Keys) List() []KeyInfo {
	now := k.cfg.Clock()
	k.signer(now)
	k.mu.RLock()
	defer k.mu.RUnlock()
	var out []KeyInfo
	for i, sk := range k.keys {
		if k.expired(sk, now) {
			continue
		}
		out = append(out, k.info(sk, i == 0))
	}
	return out
}

func (k *Keys) info(sk *signingKey, current bool) KeyInfo {
	ki := KeyInfo{KID: sk.meta.KID, Alg: sk.method.Alg(), Source: "generated", Created: sk.meta.Created,
		Current: current, RetiredAt: sk.meta.RetiredAt}
	if k.operator {
		ki.Source = "file"
	}
	if !ki.RetiredAt.IsZero() {
		ki.LeavesJWKSAt = ki.RetiredAt.Add(k.cfg.Overlap)
	}
	if sk == k.pending {
		ki.ActivatesAt = sk.meta.ActivatesAt
	}
	return ki
}

// loadKeyFile reads one PEM private key and checks it is usable.
func loadKeyFile(path string) (*signingKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: cannot read: %w", path, err)
	}
	sk, err := parsePrivateKeyPEM(data)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	return sk, nil
}

func parsePrivateKeyPEM(data []byte) (*signingKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("no PEM block found")
	}
	var key any
	var err error
	switch block.Type {
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("unsupported PEM block %q (want RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY)", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("cannot parse %s: %w", block.Type, err)
	}
	return newSigningKey(key)
}

func newSigningKey(key any) (*signingKey, error) {
	sk := &signingKey{}
	switch p := key.(type) {
	case *rsa.PrivateKey:
		if p.N.BitLen() < minRSABits {
			return nil, fmt.Errorf("RSA key has %d bits, at least %d are needed", p.N.BitLen(), minRSABits)
		}
		sk.signer, sk.method = p, jwt.SigningMethodRS256
		sk.jwk = map[string]string{"kty": "RSA", "n": b64(p.N.Bytes()), "e": b64(big.NewInt(int64(p.E)).Bytes())}
	case *ecdsa.PrivateKey:
		if p.Curve != elliptic.P256() {
			return nil, fmt.Errorf("EC key on curve %s is not supported (only P-256)", p.Curve.Params().Name)
		}
		pub, err := p.PublicKey.ECDH()
		if err != nil {
			return nil, fmt.Errorf("EC key: %w", err)
		}
		raw := pub.Bytes() // 0x04 || X || Y
		sk.signer, sk.method = p, jwt.SigningMethodES256
		sk.jwk = map[string]string{"kty": "EC", "crv": "P-256", "x": b64(raw[1:33]), "y": b64(raw[33:])}
	default:
		return nil, fmt.Errorf("unsupported key type %T (want RSA or EC P-256)", key)
	}
	sk.meta.KID = thumbprint(sk.jwk)
	sk.meta.Alg = sk.method.Alg()
	sk.jwk["kid"] = sk.meta.KID
	sk.jwk["alg"] = sk.meta.Alg
	sk.jwk["use"] = "sig"
	return sk, nil
}

// thumbprint is the RFC 7638 JWK thumbprint (SHA-256, base64url) over the
// required members in lexicographic order.
func thumbprint(j map[string]string) string {
	var canon string
	if j["kty"] == "RSA" {
		canon = `{"e":"` + j["e"] + `","kty":"RSA","n":"` + j["n"] + `"}`
	} else {
		canon = `{"crv":"` + j["crv"] + `","kty":"EC","x":"` + j["x"] + `","y":"` + j["y"] + `"}`
	}
	h := sha256.Sum256([]byte(canon))
	return b64(h[:])
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
