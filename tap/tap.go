package tap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"
)

// Tap watches authentik: the proxy hands it tapped exchanges (Match, Before,
// After) and it reads authentik's event API, de-duplicates what both saw and
// publishes one Signal per completed action.
type Tap struct {
	cfg   Config
	log   *slog.Logger
	api   *client
	flows *flows
	dir   *directory

	whoCache     *cache[string, caller]
	seenHashes   *cache[string, struct{}]
	sessionHash  *cache[string, string] // AuthenticatedSession uuid → sha256(sid)
	hints        *cache[string, logoutHint]
	stagePending *cache[string, *pending] // session hash + flow slug → stage awaiting its follow-up GET
	uidMisses    *cache[string, struct{}] // cookie uids recently looked for in vain
	// impersonators maps the session hash of a session that impersonates
	// to the admin who started it (seen on the impersonate call).
	impersonators *cache[string, User]
	// akVersion is authentik's release as /admin/version/ said; the events
	// API ignores actions= below 2025.8 (noActionsFilter).
	akVersion       atomic.Value // string
	noActionsFilter atomic.Bool
	// recheck is the directory re-check's position (poller goroutine only).
	recheck struct {
		page int // next page of the pass under way; 0 between passes
		next time.Time
	}
	processed    *cache[string, struct{}] // intent ids already published
	unknownSlugs *cache[string, struct{}] // executor slugs that were neither role
	limiter      *rateLimiter
	badCreds     *cache[string, struct{}] // credentials authentik refused recently
	overBudget   chan struct{}            // the one slot for over-budget look-ups

	queue    chan *intent
	learn    chan func(context.Context)
	flowKick chan struct{}
	pollKick chan struct{}
	started  time.Time

	// dedupMu serialises "check, then publish" across the worker and the
	// poller so that both sources cannot miss each other.
	dedupMu sync.Mutex
	stats   counters

	// failPK / failCount track the record the poller keeps failing on
	// (poller goroutine only).
	failPK    string
	failCount int

	actionsMu sync.Mutex
	actions   []string // event-API actions this authentik knows; nil until read
	// actionsLogged: the list's absence was logged; said once, not each poll.
	actionsLogged bool

	// hooks lets tests stop a replica at a chosen point (nil in use).
	hooks atomic.Pointer[hooks]
}

// hooks are points where a test can hold one replica while another acts,
// to force an interleaving instead of hoping for it.
type hooks struct {
	// dedupChecked runs between the de-duplication check and its commit.
	dedupChecked func(s Signal, dup bool)
	// eventSignals runs in a poll once an event's signals are known,
	// before they are emitted.
	eventSignals func(pk string)
	// journalRead runs in a rescan for each entry read, before it is
	// acted on.
	journalRead func(id string)
}

var noHooks = &hooks{}

func (t *Tap) hook() *hooks {
	if h := t.hooks.Load(); h != nil {
		return h
	}
	return noHooks
}

// New builds a Tap. It does no I/O.
func New(cfg Config) (*Tap, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	t := &Tap{
		cfg:           cfg,
		log:           cfg.Logger.With("component", "tap"),
		api:           &client{base: cfg.Upstream, http: cfg.HTTPClient, token: cfg.Token},
		flows:         newFlows(),
		dir:           newDirectory(cfg.CacheSize),
		whoCache:      newCache[string, caller](cfg.CacheSize, cfg.CacheTTL, cfg.Clock),
		seenHashes:    newCache[string, struct{}](cfg.CacheSize, time.Hour, cfg.Clock),
		sessionHash:   newCache[string, string](cfg.CacheSize, 24*time.Hour, cfg.Clock),
		processed:     newCache[string, struct{}](cfg.CacheSize, time.Hour, cfg.Clock),
		unknownSlugs:  newCache[string, struct{}](256, cfg.FlowRefresh, cfg.Clock),
		hints:         newCache[string, logoutHint](cfg.CacheSize, 10*time.Minute, cfg.Clock),
		stagePending:  newCache[string, *pending](cfg.CacheSize, 10*time.Minute, cfg.Clock),
		uidMisses:     newCache[string, struct{}](256, cfg.CacheTTL, cfg.Clock),
		impersonators: newCache[string, User](cfg.CacheSize, 24*time.Hour, cfg.Clock),
		limiter:       newRateLimiter(cfg.RatePerIP, cfg.RateBurst, cfg.CacheSize, cfg.Clock),
		badCreds:      newCache[string, struct{}](cfg.CacheSize, time.Minute, cfg.Clock),
		overBudget:    make(chan struct{}, 1),
		queue:         make(chan *intent, cfg.QueueSize),
		learn:         make(chan func(context.Context), 64),
		flowKick:      make(chan struct{}, 1),
		pollKick:      make(chan struct{}, 1),
	}
	if err := t.dir.load(cfg.KV); err != nil {
		return nil, fmt.Errorf("tap: load directory: %w", err)
	}
	t.stats.caughtUp.Store(cfg.Clock().UnixNano())
	if cfg.SecretKey != "" && cfg.Token == "" {
		t.log.Warn("tap: the authentik secret key needs an authentik token as well; without one, cookies are confirmed " +
			"by look-ups with the caller's cookie, X-Forwarded-For and User-Agent")
	}
	return t, nil
}

// Run reconciles intents left open by a crash, then runs the classification
// worker, the event-API poller and the flow-slug refresher until ctx ends.
func (t *Tap) Run(ctx context.Context) error {
	t.started = t.cfg.Clock()
	live := t.holdLiveness(ctx)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return t.runLiveness(ctx, live) })
	g.Go(func() error { return t.runWorker(ctx) })
	g.Go(func() error { return t.runFlowRefresher(ctx) })
	g.Go(func() error { return t.runPoller(ctx) })
	g.Go(func() error { return t.runLearner(ctx) })
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// enqueue hands a completed intent to the worker without blocking.
func (t *Tap) enqueue(in *intent) {
	select {
	case t.queue <- in:
	default:
		t.stats.queueDrops.Add(1) // stays in the journal; the next rescan picks it up
	}
}

func (t *Tap) runLearner(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case fn := <-t.learn:
			lctx, cancel := context.WithTimeout(ctx, t.cfg.LookupTimeout)
			fn(lctx)
			cancel()
		}
	}
}

// runWorker classifies completed intents and publishes their signals. Every
// rescan it also retries journal entries whose publishing failed or was
// dropped, and reconciles intents left open by an earlier process.
func (t *Tap) runWorker(ctx context.Context) error {
	failures := 0
	next := t.cfg.Clock() // reconcile at once on start
	for {
		select {
		case <-ctx.Done():
			return nil
		case in := <-t.queue:
			if err := t.process(ctx, in, SourceTraffic); err != nil {
				t.log.Warn("tap: publish failed; will retry", "intent", in.ID, "err", err)
				failures++
				next = t.cfg.Clock().Add(backoff(time.Second, failures, t.cfg.MaxBackoff))
			} else if failures > 0 {
				// The store answers again: retry what failed now, not
				// after a back-off that grew with every intent the
				// outage failed.
				failures, next = 0, t.cfg.Clock()
			}
			continue
		case <-t.cfg.After(max(0, next.Sub(t.cfg.Clock()))):
		}
		if err := t.rescan(ctx); err != nil {
			failures++
			t.log.Warn("tap: journal rescan", "err", err)
			next = t.cfg.Clock().Add(backoff(time.Second, failures, t.cfg.MaxBackoff))
			continue
		}
		failures = 0
		next = t.cfg.Clock().Add(t.rescanEvery())
	}
}

// rescanEvery is the time between journal rescans: 30 s, or a liveness
// lease's lifetime when replicas share the journal, so that an intent a
// dead replica left open is reconciled within two lifetimes of its death.
func (t *Tap) rescanEvery() time.Duration {
	if t.cfg.PollerLease == nil {
		return 30 * time.Second
	}
	return min(30*time.Second, max(t.cfg.PollerLeaseTTL, time.Second))
}

// process publishes the signals of one completed intent, then removes it
// from the journal in the same commit as the last signal. Each publish
// holds only while the entry is as this replica last saw it: when another
// replica has claimed it meanwhile, the intent is left to that one.
func (t *Tap) process(ctx context.Context, in *intent, source Source) error {
	if _, ok := t.processed.get(in.ID); ok {
		return nil // both the queue and a rescan handed it over
	}
	ctx, span := startClassifySpan(ctx, in, source)
	defer span.End()
	cctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
	sigs := t.classify(cctx, in, source)
	cancel()
	span.SetAttributes(attribute.Int("tap.signals", len(sigs)))
	sigs = slices.DeleteFunc(sigs, func(s Signal) bool { return slices.Contains(in.Emitted, s.ID) })
	for i := range sigs {
		var mark Mark
		var next []byte
		if i == len(sigs)-1 {
			mark = in.guardDelete()
		} else {
			// Not the last: record it as emitted, in the same commit.
			done := *in
			done.Emitted = append(slices.Clip(in.Emitted), sigs[i].ID)
			var err error
			if mark, next, err = done.guardPut(); err != nil {
				return err
			}
		}
		if err := t.emit(ctx, sigs[i], []Mark{mark}); err != nil {
			if t.moved(in) {
				t.log.InfoContext(ctx, "tap: intent taken over by another replica; left to it", "intent", in.ID)
				t.processed.put(in.ID, struct{}{})
				return nil
			}
			return err
		}
		if next != nil {
			in.Emitted, in.stored = append(slices.Clip(in.Emitted), sigs[i].ID), next
		}
	}
	if len(sigs) == 0 {
		if err := t.journalDrop(ctx, in, t.dir.drain()...); err != nil {
			return err
		}
	}
	t.processed.put(in.ID, struct{}{})
	return nil
}

// maxDedupAttempts bounds how often emit checks again after losing a race
// with another replica for the same (kind, user).
const maxDedupAttempts = 8

// emit de-duplicates a signal against the other source and publishes it
// with its marks, or commits only the marks when it is a duplicate. When
// the commit is refused because another replica recorded a signal of the
// same kind and user since the check, it checks again.
func (t *Tap) emit(ctx context.Context, s Signal, extra []Mark) error {
	t.dedupMu.Lock()
	defer t.dedupMu.Unlock()
	own, dirMarks := s.Marks, t.dir.drain()
	for attempt := 1; ; attempt++ {
		dup, marks, err := t.dedupCheck(s)
		if err != nil {
			return err
		}
		if h := t.hook().dedupChecked; h != nil {
			h(s, dup)
		}
		guards := marks
		marks = append(append(marks, extra...), dirMarks...)
		trace.SpanFromContext(ctx).AddEvent("tap.signal", trace.WithAttributes(attribute.String("tap.signal.id", s.ID),
			attribute.String("tap.kind", string(s.Kind)), attribute.Bool("tap.duplicate", dup)))
		if dup {
			err = t.cfg.KV.Commit(ctx, marks)
			if err == nil {
				t.stats.dedupDrops.Add(1)
				t.log.DebugContext(ctx, "tap: duplicate dropped", "signal", s.ID, "kind", string(s.Kind), "source", string(s.Source))
				return nil
			}
			err = fmt.Errorf("tap: commit duplicate %s: %w", s.ID, err)
		} else {
			s.Marks = append(slices.Clip(own), marks...)
			err = t.cfg.Publisher.Publish(ctx, s)
			if err == nil {
				t.stats.signal(s.Kind, s.Source)
				t.log.InfoContext(ctx, "tap: signal", "signal", s.ID, "kind", string(s.Kind), "source", string(s.Source),
					"request_id", s.RequestID)
				return nil
			}
			err = fmt.Errorf("tap: publish %s: %w", s.ID, err)
		}
		if attempt == maxDedupAttempts || ctx.Err() != nil || !t.dedupRaced(guards) {
			return err
		}
		t.stats.dedupRaces.Add(1)
		t.log.DebugContext(ctx, "tap: another replica recorded the same kind and user meanwhile; checking again",
			"signal", s.ID, "kind", string(s.Kind))
	}
}

// Stats is a snapshot of the tap's counters.
type Stats struct {
	// Signals counts published signals by kind and source.
	Signals map[Kind]map[Source]uint64
	// DedupDrops counts signals dropped as seen by the other source.
	DedupDrops uint64
	// Misses counts look-ups or journal writes that failed on a tapped
	// request, and intents that could not be confirmed.
	Misses uint64
	// Untrusted counts tapped requests whose caller authentik did not confirm.
	Untrusted uint64
	// Anonymous counts tapped requests without credentials.
	Anonymous uint64
	// AuthentikVersion is the release authentik reported ("" unknown).
	AuthentikVersion string
	// StaleLogouts counts logouts with a locally verified cookie that
	// authentik recorded for AnonymousUser (the session had ended before).
	StaleLogouts uint64
	RateLimited  uint64
	QueueDrops   uint64
	// PollErrors counts failed polls. PollLag is how long ago the poller
	// last had read everything authentik had recorded (the start of its
	// last successful poll; the tap's start before the first). A quiet
	// authentik is no lag; a poller that keeps failing, or is stuck, is.
	// It stays 0 while another replica holds the poller lease.
	PollErrors uint64
	// Polls counts completed polls of the event API.
	Polls      uint64
	PollLag    time.Duration
	FlowErrors uint64
	// Reconciled counts open intents resolved at start (emitted or dropped).
	Reconciled uint64
	// DedupRaces counts de-duplication checks made again because another
	// replica recorded a signal of the same kind and user at the same time.
	DedupRaces uint64
	// PollerFenced counts poller commits refused because the poller lease
	// had passed to another replica (the poll then stopped).
	PollerFenced uint64
	// TakenOver counts journal intents of another replica (dead, or stuck
	// past the grace period) that this one claimed and resolved.
	TakenOver uint64
}

type counters struct {
	mu                                       sync.Mutex
	signals                                  map[Kind]map[Source]uint64
	dedupDrops, misses, untrusted, anonymous atomic.Uint64
	staleLogouts                             atomic.Uint64
	rateLimited, queueDrops, pollErrors      atomic.Uint64
	flowErrors, reconciled, polls            atomic.Uint64
	dedupRaces, pollerFenced, takenOver      atomic.Uint64
	caughtUp                                 atomic.Int64 // unix nanos; see Stats.PollLag
}

func (c *counters) signal(k Kind, s Source) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.signals == nil {
		c.signals = map[Kind]map[Source]uint64{}
	}
	if c.signals[k] == nil {
		c.signals[k] = map[Source]uint64{}
	}
	c.signals[k][s]++
}

// Stats returns the counters.
func (t *Tap) Stats() Stats {
	s := Stats{
		Signals: map[Kind]map[Source]uint64{}, DedupDrops: t.stats.dedupDrops.Load(), Misses: t.stats.misses.Load(),
		Untrusted: t.stats.untrusted.Load(), Anonymous: t.stats.anonymous.Load(), StaleLogouts: t.stats.staleLogouts.Load(), AuthentikVersion: t.authentikVersion(), RateLimited: t.stats.rateLimited.Load(),
		QueueDrops: t.stats.queueDrops.Load(), PollErrors: t.stats.pollErrors.Load(), Polls: t.stats.polls.Load(),
		PollLag: max(0, t.cfg.Clock().Sub(time.Unix(0, t.stats.caughtUp.Load()))), FlowErrors: t.stats.flowErrors.Load(),
		Reconciled: t.stats.reconciled.Load(), DedupRaces: t.stats.dedupRaces.Load(),
		PollerFenced: t.stats.pollerFenced.Load(), TakenOver: t.stats.takenOver.Load(),
	}
	t.stats.mu.Lock()
	defer t.stats.mu.Unlock()
	for k, m := range t.stats.signals {
		s.Signals[k] = map[Source]uint64{}
		for src, n := range m {
			s.Signals[k][src] = n
		}
	}
	return s
}

func (t *Tap) authentikVersion() string {
	v, _ := t.akVersion.Load().(string)
	return v
}
