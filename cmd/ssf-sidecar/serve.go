package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// loadConfig parses a subcommand's flags and resolves the configuration.
func loadConfig(name string, args []string, stdout io.Writer) (Config, map[string]rawValue, []string, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	set := bindFlags(fs)
	help := func() {
		fmt.Fprintf(stdout, "Usage: ssf-sidecar %s [flags]\n\nEvery flag also reads the environment variable shown, and --config names a YAML file\nholding any of these keys (flags win over the environment, which wins over the file).\nA boolean flag may be given bare (--allow-private-endpoints) or as --flag=true|false.\n\nFlags:\n", name)
		printFlags(stdout, fs)
	}
	if err := parseFlags(fs, args, help); err != nil {
		return Config{}, nil, nil, err
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
func loadValid(name string, args []string, stdout io.Writer) (Config, map[string]rawValue, []ssf.Receiver, error) {
	cfg, raw, rest, perr := loadConfig(name, args, stdout)
	if errors.Is(perr, flag.ErrHelp) {
		return Config{}, nil, nil, perr
	}
	var ue usageError
	if errors.As(perr, &ue) {
		return Config{}, nil, nil, perr
	}
	if err := noArgs(name, rest); err != nil {
		return Config{}, nil, nil, err
	}
	receivers, err := validateAll(cfg, perr)
	if err != nil {
		return Config{}, nil, nil, err
	}
	return cfg, raw, receivers, nil
}

func runServe(ctx context.Context, args []string, stdout io.Writer, stderr io.Writer) error {
	cfg, raw, receivers, err := loadValid("serve", args, stdout)
	if err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.LogFormat, cfg.LogLevel)
	for _, w := range cfg.Warnings(raw, receivers) {
		if !w.byComponent {
			logger.Warn(w.msg)
		}
	}
	// A data dir or store that cannot be opened degrades the start instead
	// of failing it: the sidecar is the only way in to authentik.
	a, err := sidecar.Build(ctx, cfg.Config, receivers, logger, sidecarOptions(sidecar.WithDegradedStart(),
		sidecar.WithLive(liveConfig{newLive(cfg, raw, receivers, logger)}))...)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// sidecarOptions are the options every sidecar the command builds gets
// (the build's version, the seal keys from the encryption key), then more.
func sidecarOptions(more ...sidecar.Option) []sidecar.Option {
	return append([]sidecar.Option{sidecar.WithVersion(buildVersion()), sidecar.WithSealKeys(storeSeal)}, more...)
}

// storeSeal reads the operator's encryption key the configuration names
// (and the one being rotated out, if given) and derives the seal keys of a
// shared database from them.
func storeSeal(c sidecar.Config) (sidecar.SealKeys, error) {
	cfg := Config{Config: c}
	master, err := cfg.encryptionKey()
	if err != nil {
		return sidecar.SealKeys{}, err
	}
	prev, err := cfg.previousEncryptionKey()
	if err != nil {
		return sidecar.SealKeys{}, err
	}
	var seal sidecar.SealKeys
	seal.StreamSecrets, seal.SigningKeys = sealKeys(master)
	seal.PreviousStreamSecrets, seal.PreviousSigningKeys = sealKeys(prev)
	return seal, nil
}

// liveConfig is the sidecar's view of what a reload changes.
type liveConfig struct{ l *live }

func (c liveConfig) AdminToken() string        { return c.l.adminToken() }
func (c liveConfig) Receivers() []ssf.Receiver { return c.l.currentReceivers() }
func (c liveConfig) SetApply(apply func([]ssf.Receiver) ssf.ReceiverChange) {
	c.l.setApply(apply)
}
func (c liveConfig) Reload(why string) (any, error) { return c.l.reload(why) }
func (c liveConfig) Watch(ctx context.Context)      { c.l.watch(ctx) }

func runConfig(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			fmt.Fprintln(stdout, "Usage: ssf-sidecar config check [serve flags]\n\nValidates flags, environment and config file exactly as serve would, without starting.")
			return flag.ErrHelp
		}
		return usageError{"usage: ssf-sidecar config check [serve flags]"}
	}
	var rest []string
	asJSON := false
	for _, a := range args[1:] {
		switch a {
		case "--json", "-json", "--json=true", "-json=true":
			asJSON = true
		case "--json=false", "-json=false":
		default:
			rest = append(rest, a)
		}
	}
	cfg, raw, receivers, err := loadValid("config check", rest, stdout)
	if err != nil {
		return err
	}
	if asJSON {
		type opt struct {
			Name   string `json:"name"`
			Value  string `json:"value"`
			Source string `json:"source"`
		}
		out := struct {
			Valid     bool     `json:"valid"`
			Receivers int      `json:"receivers"`
			Options   []opt    `json:"options"`
			Warnings  []string `json:"warnings"`
		}{Valid: true, Receivers: len(receivers), Options: []opt{}, Warnings: []string{}}
		for _, o := range options {
			rv := raw[o.name]
			out.Options = append(out.Options, opt{o.name, shownValue(o, rv.value), rv.source})
		}
		for _, w := range cfg.Warnings(raw, receivers) {
			out.Warnings = append(out.Warnings, w.msg)
		}
		return printJSON(stdout, out)
	}
	rows := make([][]string, 0, len(options))
	for _, o := range options {
		rv := raw[o.name]
		rows = append(rows, []string{o.name, orDash(shownValue(o, rv.value)), rv.source})
	}
	table(stdout, []string{"OPTION", "VALUE", "FROM"}, rows)
	warnings := cfg.Warnings(raw, receivers)
	for _, w := range warnings {
		fmt.Fprintf(stdout, "warning: %s\n", w.msg)
	}
	fmt.Fprintf(stdout, "\nconfiguration is valid; %d receiver(s), %d warning(s)\n", len(receivers), len(warnings))
	return nil
}

// shownValue is an option's value as config check shows it: secrets
// hidden, and a URL's password too.
func shownValue(o option, v string) string {
	if o.secret && v != "" {
		return "(set, hidden)"
	}
	return withoutPassword(v)
}

// checkDeep runs the checks that need the other packages: key files and
// the receivers file. It reports every problem at once.
func checkDeep(c Config) ([]ssf.Receiver, error) {
	var errs []error
	pasted := slices.ContainsFunc(c.SigningKeys, func(f string) bool {
		return strings.Contains(f, "-----BEGIN") || strings.ContainsAny(f, "\n\r")
	})
	switch {
	case pasted:
		// The key itself was given: never quote it back.
		errs = append(errs, errors.New("--signing-key takes the paths of PEM files, not the key itself: write the key to a file (mode 0600) and give its path"))
	case len(c.SigningKeys) > 0:
		if err := (ssf.KeyConfig{Files: c.SigningKeys, DataDir: c.DataDir}).Validate(); err != nil {
			errs = append(errs, fmt.Errorf("--signing-key: %w", err))
		}
	}
	var receivers []ssf.Receiver
	if c.Receivers != "" && secretLike(c.Receivers) {
		errs = append(errs, errors.New("--receivers takes the path of a receivers file; the value given does not look like one (it is not shown)"))
	} else if c.Receivers != "" {
		r, err := ssf.LoadReceivers(c.Receivers)
		if err != nil {
			errs = append(errs, fmt.Errorf("--receivers: %w", err))
		}
		receivers = r
	}
	return receivers, errors.Join(errs...)
}
