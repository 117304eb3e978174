package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"
)

// adminClient talks to a running sidecar's admin API.
type adminClient struct {
	base  string
	token string
	http  *http.Client
}

// adminFlags are shared by every admin subcommand.
type adminFlags struct {
	url     string
	token   string
	json    bool
	dataDir string
}

func (a *adminFlags) bind(fs *flag.FlagSet) {
	def := os.Getenv("SSF_ADMIN_URL")
	if def == "" {
		def = adminURLFromListen(envOr("SSF_ADMIN_LISTEN", "127.0.0.1:9090"))
	}
	fs.StringVar(&a.url, "admin-url", def, "admin API base URL (env SSF_ADMIN_URL; default from SSF_ADMIN_LISTEN)")
	fs.StringVar(&a.token, "admin-token", os.Getenv("SSF_ADMIN_TOKEN"), "admin bearer token (env SSF_ADMIN_TOKEN)")
	fs.BoolVar(&a.json, "json", false, "print JSON instead of a table")
	fs.StringVar(&a.dataDir, "data-dir", "", "work directly on a STOPPED sidecar's data dir instead of the admin API (read-only commands, replay and purge)")
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
	return &adminClient{base: strings.TrimRight(a.url, "/"), token: a.token, http: &http.Client{Timeout: 30 * time.Second}}
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
			Description string `json:"description"`
		}
		_ = json.Unmarshal(data, &e)
		msg := e.Description
		if msg == "" {
			msg = strings.TrimSpace(string(data))
		}
		err := fmt.Errorf("admin API answered %d: %s", resp.StatusCode, msg)
		switch resp.StatusCode {
		case http.StatusNotFound:
			return exitError{exitNotFound, err}
		case http.StatusUnauthorized, http.StatusForbidden:
			return exitError{exitAuth, err}
		}
		return err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("admin API answered something that is not the expected JSON: %w", err)
		}
	}
	return nil
}

// subcommand parses "<group> <verb> [flags] [args]".
func subcommand(group string, verbs map[string]string, args []string, stderr io.Writer) (string, *flag.FlagSet, *adminFlags, error) {
	usage := func() {
		fmt.Fprintf(stderr, "Usage: ssf-sidecar %s <command> [flags]\n\nCommands:\n", group)
		for _, v := range sortedKeys(verbs) {
			fmt.Fprintf(stderr, "  %-8s %s\n", v, verbs[v])
		}
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		if len(args) == 0 {
			return "", nil, nil, usageError{group + ": a command is required"}
		}
		return "", nil, nil, flag.ErrHelp
	}
	verb := args[0]
	if _, ok := verbs[verb]; !ok {
		usage()
		return "", nil, nil, usageError{fmt.Sprintf("%s: unknown command %q", group, verb)}
	}
	fs := flag.NewFlagSet(group+" "+verb, flag.ContinueOnError)
	fs.SetOutput(stderr)
	af := &adminFlags{}
	af.bind(fs)
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
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
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
