package tap

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/tap/internal/djparse"
	"time"
)

// stageKind is what a stage_configuration flow's stage response does.
type stageKind string

const (
	stagePassword stageKind = "password"
	stageMFA      stageKind = "mfa"
	stageEmail    stageKind = "email"
)

var errNotTapped = errors.New("tap: body is not a tapped stage response")

// stageAnswer is what the tap read from a flow executor POST body.
type stageAnswer struct {
	kind      stageKind
	component string
	dtype     string // device type of an authenticator setup stage
	email     string // the email a prompt answer writes, when it has one
}

// parseStageRequest reads a flow executor POST body: a prompt stage answer
// carrying a non-empty password field or an email (the user_write stage
// that follows writes them), or an authenticator setup stage answer
// (ak-stage-authenticator-<type>). It never keeps the password.
func parseStageRequest(body []byte) (stageAnswer, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(body, &m); err != nil {
		return stageAnswer{}, fmt.Errorf("tap: stage body: %w", err)
	}
	var a stageAnswer
	if err := json.Unmarshal(m["component"], &a.component); err != nil {
		return stageAnswer{}, fmt.Errorf("tap: stage body: component: %w", err)
	}
	switch {
	case a.component == "ak-stage-prompt":
		for k, v := range m {
			if !strings.Contains(strings.ToLower(k), "password") || strings.HasSuffix(k, "_repeat") {
				continue
			}
			var s string
			if json.Unmarshal(v, &s) == nil && s != "" {
				a.kind = stagePassword
			}
		}
		var email string
		if json.Unmarshal(m["email"], &email) == nil && strings.TrimSpace(email) != "" {
			a.email = strings.TrimSpace(email)
			if a.kind == "" {
				a.kind = stageEmail
			}
		}
		if a.kind != "" {
			return a, nil
		}
	case strings.HasPrefix(a.component, "ak-stage-authenticator-"):
		a.dtype = strings.TrimPrefix(a.component, "ak-stage-authenticator-")
		if deviceTypes[a.dtype] && a.dtype != "endpoint" {
			a.kind = stageMFA
			return a, nil
		}
	}
	return stageAnswer{component: a.component}, errNotTapped
}

// redirectsToSelf reports whether a flow executor answered with a 302 to
// its own URL: authentik's stage_ok() for a stage that is not the flow's
// last (the next stage runs on the browser's follow-up GET).
func redirectsToSelf(status int, header http.Header, reqPath string) bool {
	if status != http.StatusFound {
		return false
	}
	loc, err := url.Parse(header.Get("Location"))
	return err == nil && loc.Path == reqPath
}

// challenge is the part of a flow executor response the tap reads.
type challenge struct {
	Component      string                     `json:"component"`
	ResponseErrors map[string]json.RawMessage `json:"response_errors"`
}

// parseChallenge reads a flow executor response body.
func parseChallenge(body []byte) (challenge, error) {
	var c challenge
	if err := json.Unmarshal(body, &c); err != nil {
		return challenge{}, fmt.Errorf("tap: challenge: %w", err)
	}
	return c, nil
}

// stageCompleted reports whether the executor's answer to a stage shows the
// stage accepted: the flow moved on to a redirect or ended, not back to the
// same stage with errors.
func stageCompleted(status int, reqComponent string, body []byte) bool {
	if status != http.StatusOK {
		return false
	}
	c, err := parseChallenge(body)
	if err != nil || len(c.ResponseErrors) > 0 {
		return false
	}
	switch c.Component {
	case "xak-flow-redirect", "ak-stage-session-end":
		return true
	}
	return c.Component != "" && c.Component != reqComponent && c.Component != "ak-stage-access-denied" &&
		c.Component != "ak-stage-flow-error"
}

// sessionEnded reports whether a response ended the session whose hash the
// request carried: authentik_session deleted, or replaced by a cookie for a
// different session or an anonymous one.
func sessionEnded(header http.Header, oldHash, secretKey string, now time.Time) bool {
	for _, c := range (&http.Response{Header: header}).Cookies() {
		if c.Name != SessionCookieName {
			continue
		}
		if c.MaxAge < 0 || c.Value == "" || (!c.Expires.IsZero() && c.Expires.Before(now)) {
			return true
		}
		claims, _, err := DecodeSessionCookie(c.Value, secretKey)
		if err != nil {
			return true // replaced by something that is not the old session
		}
		if claims.SessionHash() != oldHash || !claims.Authenticated {
			return true
		}
	}
	return false
}

// parseUserBody reads a User from a PATCH/PUT response.
func parseUserBody(body []byte) (akUser, error) {
	var u akUser
	if err := json.Unmarshal(body, &u); err != nil {
		return akUser{}, fmt.Errorf("tap: user body: %w", err)
	}
	if u.PK <= 0 {
		return akUser{}, errors.New("tap: user body: no pk")
	}
	return u, nil
}

// parseBulkDeleted reads {"deleted": n} from a bulk_delete response.
func parseBulkDeleted(body []byte) (int, error) {
	var r struct {
		Deleted *int `json:"deleted"`
	}
	if err := json.Unmarshal(body, &r); err != nil {
		return 0, fmt.Errorf("tap: bulk_delete body: %w", err)
	}
	if r.Deleted == nil || *r.Deleted < 0 {
		return 0, errors.New("tap: bulk_delete body: no deleted count")
	}
	return *r.Deleted, nil
}

// deactivates reports whether a user PATCH/PUT body sets is_active false,
// reading the value as DRF's BooleanField does ("false", "0", "off", 0 ...).
func deactivates(body []byte) bool {
	var w struct {
		IsActive json.RawMessage `json:"is_active"`
	}
	if json.Unmarshal(body, &w) != nil || w.IsActive == nil {
		return false
	}
	v, ok := djparse.Bool(w.IsActive)
	return ok && !v
}
