package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// adminClient talks to a running sidecar's admin API.
type adminClient struct {
	base  string
	token string
	// tokenFrom says where the token came from, for a 401.
	tokenFrom string
	http      *http.Client
}

// adminFlags are shared by every admin subcommand.
type adminFlags struct {
	url     string
	token   string
	json    bool
	dataDir string
}

func (a *adminFlags) bind(fs *flag.FlagSet, command string) {
	def := os.Getenv("SSF_ADMIN_URL")
	if def == "" {
		def = adminURLFromListen(envOr("SSF_ADMIN_LISTEN", "127.0.0.1:9090"))
	}
	fs.StringVar(&a.url, "admin-url", def, "admin API base URL (env SSF_ADMIN_URL; default from SSF_ADMIN_LISTEN)")
	// The token is never a flag default: --help would print it.
	fs.StringVar(&a.token, "admin-token", "", "admin bearer token (env SSF_ADMIN_TOKEN)")
	fs.BoolVar(&a.json, "json", false, "print JSON instead of a table")
	switch {
	case offlineCommands[command]:
		fs.StringVar(&a.dataDir, "data-dir", "", "work directly on a STOPPED sidecar's data dir instead of the admin API")
	case !strings.HasPrefix(command, "receivers "):
		// Accepted so that the refusal can say why.
		fs.StringVar(&a.dataDir, "data-dir", "", "not for this command: it needs the running sidecar")
	}
}

// connect returns a client of the running sidecar's admin API, or, with
// --data-dir, of the same API served in process on a stopped data dir.
func (a adminFlags) connect(ctx context.Context, command string) (*adminClient, func(), error) {
	if a.dataDir != "" {
		return offlineClient(ctx, command, a.dataDir)
	}
	return a.client(), func() {}, nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// adminURLFromListen turns a listen address into a URL a local client can
// reach (":9090" → http://127.0.0.1:9090).
func adminURLFromListen(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

func (a adminFlags) client() *adminClient {
	c := &adminClient{base: strings.TrimRight(a.url, "/"), token: a.token, tokenFrom: "--admin-token", http: &http.Client{Timeout: 30 * time.Second}}
	if c.token == "" {
		c.token, c.tokenFrom = os.Getenv("SSF_ADMIN_TOKEN"), "SSF_ADMIN_TOKEN"
	}
	return c
}

// checkAdminURL explains an --admin-url that cannot be right.
func checkAdminURL(base string) error {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return usageError{fmt.Sprintf("--admin-url %q is not an http(s) URL: use %s", base, adminURLFromListen(strings.TrimPrefix(strings.TrimPrefix(base, "http://"), "https://")))}
	}
	return nil
}

// do sends a request and decodes a JSON answer into out (when not nil).
func (c *adminClient) do(ctx context.Context, method, path string, body any, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	if err := checkAdminURL(c.base); err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return usageError{fmt.Sprintf("bad admin URL %q: %v", c.base, err)}
	}
	if body != nil || method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return exitError{exitNoServer, fmt.Errorf("cannot reach the admin API at %s (is the sidecar running? see --admin-url): %w", c.base, err)}
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if resp.StatusCode >= 300 {
		var e struct {
			Error       string `json:"error"`
			Description string `json:"description"`
		}
		isAdmin := json.Unmarshal(data, &e) == nil && e.Error != ""
		msg := e.Description
		if msg == "" {
			msg = strings.TrimSpace(string(data))
		}
		err := fmt.Errorf("admin API answered %d: %s", resp.StatusCode, msg)
		switch {
		case !isAdmin && resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusServiceUnavailable:
			return exitError{exitNoServer, fmt.Errorf("%s is not the admin API (it answered %d to %s): the admin API is on the sidecar's --admin-listen address (default http://127.0.0.1:9090), not on --listen", c.base, resp.StatusCode, path)}
		case resp.StatusCode == http.StatusNotFound:
			return exitError{exitNotFound, err}
		case resp.StatusCode == http.StatusUnauthorized && c.token == "":
			return exitError{exitAuth, fmt.Errorf("admin API answered 401: no admin token given (set --admin-token or SSF_ADMIN_TOKEN to the sidecar's admin token)")}
		case resp.StatusCode == http.StatusUnauthorized:
			return exitError{exitAuth, fmt.Errorf("admin API answered 401: the admin token from %s is not the sidecar's (%s)", c.tokenFrom, msg)}
		case resp.StatusCode == http.StatusForbidden:
			return exitError{exitAuth, err}
		}
		return err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return exitError{exitNoServer, fmt.Errorf("%s is not the admin API (its answer to %s is not the admin API's JSON): the admin API is on the sidecar's --admin-listen address (default http://127.0.0.1:9090), not on --listen", c.base, path)}
		}
	}
	return nil
}

// subcommand parses "<group> <verb> [flags] [args]". Help goes to stdout.
func subcommand(group string, verbs map[string]string, args []string, stdout io.Writer) (string, *flag.FlagSet, *adminFlags, error) {
	usage := func(w io.Writer) {
		fmt.Fprintf(w, "Usage: ssf-sidecar %s <command> [flags]\n\nCommands:\n", group)
		for _, v := range sortedKeys(verbs) {
			fmt.Fprintf(w, "  %-8s %s\n", v, verbs[v])
		}
		fmt.Fprintf(w, "\nRun 'ssf-sidecar %s <command> --help' for a command's flags.\n", group)
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		if len(args) == 0 {
			return "", nil, nil, usageError{fmt.Sprintf("%s: a command is required (%s); see 'ssf-sidecar %s --help'", group, strings.Join(sortedKeys(verbs), ", "), group)}
		}
		usage(stdout)
		return "", nil, nil, flag.ErrHelp
	}
	verb := args[0]
	if _, ok := verbs[verb]; !ok {
		hint := ""
		if s := closest(verb, sortedKeys(verbs)); s != "" {
			hint = fmt.Sprintf(": did you mean %q?", s)
		}
		return "", nil, nil, usageError{fmt.Sprintf("%s: unknown command %q%s (commands: %s)", group, verb, hint, strings.Join(sortedKeys(verbs), ", "))}
	}
	fs := flag.NewFlagSet(group+" "+verb, flag.ContinueOnError)
	af := &adminFlags{}
	af.bind(fs, group+" "+verb)
	fs.Usage = func() {
		fmt.Fprintf(stdout, "Usage: ssf-sidecar %s %s [flags]\n\n%s\n\nFlags:\n", group, verb, verbs[verb])
		printFlags(stdout, fs)
	}
	return verb, fs, af, nil
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// parseInterleaved parses flags that may come after positional arguments.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	help := fs.Usage
	var pos []string
	for {
		if err := parseFlags(fs, args, help); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(w io.Writer, header []string, rows [][]string) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	if len(rows) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
