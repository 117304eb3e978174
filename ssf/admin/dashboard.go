package admin

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

//go:embed web
var webFS embed.FS

// DashboardConfig wires the dashboard. The sidecar builds the dashboard
// before its outbox and transmitter exist, so those are looked up at
// request time.
type DashboardConfig struct {
	// Transmitter returns the stream side (nil while the sidecar starts).
	Transmitter func() Transmitter
	// Outbox returns the delivery side (nil while the sidecar starts).
	Outbox func() Outbox
	// TraceURL is a link template of the tracing UI containing {trace_id};
	// empty: no trace links.
	TraceURL string
	// MaxTimeline bounds how many SETs of one stream a timeline request
	// reads (searching scans that many). Default 10000.
	MaxTimeline int
	// MaxPages bounds the open live connections. Default 32.
	MaxPages int
	// Buffer is each page's live-event buffer; a page that falls behind is
	// told to re-fetch. Default 256.
	Buffer int
	// Heartbeat is the keep-alive interval of the live connection.
	// Default 15 s.
	Heartbeat time.Duration
	Clock     func() time.Time
	Logger    *slog.Logger
}

// Validate reports every problem at once.
func (c DashboardConfig) Validate() error {
	var errs []error
	if c.Transmitter == nil {
		errs = append(errs, errors.New("dashboard: Transmitter is required"))
	}
	if c.Outbox == nil {
		errs = append(errs, errors.New("dashboard: Outbox is required"))
	}
	if c.TraceURL != "" {
		if !strings.Contains(c.TraceURL, "{trace_id}") {
			errs = append(errs, errors.New("dashboard: TraceURL must contain {trace_id}"))
		}
		u, err := url.Parse(strings.ReplaceAll(c.TraceURL, "{trace_id}", "0"))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, errors.New("dashboard: TraceURL must be an absolute http(s) URL"))
		}
	}
	if c.MaxTimeline < 0 || c.MaxPages < 0 || c.Buffer < 0 || c.Heartbeat < 0 {
		errs = append(errs, errors.New("dashboard: limits must not be negative"))
	}
	return errors.Join(errs...)
}

// Dashboard is the operator's web page on the admin listener: streams,
// per-stream timelines of SETs, the dead letter, and live updates.
type Dashboard struct {
	cfg       DashboardConfig
	live      *broadcaster
	done      chan struct{}
	closeOnce sync.Once
	servers   sync.Map // *http.Server whose shutdown closes the live view
}

// NewDashboard builds the dashboard. Mount it with Routes (as
// Config.Extra) and feed it the outbox's callbacks from Hooks.
func NewDashboard(cfg DashboardConfig) (*Dashboard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.MaxTimeline == 0 {
		cfg.MaxTimeline = 10000
	}
	if cfg.MaxPages == 0 {
		cfg.MaxPages = 32
	}
	if cfg.Buffer == 0 {
		cfg.Buffer = 256
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Dashboard{cfg: cfg, live: newBroadcaster(cfg.MaxPages, cfg.Buffer), done: make(chan struct{})}, nil
}

// Hooks returns the outbox callbacks that feed the live view. They never
// block.
func (d *Dashboard) Hooks() outbox.Hooks { return d.hooks() }

// Close ends every open live connection for good. It is called by itself
// when the http.Server serving the dashboard shuts down.
func (d *Dashboard) Close() { d.closeOnce.Do(func() { close(d.done) }) }

// Routes mounts the dashboard on the admin group (behind its token, Host,
// Origin and CSRF checks): the page under /admin/dashboard/, its JSON under
// /admin/dashboard/api/, live events at /admin/dashboard/events.
func (d *Dashboard) Routes(g *echo.Group) {
	g.GET("/dashboard", func(c echo.Context) error {
		return c.Redirect(http.StatusFound, "/admin/dashboard/")
	})
	g.GET("/dashboard/", d.asset("index.html", "text/html; charset=utf-8"))
	g.GET("/dashboard/app.js", d.asset("app.js", "text/javascript; charset=utf-8"))
	g.GET("/dashboard/app.css", d.asset("app.css", "text/css; charset=utf-8"))
	g.GET("/dashboard/api/overview", d.overview)
	g.GET("/dashboard/api/streams/:id/timeline", d.timeline)
	g.GET("/dashboard/api/streams/:id/sets/:jti", d.setDetail)
	g.GET("/dashboard/events", d.events)
}

// pagePolicy keeps the page to its own origin: no inline script, no
// framing, nothing fetched from elsewhere.
const pagePolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

func securityHeaders(h http.Header) {
	h.Set("Content-Security-Policy", pagePolicy)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	// same-origin, not no-referrer: under no-referrer a browser sends
	// "Origin: null" with the login form's POST, which the Origin check
	// must refuse. Other sites get no referrer either way.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
}

func (d *Dashboard) asset(name, ctype string) echo.HandlerFunc {
	return func(c echo.Context) error {
		b, err := fs.ReadFile(webFS, "web/"+name)
		if err != nil {
			return fmt.Errorf("dashboard asset %s: %w", name, err)
		}
		securityHeaders(c.Response().Header())
		return c.Blob(http.StatusOK, ctype, b)
	}
}

func (d *Dashboard) sides() (Transmitter, Outbox, error) {
	tx, ob := d.cfg.Transmitter(), d.cfg.Outbox()
	if tx == nil || ob == nil {
		return nil, nil, echo.NewHTTPError(http.StatusServiceUnavailable, "the sidecar is still starting")
	}
	return tx, ob, nil
}

// StreamView is one stream as the dashboard lists it.
type StreamView struct {
	ID           string             `json:"stream_id"`
	Receiver     string             `json:"receiver"`
	Audience     string             `json:"aud"`
	Status       string             `json:"status"`
	Reason       string             `json:"reason,omitempty"`
	Method       string             `json:"delivery_method"`
	EndpointHost string             `json:"endpoint_host,omitempty"`
	Description  string             `json:"description,omitempty"`
	Events       []string           `json:"events_delivered"`
	Outbox       outbox.StreamStats `json:"outbox"`
}

type overviewBody struct {
	Streams   []StreamView `json:"streams"`
	TraceURL  string       `json:"trace_url,omitempty"`
	LivePages int          `json:"live_pages"`
	Now       time.Time    `json:"now"`
	// Auth is how this page got in: session (logged in with the form),
	// bearer, or loopback (no admin token configured). The page offers
	// "Log out" only for a session.
	Auth string `json:"auth"`
}

func endpointHost(raw string) string {
	if raw == "" {
		return ""
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Host
}

func (d *Dashboard) overview(c echo.Context) error {
	tx, ob, err := d.sides()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	streams, err := tx.AdminStreams(ctx)
	if err != nil {
		return err
	}
	stats, err := ob.AllStats(ctx)
	if err != nil {
		return err
	}
	byID := make(map[string]outbox.StreamStats, len(stats))
	for _, s := range stats {
		byID[s.StreamID] = s
	}
	out := overviewBody{Streams: make([]StreamView, 0, len(streams)), TraceURL: d.cfg.TraceURL,
		LivePages: d.live.count(), Now: d.cfg.Clock().UTC(), Auth: authOf(c)}
	for _, s := range streams {
		out.Streams = append(out.Streams, viewOf(s, byID[s.ID]))
	}
	return c.JSON(http.StatusOK, out)
}

func viewOf(s ssf.Stream, st outbox.StreamStats) StreamView {
	ev := s.EventsDelivered
	if ev == nil {
		ev = []string{}
	}
	// Only the host of the endpoint: its path or query may carry a secret.
	return StreamView{ID: s.ID, Receiver: s.Receiver, Audience: s.Audience, Status: s.Status, Reason: s.Reason,
		Method: ssf.MethodName(s.DeliveryMethod), EndpointHost: endpointHost(s.EndpointURL),
		Description: s.Description, Events: ev, Outbox: st}
}

// TimelineItem is one SET in a stream's timeline, subject masked.
type TimelineItem struct {
	JTI          string           `json:"jti"`
	Seq          uint64           `json:"seq"`
	EventType    string           `json:"event_type"`
	Event        string           `json:"event"` // the last path segment of the event type
	Subject      string           `json:"subject"`
	Initiator    string           `json:"initiator,omitempty"`
	Source       string           `json:"source,omitempty"`
	IssuedAt     time.Time        `json:"issued_at,omitzero"`
	EnqueuedAt   time.Time        `json:"enqueued_at"`
	State        outbox.State     `json:"state"`
	Reason       string           `json:"reason,omitempty"`
	AttemptCount int              `json:"attempt_count"`
	Attempts     []outbox.Attempt `json:"attempts"`
	TraceID      string           `json:"trace_id,omitempty"`
	TraceLink    string           `json:"trace_link,omitempty"`
}

type timelineBody struct {
	Items []TimelineItem `json:"items"`
	// More: older matching SETs exist beyond this page.
	More bool `json:"more"`
	// Scanned is how many SETs were read; Truncated: the search stopped at
	// the server's limit.
	Scanned   int  `json:"scanned"`
	Truncated bool `json:"truncated"`
	Offset    int  `json:"offset"`
}

func intParam(c echo.Context, name string, def, lo, hi int) (int, error) {
	v := c.QueryParam(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("%s must be a whole number from %d to %d", name, lo, hi))
	}
	return n, nil
}

// timeline answers one page of a stream's SETs, newest first, optionally
// filtered by a search on the jti or the subject. It never reads more than
// MaxTimeline records.
func (d *Dashboard) timeline(c echo.Context) error {
	tx, ob, err := d.sides()
	if err != nil {
		return err
	}
	limit, err := intParam(c, "limit", 100, 1, 500)
	if err != nil {
		return err
	}
	offset, err := intParam(c, "offset", 0, 0, d.cfg.MaxTimeline)
	if err != nil {
		return err
	}
	q := parseSearch(c.QueryParam("q"))
	ctx := c.Request().Context()
	st, err := tx.AdminStream(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	// One more than needed tells whether there is more.
	read := d.cfg.MaxTimeline + 1
	if q.text == "" {
		read = min(offset+limit+1, read)
	}
	recs, err := ob.History(ctx, st.ID, read)
	if err != nil {
		return err
	}
	truncated := len(recs) > d.cfg.MaxTimeline
	if truncated {
		recs = recs[:d.cfg.MaxTimeline]
	}
	// Newest issued first. The queue's order is not time order: a
	// stream-updated announcement goes in at the head of the queue.
	sort.SliceStable(recs, func(i, j int) bool { return recs[i].EnqueuedAt.After(recs[j].EnqueuedAt) })
	out := timelineBody{Items: []TimelineItem{}, Scanned: len(recs), Offset: offset, Truncated: truncated && q.text != ""}
	matched := 0
	for i := range recs {
		r := &recs[i]
		// Decoding claims is the expensive part: skip the records that
		// cannot match, and those before the page, without it.
		if !q.mayMatch(r.JTI, r.Claims) {
			continue
		}
		var claims map[string]any
		if q.text != "" {
			if claims, err = decodeClaims(r.Claims); err != nil || !q.matches(r.JTI, claims) {
				continue
			}
		}
		matched++
		if matched <= offset {
			continue
		}
		if len(out.Items) == limit {
			out.More = true
			break
		}
		if claims == nil {
			if claims, err = decodeClaims(r.Claims); err != nil {
				claims = map[string]any{}
			}
		}
		out.Items = append(out.Items, d.item(r, claims))
	}
	return c.JSON(http.StatusOK, out)
}

func (d *Dashboard) item(r *outbox.Record, claims map[string]any) TimelineItem {
	it := TimelineItem{JTI: r.JTI, Seq: r.Seq, EventType: r.EventType, State: r.State, Reason: r.Reason,
		EnqueuedAt: r.EnqueuedAt, AttemptCount: r.AttemptCount, Attempts: r.Attempts,
		Subject: subjectSummary(claims["sub_id"], false)}
	if it.Attempts == nil {
		it.Attempts = []outbox.Attempt{}
	}
	if it.EventType == "" {
		if ev, ok := claims["events"].(map[string]any); ok {
			for k := range ev {
				it.EventType = k
			}
		}
	}
	it.Event = it.EventType[strings.LastIndexByte(it.EventType, '/')+1:]
	if iat, ok := claims["iat"].(float64); ok && iat > 0 && iat < 1e11 {
		it.IssuedAt = time.Unix(int64(iat), 0).UTC()
	}
	it.Source, it.Initiator = r.Labels["source"], r.Labels["initiator"]
	it.TraceID = traceID(r.TraceParent)
	if it.TraceID != "" && d.cfg.TraceURL != "" {
		it.TraceLink = strings.ReplaceAll(d.cfg.TraceURL, "{trace_id}", it.TraceID)
	}
	if it.EventType == ssf.EventVerification || it.EventType == ssf.EventStreamUpdated {
		// Their subject is the stream itself, not a person: nothing to mask.
		it.Subject = subjectSummary(claims["sub_id"], true)
	}
	return it
}

// traceID extracts the trace id of a W3C traceparent
// ("00-<32 hex>-<16 hex>-<2 hex>"); "" when it is not one.
func traceID(tp string) string {
	parts := strings.Split(tp, "-")
	if len(parts) < 4 || len(parts[1]) != 32 || len(parts[0]) != 2 {
		return ""
	}
	id := parts[1]
	if id == strings.Repeat("0", 32) {
		return ""
	}
	for i := 0; i < len(id); i++ {
		if !strings.ContainsRune("0123456789abcdef", rune(id[i])) {
			return ""
		}
	}
	return id
}

type setDetailBody struct {
	TimelineItem
	Claims   map[string]any `json:"claims"`
	Revealed bool           `json:"revealed"`
}

// setDetail answers one SET with its decoded claims; the subject stays
// masked unless ?reveal=1.
func (d *Dashboard) setDetail(c echo.Context) error {
	tx, ob, err := d.sides()
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	st, err := tx.AdminStream(ctx, c.Param("id"))
	if err != nil {
		return err
	}
	jti := c.Param("jti")
	// within: the page says how far back the SET is (its page's end), so
	// a detail does not read the whole history.
	within, err := intParam(c, "within", d.cfg.MaxTimeline, 1, d.cfg.MaxTimeline)
	if err != nil {
		return err
	}
	r, err := d.find(ctx, ob, st.ID, jti, within)
	if err != nil {
		return err
	}
	claims, err := decodeClaims(r.Claims)
	if err != nil {
		return echo.NewHTTPError(http.StatusUnprocessableEntity, "the stored claims of this SET are not a JSON object")
	}
	reveal := c.QueryParam("reveal") == "1"
	out := setDetailBody{TimelineItem: d.item(r, claims), Revealed: reveal}
	if reveal {
		out.Claims = claims
		out.Subject = subjectSummary(claims["sub_id"], true)
		d.cfg.Logger.Info("operator revealed a SET's subject", "stream_id", st.ID, "jti", jti)
	} else {
		out.Claims = maskClaims(claims)
	}
	return c.JSON(http.StatusOK, out)
}

// find looks a SET up among the newest `within` of the stream, then, if
// it is not there (newer SETs pushed it back), among all MaxTimeline.
func (d *Dashboard) find(ctx context.Context, ob Outbox, streamID, jti string, within int) (*outbox.Record, error) {
	for _, n := range []int{within, d.cfg.MaxTimeline} {
		recs, err := ob.History(ctx, streamID, n)
		if err != nil {
			return nil, err
		}
		for i := range recs {
			if recs[i].JTI == jti {
				return &recs[i], nil
			}
		}
		if n >= d.cfg.MaxTimeline {
			break
		}
	}
	return nil, echo.NewHTTPError(http.StatusNotFound, "no such SET in this stream's history")
}
