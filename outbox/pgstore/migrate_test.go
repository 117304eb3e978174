package pgstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/pgstore/pgtest"
)

func TestLoadMigrations(t *testing.T) {
	ms, err := Migrations()
	if err != nil || len(ms) == 0 || ms[0].Version != 1 || !strings.Contains(ms[0].SQL, "CREATE TABLE kv") {
		t.Fatalf("embedded migrations = %+v, %v", ms, err)
	}
	for name, files := range map[string]fstest.MapFS{
		"gap":      {"m/0001_a.sql": {}, "m/0003_c.sql": {}},
		"repeat":   {"m/0001_a.sql": {}, "m/001_b.sql": {}},
		"bad name": {"m/first.sql": {}},
		"zero":     {"m/0000_a.sql": {}},
	} {
		if _, err := loadMigrations(files, "m"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok, err := loadMigrations(fstest.MapFS{"m/0002_b.sql": {Data: []byte("B")}, "m/0001_a.sql": {Data: []byte("A")}, "m/README": {}}, "m")
	if err != nil || len(ok) != 2 || ok[0].SQL != "A" || ok[1].Name != "b" {
		t.Errorf("ordered load = %+v, %v", ok, err)
	}
}

func TestSchemaNames(t *testing.T) {
	for _, s := range []string{"ssf_sidecar", "A1", "_x"} {
		if err := checkSchemaName(s); err != nil {
			t.Errorf("%q refused: %v", s, err)
		}
	}
	for _, s := range []string{"", "1x", "pg_catalog", "information_schema", "a;drop", "a b", `a"b`, strings.Repeat("x", 64)} {
		if err := checkSchemaName(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

func testPool(t *testing.T) (*pgxpool.Pool, string) {
	url, schema := pgtest.Schema(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, schema
}

// TestMigrateConcurrently: replicas starting at once apply each migration
// exactly once, and a second run does nothing.
func TestMigrateConcurrently(t *testing.T) {
	pool, schema := testPool(t)
	ctx := context.Background()
	ms := []Migration{
		{Version: 1, Name: "one", SQL: "CREATE TABLE t1 (n int)"},
		{Version: 2, Name: "two", SQL: "INSERT INTO t1 VALUES (1)"},
	}
	var wg sync.WaitGroup
	errs := make([]error, 6)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); _, errs[i] = migrate(ctx, pool, schema, ms) }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	var rows, versions int
	q := pgx.Identifier{schema}.Sanitize()
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+q+".t1").Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("migration 2 ran %d times (%v), want once", rows, err)
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM "+q+".schema_migrations").Scan(&versions); err != nil || versions != 2 {
		t.Fatalf("%d versions recorded (%v)", versions, err)
	}
	res, err := migrate(ctx, pool, schema, ms)
	if err != nil || res.From != 2 || res.To != 2 {
		t.Fatalf("second run = %+v, %v", res, err)
	}
	// An older release refuses a schema a newer one migrated.
	if _, err := migrate(ctx, pool, schema, ms[:1]); !errors.Is(err, ErrSchemaNewer) {
		t.Fatalf("older release on a newer schema = %v", err)
	}
}

// TestMigrateFailureRollsBack: a failing migration leaves the schema at
// the version before it, with nothing of it applied.
func TestMigrateFailureRollsBack(t *testing.T) {
	pool, schema := testPool(t)
	ctx := context.Background()
	ms := []Migration{
		{Version: 1, Name: "one", SQL: "CREATE TABLE t1 (n int)"},
		{Version: 2, Name: "bad", SQL: "CREATE TABLE t2 (n int); SELECT no_such_function()"},
	}
	res, err := migrate(ctx, pool, schema, ms)
	if err == nil || res.To != 1 || !strings.Contains(err.Error(), "migration 2") {
		t.Fatalf("migrate = %+v, %v; want a failure at 2 after 1", res, err)
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", schema+".t2").Scan(&exists); err != nil || exists {
		t.Fatalf("the failed migration's table exists: %v, %v", exists, err)
	}
	// Open refuses a schema it may not migrate that was never migrated.
	url, fresh := pgtest.Schema(t)
	if _, err := Open(ctx, Options{URL: url, Schema: fresh, NoMigrate: true}); err == nil || !strings.Contains(err.Error(), "migrate") {
		t.Fatalf("Open(NoMigrate) on an unmigrated schema = %v", err)
	}
}

// TestOpenRedactsURL: a malformed URL's error does not repeat it (it may
// hold a password).
func TestOpenRedactsURL(t *testing.T) {
	_, err := Open(context.Background(), Options{URL: "postgres://u:s3cret@[bad/db"})
	if err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Fatalf("Open = %v", err)
	}
}
