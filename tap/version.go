package tap

import (
	"context"
	"fmt"
	"strconv"
	"strings"
)

// akVersion is authentik's release as year and month (2026.2).
type akVersion struct{ year, month int }

func (v akVersion) less(year, month int) bool {
	return v.year < year || v.year == year && v.month < month
}

// parseAKVersion reads "2026.2.2" (or "2026.2.0-rc1").
func parseAKVersion(s string) (akVersion, error) {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return akVersion{}, fmt.Errorf("tap: authentik version %q", s)
	}
	y, err1 := strconv.Atoi(parts[0])
	m, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || y < 2000 || m < 1 || m > 12 {
		return akVersion{}, fmt.Errorf("tap: authentik version %q", s)
	}
	return akVersion{year: y, month: m}, nil
}

// versionNotes says what does not work, or works differently, on a
// release older than the newest the tap is written for.
func versionNotes(v akVersion) []string {
	var out []string
	if v.less(2025, 2) {
		out = append(out, "device serializers carry no owner (user, 2025.2): MFA devices removed through the admin "+
			"endpoints are not reported, devices created outside the proxy have no owner; password_set has no request context")
	}
	if v.less(2025, 4) {
		out = append(out, "users found inactive are not logged out by authentik (2025.4)")
	}
	if v.less(2025, 8) {
		out = append(out, "the events API has no actions= filter (2025.8): every poll reads all events and filters them here")
	}
	if v.less(2026, 2) {
		out = append(out, "authenticated_sessions/bulk_delete/ does not exist yet (2026.2)")
	}
	return out
}

// readVersion asks authentik which release it runs (admin token), logs
// what that means once, and switches off the actions= filter where
// authentik would ignore it anyway.
func (t *Tap) readVersion(ctx context.Context) {
	var out struct {
		Current string `json:"version_current"`
	}
	vctx, cancel := context.WithTimeout(ctx, 2*t.cfg.LookupTimeout)
	defer cancel()
	if err := t.api.getJSON(vctx, t.api.tokenCreds(), "/admin/version/", nil, &out); err != nil {
		t.log.Warn("tap: could not read authentik's version; assuming 2025.8 or newer", "err", err)
		return
	}
	v, err := parseAKVersion(out.Current)
	if err != nil {
		t.log.Warn("tap: unreadable authentik version; assuming 2025.8 or newer", "version", out.Current)
		return
	}
	t.akVersion.Store(out.Current)
	notes := versionNotes(v)
	if v.less(2025, 8) {
		t.noActionsFilter.Store(true)
	}
	if len(notes) == 0 {
		t.log.Info("tap: authentik version supported in full", "version", out.Current)
		return
	}
	for _, n := range notes {
		t.log.Warn("tap: older authentik: "+n, "version", out.Current)
	}
}
