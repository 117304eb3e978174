package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// rekeyReport is what rekey re-sealed: counts and key ids, no secret.
type rekeyReport struct {
	Schema string `json:"schema"`
	ssf.RekeyReport
	// PreviousStreamKeyID and PreviousSigningKeyID are the ids of the keys
	// derived from the previous encryption key.
	PreviousStreamKeyID  string `json:"previous_stream_key_id"`
	PreviousSigningKeyID string `json:"previous_signing_key_id"`
}

// rekeyTries bounds the runs of a re-keying that a concurrent change of a
// stream or signing key made fail.
const rekeyTries = 5

// runRekey seals every secret of a database schema again under the current
// encryption key: the second step of rotating it, after the replicas run
// with the new key as current and the old one as previous.
func runRekey(ctx context.Context, args []string, stdout, _ io.Writer) error {
	fset := flag.NewFlagSet("rekey", flag.ContinueOnError)
	// The URL's default is read after parsing, so help never prints it
	// (it may hold a password).
	dbURL := fset.String("database-url", "", "PostgreSQL URL or key=value DSN (env SSF_DATABASE_URL)")
	schema := fset.String("database-schema", envOr("SSF_DATABASE_SCHEMA", pgstore.DefaultSchema), "the sidecar's schema (env SSF_DATABASE_SCHEMA)")
	keyFile := fset.String("encryption-key-file", os.Getenv("SSF_ENCRYPTION_KEY_FILE"), "file holding the new encryption key (or SSF_ENCRYPTION_KEY)")
	prevFile := fset.String("previous-encryption-key-file", os.Getenv("SSF_PREVIOUS_ENCRYPTION_KEY_FILE"), "file holding the encryption key being rotated out (or SSF_PREVIOUS_ENCRYPTION_KEY)")
	asJSON := fset.Bool("json", false, "print the report as JSON")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar rekey --database-url URL [--database-schema S] --encryption-key-file NEW --previous-encryption-key-file OLD [--json]\n\n"+
			"Seals every secret in the schema again under the new encryption key, in one transaction: each push\n"+
			"stream's authorization_header and each generated signing key's private part. Values already sealed\n"+
			"under the new key are left as they are, so running it again changes nothing. It refuses, writing\n"+
			"nothing, when a value opens with neither key, and names it (kind and id). Run it while the replicas\n"+
			"run with the new key as current and the old one as previous; then remove the previous key.\n\nFlags:")
		printFlags(stdout, fset)
	}
	if err := parseNoArgs(fset, args, help); err != nil {
		return err
	}
	if *dbURL == "" {
		*dbURL = os.Getenv("SSF_DATABASE_URL")
	}
	if *dbURL == "" {
		return usageError{"rekey needs --database-url (or SSF_DATABASE_URL): only a database keeps secrets sealed under the encryption key"}
	}
	cfg := Config{Config: sidecar.Config{DatabaseURL: *dbURL, EncryptionKeyFile: *keyFile, EncryptionKey: os.Getenv("SSF_ENCRYPTION_KEY"),
		PreviousEncryptionKeyFile: *prevFile, PreviousEncryptionKey: os.Getenv("SSF_PREVIOUS_ENCRYPTION_KEY")}}
	encKey, err := cfg.encryptionKey()
	if err != nil {
		return exitError{exitConfig, err}
	}
	prevKey, err := cfg.previousEncryptionKey()
	if err != nil {
		return exitError{exitConfig, err}
	}
	if prevKey == nil {
		return exitError{exitConfig, errors.New("rekey needs the key being rotated out: --previous-encryption-key-file FILE or SSF_PREVIOUS_ENCRYPTION_KEY")}
	}
	rep, err := rekey(ctx, *dbURL, *schema, encKey, prevKey)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, rep)
	}
	fmt.Fprintf(stdout, "schema %s: re-sealed %d of %d push secrets and %d of %d signing keys under key %s (streams) / %s (signing keys); the others already were\n",
		rep.Schema, rep.PushSecretsResealed, rep.PushSecrets, rep.SigningKeysResealed, rep.SigningKeys, rep.StreamKeyID, rep.SigningKeyID)
	return nil
}

func rekey(ctx context.Context, dbURL, schema string, encKey, prevKey []byte) (*rekeyReport, error) {
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	// The schema must exist and be current: rekey creates nothing.
	db, err := pgstore.Open(octx, pgstore.Options{URL: dbURL, Schema: schema, NoMigrate: true})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("database schema %s: %w", schema, err)
	}
	store := outbox.NewStore(db, outbox.StoreOptions{})
	defer store.Close()
	newStreams, newKeys := sealKeys(encKey)
	oldStreams, oldKeys := sealKeys(prevKey)
	streams, err := ssf.NewSealer(newStreams, oldStreams)
	if err != nil {
		return nil, err
	}
	keys, err := ssf.NewSealer(newKeys, oldKeys)
	if err != nil {
		return nil, err
	}
	for try := 1; ; try++ {
		r, err := ssf.Rekey(ctx, store, streams, keys)
		if err == nil {
			return &rekeyReport{Schema: schema, RekeyReport: r,
				PreviousStreamKeyID: ssf.KeyID(oldStreams), PreviousSigningKeyID: ssf.KeyID(oldKeys)}, nil
		}
		var ue *ssf.UnopenedError
		if errors.As(err, &ue) {
			return nil, exitError{exitFailure, fmt.Errorf("schema %s: %w", schema, err)}
		}
		if !errors.Is(err, outbox.ErrCondition) || try == rekeyTries {
			return nil, fmt.Errorf("schema %s: %w", schema, err)
		}
	}
}
