package ssf

import (
	"bytes"
	"context"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/sgnl-ai/caep.dev/secevent/pkg/parser"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// fakeClock is a settable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *fakeClock { return &fakeClock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func (c *fakeClock) After(time.Duration) <-chan time.Time { return make(chan time.Time) }

// seqIDs returns deterministic ids.
func seqIDs(prefix string) func() string {
	var mu sync.Mutex
	n := 0
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("%s%04d", prefix, n)
	}
}

// memKV is an in-memory KV for unit tests.
type memKV struct {
	mu sync.Mutex
	m  map[string]map[string][]byte
}

func newMemKV() *memKV { return &memKV{m: map[string]map[string][]byte{}} }

func (k *memKV) Commit(_ context.Context, marks []outbox.Mark) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, m := range marks {
		b := k.m[m.Bucket]
		if b == nil {
			b = map[string][]byte{}
			k.m[m.Bucket] = b
		}
		if m.Delete {
			delete(b, string(m.Key))
		} else {
			b[string(m.Key)] = append([]byte{}, m.Value...)
		}
	}
	return nil
}

func (k *memKV) Get(bucket string, key []byte) ([]byte, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[bucket][string(key)]
	if !ok {
		return nil, nil
	}
	return append([]byte{}, v...), nil
}

func (k *memKV) Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error {
	k.mu.Lock()
	var keys []string
	for key := range k.m[bucket] {
		if strings.HasPrefix(key, string(prefix)) {
			keys = append(keys, key)
		}
	}
	sort.Strings(keys)
	vals := make([][]byte, len(keys))
	for i, key := range keys {
		vals[i] = k.m[bucket][key]
	}
	k.mu.Unlock()
	for i, key := range keys {
		if err := fn([]byte(key), vals[i]); err != nil {
			return err
		}
	}
	return nil
}

// testReceivers is the receivers file used by the end-to-end tests.
const testReceivers = `
receivers:
  - name: acme
    tokens:
      - {value: "acme-manage-token", scopes: [ssf.manage, ssf.read]}
      - {value: "acme-read-token", scopes: [ssf.read]}
      - {value: "acme-poll-token", scopes: [ssf.manage.poll]}
      - {value: "acme-odd-token", scopes: [ssf.other]}
    oauth_client_ids: [acme-client]
    audience: "https://acme.example/"
  - name: globex
    tokens: ["globex-token"]
    subject_format: iss_sub
    subject_iss: "https://auth.example/application/o/globex/"
  - name: initech
    tokens: ["initech-token"]
    subject_format: complex
    profile: legacy
  - name: umbrella
    oauth_client_ids: [umbrella-client]
    require_scopes: false
`

// harness is a transmitter on a real bbolt store and outbox.
type harness struct {
	t       *testing.T
	dir     string
	clock   *fakeClock
	store   *outbox.Store
	ob      *outbox.Outbox
	keys    *Keys
	tr      *Transmitter
	srv     *httptest.Server
	cfg     Config
	issuer  string
	closeFn func()
	// wrap, when set, wraps the store's backend (to watch transactions).
	wrap func(kv.Backend) kv.Backend
}

type harnessOpt func(*Config)

func newHarness(t *testing.T, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), clock: newClock()}
	h.open(opts...)
	t.Cleanup(h.close)
	return h
}

func (h *harness) open(opts ...harnessOpt) {
	t := h.t
	t.Helper()
	var err error
	if h.wrap != nil {
		db, err := boltstore.Open(filepath.Join(h.dir, "ssf.db"), boltstore.Options{NoSync: true})
		if err != nil {
			t.Fatalf("open store: %v", err)
		}
		h.store = outbox.NewStore(h.wrap(db), outbox.StoreOptions{})
	} else if h.store, err = outbox.Open(filepath.Join(h.dir, "ssf.db"), outbox.StoreOptions{NoSync: true}); err != nil {
		t.Fatalf("open store: %v", err)
	}
	h.keys, err = NewKeys(context.Background(), KeyConfig{DataDir: h.dir, KV: h.store, Overlap: time.Hour, Clock: h.clock.Now})
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	rs, err := ParseReceivers([]byte(testReceivers))
	if err != nil {
		t.Fatalf("receivers: %v", err)
	}
	h.srv = httptest.NewUnstartedServer(nil)
	h.issuer = "http://" + h.srv.Listener.Addr().String() + "/ssf"
	h.cfg = Config{Issuer: h.issuer, Receivers: rs, KV: h.store, Queue: h.ob, Keys: h.keys,
		Clock: h.clock.Now, NewID: seqIDs("id"), AllowPrivateEndpoints: false, MaxBody: 4096}
	for _, o := range opts {
		o(&h.cfg)
	}
	h.ob, err = outbox.New(outbox.Config{Store: h.store, Signer: h.keys, Clock: h.clock.Now, After: h.clock.After,
		AllowPrivateEndpoints: h.cfg.AllowPrivateEndpoints})
	if err != nil {
		t.Fatalf("outbox: %v", err)
	}
	h.cfg.Queue = h.ob
	h.tr, err = New(h.cfg)
	if err != nil {
		t.Fatalf("transmitter: %v", err)
	}
	h.srv.Config.Handler = h.tr.Handler()
	h.srv.Start()
	h.closeFn = func() {
		h.srv.Close()
		_ = h.store.Close()
	}
}

func (h *harness) close() {
	if h.closeFn != nil {
		h.closeFn()
		h.closeFn = nil
	}
}

// reopen closes everything and opens the same data dir again (same
// listener address is not kept, so the issuer is pinned).
func (h *harness) reopen(opts ...harnessOpt) {
	issuer := h.issuer
	h.close()
	h.open(append([]harnessOpt{func(c *Config) { c.Issuer = issuer }}, opts...)...)
	h.issuer = issuer
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, into any) {
	t.Helper()
	if err := json.Unmarshal(r.body, into); err != nil {
		t.Fatalf("response is not JSON (%v): %s", err, r.body)
	}
}

// do sends a request with a bearer token (none when token is empty).
func (h *harness) do(method, path, token string, body any) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, _ := json.Marshal(b)
		rd = bytes.NewReader(j)
	}
	if strings.HasPrefix(path, "http") {
		// URLs the transmitter handed out keep the issuer's host, which
		// outlives the listener across reopen: keep only path and query.
		pu, err := url.Parse(path)
		if err != nil {
			h.t.Fatal(err)
		}
		path = pu.RequestURI()
	}
	u := h.srv.URL + path
	req, err := http.NewRequest(method, u, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func (h *harness) create(token string, body any) streamWire {
	h.t.Helper()
	r := h.do("POST", "/ssf/streams", token, body)
	if r.status != http.StatusCreated {
		h.t.Fatalf("create: status %d: %s", r.status, r.body)
	}
	var w streamWire
	r.json(h.t, &w)
	return w
}

// pollAll polls a poll stream (returnImmediately) and acknowledges nothing.
func (h *harness) pollAll(token string, w streamWire) map[string]string {
	h.t.Helper()
	r := h.do("POST", w.Delivery.EndpointURL, token, `{"returnImmediately":true,"maxEvents":100}`)
	if r.status != http.StatusOK {
		h.t.Fatalf("poll: status %d: %s", r.status, r.body)
	}
	var pr outbox.PollResponse
	r.json(h.t, &pr)
	return pr.Sets
}

// decodedSET is a SET checked by checkSET.
type decodedSET struct {
	Header map[string]any
	Claims map[string]any
	Type   string
	Event  map[string]any
}

// checkSET verifies a compact SET the way the conformance suite does: the
// signature against the JWKS, typ, alg, kid, exactly one event, no sub or
// exp, iss, aud and iat.
func (h *harness) checkSET(compact string, aud string) decodedSET {
	t := h.t
	t.Helper()
	parts := strings.Split(compact, ".")
	if len(parts) != 3 {
		t.Fatalf("SET is not a compact JWS: %q", compact)
	}
	var d decodedSET
	hb, _ := base64.RawURLEncoding.DecodeString(parts[0])
	if err := json.Unmarshal(hb, &d.Header); err != nil {
		t.Fatalf("SET header: %v", err)
	}
	if d.Header["typ"] != "secevent+jwt" {
		t.Errorf("typ = %v, want secevent+jwt", d.Header["typ"])
	}
	if d.Header["alg"] != "RS256" {
		t.Errorf("alg = %v, want RS256", d.Header["alg"])
	}
	jwks := h.do("GET", "/ssf/jwks.json", "", nil)
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	jwks.json(t, &set)
	var pub any
	for _, raw := range set.Keys {
		kid, k, err := parseJWK(raw)
		if err == nil && kid == d.Header["kid"] {
			pub = k
		}
		if strings.Contains(string(raw), `"d"`) || strings.Contains(string(raw), `"p"`) {
			t.Errorf("JWKS publishes private key material: %s", raw)
		}
	}
	if pub == nil {
		t.Fatalf("kid %v is not in the JWKS", d.Header["kid"])
	}
	tok, err := jwt.NewParser(jwt.WithValidMethods([]string{"RS256"}), jwt.WithoutClaimsValidation()).
		Parse(compact, func(*jwt.Token) (any, error) { return pub.(*rsa.PublicKey), nil })
	if err != nil || !tok.Valid {
		t.Fatalf("SET signature does not verify: %v", err)
	}
	cb, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if err := json.Unmarshal(cb, &d.Claims); err != nil {
		t.Fatalf("SET claims: %v", err)
	}
	for _, banned := range []string{"sub", "exp"} {
		if _, ok := d.Claims[banned]; ok {
			t.Errorf("SET carries %q", banned)
		}
	}
	if d.Claims["iss"] != h.issuer {
		t.Errorf("iss = %v, want %s", d.Claims["iss"], h.issuer)
	}
	if d.Claims["aud"] != aud {
		t.Errorf("aud = %v, want %s", d.Claims["aud"], aud)
	}
	iat, ok := d.Claims["iat"].(float64)
	if !ok || int64(iat) > h.clock.Now().Unix() {
		t.Errorf("iat = %v: missing or in the future", d.Claims["iat"])
	}
	if jti, _ := d.Claims["jti"].(string); jti == "" {
		t.Error("jti missing")
	}
	if _, ok := d.Claims["sub_id"].(map[string]any); !ok {
		t.Errorf("sub_id missing: %v", d.Claims)
	}
	events, _ := d.Claims["events"].(map[string]any)
	if len(events) != 1 {
		t.Fatalf("SET has %d events, want exactly 1", len(events))
	}
	for k, v := range events {
		d.Type = k
		d.Event, _ = v.(map[string]any)
	}
	return d
}

// independentVerify checks a SET with the secevent library (CAEP and SSF
// event types only: it parses no RISC events).
func (h *harness) independentVerify(compact, aud string) {
	h.t.Helper()
	p := parser.NewParser(parser.WithJWKSJSON(h.keys.JWKS()), parser.WithExpectedIssuer(h.issuer),
		parser.WithExpectedAudience(aud))
	if _, err := p.ParseSecEvent(compact); err != nil {
		h.t.Fatalf("independent verifier refused the SET: %v", err)
	}
}
