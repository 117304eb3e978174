package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// runHealth asks a running sidecar whether it is ready. It exists so that a
// container image with nothing but the binary can have a health check.
func runHealth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("health", flag.ContinueOnError)
	base := os.Getenv("SSF_ADMIN_URL")
	if base == "" {
		base = adminURLFromListen(envOr("SSF_ADMIN_LISTEN", "127.0.0.1:9090"))
	}
	adminURL := fs.String("admin-url", base, "admin API base URL (env SSF_ADMIN_URL; default from SSF_ADMIN_LISTEN)")
	target := fs.String("url", "", "full URL to ask (default: the admin URL's /readyz)")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	asJSON := fs.Bool("json", false, "print the readiness answer as JSON (it is JSON already; kept for consistency)")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar health [flags]\n\nExits 0 when the sidecar answers ready on its admin listener (for container health checks).\n\nFlags:")
		printFlags(stdout, fs)
	}
	if err := parseNoArgs(fs, args, help); err != nil {
		return err
	}
	_ = asJSON
	if *target == "" {
		if err := checkAdminURL(*adminURL); err != nil {
			return err
		}
		*target = strings.TrimRight(*adminURL, "/") + "/readyz"
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *target, nil)
	if err != nil {
		return usageError{fmt.Sprintf("bad --url: %v", err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return exitError{exitNoServer, fmt.Errorf("not reachable: %w", err)}
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %d: %s", *target, resp.StatusCode, body)
	}
	fmt.Fprintf(stdout, "%s\n", bytes.TrimSpace(body))
	return nil
}
