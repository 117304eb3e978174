package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// A receivers file or an admin token changes without a restart (with one
// replica a restart is an authentik outage): on SIGHUP, on a change of the
// config file, the receivers file or the admin token file (polled, so a
// Kubernetes ConfigMap or Secret update is seen too), and on POST
// /admin/reload. The new configuration is resolved and checked in full
// first; on any problem the set in force stays and the log says so.

// reloadPoll is how often the watched files are looked at.
const reloadPoll = 2 * time.Second

// live is what a reload may change while the sidecar runs.
type live struct {
	mu        sync.Mutex
	flags     map[string]string // the command line's raw values
	raw       map[string]rawValue
	receivers []ssf.Receiver
	token     atomic.Pointer[string]
	// apply hands new receivers to the running transmitter (nil: none yet).
	apply  func([]ssf.Receiver) ssf.ReceiverChange
	logger *slog.Logger
	stamps map[string]fileStamp
}

func newLive(cfg Config, raw map[string]rawValue, receivers []ssf.Receiver, logger *slog.Logger) *live {
	l := &live{flags: cfg.flagValues, raw: raw, receivers: receivers, logger: logger}
	tok := cfg.AdminToken
	l.token.Store(&tok)
	l.stamps = stampsOf(cfg)
	return l
}

// adminToken is the admin token in force.
func (l *live) adminToken() string { return *l.token.Load() }

// currentReceivers is the receivers set in force.
func (l *live) currentReceivers() []ssf.Receiver {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.receivers
}

// setApply connects the running transmitter.
func (l *live) setApply(f func([]ssf.Receiver) ssf.ReceiverChange) {
	l.mu.Lock()
	l.apply = f
	l.mu.Unlock()
}

// reloadResult is what a reload did, as the admin API answers it.
type reloadResult struct {
	Receivers    int                `json:"receivers"`
	Changes      ssf.ReceiverChange `json:"changes"`
	AdminToken   string             `json:"admin_token"` // "unchanged" or "rotated"
	NeedsRestart []string           `json:"needs_restart"`
	Warnings     []string           `json:"warnings"`
}

// reload resolves and checks the configuration again and swaps in the
// receivers and the admin token. On error nothing changes.
func (l *live) reload(why string) (reloadResult, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	res, err := l.reloadLocked()
	if err != nil {
		l.logger.Error("reload refused: the receivers and admin token in force are kept", slog.String("trigger", why),
			slog.Int("receivers", len(l.receivers)), slog.String("error", err.Error()))
		return res, err
	}
	l.logger.Info("configuration reloaded", slog.String("trigger", why), slog.Int("receivers", res.Receivers),
		slog.Any("added", res.Changes.Added), slog.Any("removed", res.Changes.Removed), slog.Any("changed", res.Changes.Changed),
		slog.String("admin_token", res.AdminToken))
	if len(res.NeedsRestart) > 0 {
		l.logger.Warn("changed options that take effect only after a restart", slog.Any("options", res.NeedsRestart))
	}
	for _, w := range res.Warnings {
		l.logger.Warn(w)
	}
	return res, nil
}

func (l *live) reloadLocked() (reloadResult, error) {
	res := reloadResult{NeedsRestart: []string{}, Warnings: []string{}, AdminToken: "unchanged",
		Changes: ssf.ReceiverChange{Added: []string{}, Removed: []string{}, Changed: []string{}}}
	cfg, raw, err := resolve(l.flags, os.Getenv)
	if err != nil {
		return res, err
	}
	receivers, err := checkDeep(cfg)
	if err != nil {
		return res, err
	}
	for _, o := range options {
		switch o.name {
		case "receivers", "admin-token", "admin-token-file", "config":
			continue
		}
		if l.raw[o.name].value != raw[o.name].value {
			res.NeedsRestart = append(res.NeedsRestart, o.name)
		}
	}
	for _, w := range cfg.Warnings(raw, receivers) {
		if strings.HasPrefix(w.msg, "receiver ") {
			res.Warnings = append(res.Warnings, w.msg)
		}
	}
	if cfg.AdminToken != l.adminToken() {
		tok := cfg.AdminToken
		l.token.Store(&tok)
		res.AdminToken = "rotated"
		if tok == "" {
			res.Warnings = append(res.Warnings, "the admin token was removed: the admin API now answers loopback clients only")
		}
	}
	if l.apply != nil {
		res.Changes = l.apply(receivers)
	}
	l.receivers, l.raw = receivers, raw
	l.stamps = stampsOf(cfg)
	res.Receivers = len(receivers)
	return res, nil
}

// fileStamp tells whether a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
	ok   bool
}

// stampsOf reads the stamps of the files a reload depends on.
func stampsOf(cfg Config) map[string]fileStamp {
	out := map[string]fileStamp{}
	for _, p := range []string{cfg.ConfigFile, cfg.Receivers, cfg.AdminTokenFile} {
		if p == "" {
			continue
		}
		st, err := os.Stat(p)
		if err != nil {
			out[p] = fileStamp{}
			continue
		}
		out[p] = fileStamp{mod: st.ModTime(), size: st.Size(), ok: true}
	}
	return out
}

// changed reports the first watched file whose stamp differs.
func (l *live) changed() (string, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for p, old := range l.stamps {
		var now fileStamp
		if st, err := os.Stat(p); err == nil {
			now = fileStamp{mod: st.ModTime(), size: st.Size(), ok: true}
		}
		if now != old {
			return p, true
		}
	}
	return "", false
}

// watch reloads on SIGHUP and when a watched file changes, until ctx ends.
// A file that changed but does not load is tried again only after it
// changes once more.
func (l *live) watch(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tick := time.NewTicker(reloadPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			_, _ = l.reload("SIGHUP")
		case <-tick.C:
			if p, ok := l.changed(); ok {
				if _, err := l.reload("file changed: " + p); err != nil {
					// Remember the broken version: no error every 2 s.
					l.mu.Lock()
					l.stamps[p] = stampsOf(Config{Config: sidecar.Config{ConfigFile: p}})[p]
					l.mu.Unlock()
				}
			}
		}
	}
}

// readTokenFile reads an admin token file; the token is never quoted.
func readTokenFile(path string) (string, error) {
	if secretLike(path) {
		return "", errors.New("the value given as the admin token file's path looks like a token itself (it is not shown): give the path of a file holding the token")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the admin token file %s: %w", path, errors.Unwrap(err))
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("the admin token file %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("the admin token file %s holds more than one line or word", path)
	}
	return tok, nil
}
