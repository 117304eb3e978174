// Package pgtest gives tests a PostgreSQL schema of their own on the
// server SSF_TEST_DATABASE_URL names, dropped when the test ends.
//
// Without the variable a test skips and says so loudly; in CI (CI=true)
// it fails instead, so PostgreSQL tests never skip silently there.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable that holds the test server's URL.
const EnvURL = "SSF_TEST_DATABASE_URL"

var skipOnce sync.Once

// URL returns the test server's URL, skipping (or, in CI, failing) the
// test when none is configured.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(EnvURL)
	if u != "" {
		return u
	}
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("%s is not set: PostgreSQL tests must run in CI (.ci/run sets it)", EnvURL)
	}
	skipOnce.Do(func() {
		// t.Skip shows only under -v; this line shows in every run.
		fmt.Fprintf(os.Stderr, "pgtest: SKIPPING PostgreSQL tests: %s is not set\n", EnvURL)
	})
	t.Skipf("SKIPPED: PostgreSQL test %s needs %s (e.g. postgres://postgres@127.0.0.1:5432/test?sslmode=disable)", t.Name(), EnvURL)
	return ""
}

// Schema creates nothing but returns a fresh schema name for this test
// and drops that schema (with everything in it) when the test ends.
func Schema(t testing.TB) (url, schema string) {
	t.Helper()
	url = URL(t)
	var b [6]byte
	_, _ = rand.Read(b[:])
	schema = "ssf_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("pgtest: drop schema %s: %v", schema, err)
		}
	})
	return url, schema
}
