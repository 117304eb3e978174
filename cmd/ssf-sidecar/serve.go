package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// loadConfig parses a subcommand's flags and resolves the configuration.
func loadConfig(name string, args []string, stderr io.Writer) (Config, map[string]rawValue, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	set := bindFlags(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ssf-sidecar %s [flags]\n\nEvery flag also reads the environment variable shown, and --config names a YAML file\nholding any of these keys (flags win over the environment, which wins over the file).\n\nFlags:\n", name)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return Config{}, nil, nil, err
		}
		return Config{}, nil, nil, usageError{err.Error()}
	}
	cfg, raw, err := resolve(set, os.Getenv)
	return cfg, raw, fs.Args(), err
}

// validateAll runs every configuration check and joins the problems.
func validateAll(cfg Config, parseErr error) ([]ssf.Receiver, error) {
	errs := []error{parseErr, cfg.Validate()}
	receivers, err := checkDeep(cfg)
	errs = append(errs, err)
	if err := errors.Join(errs...); err != nil {
		return nil, exitError{exitConfig, fmt.Errorf("the configuration has problems:\n  - %s", strings.ReplaceAll(err.Error(), "\n", "\n  - "))}
	}
	return receivers, nil
}

// loadValid is the start of serve and config check: parse the flags
// (help and usage errors returned as they are), refuse stray arguments,
// and run every configuration check.
func loadValid(name string, args []string, stderr io.Writer) (Config, map[string]rawValue, []ssf.Receiver, error) {
	cfg, raw, rest, perr := loadConfig(name, args, stderr)
	if errors.Is(perr, flag.ErrHelp) {
		return Config{}, nil, nil, perr
	}
	var ue usageError
	if errors.As(perr, &ue) {
		return Config{}, nil, nil, perr
	}
	if len(rest) > 0 {
		return Config{}, nil, nil, usageError{fmt.Sprintf("%s takes no arguments, got %q", name, rest)}
	}
	receivers, err := validateAll(cfg, perr)
	if err != nil {
		return Config{}, nil, nil, err
	}
	return cfg, raw, receivers, nil
}

func runServe(ctx context.Context, args []string, _ io.Writer, stderr io.Writer) error {
	cfg, _, receivers, err := loadValid("serve", args, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	if cfg.AuthentikToken == "" {
		logger.Warn("no --authentik-token: the event-API poller is off, so actions that never cross the proxy (flows run by outposts, LDAP sync, background tasks) are not seen")
	}
	if len(receivers) == 0 {
		logger.Warn("no receivers configured (--receivers): nobody can create streams yet")
	}
	// A data dir or store that cannot be opened degrades the start instead
	// of failing it: the sidecar is the only way in to authentik.
	a, err := buildApp(ctx, cfg, receivers, logger, withDegradedStart())
	if err != nil {
		return err
	}
	return a.run(ctx)
}

func runConfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stderr, "Usage: ssf-sidecar config check [serve flags]\n\nValidates flags, environment and config file exactly as serve would, without starting.")
			return flag.ErrHelp
		}
		return usageError{"usage: ssf-sidecar config check [serve flags]"}
	}
	_, raw, receivers, err := loadValid("config check", args[1:], stderr)
	if err != nil {
		return err
	}
	rows := make([][]string, 0, len(options))
	for _, o := range options {
		rv := raw[o.name]
		v := rv.value
		if o.secret && v != "" {
			v = "(set, hidden)"
		}
		rows = append(rows, []string{o.name, orDash(v), rv.source})
	}
	table(stdout, []string{"OPTION", "VALUE", "FROM"}, rows)
	fmt.Fprintf(stdout, "\nconfiguration is valid; %d receiver(s)\n", len(receivers))
	return nil
}
