package ssf

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// oauthLeeway is the clock skew allowed on exp, nbf and iat.
const oauthLeeway = 60 * time.Second

// oauthVerifier checks access tokens issued by an authentik OAuth2
// provider against the keys of its OpenID discovery document.
type oauthVerifier struct {
	issuer   string
	client   *http.Client
	clock    func() time.Time
	interval time.Duration

	mu        sync.Mutex
	keys      map[string]any
	lastFetch time.Time
}

func newOAuthVerifier(issuer string, client *http.Client, clock func() time.Time, interval time.Duration) *oauthVerifier {
	return &oauthVerifier{issuer: issuer, client: client, clock: clock, interval: interval}
}

type accessClaims struct {
	jwt.RegisteredClaims
	AZP      string `json:"azp"`
	ClientID string `json:"client_id"`
	Scope    string `json:"scope"`
	Scp      any    `json:"scp"`
}

func (c *accessClaims) clientID() string {
	if c.AZP != "" {
		return c.AZP
	}
	return c.ClientID
}

func (c *accessClaims) scopes() []string {
	out := strings.Fields(c.Scope)
	switch s := c.Scp.(type) {
	case string:
		out = append(out, strings.Fields(s)...)
	case []any:
		for _, v := range s {
			if str, ok := v.(string); ok {
				out = append(out, str)
			}
		}
	}
	return out
}

func (c *accessClaims) audienceHasAny(want []string, also string) bool {
	for _, a := range c.Audience {
		if a == also || hasScope(want, a) {
			return true
		}
	}
	return false
}

// verify checks signature (RS256/ES256 only), iss, exp (required), nbf and
// iat with a 60 s leeway.
func (v *oauthVerifier) verify(ctx context.Context, tok string) (*accessClaims, error) {
	claims := &accessClaims{}
	p := jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithIssuer(v.issuer),
		jwt.WithExpirationRequired(), jwt.WithLeeway(oauthLeeway), jwt.WithTimeFunc(v.clock), jwt.WithIssuedAt())
	_, err := p.ParseWithClaims(tok, claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		return v.key(ctx, kid)
	})
	if err != nil {
		return nil, err
	}
	return claims, nil
}

// key returns the key for kid, fetching the JWKS when the kid is unknown
// (at most once per interval).
func (v *oauthVerifier) key(ctx context.Context, kid string) (any, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if k, ok := v.keys[kid]; ok {
		return k, nil
	}
	now := v.clock()
	if !v.lastFetch.IsZero() && now.Sub(v.lastFetch) < v.interval {
		return nil, fmt.Errorf("unknown kid %q (keys fetched recently)", kid)
	}
	v.lastFetch = now
	keys, err := v.fetch(ctx)
	if err != nil {
		return nil, fmt.Errorf("fetch oauth issuer keys: %w", err)
	}
	v.keys = keys
	if k, ok := v.keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("unknown kid %q", kid)
}

func (v *oauthVerifier) getJSON(ctx context.Context, u string, into any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %d", u, resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(into); err != nil {
		return fmt.Errorf("GET %s: %w", u, err)
	}
	return nil
}

func (v *oauthVerifier) fetch(ctx context.Context) (map[string]any, error) {
	var disc struct {
		Issuer  string `json:"issuer"`
		JWKSURI string `json:"jwks_uri"`
	}
	if err := v.getJSON(ctx, strings.TrimSuffix(v.issuer, "/")+"/.well-known/openid-configuration", &disc); err != nil {
		return nil, err
	}
	if disc.JWKSURI == "" {
		return nil, errors.New("discovery document has no jwks_uri")
	}
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := v.getJSON(ctx, disc.JWKSURI, &set); err != nil {
		return nil, err
	}
	keys := map[string]any{}
	for _, raw := range set.Keys {
		kid, k, err := parseJWK(raw)
		if err == nil {
			keys[kid] = k
		}
	}
	return keys, nil
}

// parseJWK reads an RSA or EC P-256 public key from a JWK.
func parseJWK(raw []byte) (string, any, error) {
	var j struct {
		Kty, Kid, Use, N, E, Crv, X, Y string
	}
	if err := json.Unmarshal(raw, &j); err != nil {
		return "", nil, err
	}
	if j.Use != "" && j.Use != "sig" {
		return "", nil, errors.New("not a signing key")
	}
	dec := base64.RawURLEncoding.DecodeString
	switch j.Kty {
	case "RSA":
		n, err1 := dec(j.N)
		e, err2 := dec(j.E)
		if err1 != nil || err2 != nil || len(n) == 0 || len(e) == 0 || len(e) > 4 {
			return "", nil, errors.New("bad RSA key")
		}
		return j.Kid, &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}, nil
	case "EC":
		if j.Crv != "P-256" {
			return "", nil, errors.New("unsupported curve")
		}
		x, err1 := dec(j.X)
		y, err2 := dec(j.Y)
		if err1 != nil || err2 != nil || len(x) != 32 || len(y) != 32 {
			return "", nil, errors.New("bad EC key")
		}
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return "", nil, errors.New("EC point not on curve")
		}
		return j.Kid, pub, nil
	}
	return "", nil, fmt.Errorf("unsupported key type %q", j.Kty)
}
