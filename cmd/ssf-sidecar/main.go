// Command ssf-sidecar turns an unmodified authentik into an OpenID Shared
// Signals Framework 1.0 transmitter.
//
//	ssf-sidecar serve     the service
//	ssf-sidecar demo      everything embedded, scripted, prints what receivers got
//	ssf-sidecar version   the build's version
//
// and admin commands that talk to a running sidecar's admin API.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=…"; empty,
// the binary reports its release (see version.go).
var version = ""

// Exit codes that mean something to scripts.
const (
	exitOK       = 0
	exitFailure  = 1 // the command ran and failed
	exitUsage    = 2 // wrong flags or arguments
	exitConfig   = 3 // configuration invalid
	exitNotFound = 4 // the named stream, key or record does not exist
	exitAuth     = 5 // the admin API refused the credentials
	exitNoServer = 6 // the admin API could not be reached
)

// usageError marks errors caused by how the command was called.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "run the sidecar in front of authentik", runServe},
		{"demo", "run a simulated authentik, the sidecar and a receiver, and show the SETs", runDemo},
		{"version", "print the version", runVersion},
		{"config", "config check: validate flags, environment and config file without starting", runConfig},
		{"receivers", "receivers check [--probe]: validate a receivers file", runReceivers},
		{"streams", "streams list|show|pause|resume|delete|verify: manage streams of a running sidecar", runStreams},
		{"outbox", "outbox stats|dlq|replay|purge: inspect and repair delivery", runOutbox},
		{"keys", "keys list|rotate: signing keys of a running sidecar", runKeys},
		{"bench", "bench proxy: measure the proxy against the upstream directly (and nginx when installed)", runBench},
		{"health", "exit 0 when the sidecar answers ready (for container health checks)", runHealth},
		{"migrate", "migrate: apply the database schema's migrations (--database-url)", runMigrate},
		{"migrate-store", "migrate-store --from-data-dir DIR --to-database-url URL: copy a stopped one-replica data dir into PostgreSQL", runMigrateStore},
		{"rekey", "rekey --database-url URL --encryption-key-file NEW --previous-encryption-key-file OLD: seal the database's secrets again under a new encryption key", runRekey},
		{"repair", "repair --data-dir DIR: find (and fix) key files a partial restore left out", runRepair},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		printUsage(stderr)
		return exitUsage
	}
	if args[0] == "help" && len(args) > 1 {
		// "help serve" is "serve --help".
		args = append(args[1:2:2], "--help")
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "-help" || args[0] == "help" {
		printUsage(stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			err := c.run(ctx, args[1:], stdout, stderr)
			return report(err, stderr)
		}
	}
	fmt.Fprintf(stderr, "ssf-sidecar: unknown command %q\n\n", args[0])
	printUsage(stderr)
	return exitUsage
}

func report(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	var ue usageError
	var ee exitError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "ssf-sidecar: %v\n", err)
		return exitUsage
	case errors.As(err, &ee):
		fmt.Fprintf(stderr, "ssf-sidecar: %v\n", err)
		return ee.code
	default:
		fmt.Fprintf(stderr, "ssf-sidecar: %v\n", err)
		return exitFailure
	}
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "ssf-sidecar turns authentik into an OpenID Shared Signals Framework 1.0 transmitter.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Usage: ssf-sidecar <command> [flags]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run 'ssf-sidecar <command> --help' for a command's flags.")
}

func runVersion(_ context.Context, args []string, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the version as JSON")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar version [--json]\n\nPrints the release and, when the build recorded it, the revision.\n\nFlags:")
		printFlags(stdout, fs)
	}
	if err := parseNoArgs(fs, args, help); err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(map[string]string{"version": buildVersion()})
	}
	fmt.Fprintf(stdout, "ssf-sidecar %s\n", buildVersion())
	return nil
}

// newLogger builds the process logger from --log-format and --log-level.
func newLogger(w io.Writer, format, level string) *slog.Logger {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "debug":
		lv = slog.LevelDebug
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		lv = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lv}
	if format == "text" {
		return slog.New(traceHandler{slog.NewTextHandler(w, opts)})
	}
	return slog.New(traceHandler{slog.NewJSONHandler(w, opts)})
}
