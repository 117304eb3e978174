package ssf

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// Queue is the delivery side: outbox.Outbox implements it.
type Queue interface {
	Enqueue(ctx context.Context, sets []outbox.SET, marks []outbox.Mark) error
	SetStream(ctx context.Context, cfg outbox.StreamConfig) error
	DeleteStream(ctx context.Context, id string) error
	Poll(ctx context.Context, streamID string, req outbox.PollRequest) (outbox.PollResponse, error)
}

// Defaults and limits.
const (
	DefaultMaxBody                 = 64 << 10
	DefaultMinVerificationInterval = 5 * time.Second
	// VerificationSlack is how much earlier than min_verification_interval
	// a verification request is still accepted, for the receiver's clock
	// and the network.
	VerificationSlack            = time.Second
	DefaultMaxStreamsPerReceiver = 25
	DefaultMaxSubjectsPerStream  = 10000
	DefaultDescriptionLimit      = 256
	DefaultOAuthRefetchInterval  = 30 * time.Second
)

// Config configures the Transmitter.
type Config struct {
	// Issuer is the public issuer URL: the iss of every SET and the base of
	// every endpoint.
	Issuer    string
	Receivers []Receiver
	// OAuthIssuer is the issuer of the authentik OAuth2 provider whose
	// access tokens receivers may present (empty: static tokens only).
	OAuthIssuer string
	// DefaultSubjects is ALL (default) or NONE for new streams.
	DefaultSubjects       string
	AllowPrivateEndpoints bool
	// MaxBody bounds management and poll request bodies (default 64 KiB).
	MaxBody int64
	// MinVerificationInterval is advertised (in whole seconds, rounded up)
	// in every stream configuration and enforced per stream, less
	// VerificationSlack (default 5 s).
	MinVerificationInterval time.Duration

	KV    KV
	Queue Queue
	Keys  *Keys
	// Store overrides the stream store (default: NewStreamStore(KV)).
	Store      StreamStore
	Clock      func() time.Time
	Logger     *slog.Logger
	HTTPClient *http.Client // OAuth discovery and JWKS
	// NewID returns random URL-safe ids for streams and jtis.
	NewID func() string

	MaxStreamsPerReceiver int // default 25
	// MaxLongPollsPerReceiver caps a receiver's long polls waiting at once;
	// more are answered at once (default 8).
	MaxLongPollsPerReceiver int
	MaxSubjectsPerStream    int           // default 10000 (added + removed)
	DescriptionLimit        int           // runes, default 256
	OAuthRefetchInterval    time.Duration // least time between JWKS fetches on an unknown kid (default 30 s)

	// ManagementBurst and ManagementInterval limit each receiver's
	// management calls (everything but poll): a burst of ManagementBurst
	// calls, then one per ManagementInterval; beyond that 429 with
	// Retry-After. Defaults 60 and 1 s; a negative burst turns the limit off.
	ManagementBurst    int
	ManagementInterval time.Duration
	// Limits keeps the management-call buckets (default: NewLimitStore
	// over KV, so a restart does not refill them and replicas sharing a
	// database share them).
	Limits LimitStore

	// OnSETIssued, when set, is called for each SET committed to the
	// outbox, with its stream and event type (metrics).
	OnSETIssued func(streamID, eventType string)
	// OnVerificationRequest, when set, is called for each receiver
	// verification request on an own stream: accepted, or refused as too
	// frequent (metrics).
	OnVerificationRequest func(streamID string, accepted bool)
}

// Validate reports every problem of the configuration at once.
func (c Config) Validate() error {
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if u, err := url.Parse(c.Issuer); c.Issuer == "" || err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "https" && u.Scheme != "http") {
		add("issuer %q is not an absolute http(s) URL", c.Issuer)
	} else if u.RawQuery != "" || u.Fragment != "" {
		add("issuer %q must not have a query or fragment", c.Issuer)
	}
	if c.OAuthIssuer != "" {
		if u, err := url.Parse(c.OAuthIssuer); err != nil || !u.IsAbs() || u.Host == "" {
			add("oauth issuer %q is not an absolute URL", c.OAuthIssuer)
		}
	}
	switch c.DefaultSubjects {
	case "", "ALL", "NONE":
	default:
		add("default subjects %q must be ALL or NONE", c.DefaultSubjects)
	}
	if c.MaxBody < 0 {
		add("max body must not be negative")
	}
	if c.MinVerificationInterval < 0 {
		add("min verification interval must not be negative")
	}
	if c.ManagementInterval < 0 {
		add("management interval must not be negative")
	}
	if c.KV == nil && c.Store == nil {
		add("a store (KV) is required")
	}
	if c.Queue == nil {
		add("a queue is required")
	}
	if c.Keys == nil {
		add("signing keys are required")
	}
	names, tokens := map[string]bool{}, map[string]string{}
	for _, r := range c.Receivers {
		if r.Name == "" {
			add("a receiver has no name")
		}
		if names[r.Name] {
			add("receiver %q is listed twice", r.Name)
		}
		names[r.Name] = true
		for _, tk := range r.Tokens {
			if other, dup := tokens[tk.Value]; dup {
				add("receiver %q has a token that receiver %q also has", r.Name, other)
			}
			tokens[tk.Value] = r.Name
		}
	}
	return errors.Join(errs...)
}

func (c *Config) defaults() {
	if c.DefaultSubjects == "" {
		c.DefaultSubjects = "ALL"
	}
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.MinVerificationInterval == 0 {
		c.MinVerificationInterval = DefaultMinVerificationInterval
	}
	if c.Store == nil {
		c.Store = NewStreamStore(c.KV)
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if c.NewID == nil {
		c.NewID = randomID
	}
	if c.MaxStreamsPerReceiver == 0 {
		c.MaxStreamsPerReceiver = DefaultMaxStreamsPerReceiver
	}
	if c.MaxLongPollsPerReceiver <= 0 {
		c.MaxLongPollsPerReceiver = DefaultMaxLongPollsPerReceiver
	}
	if c.MaxSubjectsPerStream == 0 {
		c.MaxSubjectsPerStream = DefaultMaxSubjectsPerStream
	}
	if c.DescriptionLimit == 0 {
		c.DescriptionLimit = DefaultDescriptionLimit
	}
	if c.OAuthRefetchInterval == 0 {
		c.OAuthRefetchInterval = DefaultOAuthRefetchInterval
	}
	if c.ManagementBurst == 0 {
		c.ManagementBurst = DefaultManagementBurst
	}
	if c.ManagementInterval == 0 {
		c.ManagementInterval = DefaultManagementInterval
	}
}

// randomID returns 128 random bits, base64url (RFC 3986 unreserved). It
// never starts with "-" or "_", so that an id pasted on a command line
// ("ssf-sidecar streams show ID") is never read as a flag.
func randomID() string {
	var b [16]byte
	for {
		_, _ = rand.Read(b[:])
		id := base64.RawURLEncoding.EncodeToString(b[:])
		if id[0] != '-' && id[0] != '_' {
			return id
		}
	}
}

// streamState is a stream with its subjects, kept in memory.
type streamState struct {
	rec     StreamRecord
	added   []Subject
	removed []Subject
}

type tokenEntry struct {
	hash     [32]byte
	receiver *Receiver
	scopes   []string
}

// Transmitter is the SSF transmitter: it serves the SSF endpoints and turns
// Signals into SETs on the streams that want them.
type Transmitter struct {
	cfg   Config
	log   *slog.Logger
	store StreamStore

	issuerURL     *url.URL
	base          string // path prefix of the endpoints, no trailing slash
	discoveryPath string

	// recv is the receivers and their tokens; SetReceivers swaps it whole.
	recv      atomic.Pointer[receiverSet]
	oauth     *oauthVerifier
	calls     *callLimiter
	longPolls longPolls

	mu      streamsLock
	streams map[string]*streamState
	// syncHook runs in SyncStreams between reading the store and applying
	// (tests).
	syncHook func()
	// resync runs SyncStreams soon after the queue heard of a change made
	// through another replica (StreamChanged).
	resync resyncState

	echo *echo.Echo
}

var _ tap.Publisher = (*Transmitter)(nil)
var _ outbox.FailureReporter = (*Transmitter)(nil)

// New builds the transmitter, loads the persisted streams and registers
// each with the queue.
func New(cfg Config) (*Transmitter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	t := &Transmitter{cfg: cfg, log: orDiscard(cfg.Logger), store: cfg.Store,
		streams: map[string]*streamState{}}
	if cfg.Limits == nil {
		cfg.Limits = NewLimitStore(cfg.KV)
	}
	t.calls = newCallLimiter(cfg.ManagementBurst, cfg.ManagementInterval, cfg.Clock, cfg.Limits, t.log)
	t.longPolls.max = cfg.MaxLongPollsPerReceiver
	t.issuerURL, _ = url.Parse(cfg.Issuer)
	p := strings.TrimSuffix(t.issuerURL.Path, "/")
	t.discoveryPath = "/.well-known/ssf-configuration" + p
	t.base = basePath(t.issuerURL)
	t.recv.Store(t.newReceiverSet(cfg.Receivers))
	if cfg.OAuthIssuer != "" {
		t.oauth = newOAuthVerifier(cfg.OAuthIssuer, cfg.HTTPClient, cfg.Clock, cfg.OAuthRefetchInterval)
	}
	ctx := context.Background()
	recs, err := t.store.ListStreams(ctx)
	if err != nil {
		return nil, fmt.Errorf("load streams: %w", err)
	}
	for _, r := range recs {
		added, removed, err := t.store.Subjects(ctx, r.ID)
		if err != nil {
			return nil, fmt.Errorf("load subjects: %w", err)
		}
		if _, ok := t.receiver(r.Receiver); !ok {
			t.log.Warn("stream of a receiver no longer configured: kept, but nobody can manage it",
				slog.String("stream_id", r.ID), slog.String("receiver", r.Receiver))
		}
		t.streams[r.ID] = &streamState{rec: r, added: added, removed: removed}
		if r.push() {
			if err := outbox.CheckEndpointURL(r.EndpointURL, cfg.AllowPrivateEndpoints); err != nil {
				// Accepted under --allow-private-endpoints, which is off now.
				// Refusing to start would take the only way into authentik
				// down. The queue keeps the stream as it last knew it, and
				// its connection checks refuse the private address, until
				// the receiver points the stream at an allowed endpoint.
				t.log.Warn("stream's push endpoint is not allowed with the current settings: the stream is kept, its deliveries are refused until the receiver changes the endpoint",
					slog.String("stream_id", r.ID), slog.String("receiver", r.Receiver), slog.String("error", err.Error()))
				continue
			}
		}
		if err := cfg.Queue.SetStream(ctx, r.outboxConfig()); err != nil {
			return nil, fmt.Errorf("register stream %s with the queue: %w", r.ID, err)
		}
	}
	t.echo = t.routes()
	return t, nil
}

// Handler returns the handler of every SSF route.
func (t *Transmitter) Handler() http.Handler { return t.echo }

// Prefixes lists the path prefixes Handler answers.
func (t *Transmitter) Prefixes() []string { return prefixes(t.base) }

// PrefixesFor lists the path prefixes a transmitter for issuer answers,
// without building one (a sidecar that cannot open its store yet still
// routes these paths away from authentik).
func PrefixesFor(issuer string) []string {
	u, err := url.Parse(issuer)
	if err != nil {
		u = &url.URL{}
	}
	return prefixes(basePath(u))
}

func prefixes(base string) []string {
	return []string{"/.well-known/ssf-configuration", base + "/"}
}

// basePath is where the SSF endpoints live: the issuer's path, or /ssf
// when it has none.
func basePath(issuer *url.URL) string {
	if p := strings.TrimSuffix(issuer.Path, "/"); p != "" {
		return p
	}
	return "/ssf"
}

// endpoint returns the absolute URL of an endpoint under the base path.
func (t *Transmitter) endpoint(path string) string {
	u := *t.issuerURL
	u.Path, u.RawPath = t.base+path, ""
	u.RawQuery, u.Fragment = "", ""
	return u.String()
}

func (t *Transmitter) pollURL(streamID string) string { return t.endpoint("/poll/" + streamID) }

// receiverSet is the configured receivers with their tokens' hashes.
type receiverSet struct {
	byName map[string]*Receiver
	tokens []tokenEntry
}

func (t *Transmitter) newReceiverSet(rs []Receiver) *receiverSet {
	set := &receiverSet{byName: map[string]*Receiver{}}
	for i := range rs {
		r := rs[i]
		set.byName[r.Name] = &r
		if len(r.OAuthClientIDs) > 0 && t.cfg.OAuthIssuer == "" {
			t.log.Warn("receiver lists oauth_client_ids but no OAuth issuer is configured: its OAuth tokens are refused",
				slog.String("receiver", r.Name))
		}
		for _, tk := range r.Tokens {
			set.tokens = append(set.tokens, tokenEntry{hash: sha256.Sum256([]byte(tk.Value)), receiver: set.byName[r.Name], scopes: tk.Scopes})
		}
	}
	return set
}

// receiver returns the configured receiver of that name.
func (t *Transmitter) receiver(name string) (*Receiver, bool) {
	r, ok := t.recv.Load().byName[name]
	return r, ok
}

// ReceiverChange is what SetReceivers changed, by receiver name.
type ReceiverChange struct {
	Added   []string `json:"added"`
	Removed []string `json:"removed"`
	Changed []string `json:"changed"`
}

// SetReceivers replaces the configured receivers (a reloaded receivers
// file): from the next request on, only the new tokens are accepted.
// Streams of a receiver that is gone are kept (and still delivered to),
// but nobody can manage them until it is configured again.
func (t *Transmitter) SetReceivers(rs []Receiver) ReceiverChange {
	next := t.newReceiverSet(rs)
	prev := t.recv.Swap(next)
	ch := ReceiverChange{Added: []string{}, Removed: []string{}, Changed: []string{}}
	for name, r := range next.byName {
		old, ok := prev.byName[name]
		switch {
		case !ok:
			ch.Added = append(ch.Added, name)
		case !sameReceiver(*old, *r):
			ch.Changed = append(ch.Changed, name)
		}
	}
	for name := range prev.byName {
		if _, ok := next.byName[name]; !ok {
			ch.Removed = append(ch.Removed, name)
		}
	}
	sort.Strings(ch.Added)
	sort.Strings(ch.Removed)
	sort.Strings(ch.Changed)
	t.mu.RLock()
	for _, st := range t.streams {
		if slices.Contains(ch.Removed, st.rec.Receiver) {
			t.log.Warn("stream of a receiver no longer configured: kept, but nobody can manage it",
				slog.String("stream_id", st.rec.ID), slog.String("receiver", st.rec.Receiver))
		}
	}
	t.mu.RUnlock()
	return ch
}

func sameReceiver(a, b Receiver) bool {
	if len(a.Tokens) != len(b.Tokens) {
		return false
	}
	for i := range a.Tokens {
		if a.Tokens[i].Value != b.Tokens[i].Value || !slices.Equal(a.Tokens[i].Scopes, b.Tokens[i].Scopes) {
			return false
		}
	}
	return slices.Equal(a.OAuthClientIDs, b.OAuthClientIDs) && a.RequireScopes == b.RequireScopes &&
		a.Audience == b.Audience && a.SubjectFormat == b.SubjectFormat && a.SubjectIss == b.SubjectIss && a.Profile == b.Profile &&
		a.MaxStreams == b.MaxStreams
}
