package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// runRepair inspects a stopped (or degraded) sidecar's data dir for what a
// partial restore left out and, when asked, repairs it: the way out when
// the backup of the key files is gone.
func runRepair(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fset := flag.NewFlagSet("repair", flag.ContinueOnError)
	dataDir := fset.String("data-dir", envOr("SSF_DATA_DIR", "./data"), "the data dir to inspect (env SSF_DATA_DIR)")
	forget := fset.Bool("forget-missing-keys", false, "drop the records of signing keys whose files are missing (a new key is generated at the next start)")
	drop := fset.Bool("drop-lost-secrets", false, "clear the push secrets that cannot be opened and pause those streams (and create stream-secrets.key when it is missing)")
	asJSON := fset.Bool("json", false, "print JSON")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar repair --data-dir DIR [--forget-missing-keys] [--drop-lost-secrets]\n\n"+
			"Checks that the data dir holds every key file its store needs (signing-key-*.pem, stream-secrets.key).\n"+
			"Without a repair flag it only reports; exit 0 when nothing is missing, 1 when something is.\n"+
			"Works on a stopped sidecar, or next to one that started degraded because of the problem.\n\nFlags:")
		printFlags(stdout, fset)
	}
	if err := parseNoArgs(fset, args, help); err != nil {
		return err
	}
	cfg, _, err := resolve(map[string]string{}, os.Getenv)
	if err != nil {
		return exitError{exitConfig, err}
	}
	db := filepath.Join(*dataDir, sidecar.DBFile)
	if _, err := os.Stat(db); errors.Is(err, fs.ErrNotExist) {
		return exitError{exitNotFound, fmt.Errorf("no sidecar data in %s (expected %s)", *dataDir, db)}
	}
	store, err := outbox.Open(db, outbox.StoreOptions{OpenTimeout: 10 * time.Second})
	if err != nil {
		return fmt.Errorf("cannot open %s: %w", *dataDir, sidecar.ExplainOpenError(db, err))
	}
	defer store.Close()
	now := time.Now()
	problems, err := ssf.CheckRestore(store, *dataDir, len(cfg.SigningKeys) > 0, cfg.KeyOverlap, now)
	if err != nil {
		return err
	}
	var done []string
	if *forget || *drop {
		if done, err = ssf.RepairRestore(ctx, store, *dataDir, problems, *forget, *drop, now); err != nil {
			return err
		}
	}
	left, err := ssf.CheckRestore(store, *dataDir, len(cfg.SigningKeys) > 0, cfg.KeyOverlap, now)
	if err != nil {
		return err
	}
	if *asJSON {
		if done == nil {
			done = []string{}
		}
		if err := printJSON(stdout, map[string]any{"data_dir": *dataDir, "found": problems, "repaired": done, "ok": left.OK()}); err != nil {
			return err
		}
	} else {
		if problems.OK() {
			fmt.Fprintf(stdout, "%s is complete: every key file its store needs is there\n", *dataDir)
		} else {
			fmt.Fprintf(stdout, "found: %s\n", problems.Describe(*dataDir))
		}
		for _, d := range done {
			fmt.Fprintf(stdout, "repaired: %s\n", d)
		}
	}
	if !left.OK() {
		return fmt.Errorf("%s is incomplete: %s; to fix: %s", *dataDir, left.Describe(*dataDir),
			sidecar.RestoreFix(*dataDir, left))
	}
	return nil
}
