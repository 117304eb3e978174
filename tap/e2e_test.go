package tap

import (
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"
)

// want describes one expected signal.
type want struct {
	kind        Kind
	source      Source
	subject     int64
	initiator   Initiator
	sessionHash string
	sessionUUID string
	device      string // device type
	oldEmail    string
	newEmail    string
}

func (w want) String() string {
	return fmt.Sprintf("%s/%s subject=%d init=%s sh=%q su=%q dev=%q email=%q→%q", w.kind, w.source, w.subject,
		w.initiator, w.sessionHash, w.sessionUUID, w.device, w.oldEmail, w.newEmail)
}

func got(s Signal) want {
	w := want{kind: s.Kind, source: s.Source, subject: s.Subject.PK, initiator: s.Initiator,
		sessionHash: s.SessionHash, sessionUUID: s.SessionUUID, oldEmail: s.OldEmail, newEmail: s.NewEmail}
	if s.Device != nil {
		w.device = s.Device.Type
	}
	return w
}

func checkSignals(t *testing.T, sigs []Signal, wants []want) {
	t.Helper()
	var g, x []string
	for _, s := range sigs {
		g = append(g, got(s).String())
		if s.Subject.PK != 0 && (s.Subject.UID == "" || s.Subject.Email == "" && s.Kind != KindAccountDeleted) {
			t.Errorf("signal %s: subject incomplete: %+v", s.ID, s.Subject)
		}
		if s.ID == "" || s.Time.IsZero() {
			t.Errorf("signal without id or time: %+v", s)
		}
	}
	for _, w := range wants {
		x = append(x, w.String())
	}
	sort.Strings(g)
	sort.Strings(x)
	if strings.Join(g, "\n") != strings.Join(x, "\n") {
		t.Errorf("signals:\n got:\n  %s\n want:\n  %s", strings.Join(g, "\n  "), strings.Join(x, "\n  "))
	}
}

// anySource maps the reconciler's and the event API's source to one label,
// for actions either may report first.
func anySource(sigs []Signal) []Signal {
	out := append([]Signal(nil), sigs...)
	for i := range out {
		if out[i].Source == SourceEventAPI {
			out[i].Source = SourceReconcile
		}
	}
	return out
}

var _ = http.MethodGet

// direct sends a request straight to authentik, bypassing the proxy: only
// the event API can see it.
func (e *env) direct(method, path, body, cookie, bearer string) int {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.ak.URL()+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	if cookie != "" {
		req.AddCookie(&http.Cookie{Name: SessionCookieName, Value: cookie})
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
