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
	"strings"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/boltstore"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// Buckets of a data dir that migrate-store leaves behind: the count of the
// file's opens, and the leases held under it (a database's leases end by
// the database's clock, and nobody holds one yet).
var notMigrated = map[string]bool{"boltstore.meta": true, "outbox.leases": true}

// A schema holding any of these is in use: migrate-store refuses it.
var inUseBuckets = []string{ssf.BucketStreams, "outbox.sets", ssf.BucketKeys}

// migrateStoreReport is what migrate-store copied.
type migrateStoreReport struct {
	From        string         `json:"from_data_dir"`
	Schema      string         `json:"schema"`
	Streams     int            `json:"streams"`
	Subjects    int            `json:"subjects"`
	SigningKeys int            `json:"signing_keys"`
	CurrentKID  string         `json:"current_kid,omitempty"`
	SETs        int            `json:"sets"`
	Queued      int            `json:"queued"`
	DeadLetter  int            `json:"dead_letter"`
	Records     int            `json:"records"`
	Buckets     map[string]int `json:"buckets"`
}

// runMigrateStore copies a stopped one-replica installation (its bbolt
// file and key files) into a PostgreSQL schema, so that the replicas
// started on it keep the receivers' streams, the signing keys, the backlog
// and the cursor.
func runMigrateStore(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fset := flag.NewFlagSet("migrate-store", flag.ContinueOnError)
	dataDir := fset.String("from-data-dir", "", "the stopped sidecar's data dir to copy (required)")
	dbURL := fset.String("to-database-url", "", "PostgreSQL URL or key=value DSN to copy into (env SSF_DATABASE_URL)")
	schema := fset.String("database-schema", envOr("SSF_DATABASE_SCHEMA", pgstore.DefaultSchema), "schema to copy into (env SSF_DATABASE_SCHEMA)")
	keyFile := fset.String("encryption-key-file", os.Getenv("SSF_ENCRYPTION_KEY_FILE"), "file holding the database's encryption key (or SSF_ENCRYPTION_KEY)")
	asJSON := fset.Bool("json", false, "print the report as JSON")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar migrate-store --from-data-dir DIR --to-database-url URL [--database-schema S] [--encryption-key-file F] [--json]\n\n"+
			"Copies a one-replica installation into PostgreSQL: streams (push secrets sealed again under the\n"+
			"database's key), generated signing keys (sealed; the current one stays current), the backlog,\n"+
			"the dead letter, delivery state and the event-API poller cursor. The schema is migrated first.\n"+
			"The sidecar on DIR must be stopped, and the schema must hold no streams, SETs or signing keys.\n\nFlags:")
		printFlags(stdout, fset)
	}
	if err := parseNoArgs(fset, args, help); err != nil {
		return err
	}
	if *dbURL == "" {
		// Read after parsing, so that --help never shows the variable (its
		// URL may hold a password).
		*dbURL = os.Getenv("SSF_DATABASE_URL")
	}
	if *dataDir == "" || *dbURL == "" {
		return usageError{"migrate-store needs --from-data-dir and --to-database-url"}
	}
	cfg := Config{Config: sidecar.Config{DatabaseURL: *dbURL, EncryptionKeyFile: *keyFile, EncryptionKey: os.Getenv("SSF_ENCRYPTION_KEY")}}
	encKey, err := cfg.encryptionKey()
	if err != nil {
		return exitError{exitConfig, err}
	}
	rep, err := migrateStore(ctx, *dataDir, *dbURL, *schema, encKey)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "copied %s into schema %s: %d streams (%d subjects), %d signing keys (current %s), %d SETs (%d queued, %d in the dead letter), %d records in all\n",
		rep.From, rep.Schema, rep.Streams, rep.Subjects, rep.SigningKeys, orNone(rep.CurrentKID), rep.SETs, rep.Queued, rep.DeadLetter, rep.Records)
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func migrateStore(ctx context.Context, dataDir, dbURL, schema string, encKey []byte) (*migrateStoreReport, error) {
	dbPath := filepath.Join(dataDir, sidecar.DBFile)
	if _, err := os.Stat(dbPath); errors.Is(err, fs.ErrNotExist) {
		return nil, exitError{exitNotFound, fmt.Errorf("no sidecar data in %s (expected %s)", dataDir, dbPath)}
	}
	src, err := boltstore.Open(dbPath, boltstore.Options{OpenTimeout: time.Second})
	if err != nil {
		err = sidecar.ExplainOpenError(dbPath, err)
		var le *sidecar.LockedError
		if errors.As(err, &le) {
			return nil, fmt.Errorf("refusing to copy a live data dir: %w (stop it first)", err)
		}
		return nil, fmt.Errorf("cannot open %s: %w", dataDir, err)
	}
	defer src.Close()
	fromSeal, err := os.ReadFile(filepath.Join(dataDir, ssf.SecretKeyFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		fromSeal = nil
	case err != nil:
		return nil, fmt.Errorf("read %s: %w", ssf.SecretKeyFile, err)
	case len(fromSeal) != 32:
		return nil, fmt.Errorf("%s: want 32 bytes, found %d", filepath.Join(dataDir, ssf.SecretKeyFile), len(fromSeal))
	}
	streamSeal, keySeal := sealKeys(encKey)
	sharer, err := ssf.NewSharer(dataDir, fromSeal, streamSeal, keySeal)
	if err != nil {
		return nil, err
	}
	buckets, err := src.Buckets()
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dbPath, err)
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	dst, err := pgstore.Open(octx, pgstore.Options{URL: dbURL, Schema: schema})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("database schema %s: %w", schema, err)
	}
	defer dst.Close()

	rep := &migrateStoreReport{From: dataDir, Schema: schema, Buckets: map[string]int{}}
	// One transaction: the copy lands whole or not at all, and the check
	// that the schema is unused holds for it.
	err = dst.Update(ctx, func(tx kv.Tx) error {
		for _, name := range inUseBuckets {
			if b := tx.Bucket([]byte(name)); b != nil {
				if k, _ := b.Cursor().First(); k != nil {
					return exitError{exitFailure, fmt.Errorf("schema %s already holds %s: migrate-store only copies into a schema without streams, SETs or signing keys (drop the schema, or name another with --database-schema)",
						schema, describeBucket(name))}
				}
			}
		}
		*rep = migrateStoreReport{From: dataDir, Schema: schema, Buckets: map[string]int{}}
		return src.View(ctx, func(stx kv.Tx) error {
			for _, bi := range buckets {
				name := string(bi.Name)
				if notMigrated[name] {
					continue
				}
				to, err := tx.CreateBucketIfNotExists(bi.Name)
				if err != nil {
					return err
				}
				err = stx.Bucket(bi.Name).ForEach(func(k, v []byte) error {
					out, err := sharer.Convert(name, k, v)
					if err != nil {
						return err
					}
					rep.Buckets[name]++
					rep.Records++
					return to.Put(k, out)
				})
				if err != nil {
					return err
				}
				if bi.Sequence > 0 {
					seq, ok := tx.(interface{ SetSequence([]byte, uint64) error })
					if !ok {
						return errors.New("the database store cannot carry bucket sequences")
					}
					if err := seq.SetSequence(bi.Name, bi.Sequence); err != nil {
						return err
					}
				}
			}
			if bucket, key, value, ok := sharer.CurrentKey(); ok {
				b, err := tx.CreateBucketIfNotExists([]byte(bucket))
				if err != nil {
					return err
				}
				if err := b.Put(key, value); err != nil {
					return err
				}
				rep.CurrentKID = string(value)
			}
			return nil
		})
	})
	if err != nil {
		var ee exitError
		if errors.As(err, &ee) {
			return nil, err
		}
		return nil, fmt.Errorf("copy into schema %s: %w", schema, err)
	}
	rep.Streams = rep.Buckets[ssf.BucketStreams]
	rep.Subjects = rep.Buckets[ssf.BucketSubjects]
	rep.SigningKeys = sharer.Keys()
	rep.SETs = rep.Buckets["outbox.sets"]
	rep.Queued = rep.Buckets["outbox.queue"]
	rep.DeadLetter = rep.Buckets["outbox.dead"]
	return rep, nil
}

func describeBucket(name string) string {
	switch {
	case name == ssf.BucketStreams:
		return "streams"
	case name == ssf.BucketKeys:
		return "signing keys"
	case strings.HasPrefix(name, "outbox."):
		return "SETs"
	}
	return name
}
