package pgstore

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

//go:embed migrations/*.sql
var embedded embed.FS

// Migration is one versioned step of the schema.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) { return loadMigrations(embedded, "migrations") }

// loadMigrations reads files named NNNN_name.sql: versions from 1 up, each
// once, with no gaps.
func loadMigrations(fsys fs.FS, dir string) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".sql") {
			continue
		}
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("pgstore: migration file %q is not named NNNN_name.sql", e.Name())
		}
		b, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: v, Name: name, SQL: string(b)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	for i, m := range out {
		if m.Version != i+1 {
			return nil, fmt.Errorf("pgstore: migration versions must run 1, 2, 3... without gaps or repeats; found %d at position %d", m.Version, i+1)
		}
	}
	return out, nil
}

// MigrateResult says what Migrate did.
type MigrateResult struct {
	From, To int // schema version before and after
}

// Migrate brings the schema up to date with the embedded migrations.
func Migrate(ctx context.Context, pool *pgxpool.Pool, schema string) (MigrateResult, error) {
	ms, err := Migrations()
	if err != nil {
		return MigrateResult{}, err
	}
	return migrate(ctx, pool, schema, ms)
}

// ErrSchemaNewer: the database was migrated by a newer release than this
// one; it refuses to run on a schema it does not know.
var ErrSchemaNewer = errors.New("pgstore: the database schema is newer than this release")

// migrate applies ms under an advisory lock held on one connection, so
// replicas starting at once apply each migration exactly once. Each
// migration commits in its own transaction together with its version.
func migrate(ctx context.Context, pool *pgxpool.Pool, schema string, ms []Migration) (res MigrateResult, err error) {
	if err := checkSchemaName(schema); err != nil {
		return res, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("pgstore: migrate: %w", err)
	}
	defer conn.Release()
	lock := advisoryKey(schema)
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lock); err != nil {
		return res, fmt.Errorf("pgstore: migrate: take the migration lock: %w", err)
	}
	defer func() {
		// A failed unlock would leave the lock to the session's end; the
		// connection is then dropped so the lock goes with it.
		if _, uerr := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", lock); uerr != nil {
			_ = conn.Conn().Close(context.Background())
		}
	}()
	q := pgx.Identifier{schema}.Sanitize()
	// CREATE SCHEMA asks for CREATE on the database even when the schema
	// exists, so it runs only when it is missing: a role that owns a schema
	// made for it beforehand needs no right on the database.
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema).Scan(&exists); err != nil {
		return res, fmt.Errorf("pgstore: migrate: look up schema %s: %w", schema, err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+q); err != nil {
			return res, fmt.Errorf("pgstore: migrate: create schema %s: %w", schema, err)
		}
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+q+`.schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return res, fmt.Errorf("pgstore: migrate: %w", err)
	}
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+q+".schema_migrations").Scan(&res.From); err != nil {
		return res, fmt.Errorf("pgstore: migrate: read version: %w", err)
	}
	res.To = res.From
	if res.From > len(ms) {
		return res, fmt.Errorf("%w: schema %s is at version %d, this release knows %d", ErrSchemaNewer, schema, res.From, len(ms))
	}
	for _, m := range ms[res.From:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+q); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO "+q+".schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return res, fmt.Errorf("pgstore: migration %d (%s): %w", m.Version, m.Name, err)
		}
		res.To = m.Version
	}
	return res, nil
}

// advisoryKey is the advisory lock of one schema's migrations.
func advisoryKey(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("ssf-sidecar migrate " + schema))
	return int64(h.Sum64())
}

// checkSchemaName accepts the names an operator can write unquoted:
// letters, digits and underscores, not starting with a digit, at most 63
// bytes, and not a system schema.
func checkSchemaName(s string) error {
	bad := s == "" || len(s) > 63 || (s[0] >= '0' && s[0] <= '9') || strings.HasPrefix(s, "pg_") || s == "information_schema"
	for _, r := range s {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			bad = true
		}
	}
	if bad {
		return fmt.Errorf("pgstore: database schema %q: use letters, digits and underscores (not starting with a digit, not pg_*, at most 63)", s)
	}
	return nil
}

// MigrateURL connects to the database url names, brings schema up to date
// and disconnects (ssf-sidecar migrate).
func MigrateURL(ctx context.Context, url, schema string) (MigrateResult, error) {
	if schema == "" {
		schema = DefaultSchema
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return MigrateResult{}, errors.New("pgstore: the database URL is not a valid PostgreSQL URL or DSN")
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return MigrateResult{}, fmt.Errorf("pgstore: connect: %w", err)
	}
	defer pool.Close()
	return Migrate(ctx, pool, schema)
}
