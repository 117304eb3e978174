package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
)

// runMigrate applies the database schema's migrations explicitly (serve
// also applies them at start, under the same lock).
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, _, rest, err := loadConfig("migrate", args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return err
	}
	var ue usageError
	if errors.As(err, &ue) {
		return err
	}
	if err := noArgs("migrate", rest); err != nil {
		return err
	}
	if err != nil {
		return exitError{exitConfig, err}
	}
	if cfg.DatabaseURL == "" {
		return exitError{exitConfig, errors.New("migrate needs --database-url (or SSF_DATABASE_URL): a bbolt data dir has no schema to migrate")}
	}
	mctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	res, err := pgstore.MigrateURL(mctx, cfg.DatabaseURL, cfg.DatabaseSchema)
	if err != nil {
		return err
	}
	if res.From == res.To {
		fmt.Fprintf(stdout, "schema %s is up to date (version %d)\n", cfg.DatabaseSchema, res.To)
		return nil
	}
	fmt.Fprintf(stdout, "schema %s migrated from version %d to %d\n", cfg.DatabaseSchema, res.From, res.To)
	return nil
}
