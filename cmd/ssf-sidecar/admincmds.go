package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

func runStreams(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	verbs := map[string]string{
		"list":   "list every stream",
		"show":   "show one stream with its outbox state: show <stream-id>",
		"pause":  "pause a stream (SETs are held): pause <stream-id> [--reason …]",
		"resume": "enable a stream again (held SETs go out in order): resume <stream-id>",
		"delete": "delete a stream and its queued SETs: delete <stream-id>",
		"verify": "send a verification SET: verify <stream-id> [--state …]",
	}
	verb, fs, af, err := subcommand("streams", verbs, args, stdout)
	if err != nil {
		return err
	}
	reason, state := new(string), new(string)
	switch verb {
	case "pause", "resume":
		reason = fs.String("reason", "", "reason shown to the receiver")
	case "verify":
		state = fs.String("state", "", "state echoed in the verification SET")
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	c, done, err := af.connect(ctx, "streams "+verb)
	if err != nil {
		return err
	}
	defer done()
	if verb == "list" {
		if len(pos) != 0 {
			return usageError{"streams list takes no arguments"}
		}
		var streams []ssf.Stream
		if err := c.do(ctx, http.MethodGet, "/admin/streams", nil, &streams); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, streams)
		}
		rows := make([][]string, 0, len(streams))
		for _, s := range streams {
			rows = append(rows, []string{s.ID, s.Receiver, statusText(s.Status, s.Reason), methodName(s.DeliveryMethod), orDash(endpointHost(s.EndpointURL)), strconv.Itoa(len(s.EventsDelivered))})
		}
		table(stdout, []string{"STREAM", "RECEIVER", "STATUS", "DELIVERY", "ENDPOINT", "EVENTS"}, rows)
		return nil
	}
	if len(pos) != 1 {
		return usageError{fmt.Sprintf("streams %s needs exactly one stream id", verb)}
	}
	id := url.PathEscape(pos[0])
	switch verb {
	case "show":
		var out struct {
			ssf.Stream
			Outbox outbox.StreamStats `json:"outbox"`
		}
		if err := c.do(ctx, http.MethodGet, "/admin/streams/"+id, nil, &out); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, out)
		}
		s, o := out.Stream, out.Outbox
		table(stdout, []string{"FIELD", "VALUE"}, [][]string{
			{"stream", s.ID}, {"receiver", s.Receiver}, {"audience", s.Audience},
			{"status", statusText(s.Status, s.Reason)}, {"delivery", methodName(s.DeliveryMethod)},
			{"endpoint", orDash(s.EndpointURL)}, {"authorization header", yesNo(s.HasAuthorizationHeader)},
			{"events delivered", orDash(strings.Join(shortEvents(s.EventsDelivered), ", "))},
			{"default subjects", s.DefaultSubjects}, {"created", fmtTime(s.Created)},
			{"backlog", strconv.FormatInt(o.Backlog, 10)}, {"oldest", o.OldestAge.Round(time.Second).String()},
			{"delivered", strconv.FormatInt(o.Delivered, 10)}, {"dead letter", strconv.FormatInt(o.Dead, 10)},
			{"last success", fmtTime(o.LastSuccess)}, {"last error", lastErrorText(o)},
			{"backing off until", fmtTime(o.BackingOffUntil)},
		})
		return nil
	case "pause", "resume":
		path := "/admin/streams/" + id + "/" + verb
		var s ssf.Stream
		if err := c.do(ctx, http.MethodPost, path, map[string]string{"reason": *reason}, &s); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, s)
		}
		fmt.Fprintf(stdout, "stream %s is now %s\n", s.ID, s.Status)
		return nil
	case "delete":
		if err := c.do(ctx, http.MethodDelete, "/admin/streams/"+id, nil, nil); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, map[string]any{"stream_id": pos[0], "deleted": true})
		}
		fmt.Fprintf(stdout, "stream %s deleted\n", pos[0])
		return nil
	case "verify":
		var s ssf.Stream
		if err := c.do(ctx, http.MethodGet, "/admin/streams/"+id, nil, &s); err != nil {
			return err
		}
		if err := c.do(ctx, http.MethodPost, "/admin/streams/"+id+"/verify", map[string]string{"state": *state}, nil); err != nil {
			return err
		}
		held := s.Status == ssf.StatusPaused
		if af.json {
			return printJSON(stdout, map[string]any{"stream_id": pos[0], "queued": true, "status": s.Status, "held_until_resume": held})
		}
		if held {
			fmt.Fprintf(stdout, "verification SET queued for stream %s; the stream is paused, so it is held and goes out when the stream is resumed\n", pos[0])
			return nil
		}
		fmt.Fprintf(stdout, "verification SET queued for stream %s\n", pos[0])
		return nil
	}
	return usageError{"unknown command"}
}

func runKeys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	verbs := map[string]string{
		"list":   "list the signing keys the JWKS publishes",
		"rotate": "make a newly generated key current (published at once; with several replicas it signs 4 s later, --now: at once); the old one stays published for --key-overlap",
	}
	verb, fs, af, err := subcommand("keys", verbs, args, stdout)
	if err != nil {
		return err
	}
	var now *bool
	if verb == "rotate" {
		now = fs.Bool("now", false, "sign with the new key at once, before every replica publishes it (a compromised key)")
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError{"keys " + verb + " takes no arguments"}
	}
	c, done, err := af.connect(ctx, "keys "+verb)
	if err != nil {
		return err
	}
	defer done()
	if verb == "rotate" {
		var k ssf.KeyInfo
		if err := c.do(ctx, http.MethodPost, "/admin/keys/rotate", struct {
			Now bool `json:"now,omitempty"`
		}{*now}, &k); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, k)
		}
		if k.Current {
			fmt.Fprintf(stdout, "new signing key %s (%s) is current\n", k.KID, k.Alg)
		} else {
			fmt.Fprintf(stdout, "new signing key %s (%s) is published and signs from %s\n", k.KID, k.Alg, fmtTime(k.ActivatesAt))
		}
		return nil
	}
	var keys []ssf.KeyInfo
	if err := c.do(ctx, http.MethodGet, "/admin/keys", nil, &keys); err != nil {
		return err
	}
	if af.json {
		return printJSON(stdout, keys)
	}
	rows := make([][]string, 0, len(keys))
	for _, k := range keys {
		rows = append(rows, []string{k.KID, k.Alg, k.Source, yesNo(k.Current), fmtTime(k.Created), fmtTime(k.LeavesJWKSAt)})
	}
	table(stdout, []string{"KID", "ALG", "SOURCE", "CURRENT", "CREATED", "LEAVES JWKS"}, rows)
	return nil
}

func runOutbox(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	verbs := map[string]string{
		"stats":  "queue state of every stream, or of one: stats [stream-id]",
		"dlq":    "list a stream's dead letter: dlq <stream-id> [--limit N]",
		"replay": "put dead letters back in the queue with the same jti: replay <stream-id> [jti …]",
		"purge":  "delete dead letters: purge <stream-id> [jti …]",
	}
	verb, fs, af, err := subcommand("outbox", verbs, args, stdout)
	if err != nil {
		return err
	}
	limit, all := new(int), new(bool)
	*limit = 100
	switch verb {
	case "dlq":
		limit = fs.Int("limit", 100, "how many dead letters to list")
	case "replay", "purge":
		all = fs.Bool("all", false, "every dead letter of the stream")
	}
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	c, done, err := af.connect(ctx, "outbox "+verb)
	if err != nil {
		return err
	}
	defer done()
	switch verb {
	case "stats":
		var stats []outbox.StreamStats
		if len(pos) > 1 {
			return usageError{"outbox stats takes at most one stream id"}
		}
		if len(pos) == 1 {
			var one outbox.StreamStats
			if err := c.do(ctx, http.MethodGet, "/admin/outbox/"+url.PathEscape(pos[0]), nil, &one); err != nil {
				return err
			}
			stats = []outbox.StreamStats{one}
		} else if err := c.do(ctx, http.MethodGet, "/admin/outbox", nil, &stats); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, stats)
		}
		rows := make([][]string, 0, len(stats))
		for _, s := range stats {
			rows = append(rows, []string{s.StreamID, string(s.Method), string(s.Status), strconv.FormatInt(s.Backlog, 10),
				s.OldestAge.Round(time.Second).String(), strconv.FormatInt(s.Delivered, 10), strconv.FormatInt(s.Dead, 10),
				fmtTime(s.LastSuccess), lastErrorText(s)})
		}
		table(stdout, []string{"STREAM", "METHOD", "STATUS", "BACKLOG", "OLDEST", "DELIVERED", "DEAD", "LAST SUCCESS", "LAST ERROR"}, rows)
		return nil
	case "dlq":
		if len(pos) != 1 {
			return usageError{"outbox dlq needs exactly one stream id"}
		}
		var dl []outbox.DeadLetter
		if err := c.do(ctx, http.MethodGet, fmt.Sprintf("/admin/outbox/%s/dlq?limit=%d", url.PathEscape(pos[0]), *limit), nil, &dl); err != nil {
			return err
		}
		if af.json {
			return printJSON(stdout, dl)
		}
		rows := make([][]string, 0, len(dl))
		for _, d := range dl {
			rows = append(rows, []string{d.JTI, shortEvent(d.EventType), fmtTime(d.DeadAt), strconv.Itoa(d.AttemptCount), d.Reason})
		}
		table(stdout, []string{"JTI", "EVENT", "DEAD AT", "ATTEMPTS", "REASON"}, rows)
		return nil
	case "replay", "purge":
		if len(pos) < 1 {
			return usageError{"outbox " + verb + " needs a stream id"}
		}
		jtis := pos[1:]
		if len(jtis) == 0 && !*all {
			return usageError{"outbox " + verb + ": name the jtis, or pass --all for every dead letter of the stream"}
		}
		return replayOrPurge(ctx, c, verb, pos[0], jtis, af.json, stdout, stderr)
	}
	return usageError{"unknown command"}
}

// replayOrPurge works in batches so a long replay shows progress.
func replayOrPurge(ctx context.Context, c *adminClient, verb, stream string, jtis []string, asJSON bool, stdout, stderr io.Writer) error {
	path := "/admin/outbox/" + url.PathEscape(stream) + "/" + verb
	key := map[string]string{"replay": "replayed", "purge": "purged"}[verb]
	named := len(jtis) > 0
	if !named {
		// Everything: list the dead letter first so progress can be shown.
		var dl []outbox.DeadLetter
		if err := c.do(ctx, http.MethodGet, "/admin/outbox/"+url.PathEscape(stream)+"/dlq?limit=100000", nil, &dl); err != nil {
			return err
		}
		for _, d := range dl {
			jtis = append(jtis, d.JTI)
		}
	}
	const batch = 200
	done := 0
	bar := newProgress(stderr, len(jtis), verb)
	for i := 0; i < len(jtis); i += batch {
		end := min(i+batch, len(jtis))
		var res map[string]int
		if err := c.do(ctx, http.MethodPost, path, map[string][]string{"jtis": jtis[i:end]}, &res); err != nil {
			bar.finish()
			return fmt.Errorf("after %d of %d: %w", done, len(jtis), err)
		}
		done += res[key]
		bar.set(end)
	}
	bar.finish()
	if asJSON {
		if err := printJSON(stdout, map[string]int{key: done}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "%s %d dead letter(s) of stream %s\n", key, done, stream)
	}
	if named && done < len(jtis) {
		return exitError{exitNotFound, fmt.Errorf("%d of the %d named jti(s) are not in stream %s's dead letter", len(jtis)-done, len(jtis), stream)}
	}
	return nil
}

// progress draws a one-line bar on a terminal-ish writer.
type progress struct {
	w     io.Writer
	total int
	label string
	shown bool
}

func newProgress(w io.Writer, total int, label string) *progress {
	return &progress{w: w, total: total, label: label}
}

func (p *progress) set(n int) {
	if p.total < 400 {
		return // short jobs need no bar
	}
	const width = 30
	filled := width * n / p.total
	fmt.Fprintf(p.w, "\r%s [%s%s] %d/%d", p.label, strings.Repeat("#", filled), strings.Repeat(".", width-filled), n, p.total)
	p.shown = true
}

func (p *progress) finish() {
	if p.shown {
		fmt.Fprintln(p.w)
	}
}

// lastErrorText is a stream's last error with its time, marked when a
// success came after it.
func lastErrorText(s outbox.StreamStats) string {
	if s.LastError == "" {
		return "-"
	}
	out := s.LastError
	if !s.LastErrorAt.IsZero() {
		out += " at " + fmtTime(s.LastErrorAt)
		if s.LastSuccess.After(s.LastErrorAt) {
			out += " (delivered since)"
		}
	}
	return out
}

func statusText(status, reason string) string {
	if reason != "" {
		return status + " (" + reason + ")"
	}
	return status
}

func methodName(m string) string { return ssf.MethodName(m) }

func endpointHost(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Host
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func shortEvent(uri string) string {
	if i := strings.LastIndex(uri, "/"); i >= 0 {
		return uri[i+1:]
	}
	return uri
}

func shortEvents(uris []string) []string {
	out := make([]string, len(uris))
	for i, u := range uris {
		out[i] = shortEvent(u)
	}
	return out
}

type outboxRecord = outbox.Record
type outboxAttempt = outbox.Attempt
