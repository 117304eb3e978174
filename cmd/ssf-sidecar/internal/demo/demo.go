// Package demo runs a simulated authentik, the sidecar in front of it and a
// receiver that verifies every SET: the demo command, and the world the
// whole-system tests act in.
package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demoreceiver"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/testkit"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
	"github.com/ssf-sidecar/ssf-sidecar/tap/authentiktest"
)

// World is everything the demo (and the whole-system tests) run: a
// simulated authentik, the sidecar in front of it, and a receiver that
// verifies every SET it is pushed.
type World struct {
	AK       *authentiktest.Server
	Sidecar  *sidecar.Sidecar
	Receiver *demoreceiver.Receiver
	Front    string // the sidecar's proxy URL
	AdminURL string
	Token    string // the demo receiver's static token
	DataDir  string

	cancel context.CancelFunc
	done   chan error
}

// Options say how Start builds the world.
type Options struct {
	DataDir      string
	Logger       *slog.Logger // default: discard
	PollInterval time.Duration
	Receivers    []ssf.Receiver // default: one push receiver with a static token
	// Mutate, when set, adjusts the sidecar's configuration before it is built.
	Mutate func(*sidecar.Config)
	// TracerProvider, when set, is traced into instead of the OTEL_* set-up.
	TracerProvider trace.TracerProvider
	// SidecarOptions are passed on to sidecar.Build.
	SidecarOptions []sidecar.Option
}

// ReceiverToken is the default receiver's static bearer token.
const ReceiverToken = "demo-receiver-token-0123456789abcdef"

// Start runs a simulated authentik, the sidecar in front of it (built
// from o) and the receiver, and returns once the sidecar serves and its
// event-API poller has made its first read.
func Start(ctx context.Context, o Options) (*World, error) {
	w := &World{Token: ReceiverToken, DataDir: o.DataDir}
	var err error
	w.AK, err = authentiktest.Start(authentiktest.Config{SecretKey: "demo-authentik-secret-key"})
	if err != nil {
		return nil, fmt.Errorf("simulated authentik: %w", err)
	}
	listen, err := testkit.FreeAddr()
	if err != nil {
		return nil, err
	}
	adminListen, err := testkit.FreeAddr()
	if err != nil {
		return nil, err
	}
	w.Front = "http://" + listen
	w.AdminURL = "http://" + adminListen
	if o.PollInterval == 0 {
		o.PollInterval = 300 * time.Millisecond
	}
	cfg := sidecar.Config{
		Listen: listen, AdminListen: adminListen, Upstream: w.AK.URL(), Issuer: w.Front + "/ssf",
		DataDir: o.DataDir, AuthentikToken: w.AK.AdminToken(), AuthentikSecretKey: w.AK.SecretKey(),
		AllowPrivateEndpoints: true, PollInterval: o.PollInterval, DefaultSubjects: "ALL",
		Retention: 720 * time.Hour, DeliveredRetention: 72 * time.Hour, PushTimeout: 5 * time.Second,
		MaxBackoff: 2 * time.Second, PauseAfter: 72 * time.Hour, KeyOverlap: 168 * time.Hour, MaxBody: 64 << 10,
		LogFormat: "text", LogLevel: "warn", TracePropagation: true, DirectoryRecheck: 5 * time.Minute,
	}
	if o.Mutate != nil {
		o.Mutate(&cfg)
	}
	receivers := o.Receivers
	if receivers == nil {
		receivers = []ssf.Receiver{{
			Name: "demo-receiver", Audience: "https://receiver.demo.example/", SubjectFormat: ssf.SubjectFormatComplex,
			Profile: ssf.ProfileSSF, RequireScopes: true,
			Tokens: []ssf.Token{{Value: ReceiverToken, Scopes: []string{ssf.ScopeManage, ssf.ScopeRead}}},
		}}
	}
	logger := o.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	appOpts := append([]sidecar.Option(nil), o.SidecarOptions...)
	if o.TracerProvider != nil {
		appOpts = append(appOpts, sidecar.WithTracerProvider(o.TracerProvider))
	}
	w.Sidecar, err = sidecar.Build(ctx, cfg, receivers, logger, appOpts...)
	if err != nil {
		w.AK.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.done = make(chan error, 1)
	go func() { w.done <- w.Sidecar.Run(runCtx) }()
	select {
	case <-w.Sidecar.Proxy().Ready():
	case err := <-w.done:
		w.AK.Close()
		return nil, fmt.Errorf("sidecar stopped at start: %w", err)
	case <-time.After(10 * time.Second):
		w.Close()
		return nil, errors.New("sidecar did not start within 10 s")
	}
	// A fresh data dir starts reading authentik's event API at its newest
	// record: act only once that first read is done, or an early action
	// would fall before the starting point.
	if cfg.AuthentikToken != "" {
		deadline := time.Now().Add(10 * time.Second)
		for w.Sidecar.Tap().Stats().Polls == 0 {
			if time.Now().After(deadline) {
				w.Close()
				return nil, errors.New("the event-API poller did not complete its first read within 10 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	w.Receiver, err = demoreceiver.Start(w.Front+"/ssf/jwks.json", cfg.Issuer)
	if err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

// Close stops the sidecar, the receiver and the simulated authentik.
func (w *World) Close() error {
	var err error
	if w.cancel != nil {
		w.cancel()
		err = <-w.done
		w.cancel = nil
	}
	if w.Receiver != nil {
		w.Receiver.Close()
	}
	w.AK.Close()
	return err
}

// ssfCall sends a receiver request to the sidecar's SSF API.
func (w *World) SSFCall(ctx context.Context, method, path string, body any, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, w.Front+path, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+w.Token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, strings.TrimSpace(string(data)))
	}
	if out != nil && len(data) > 0 {
		return resp.StatusCode, json.Unmarshal(data, out)
	}
	return resp.StatusCode, nil
}

// createPushStream creates a push stream to the demo receiver.
func (w *World) CreatePushStream(ctx context.Context, events []string) (string, error) {
	var st struct {
		StreamID string `json:"stream_id"`
	}
	_, err := w.SSFCall(ctx, http.MethodPost, "/ssf/streams", map[string]any{
		"delivery":         map[string]any{"method": ssf.MethodPushURN, "endpoint_url": w.Receiver.URL()},
		"events_requested": events,
		"description":      "ssf-sidecar demo receiver",
	}, &st)
	return st.StreamID, err
}

// adminDo calls authentik's API through the sidecar with the admin token.
func (w *World) AdminDo(ctx context.Context, method, path, body string) (*http.Response, []byte, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, w.Front+path, rd)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+w.AK.AdminToken())
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp, data, nil
}

// browserDo sends a request with a logged-in browser's cookies and its CSRF
// header, as authentik's web UI does.
func (w *World) BrowserDo(ctx context.Context, client *http.Client, method, path string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, method, w.Front+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-authentik-CSRF", authentiktest.CookieValue(client, w.Front, "authentik_csrf"))
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// demoStep is one scripted action and the SETs it must produce.
type demoStep struct {
	say    string
	expect []expectedSET
	run    func(ctx context.Context) error
}

type expectedSET struct {
	event     string // short event name
	initiator string // "" for SSF events
}

// RunOptions say how Run plays the demo.
type RunOptions struct {
	Logger  *slog.Logger  // the sidecar's logs (default: discarded)
	Timeout time.Duration // how long to wait for every SET to arrive
	// Keep leaves everything running, with the URLs printed, until ctx ends.
	Keep bool
	// SidecarOptions are passed on to sidecar.Build.
	SidecarOptions []sidecar.Option
}

// Run plays the demo in a fresh data dir: it starts the world, plays the
// scripted user and admin, and prints to stdout what the receiver got.
func Run(ctx context.Context, stdout io.Writer, ro RunOptions) error {
	dir, err := os.MkdirTemp("", "ssf-sidecar-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	o := Options{DataDir: dir, Logger: ro.Logger, SidecarOptions: ro.SidecarOptions}
	start := time.Now()
	w, err := Start(ctx, o)
	if err != nil {
		return err
	}
	defer w.Close()
	// The receiver prints from its own goroutines: share one locked writer.
	stdout = &lockedWriter{w: stdout}
	w.Receiver.SetOutput(stdout)

	fmt.Fprintf(stdout, "ssf-sidecar demo\n\n")
	fmt.Fprintf(stdout, "  simulated authentik  %s\n", w.AK.URL())
	fmt.Fprintf(stdout, "  ssf-sidecar          %s   (issuer %s/ssf)\n", w.Front, w.Front)
	fmt.Fprintf(stdout, "  discovery            %s/.well-known/ssf-configuration/ssf\n", w.Front)
	fmt.Fprintf(stdout, "  admin API            %s/admin/streams\n", w.AdminURL)
	fmt.Fprintf(stdout, "  receiver             %s\n\n", w.Receiver.URL())

	summary, err := Script(ctx, w, stdout, ro.Timeout)
	fmt.Fprintf(stdout, "\n%s (%.1f s)\n", summary, time.Since(start).Seconds())
	if err != nil {
		return err
	}
	if ro.Keep {
		fmt.Fprintf(stdout, "\nEverything keeps running. Ctrl-C to stop.\n")
		fmt.Fprintf(stdout, "  dashboard                %s/admin/dashboard/\n", w.AdminURL)
		fmt.Fprintf(stdout, "  CLI                      ssf-sidecar streams list --admin-url %s\n", w.AdminURL)
		fmt.Fprintf(stdout, "  receiver token           %s\n", w.Token)
		fmt.Fprintf(stdout, "  authentik admin token    %s   (an API token of the simulated authentik's akadmin)\n", w.AK.AdminToken())
		fmt.Fprintf(stdout, "  try                      curl -s -H 'Authorization: Bearer %s' %s/ssf/streams\n", w.Token, w.Front)
		<-ctx.Done()
	}
	return nil
}

// ServeAuthentik runs the simulated authentik alone and prints how
// to put `serve` in front of it, until ctx ends.
func ServeAuthentik(ctx context.Context, listen string, stdout io.Writer) error {
	const secret = "demo-authentik-secret-key"
	ak, err := authentiktest.Start(authentiktest.Config{Addr: listen, SecretKey: secret})
	if err != nil {
		return fmt.Errorf("simulated authentik: %w", err)
	}
	defer ak.Close()
	if _, err := ak.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "alice-password-1"}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "simulated authentik at %s (Ctrl-C stops)\n\n", ak.URL())
	fmt.Fprintf(stdout, "  admin API token   %s   (user akadmin)\n", ak.AdminToken())
	fmt.Fprintf(stdout, "  SECRET_KEY        %s\n", secret)
	fmt.Fprintf(stdout, "  a user            alice / alice-password-1 (login flow %s)\n\n", ak.Flows().Authentication)
	fmt.Fprintf(stdout, "Put the sidecar in front of it, in another terminal:\n\n")
	fmt.Fprintf(stdout, "  SSF_AUTHENTIK_TOKEN=%s SSF_AUTHENTIK_SECRET_KEY=%s \\\n", ak.AdminToken(), secret)
	fmt.Fprintf(stdout, "    ssf-sidecar serve --upstream %s --listen 127.0.0.1:9080 --issuer http://127.0.0.1:9080/ssf \\\n", ak.URL())
	fmt.Fprintf(stdout, "      --receivers receivers.yaml --allow-private-endpoints --data-dir ./data --log-format text\n\n")
	fmt.Fprintf(stdout, "then follow the README's receivers walkthrough against http://127.0.0.1:9080.\n")
	<-ctx.Done()
	return nil
}

// Script creates a stream and plays the scripted user and admin,
// then waits until every expected SET has arrived, verified.
func Script(ctx context.Context, w *World, out io.Writer, timeout time.Duration) (string, error) {
	alice, err := w.AK.AddUser(authentiktest.UserSpec{Username: "alice", Email: "alice@example.com", Password: "alice-password-1"})
	if err != nil {
		return "", err
	}
	totp, err := w.AK.AddDevice(authentiktest.DeviceSpec{Type: authentiktest.DeviceTOTP, UserPK: alice.PK, Name: "Alice's phone"})
	if err != nil {
		return "", err
	}
	loginSlug := w.AK.Flows().Authentication
	var browser *http.Client
	var streamID string
	steps := []demoStep{
		{say: "the receiver creates a push stream", expect: []expectedSET{{event: "verification"}}, run: func(ctx context.Context) error {
			var err error
			streamID, err = w.CreatePushStream(ctx, []string{
				ssf.EventSessionEstablished, ssf.EventSessionRevoked, ssf.EventCredentialChange,
				ssf.EventAccountDisabled, ssf.EventAccountEnabled, ssf.EventAccountPurged, ssf.EventIdentifierChanged,
			})
			if err == nil {
				fmt.Fprintf(out, "  stream %s, push to %s\n", streamID, w.Receiver.URL())
			}
			return err
		}},
		{say: "alice logs in", expect: []expectedSET{{"session-established", "user"}}, run: func(ctx context.Context) error {
			var err error
			browser, err = authentiktest.Login(ctx, w.Front, loginSlug, "alice", "alice-password-1")
			return err
		}},
		{say: "alice logs out", expect: []expectedSET{{"session-revoked", "user"}}, run: func(ctx context.Context) error {
			_, err := authentiktest.RunFlow(ctx, browser, w.Front, w.AK.Flows().Invalidation, nil)
			return err
		}},
		{say: "alice logs in again", expect: []expectedSET{{"session-established", "user"}}, run: func(ctx context.Context) error {
			var err error
			browser, err = authentiktest.Login(ctx, w.Front, loginSlug, "alice", "alice-password-1")
			return err
		}},
		{say: "alice changes her password", expect: []expectedSET{{"credential-change", "user"}}, run: func(ctx context.Context) error {
			r, err := authentiktest.RunFlow(ctx, browser, w.Front, w.AK.Flows().PasswordChange,
				map[string]any{"component": "ak-stage-prompt", "password": "alice-password-2", "password_repeat": "alice-password-2"})
			if err == nil && r.Component != "xak-flow-redirect" {
				err = fmt.Errorf("password change flow answered %q", r.Component)
			}
			return err
		}},
		{say: "alice removes her TOTP authenticator", expect: []expectedSET{{"credential-change", "user"}}, run: func(ctx context.Context) error {
			code, err := w.BrowserDo(ctx, browser, http.MethodDelete, fmt.Sprintf("/api/v3/authenticators/totp/%d/", totp.PK))
			if err == nil && code != http.StatusNoContent {
				err = fmt.Errorf("device delete answered %d", code)
			}
			return err
		}},
		{say: "an admin revokes alice's session", expect: []expectedSET{{"session-revoked", "admin"}}, run: func(ctx context.Context) error {
			_, data, err := w.AdminDo(ctx, http.MethodGet, fmt.Sprintf("/api/v3/core/authenticated_sessions/?user=%d", alice.PK), "")
			if err != nil {
				return err
			}
			var list struct {
				Results []struct {
					UUID string `json:"uuid"`
				} `json:"results"`
			}
			if err := json.Unmarshal(data, &list); err != nil {
				return fmt.Errorf("sessions of alice: %w", err)
			}
			if len(list.Results) == 0 {
				return errors.New("no session of alice to revoke")
			}
			resp, _, err := w.AdminDo(ctx, http.MethodDelete, "/api/v3/core/authenticated_sessions/"+list.Results[0].UUID+"/", "")
			if err == nil && resp.StatusCode != http.StatusNoContent {
				err = fmt.Errorf("session delete answered %d", resp.StatusCode)
			}
			return err
		}},
		{say: "an admin disables alice's account", expect: []expectedSET{{event: "account-disabled"}}, run: func(ctx context.Context) error {
			resp, _, err := w.AdminDo(ctx, http.MethodPatch, fmt.Sprintf("/api/v3/core/users/%d/", alice.PK), `{"is_active":false}`)
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("user update answered %d", resp.StatusCode)
			}
			return err
		}},
	}
	var expected []expectedSET
	for _, s := range steps {
		fmt.Fprintf(out, "→ %s\n", s.say)
		if err := s.run(ctx); err != nil {
			return "", fmt.Errorf("%s: %w", s.say, err)
		}
		expected = append(expected, s.expect...)
		// Each action's SET before the next action, so the output reads in order.
		if err := w.Receiver.WaitFor(ctx, len(expected), timeout); err != nil {
			break
		}
	}
	err = w.Receiver.WaitFor(ctx, len(expected), timeout)
	got := w.Receiver.Received()
	missing, unexpected := compareDemo(expected, got)
	summary := fmt.Sprintf("summary: %d actions, %d SETs expected, %d received and verified, %d missing, %d unexpected, %d rejected",
		len(steps), len(expected), len(got), len(missing), len(unexpected), w.Receiver.Rejected())
	if err != nil || len(missing) > 0 || len(unexpected) > 0 || w.Receiver.Rejected() > 0 {
		return summary, fmt.Errorf("the receiver did not get exactly the expected SETs (missing %v, unexpected %v)", missing, unexpected)
	}
	return summary, nil
}

// compareDemo matches received SETs to expected ones as multisets.
func compareDemo(expected []expectedSET, got []demoreceiver.SET) (missing []expectedSET, unexpected []demoreceiver.SET) {
	left := map[expectedSET]int{}
	for _, e := range expected {
		left[e]++
	}
	for _, g := range got {
		k := expectedSET{event: g.Event, initiator: g.Initiator}
		if left[k] > 0 {
			left[k]--
		} else {
			unexpected = append(unexpected, g)
		}
	}
	for _, e := range expected {
		if left[e] > 0 {
			missing = append(missing, e)
			left[e]--
		}
	}
	return missing, unexpected
}

// lockedWriter serialises writes from several goroutines.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
