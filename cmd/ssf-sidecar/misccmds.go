package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/proxy/bench"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

func runReceivers(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	verbs := map[string]string{
		"check":  "validate a receivers file: check [--receivers FILE] [--probe]",
		"reload": "make the running sidecar re-read its receivers file and admin token (as SIGHUP does)",
	}
	verb, fs, af, err := subcommand("receivers", verbs, args, stdout)
	if err != nil {
		return err
	}
	if verb == "reload" {
		return reloadReceivers(ctx, fs, af, args[1:], stdout)
	}
	file := fs.String("receivers", os.Getenv("SSF_RECEIVERS"), "receivers file (env SSF_RECEIVERS)")
	probe := fs.Bool("probe", false, "also send a verification SET to each of these receivers' push streams through the running sidecar and report the answer")
	timeout := fs.Duration("timeout", 30*time.Second, "how long --probe waits for each answer")
	pos, err := parseInterleaved(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) == 1 && *file == "" {
		*file = pos[0]
	} else if len(pos) > 0 {
		return usageError{"receivers check takes the file as --receivers or as its one argument"}
	}
	if *file == "" {
		return usageError{"receivers check: name the file (--receivers FILE or SSF_RECEIVERS)"}
	}
	recv, err := ssf.LoadReceivers(*file)
	if err != nil {
		return exitError{exitConfig, fmt.Errorf("%s has problems:\n  - %s", *file, strings.ReplaceAll(err.Error(), "\n", "\n  - "))}
	}
	if af.json {
		type row struct {
			Name          string `json:"name"`
			Tokens        int    `json:"tokens"`
			OAuthClients  int    `json:"oauth_client_ids"`
			Audience      string `json:"audience"`
			SubjectFormat string `json:"subject_format"`
			Profile       string `json:"profile"`
			MaxStreams    int    `json:"max_streams,omitempty"` // 0: the transmitter's default
		}
		out := make([]row, 0, len(recv))
		for _, r := range recv {
			out = append(out, row{r.Name, len(r.Tokens), len(r.OAuthClientIDs), r.Audience, r.SubjectFormat, r.Profile, r.MaxStreams})
		}
		if !*probe {
			return printJSON(stdout, out)
		}
		// One JSON document: the receivers and what the probe met.
		results, err := probeReceivers(ctx, af.client(), recv, *timeout)
		if perr := printJSON(stdout, map[string]any{"receivers": out, "probe": results}); perr != nil {
			return perr
		}
		return err
	}
	rows := make([][]string, 0, len(recv))
	for _, r := range recv {
		maxStreams := "default"
		if r.MaxStreams > 0 {
			maxStreams = strconv.Itoa(r.MaxStreams)
		}
		rows = append(rows, []string{r.Name, strconv.Itoa(len(r.Tokens)), orDash(strings.Join(r.OAuthClientIDs, ",")), r.Audience, r.SubjectFormat, r.Profile, maxStreams})
	}
	table(stdout, []string{"RECEIVER", "TOKENS", "OAUTH CLIENTS", "AUDIENCE", "SUBJECTS", "PROFILE", "MAX STREAMS"}, rows)
	warnings := ssf.ReceiverWarnings(recv)
	for _, r := range recv {
		if len(r.OAuthClientIDs) > 0 && os.Getenv("SSF_OAUTH_ISSUER") == "" {
			warnings = append(warnings, fmt.Sprintf("receiver %q lists oauth_client_ids: serve needs --oauth-issuer (SSF_OAUTH_ISSUER) to accept its OAuth tokens", r.Name))
		}
	}
	for _, w := range warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	fmt.Fprintf(stdout, "\n%s is valid: %d receiver(s), %d warning(s)\n", *file, len(recv), len(warnings))
	if !*probe {
		return nil
	}
	results, err := probeReceivers(ctx, af.client(), recv, *timeout)
	printProbeResults(stdout, results)
	return err
}

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "proxy-child" {
		// One role of the benchmark (upstream or sidecar) in a process of its own.
		return bench.Child(ctx, args[1:], stdout)
	}
	const usage = "Usage: ssf-sidecar bench proxy [--duration 3s] [--connections 128] [--generator wrk|go] [--rows direct,sidecar,nginx]"
	if len(args) == 0 || args[0] != "proxy" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stdout, usage)
			return flag.ErrHelp
		}
		return usageError{"bench: name what to measure: " + strings.TrimPrefix(usage, "Usage: ")}
	}
	fs := flag.NewFlagSet("bench proxy", flag.ContinueOnError)
	var o bench.Options
	fs.DurationVar(&o.Duration, "duration", 3*time.Second, "measured time per row and round")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "warm-up time per row")
	fs.IntVar(&o.Rounds, "rounds", 3, "interleaved rounds per row (medians are shown)")
	fs.BoolVar(&o.CompareTransport, "compare-transport", false, "add a row with the proxy's fast path off")
	inProcess := fs.Bool("in-process", false, "run the upstream and the sidecar inside this process instead of their own")
	fs.IntVar(&o.Connections, "connections", 128, "connections of the saturating load")
	fs.IntVar(&o.BodySize, "body", 512, "upstream response body size in bytes")
	fs.StringVar(&o.Generator, "generator", "", "load generator: wrk or go (default: wrk when installed)")
	fs.StringVar(&o.NginxPath, "nginx", "", "nginx binary (default: nginx on PATH; the row is skipped when absent)")
	rows := fs.String("rows", "", "comma-separated rows to measure: direct,sidecar,nginx (default all)")
	help := func() {
		fmt.Fprintf(stdout, "%s\n\nMeasures the proxy against the upstream directly (and nginx when installed), side by side.\n\nFlags:\n", usage)
		printFlags(stdout, fs)
	}
	if err := parseFlags(fs, args[1:], help); err != nil {
		return err
	}
	o.Rows = splitList(*rows)
	if !*inProcess {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: cannot find this program to start its children: %w", err)
		}
		o.ChildCommand = []string{exe, "bench", "proxy-child"}
	}
	return bench.Run(ctx, o, stdout)
}

// probeResult is what the probe met on one push stream.
type probeResult struct {
	Stream   string `json:"stream_id"`
	Receiver string `json:"receiver"`
	Endpoint string `json:"endpoint"`
	// Outcome is the outbox's outcome of the probe's attempt (delivered,
	// retry, dead); or failing (the stream's newest attempt, at an earlier
	// SET, failed); refused (the sidecar will not connect to that
	// destination); not sent; no answer.
	Outcome string `json:"outcome"`
	Status  int    `json:"status_code,omitempty"`
	// Latency is in nanoseconds, as every duration in the admin API's JSON.
	Latency time.Duration `json:"latency,omitempty"`
	Error   string        `json:"error,omitempty"`
}

// Probe outcomes besides the outbox's own.
const (
	probeRefused  = "refused"
	probeFailing  = "failing"
	probeNotSent  = "not sent"
	probeNoAnswer = "no answer"
)

// probeReceivers asks the running sidecar to send a verification SET to each
// push stream of the given receivers, then waits for the outbox to record the
// first delivery attempt of that SET. The sidecar's outbox makes the
// connection, so its destination checks (no private addresses unless
// allowed, no environment proxies, no redirects) apply to the probe too: a
// stream whose destination the outbox refuses is reported as refused at
// once, with the outbox's reason, instead of waiting out the timeout.
// The error is non-nil unless every stream's SET was delivered.
func probeReceivers(ctx context.Context, c *adminClient, recv []ssf.Receiver, timeout time.Duration) ([]probeResult, error) {
	names := map[string]bool{}
	for _, r := range recv {
		names[r.Name] = true
	}
	var streams []ssf.Stream
	if err := c.do(ctx, "GET", "/admin/streams", nil, &streams); err != nil {
		return nil, err
	}
	results := []probeResult{}
	failed, refused := 0, 0
	for _, s := range streams {
		if !names[s.Receiver] || methodName(s.DeliveryMethod) != "push" {
			continue
		}
		res := probeResult{Stream: s.ID, Receiver: s.Receiver, Endpoint: endpointHost(s.EndpointURL)}
		state := fmt.Sprintf("probe-%d", time.Now().UnixNano())
		// What the stream's last failure was before this probe: a later one
		// is the endpoint's answer now, even while the probe's own SET
		// waits behind the stream's earlier ones.
		var before outbox.StreamStats
		_ = c.do(ctx, "GET", "/admin/outbox/"+s.ID, nil, &before)
		if err := c.do(ctx, "POST", "/admin/streams/"+s.ID+"/verify", map[string]string{"state": state}, nil); err != nil {
			res.Outcome, res.Error = probeNotSent, err.Error()
		} else if a, err := waitForAttempt(ctx, c, s.ID, state, before.LastErrorAt, timeout); err != nil {
			res.Outcome, res.Error = probeNoAnswer, err.Error()
			var f streamFailure
			if errors.As(err, &f) {
				res.Outcome, res.Error = probeFailing, explainPushError(f.lastErr)
				if isRefusal(f.lastErr) {
					res.Outcome = probeRefused
				}
			}
		} else {
			res.Outcome, res.Status, res.Latency, res.Error = a.Outcome, a.StatusCode, a.Latency, explainPushError(a.Error)
			if isRefusal(a.Error) {
				res.Outcome = probeRefused
			}
		}
		if res.Outcome == probeRefused {
			refused++
		}
		if res.Outcome != "delivered" {
			failed++
		}
		results = append(results, res)
	}
	if failed == 0 {
		return results, nil
	}
	err := fmt.Errorf("%d of %d push endpoint(s) did not accept the verification SET", failed, len(results))
	if refused > 0 {
		err = fmt.Errorf("%w; %d refused: the sidecar does not connect to private, loopback, link-local, CGNAT, unspecified or NAT64 addresses unless --allow-private-endpoints", err, refused)
	}
	return results, err
}

// printProbeResults writes one line per probed stream.
func printProbeResults(stdout io.Writer, results []probeResult) {
	rows := make([][]string, 0, len(results))
	for _, r := range results {
		code := "-"
		if r.Status != 0 {
			code = strconv.Itoa(r.Status)
		}
		lat := "-"
		if r.Latency > 0 {
			lat = r.Latency.Round(time.Millisecond).String()
		}
		rows = append(rows, []string{r.Receiver, r.Stream, r.Endpoint, r.Outcome, code, lat, orDash(r.Error)})
	}
	fmt.Fprintln(stdout)
	table(stdout, []string{"RECEIVER", "STREAM", "ENDPOINT", "OUTCOME", "STATUS", "LATENCY", "ERROR"}, rows)
	if len(results) == 0 {
		fmt.Fprintln(stdout, "no push streams of these receivers to probe")
	}
}

// streamFailure says the stream's newest attempt failed; the probe's own
// SET waits behind the stream's earlier ones.
type streamFailure struct{ lastErr string }

func (e streamFailure) Error() string { return "the stream is failing: " + e.lastErr }

// isRefusal reports whether an attempt's error is the outbox refusing the
// destination (as opposed to the destination failing).
func isRefusal(msg string) bool {
	return msg != "" && strings.Contains(msg, outbox.ErrForbiddenDestination.Error())
}

// explainPushError says what a redirect answer means for a push.
func explainPushError(msg string) string {
	if len(msg) >= 3 && msg[0] == '3' && msg[1] >= '0' && msg[1] <= '9' && msg[2] >= '0' && msg[2] <= '9' {
		return msg + " (redirect not followed: pushes never follow redirects)"
	}
	return msg
}

// waitForAttempt waits for the first delivery attempt of the verification
// SET carrying state. The probe's SET waits behind the stream's earlier
// ones, so a failed attempt newer than prevErrAt (the stream's last failure
// before the probe was sent) ends the wait at once with a streamFailure:
// it is the endpoint's answer now. So does a stream failing because the
// outbox refuses its destination: waiting would not change that answer.
func waitForAttempt(ctx context.Context, c *adminClient, stream, state string, prevErrAt time.Time, timeout time.Duration) (outboxAttempt, error) {
	deadline := time.Now().Add(timeout)
	for {
		var recs []outboxRecord
		if err := c.do(ctx, "GET", "/admin/outbox/"+stream+"/history?limit=50", nil, &recs); err != nil {
			return outboxAttempt{}, err
		}
		for _, r := range recs {
			if strings.Contains(string(r.Claims), `"state":"`+state+`"`) && len(r.Attempts) > 0 {
				return r.Attempts[len(r.Attempts)-1], nil
			}
		}
		var st outbox.StreamStats
		stErr := c.do(ctx, "GET", "/admin/outbox/"+stream, nil, &st)
		if stErr == nil && !st.FailingSince.IsZero() && st.LastError != "" &&
			(!st.LastErrorAt.Equal(prevErrAt) || isRefusal(st.LastError)) {
			return outboxAttempt{}, streamFailure{st.LastError}
		}
		if time.Now().After(deadline) {
			// Say what the stream's own last attempt met.
			if stErr == nil && st.LastError != "" {
				return outboxAttempt{}, fmt.Errorf("no attempt within %s; the stream is failing: %s", timeout, st.LastError)
			}
			return outboxAttempt{}, fmt.Errorf("no delivery attempt within %s (the stream may be paused or backing off)", timeout)
		}
		select {
		case <-ctx.Done():
			return outboxAttempt{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// reloadReceivers asks the running sidecar to reload (POST /admin/reload).
func reloadReceivers(ctx context.Context, fs *flag.FlagSet, af *adminFlags, args []string, stdout io.Writer) error {
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError{"receivers reload takes no arguments: the sidecar re-reads the files it was started with"}
	}
	c, done, err := af.connect(ctx, "receivers reload")
	if err != nil {
		return err
	}
	defer done()
	var res reloadResult
	if err := c.do(ctx, http.MethodPost, "/admin/reload", map[string]string{}, &res); err != nil {
		return err
	}
	if af.json {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "reloaded: %d receiver(s); added %s, removed %s, changed %s; admin token %s\n", res.Receivers,
		listOrNone(res.Changes.Added), listOrNone(res.Changes.Removed), listOrNone(res.Changes.Changed), res.AdminToken)
	for _, w := range res.Warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w)
	}
	if len(res.NeedsRestart) > 0 {
		fmt.Fprintf(stdout, "needs a restart to take effect: %s\n", strings.Join(res.NeedsRestart, ", "))
	}
	return nil
}

func listOrNone(l []string) string {
	if len(l) == 0 {
		return "none"
	}
	return strings.Join(l, ", ")
}
