package tap

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxAPIBody bounds what the tap reads from one authentik API response.
const maxAPIBody = 4 << 20

// ErrNotFound is returned by look-ups when authentik answers 404.
var ErrNotFound = errors.New("tap: not found in authentik")

// errUnauthorized is returned when authentik rejects the credentials (401/403).
var errUnauthorized = errors.New("tap: authentik rejected the credentials")

// creds are the credentials one look-up presents: the sidecar's API token,
// or the caller's own cookie / authorization header. They are never stored.
type creds struct {
	bearer string // the sidecar's token
	cookie string // the caller's authentik_session value
	authz  string // the caller's Authorization header value
	// clientIP and userAgent are the caller's, sent along with the caller's
	// own credentials: authentik's session binding compares the client IP
	// (X-Forwarded-For from a trusted proxy) with the session's, and logs
	// the session out when they differ.
	clientIP, userAgent string
}

func (c creds) empty() bool { return c.bearer == "" && c.cookie == "" && c.authz == "" }

// client talks to authentik's API.
type client struct {
	base  *url.URL
	http  *http.Client
	token string
}

func (c *client) tokenCreds() creds { return creds{bearer: c.token} }

// getJSON GETs /api/v3<path> and decodes the JSON answer into out.
func (c *client) getJSON(ctx context.Context, cr creds, path string, q url.Values, out any) error {
	return c.doJSON(ctx, http.MethodGet, cr, path, q, out)
}

func (c *client) doJSON(ctx context.Context, method string, cr creds, path string, q url.Values, out any) error {
	if cr.empty() {
		return fmt.Errorf("%s %s: %w", method, path, errUnauthorized)
	}
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + "/api/v3" + path
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return fmt.Errorf("tap: build %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	switch {
	case cr.bearer != "":
		req.Header.Set("Authorization", "Bearer "+cr.bearer)
	case cr.authz != "":
		req.Header.Set("Authorization", cr.authz)
	}
	if cr.cookie != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: cr.cookie})
	}
	if cr.bearer == "" {
		if cr.clientIP != "" {
			req.Header.Set("X-Forwarded-For", cr.clientIP)
		}
		if cr.userAgent != "" {
			req.Header.Set("User-Agent", cr.userAgent)
		}
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("tap: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAPIBody))
		return fmt.Errorf("%s %s: %w", method, path, ErrNotFound)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAPIBody))
		return fmt.Errorf("%s %s: %w", method, path, errUnauthorized)
	case resp.StatusCode/100 != 2:
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxAPIBody))
		return fmt.Errorf("tap: %s %s: status %d", method, path, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAPIBody+1))
	if err != nil {
		return fmt.Errorf("tap: read %s %s: %w", method, path, err)
	}
	if len(body) > maxAPIBody {
		return fmt.Errorf("tap: %s %s: response too large", method, path)
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("tap: decode %s %s: %w", method, path, err)
	}
	return nil
}

// akUser is the part of authentik's User / UserSelf / PartialUser the tap
// reads.
type akUser struct {
	PK       int64  `json:"pk"`
	UID      string `json:"uid"`
	Username string `json:"username"`
	Email    string `json:"email"`
	IsActive *bool  `json:"is_active"`
	// PasswordChangeDate is set on the full User (not on UserSelf).
	PasswordChangeDate *time.Time `json:"password_change_date"`
}

func (u akUser) user() User { return User{PK: u.PK, UID: u.UID, Username: u.Username, Email: u.Email} }

// akSessionUser is /core/users/me/.
type akSessionUser struct {
	User     akUser  `json:"user"`
	Original *akUser `json:"original"`
}

// akSession is an AuthenticatedSession.
type akSession struct {
	UUID string `json:"uuid"`
	User int64  `json:"user"`
}

// akDevice is a device as the per-type and the "all" endpoints return it.
type akDevice struct {
	PK        json.RawMessage `json:"pk"`
	Name      string          `json:"name"`
	Type      string          `json:"type"`
	Confirmed *bool           `json:"confirmed"`
	User      *akUser         `json:"user"`
	AAGUID    string          `json:"aaguid"`
	// DeviceType is WebAuthn's device_type (MDS entry), when known.
	DeviceType *struct {
		Description string `json:"description"`
	} `json:"device_type"`
}

func (d akDevice) pk() string { return rawPK(d.PK) }

// rawPK renders a JSON number or string primary key as a string.
func rawPK(raw json.RawMessage) string {
	s := strings.TrimSpace(string(raw))
	if s == "" || s == "null" {
		return ""
	}
	var str string
	if json.Unmarshal(raw, &str) == nil {
		return str
	}
	var n json.Number
	if json.Unmarshal(raw, &n) == nil {
		return n.String()
	}
	return ""
}

// akPage is authentik's page-number pagination envelope.
type akPage[T any] struct {
	Pagination struct {
		Next       float64 `json:"next"`
		Count      float64 `json:"count"`
		Current    float64 `json:"current"`
		TotalPages float64 `json:"total_pages"`
	} `json:"pagination"`
	Results []T `json:"results"`
}

// listAll pages through a list endpoint, up to maxPages pages.
func listAll[T any](ctx context.Context, c *client, cr creds, path string, q url.Values, maxPages int) ([]T, error) {
	var all []T
	if q == nil {
		q = url.Values{}
	}
	for page := 1; page <= maxPages; page++ {
		q.Set("page", fmt.Sprint(page))
		var p akPage[T]
		if err := c.getJSON(ctx, cr, path, q, &p); err != nil {
			return nil, err
		}
		all = append(all, p.Results...)
		if p.Pagination.Next <= float64(page) || len(p.Results) == 0 {
			break
		}
	}
	return all, nil
}

// userDevices lists a user's devices through /authenticators/admin/all/
// (a plain array, not paginated).
func (c *client) userDevices(ctx context.Context, pk int64) ([]akDevice, error) {
	var devs []akDevice
	q := url.Values{"user": {fmt.Sprint(pk)}}
	if err := c.getJSON(ctx, c.tokenCreds(), "/authenticators/admin/all/", q, &devs); err != nil {
		return nil, err
	}
	return devs, nil
}
