package tap

import (
	"context"
	"net/url"
	"sync"
	"time"
)

// Default flow slugs, believed until the API has been read (or when there is
// no token to read it with).
const (
	defaultInvalidationSlug   = "default-invalidation-flow"
	defaultPasswordChangeSlug = "default-password-change"
	defaultUserSettingsSlug   = "default-user-settings-flow"
)

// defaultSetupSlugs are the authenticator setup flows authentik's default
// blueprints create (all stage_configuration).
var defaultSetupSlugs = []string{
	"default-authenticator-totp-setup", "default-authenticator-static-setup", "default-authenticator-webauthn-setup",
}

// flowSet is the set of flow slugs the tap watches, by role.
type flowSet struct {
	invalidation map[string]bool
	configure    map[string]bool // designation stage_configuration
	loaded       bool
}

// flows resolves and caches flow slugs by designation and brand.
type flows struct {
	mu   sync.RWMutex
	set  flowSet
	at   time.Time
	last time.Time // last refresh attempt, to throttle refreshes on misses
}

func newFlows() *flows {
	conf := map[string]bool{defaultPasswordChangeSlug: true, defaultUserSettingsSlug: true}
	for _, s := range defaultSetupSlugs {
		conf[s] = true
	}
	return &flows{set: flowSet{invalidation: map[string]bool{defaultInvalidationSlug: true}, configure: conf}}
}

func (f *flows) role(slug string) (invalidation, configure bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.set.invalidation[slug], f.set.configure[slug]
}

type akFlow struct {
	PK          string `json:"pk"`
	Slug        string `json:"slug"`
	Designation string `json:"designation"`
}

type akBrand struct {
	FlowInvalidation *string `json:"flow_invalidation"`
}

// refresh reads the flows by designation and the brands' invalidation flows.
func (t *Tap) refreshFlows(ctx context.Context) error {
	t.flows.mu.Lock()
	t.flows.last = t.cfg.Clock()
	t.flows.mu.Unlock()
	cr := t.api.tokenCreds()
	inv, err := listAll[akFlow](ctx, t.api, cr, "/flows/instances/", url.Values{"designation": {"invalidation"}}, 20)
	if err != nil {
		return err
	}
	conf, err := listAll[akFlow](ctx, t.api, cr, "/flows/instances/", url.Values{"designation": {"stage_configuration"}}, 20)
	if err != nil {
		return err
	}
	next := flowSet{invalidation: map[string]bool{}, configure: map[string]bool{}, loaded: true}
	known := map[string]string{}
	for _, fl := range inv {
		next.invalidation[fl.Slug] = true
		known[fl.PK] = fl.Slug
	}
	for _, fl := range conf {
		next.configure[fl.Slug] = true
	}
	// A brand may name an invalidation flow of another designation.
	brands, err := listAll[akBrand](ctx, t.api, cr, "/core/brands/", nil, 20)
	if err != nil {
		return err
	}
	var missing bool
	for _, b := range brands {
		if b.FlowInvalidation != nil && *b.FlowInvalidation != "" && known[*b.FlowInvalidation] == "" {
			missing = true
		}
	}
	if missing {
		all, err := listAll[akFlow](ctx, t.api, cr, "/flows/instances/", nil, 50)
		if err != nil {
			return err
		}
		byPK := map[string]string{}
		for _, fl := range all {
			byPK[fl.PK] = fl.Slug
		}
		for _, b := range brands {
			if b.FlowInvalidation != nil && byPK[*b.FlowInvalidation] != "" {
				next.invalidation[byPK[*b.FlowInvalidation]] = true
			}
		}
	}
	t.flows.mu.Lock()
	t.flows.set = next
	t.flows.at = t.cfg.Clock()
	t.flows.mu.Unlock()
	return nil
}

// runFlowRefresher keeps the slugs current.
func (t *Tap) runFlowRefresher(ctx context.Context) error {
	if t.cfg.Token == "" {
		t.log.Info("no authentik token: flow slugs fall back to authentik's defaults")
		return nil
	}
	wait := time.Duration(0)
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.cfg.After(wait):
		case <-t.flowKick:
			t.flows.mu.RLock()
			gap := t.cfg.FlowRefreshMinGap - t.cfg.Clock().Sub(t.flows.last)
			t.flows.mu.RUnlock()
			if gap > 0 {
				select {
				case <-ctx.Done():
					return nil
				case <-t.cfg.After(gap):
				}
			}
		}
		rctx, cancel := context.WithTimeout(ctx, 4*t.cfg.LookupTimeout)
		err := t.refreshFlows(rctx)
		cancel()
		if err != nil {
			failures++
			t.stats.flowErrors.Add(1)
			t.log.Warn("flow slug refresh failed", "err", err)
			wait = backoff(t.cfg.PollInterval, failures, t.cfg.MaxBackoff)
			continue
		}
		failures = 0
		wait = t.cfg.FlowRefresh
	}
}

// kickFlows asks for an early refresh (an executor slug was not known). The
// refresher spaces refreshes at least FlowRefreshMinGap apart.
func (t *Tap) kickFlows() {
	select {
	case t.flowKick <- struct{}{}:
	default:
	}
}

func backoff(base time.Duration, failures int, max time.Duration) time.Duration {
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	return min(d, max)
}
