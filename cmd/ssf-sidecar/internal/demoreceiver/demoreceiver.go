// Package demoreceiver is the push receiver of the demo and the system
// tests: it verifies every SET it is pushed and keeps what it understood.
package demoreceiver

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
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Receiver is a push receiver (RFC 8935) that verifies every SET against
// the transmitter's JWKS — signature, typ, iss, exactly one event, no sub or
// exp — prints it readably and answers 202.
type Receiver struct {
	srv     *http.Server
	ln      net.Listener
	jwksURL string
	issuer  string
	out     io.Writer

	mu     sync.Mutex
	keys   map[string]any
	got    []SET
	bad    int
	signal chan struct{}
}

// SET is what the demo receiver understood of one SET.
type SET struct {
	JTI       string
	Event     string // short name
	Initiator string
	// Detail is what tells events of one type apart (credential_type and
	// change_type of a credential-change, status of a stream-updated).
	Detail  string
	Subject string
	Claims  map[string]any
	Compact string
}

// Start listens on a loopback port and verifies SETs against jwksURL and issuer.
func Start(jwksURL, issuer string) (*Receiver, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r := NewVerifier(jwksURL, issuer)
	r.ln = ln
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = r.srv.Serve(ln) }() // ErrServerClosed once Close stops it
	return r, nil
}

// NewVerifier is a receiver that does not listen (no URL, nothing to
// Close): only its Verify is for use, on SETs delivered some other way.
func NewVerifier(jwksURL, issuer string) *Receiver {
	return &Receiver{jwksURL: jwksURL, issuer: issuer, out: io.Discard, keys: map[string]any{}, signal: make(chan struct{}, 1)}
}

// SetOutput makes the receiver print each SET it accepts to w.
func (r *Receiver) SetOutput(w io.Writer) {
	r.mu.Lock()
	r.out = w
	r.mu.Unlock()
}

func (r *Receiver) output() io.Writer {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out
}

// URL is the push endpoint.
func (r *Receiver) URL() string { return "http://" + r.ln.Addr().String() + "/events" }

// Close stops the receiver.
func (r *Receiver) Close() { r.srv.Close() }

// ServeHTTP accepts one pushed SET (RFC 8935): 202 when it verifies.
func (r *Receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.Header.Get("Content-Type") != "application/secevent+jwt" {
		http.Error(w, "want POST application/secevent+jwt", http.StatusBadRequest)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	if err != nil {
		return
	}
	set, err := r.Verify(req.Context(), string(body))
	if err != nil {
		r.mu.Lock()
		r.bad++
		r.mu.Unlock()
		fmt.Fprintf(r.output(), "  ✗ rejected a SET: %v\n", err)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadRequest)
		_ = json.NewEncoder(w).Encode(map[string]string{"err": "invalid_request", "description": err.Error()})
		return
	}
	r.mu.Lock()
	r.got = append(r.got, set)
	r.mu.Unlock()
	select {
	case r.signal <- struct{}{}:
	default:
	}
	line := fmt.Sprintf("  ← %-20s", set.Event)
	if set.Initiator != "" {
		line += fmt.Sprintf(" initiator=%-6s", set.Initiator)
	}
	if set.Detail != "" {
		line += " " + set.Detail
	}
	fmt.Fprintf(r.output(), "%s %s\n", line, set.Subject)
	w.WriteHeader(http.StatusAccepted)
}

// Verify checks one compact SET against the JWKS and the issuer.
func (r *Receiver) Verify(ctx context.Context, compact string) (SET, error) {
	claims := jwt.MapClaims{}
	tok, err := jwt.NewParser(jwt.WithValidMethods([]string{"RS256", "ES256"}), jwt.WithIssuer(r.issuer), jwt.WithIssuedAt()).
		ParseWithClaims(compact, claims, func(t *jwt.Token) (any, error) {
			kid, _ := t.Header["kid"].(string)
			return r.key(ctx, kid)
		})
	if err != nil {
		return SET{}, err
	}
	if tok.Header["typ"] != "secevent+jwt" {
		return SET{}, fmt.Errorf("typ is %v, want secevent+jwt", tok.Header["typ"])
	}
	for _, forbidden := range []string{"sub", "exp"} {
		if _, ok := claims[forbidden]; ok {
			return SET{}, fmt.Errorf("claim %q must not be present", forbidden)
		}
	}
	events, _ := claims["events"].(map[string]any)
	if len(events) != 1 {
		return SET{}, fmt.Errorf("want exactly one event, got %d", len(events))
	}
	out := SET{Claims: claims, Compact: compact}
	out.JTI, _ = claims["jti"].(string)
	for uri, body := range events {
		out.Event = uri[strings.LastIndex(uri, "/")+1:]
		if b, ok := body.(map[string]any); ok {
			out.Initiator, _ = b["initiating_entity"].(string)
			var d []string
			for _, k := range []string{"credential_type", "change_type", "status"} {
				if v, ok := b[k].(string); ok && v != "" {
					d = append(d, k+"="+v)
				}
			}
			out.Detail = strings.Join(d, " ")
		}
	}
	out.Subject = describeSubject(claims["sub_id"])
	return out, nil
}

// describeSubject renders a sub_id for people.
func describeSubject(v any) string {
	m, ok := v.(map[string]any)
	if !ok {
		return ""
	}
	switch m["format"] {
	case "email":
		return fmt.Sprint(m["email"])
	case "iss_sub":
		return fmt.Sprintf("%v (iss %v)", m["sub"], m["iss"])
	case "opaque":
		return "stream " + fmt.Sprint(m["id"])
	case "complex":
		var parts []string
		keys := make([]string, 0, len(m))
		for k := range m {
			if k != "format" {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			s := describeSubject(m[k])
			if sub, ok := m[k].(map[string]any); ok && sub["format"] == "opaque" {
				s = fmt.Sprint(sub["id"])
				if len(s) > 12 {
					s = s[:12] + "…"
				}
			}
			parts = append(parts, k+"="+s)
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(m["format"])
}

// key returns the public key for kid, fetching the JWKS again when it is
// unknown (a rotation).
func (r *Receiver) key(ctx context.Context, kid string) (any, error) {
	r.mu.Lock()
	k, ok := r.keys[kid]
	r.mu.Unlock()
	if ok {
		return k, nil
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.jwksURL, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var set struct {
		Keys []map[string]string `json:"keys"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, j := range set.Keys {
		if _, private := j["d"]; private {
			return nil, errors.New("the JWKS publishes a private key")
		}
		pk, err := jwkPublicKey(j)
		if err == nil {
			r.keys[j["kid"]] = pk
		}
	}
	if k, ok := r.keys[kid]; ok {
		return k, nil
	}
	return nil, fmt.Errorf("kid %q is not in the JWKS", kid)
}

func jwkPublicKey(j map[string]string) (any, error) {
	dec := func(s string) (*big.Int, error) {
		b, err := base64.RawURLEncoding.DecodeString(s)
		if err != nil {
			return nil, err
		}
		return new(big.Int).SetBytes(b), nil
	}
	switch j["kty"] {
	case "RSA":
		n, err := dec(j["n"])
		if err != nil {
			return nil, err
		}
		e, err := dec(j["e"])
		if err != nil {
			return nil, err
		}
		return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
	case "EC":
		x, err := dec(j["x"])
		if err != nil {
			return nil, err
		}
		y, err := dec(j["y"])
		if err != nil {
			return nil, err
		}
		if x.BitLen() > 256 || y.BitLen() > 256 {
			return nil, errors.New("EC coordinates too long for P-256")
		}
		return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x.FillBytes(make([]byte, 32))...), y.FillBytes(make([]byte, 32))...))
	}
	return nil, fmt.Errorf("unsupported kty %q", j["kty"])
}

// Received is every SET accepted so far, in arrival order.
func (r *Receiver) Received() []SET {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]SET(nil), r.got...)
}

// Rejected counts the SETs that failed verification.
func (r *Receiver) Rejected() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.bad
}

// WaitFor waits until at least n SETs have arrived.
func (r *Receiver) WaitFor(ctx context.Context, n int, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		if len(r.Received()) >= n {
			return nil
		}
		select {
		case <-r.signal:
		case <-deadline.C:
			return fmt.Errorf("%d of %d SETs arrived within %s", len(r.Received()), n, timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
