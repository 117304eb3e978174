package tap

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"time"
)

// KV is the tap's durable key/value store: its journal, poller cursor,
// de-duplication records and directory live in their own buckets. cmd
// implements it over the outbox store (tap.Mark ↔ outbox.Mark).
type KV interface {
	// Commit applies marks atomically and durably. It checks every mark's
	// Fence and IfValue condition in the same transaction and, when one
	// fails, refuses the whole commit with an error, writing nothing.
	Commit(ctx context.Context, marks []Mark) error
	// Get returns a copy of the value, or (nil, nil) when absent.
	Get(bucket string, key []byte) ([]byte, error)
	// Scan calls fn for every key with the prefix, in key order.
	Scan(bucket string, prefix []byte, fn func(k, v []byte) error) error
}

// Buckets the tap owns.
const (
	BucketJournal = "tap_journal"
	BucketCursor  = "tap_cursor"
	BucketDedup   = "tap_dedup"
	// BucketDedupSeq holds a version per (kind, user) of BucketDedup's
	// records, bumped by every commit that adds or consumes one.
	BucketDedupSeq  = "tap_dedup_seq"
	BucketDirectory = "tap_directory"
)

// Config configures a Tap. Zero durations and sizes take the defaults noted.
type Config struct {
	// Upstream is authentik's base URL; look-ups go straight there.
	Upstream *url.URL
	// Token is an authentik API token for the poller and look-ups. Empty
	// turns the poller off (logged); look-ups then use the caller's own
	// credentials where they can.
	Token string
	// SecretKey is authentik's SECRET_KEY: when set, session cookies are
	// verified locally instead of through /core/users/me/.
	SecretKey string
	// PollInterval is how often the event API is read (5s).
	PollInterval time.Duration
	// Backfill reaches back this far on a fresh data dir (0: start at
	// authentik's newest event record, i.e. "now" on authentik's clock).
	Backfill time.Duration

	KV         KV
	Publisher  Publisher
	HTTPClient *http.Client     // default: a client with LookupTimeout
	Clock      func() time.Time // default time.Now
	// After is the timer the poller and refreshers wait on (time.After).
	After  func(time.Duration) <-chan time.Time
	NewID  func() string // intent ids; default 16 random bytes hex
	Logger *slog.Logger  // default: discard

	// LookupTimeout bounds one look-up against authentik (2s).
	LookupTimeout time.Duration
	// CacheSize bounds each look-up cache and the directory (4096).
	CacheSize int
	// CacheTTL is how long a look-up result is believed (30s).
	CacheTTL time.Duration
	// FlowRefresh is how often flow slugs are re-read (5m).
	FlowRefresh time.Duration
	// FlowRefreshMinGap spaces early refreshes triggered by unknown
	// executor slugs (5s).
	FlowRefreshMinGap time.Duration
	// RatePerIP and RateBurst budget the look-ups authentik refuses, per
	// client IP and per confirmed caller whose tapped actions it refuses
	// (5 per second, burst 20); over budget, look-ups are held (budget.go).
	RatePerIP float64
	RateBurst int
	// DedupWindow is the widest gap between the traffic's time and
	// authentik's `created` for the same action (2m).
	DedupWindow time.Duration
	// DedupRetention is how long de-duplication records are kept (24h). It
	// must exceed the poller's worst lag.
	DedupRetention time.Duration
	// IntentMaxAge: open intents older than this are dropped at
	// reconciliation (24h).
	IntentMaxAge time.Duration
	// QueueSize bounds the classification queue (1024).
	QueueSize int
	// PageSize is the event API page size (100).
	PageSize int
	// MaxPages bounds how far one poll pages back (500); a larger backlog
	// is logged and its oldest part skipped.
	MaxPages int
	// MaxBackoff caps the poller's and publisher's back-off (5m).
	MaxBackoff time.Duration
	// Actions, when set, replaces the event-API actions the poller asks for.
	Actions []string
	// DirectoryRecheck is how often the users the directory knows are read
	// again from authentik (5m; negative turns it off). Changes authentik
	// makes in the background (LDAP or SCIM sync deactivating a user, an
	// email changed by a source) leave no event; this pass is how they are
	// seen. It reads one page of PageSize users per poll, so it is paced
	// by PollInterval and runs only where the poller runs.
	DirectoryRecheck time.Duration

	// PollerLease, when set, lets only its holder among replicas sharing a
	// store read the event API; the others stand by, retrying every
	// PollInterval, and the one that takes over goes on from the committed
	// cursor. nil: always poll (one replica). Its leases must live in
	// KV's store: every commit of a poll carries a Fence naming
	// PollerLeaseName and the holder's token, which KV checks.
	PollerLease PollerLease
	// LeaseHolder names this replica as the lease's holder (default: random
	// per Tap). Replicas must have distinct names.
	LeaseHolder string
	// PollerLeaseTTL is how long the poller lease lasts unrenewed, and so
	// how soon a standby takes over from a holder that died (default 15s);
	// the holder renews it every PollerLeaseTTL/3 — while it waits for the
	// next poll, between the pages and between the events of one. Every
	// commit of a poll is fenced with the lease's token.
	PollerLeaseTTL time.Duration
}

// DefaultPollerLeaseTTL is the poller lease's default lifetime: the
// longest a dead holder keeps the event API unread.
const DefaultPollerLeaseTTL = 15 * time.Second

// Validate reports every problem with the configuration at once.
func (c Config) Validate() error {
	var errs []error
	if c.Upstream == nil {
		errs = append(errs, errors.New("tap: Upstream is required"))
	} else if c.Upstream.Scheme != "http" && c.Upstream.Scheme != "https" || c.Upstream.Host == "" {
		errs = append(errs, errors.New("tap: Upstream must be an absolute http(s) URL"))
	}
	if c.KV == nil {
		errs = append(errs, errors.New("tap: KV is required"))
	}
	if c.Publisher == nil {
		errs = append(errs, errors.New("tap: Publisher is required"))
	}
	for name, d := range map[string]time.Duration{
		"PollInterval": c.PollInterval, "Backfill": c.Backfill, "LookupTimeout": c.LookupTimeout,
		"CacheTTL": c.CacheTTL, "FlowRefresh": c.FlowRefresh, "FlowRefreshMinGap": c.FlowRefreshMinGap, "DedupWindow": c.DedupWindow,
		"DedupRetention": c.DedupRetention, "IntentMaxAge": c.IntentMaxAge, "MaxBackoff": c.MaxBackoff,
		"PollerLeaseTTL": c.PollerLeaseTTL,
	} {
		if d < 0 {
			errs = append(errs, errors.New("tap: "+name+" must not be negative"))
		}
	}
	if c.CacheSize < 0 || c.QueueSize < 0 || c.PageSize < 0 || c.MaxPages < 0 || c.RateBurst < 0 || c.RatePerIP < 0 {
		errs = append(errs, errors.New("tap: sizes and rates must not be negative"))
	}
	if c.PageSize > 1000 {
		errs = append(errs, errors.New("tap: PageSize must be at most 1000"))
	}
	if c.DedupRetention > 0 && c.DedupWindow > 0 && c.DedupRetention < c.DedupWindow {
		errs = append(errs, errors.New("tap: DedupRetention must be at least DedupWindow"))
	}
	return errors.Join(errs...)
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.PollInterval, 5*time.Second)
	def(&c.LookupTimeout, 2*time.Second)
	def(&c.CacheTTL, 30*time.Second)
	def(&c.FlowRefresh, 5*time.Minute)
	def(&c.FlowRefreshMinGap, 5*time.Second)
	def(&c.DedupWindow, 2*time.Minute)
	def(&c.DedupRetention, 24*time.Hour)
	def(&c.IntentMaxAge, 24*time.Hour)
	def(&c.MaxBackoff, 5*time.Minute)
	def(&c.DirectoryRecheck, 5*time.Minute)
	def(&c.PollerLeaseTTL, DefaultPollerLeaseTTL)
	if c.CacheSize == 0 {
		c.CacheSize = 4096
	}
	if c.QueueSize == 0 {
		c.QueueSize = 1024
	}
	if c.PageSize == 0 {
		c.PageSize = 100
	}
	if c.MaxPages == 0 {
		c.MaxPages = 500
	}
	if c.RatePerIP == 0 {
		c.RatePerIP = 5
	}
	if c.RateBurst == 0 {
		c.RateBurst = 20
	}
	if c.Clock == nil {
		c.Clock = time.Now
	}
	if c.After == nil {
		c.After = time.After
	}
	if c.NewID == nil {
		c.NewID = randomID
	}
	if c.LeaseHolder == "" {
		c.LeaseHolder = randomID()
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: c.LookupTimeout}
	}
	if len(c.Actions) == 0 {
		c.Actions = defaultActions
	}
}

func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
