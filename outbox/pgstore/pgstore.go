// Package pgstore is the outbox's storage contract (outbox/kv) on
// PostgreSQL, for several replicas sharing one database: authentik's own
// server, in a schema of the sidecar's own.
//
// Transactions are SERIALIZABLE, so replicas that read and write the same
// keys at once never lose an update: one of them gets kv.ErrConflict and
// the outbox store's writer runs its batch again. Writes are buffered in
// the transaction and sent in one round trip before the next range read
// and at commit. Leases are measured on the database's clock (now()).
package pgstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// DefaultSchema is the schema the sidecar owns when none is configured.
const DefaultSchema = "ssf_sidecar"

// Options configures Open.
type Options struct {
	// URL is a PostgreSQL URL or key=value DSN.
	URL string
	// Schema is where the sidecar's tables live (default DefaultSchema).
	Schema string
	// MaxConns caps the pool (default pgx's: the larger of 4 and the CPUs).
	MaxConns int32
	// NoMigrate skips applying migrations at Open; the schema must then be
	// current already (ssf-sidecar migrate).
	NoMigrate bool
	Logger    *slog.Logger
}

// DB is the sidecar's schema in one PostgreSQL database; it implements
// kv.Backend.
type DB struct {
	pool   *pgxpool.Pool
	schema string
	log    *slog.Logger

	notifyOnce sync.Once
	notifier   *Notifier
	closeOnce  sync.Once
}

var _ kv.Backend = (*DB)(nil)

// Open connects, applies pending migrations under the migration lock
// (unless NoMigrate) and checks the schema's version.
func Open(ctx context.Context, opts Options) (*DB, error) {
	if opts.Schema == "" {
		opts.Schema = DefaultSchema
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if err := checkSchemaName(opts.Schema); err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(opts.URL)
	if err != nil {
		// pgx's message may quote the URL, password included.
		return nil, errors.New("pgstore: the database URL is not a valid PostgreSQL URL or DSN")
	}
	if opts.MaxConns > 0 {
		cfg.MaxConns = opts.MaxConns
	}
	cfg.ConnConfig.RuntimeParams["search_path"] = opts.Schema
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect: %w", err)
	}
	d := &DB{pool: pool, schema: opts.Schema, log: opts.Logger}
	ms, err := Migrations()
	if err != nil {
		pool.Close()
		return nil, err
	}
	if !opts.NoMigrate {
		res, err := migrate(ctx, pool, opts.Schema, ms)
		if err != nil {
			pool.Close()
			return nil, err
		}
		if res.To != res.From {
			d.log.Info("database schema migrated", slog.String("schema", opts.Schema), slog.Int("from", res.From), slog.Int("to", res.To))
		}
	}
	var v int
	err = pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM "+pgx.Identifier{opts.Schema, "schema_migrations"}.Sanitize()).Scan(&v)
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: read the schema version of %s (run ssf-sidecar migrate): %w", opts.Schema, err)
	}
	if v != len(ms) {
		pool.Close()
		if v > len(ms) {
			return nil, fmt.Errorf("%w: schema %s is at version %d, this release knows %d", ErrSchemaNewer, opts.Schema, v, len(ms))
		}
		return nil, fmt.Errorf("pgstore: schema %s is at version %d, this release needs %d: run ssf-sidecar migrate", opts.Schema, v, len(ms))
	}
	return d, nil
}

// Pool is the connection pool (the notifier and tests share it).
func (d *DB) Pool() *pgxpool.Pool { return d.pool }

// Schema is the schema the store lives in.
func (d *DB) Schema() string { return d.schema }

// Epoch implements kv.Backend: several processes share the database, so
// leases end only by expiry.
func (d *DB) Epoch() uint64 { return 0 }

// Close implements kv.Backend.
func (d *DB) Close() error {
	d.closeOnce.Do(func() {
		d.notifyOnce.Do(func() {}) // no notifier from now on
		if d.notifier != nil {
			d.notifier.Close()
		}
		d.pool.Close()
	})
	return nil
}

// Ping checks that the database answers.
func (d *DB) Ping(ctx context.Context) error { return d.pool.Ping(ctx) }

// Update implements kv.Backend in one SERIALIZABLE transaction.
func (d *DB) Update(ctx context.Context, fn func(kv.Tx) error) error {
	return d.run(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable}, true, fn)
}

// View implements kv.Backend in one read-only snapshot.
func (d *DB) View(ctx context.Context, fn func(kv.Tx) error) error {
	return d.run(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, false, fn)
}

func (d *DB) run(ctx context.Context, o pgx.TxOptions, writable bool, fn func(kv.Tx) error) error {
	ptx, err := d.pool.BeginTx(ctx, o)
	if err != nil {
		return classify(err)
	}
	t := &tx{ctx: ctx, tx: ptx, writable: writable}
	if writable {
		t.overlay = map[string]*write{}
	}
	ferr := fn(t)
	if t.err == nil && ferr == nil {
		t.flush()
	}
	if t.err != nil || ferr != nil {
		_ = ptx.Rollback(context.WithoutCancel(ctx))
		if t.err != nil {
			// A failed read (or a conflict) makes fn's own verdict moot.
			return classify(t.err)
		}
		return ferr
	}
	if err := ptx.Commit(ctx); err != nil {
		return classify(err)
	}
	return nil
}

// classify wraps the errors that mean "a concurrent transaction won, run
// again" in kv.ErrConflict.
func classify(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch pe.Code {
		case "40001", "40P01": // serialization_failure, deadlock_detected
			return fmt.Errorf("%w: %w", kv.ErrConflict, err)
		}
	}
	return fmt.Errorf("pgstore: %w", err)
}

// tx is one transaction. Reads that fail record the error (the contract's
// reads return no error) and the transaction then fails as a whole.
type tx struct {
	ctx      context.Context
	tx       pgx.Tx
	writable bool
	err      error

	// overlay holds this transaction's writes not yet sent, keyed by
	// bucket NUL key; pending keeps their order. gen counts writes, so a
	// cursor knows its read-ahead is stale.
	overlay map[string]*write
	pending []*write
	gen     uint64

	// fetched holds prefetched values (nil: absent), keyed like overlay;
	// a write drops its key from it.
	fetched map[string][]byte

	now    time.Time
	hasNow bool
}

// Prefetch implements kv.Prefetcher: one round trip for all keys not
// already known in this transaction.
func (t *tx) Prefetch(keys []kv.BucketKey) {
	if t.err != nil || len(keys) == 0 {
		return
	}
	if t.fetched == nil {
		t.fetched = map[string][]byte{}
	}
	var bs, ks [][]byte
	for _, k := range keys {
		ok := overlayKey(k.Bucket, k.Key)
		if _, known := t.fetched[ok]; known || t.overlay[ok] != nil {
			continue
		}
		t.fetched[ok] = nil // absent unless the query finds it
		bs, ks = append(bs, k.Bucket), append(ks, k.Key)
	}
	if len(bs) == 0 {
		return
	}
	t.flush()
	rows, err := t.tx.Query(t.ctx, `SELECT kv.bucket, kv.key, kv.value FROM kv
		JOIN unnest($1::bytea[], $2::bytea[]) AS p(bucket, key) ON kv.bucket = p.bucket AND kv.key = p.key`, bs, ks)
	if err != nil {
		t.fail(err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var b, k, v []byte
		if err := rows.Scan(&b, &k, &v); err != nil {
			t.fail(err)
			return
		}
		if v == nil {
			v = []byte{}
		}
		t.fetched[overlayKey(b, k)] = v
	}
	t.fail(rows.Err())
}

type write struct {
	bucket, key, value []byte
	del                bool
}

func (t *tx) fail(err error) {
	if t.err == nil && err != nil {
		t.err = err
	}
}

func overlayKey(bucket, key []byte) string { return string(bucket) + "\x00" + string(key) }

func (t *tx) Bucket(name []byte) kv.Bucket { return &bucket{t: t, name: append([]byte(nil), name...)} }

func (t *tx) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	if !t.writable {
		return nil, errors.New("pgstore: create bucket in a read-only transaction")
	}
	return t.Bucket(name), nil
}

// Now implements kv.Tx: the database's clock at the transaction's start.
func (t *tx) Now() (time.Time, bool) {
	if !t.hasNow {
		if err := t.tx.QueryRow(t.ctx, "SELECT now()").Scan(&t.now); err != nil {
			t.fail(err)
			return time.Now(), true
		}
		t.hasNow = true
	}
	return t.now, true
}

// flush sends the buffered writes in one round trip.
func (t *tx) flush() {
	if len(t.pending) == 0 || t.err != nil {
		return
	}
	var pb, pk, pv, db, dk [][]byte
	for _, w := range t.pending {
		if w.del {
			db, dk = append(db, w.bucket), append(dk, w.key)
		} else {
			pb, pk, pv = append(pb, w.bucket), append(pk, w.key), append(pv, w.value)
		}
	}
	t.pending = t.pending[:0]
	clear(t.overlay)
	b := &pgx.Batch{}
	if len(db) > 0 {
		b.Queue(`DELETE FROM kv USING unnest($1::bytea[], $2::bytea[]) AS d(bucket, key)
			WHERE kv.bucket = d.bucket AND kv.key = d.key`, db, dk)
	}
	if len(pb) > 0 {
		b.Queue(`INSERT INTO kv (bucket, key, value) SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::bytea[])
			ON CONFLICT (bucket, key) DO UPDATE SET value = EXCLUDED.value`, pb, pk, pv)
	}
	t.fail(t.tx.SendBatch(t.ctx, b).Close())
}

func (t *tx) put(bucket, key, value []byte, del bool) error {
	if !t.writable {
		return errors.New("pgstore: write in a read-only transaction")
	}
	if len(key) == 0 {
		return errors.New("pgstore: empty key")
	}
	t.gen++
	ok := overlayKey(bucket, key)
	delete(t.fetched, ok)
	if w := t.overlay[ok]; w != nil {
		w.value, w.del = append([]byte{}, value...), del
		return nil
	}
	w := &write{bucket: bucket, key: append([]byte(nil), key...), value: append([]byte{}, value...), del: del}
	t.overlay[ok] = w
	t.pending = append(t.pending, w)
	return nil
}

type bucket struct {
	t    *tx
	name []byte
}

func (b *bucket) Get(key []byte) []byte {
	t := b.t
	if t.err != nil {
		return nil
	}
	ok := overlayKey(b.name, key)
	if w := t.overlay[ok]; w != nil {
		if w.del {
			return nil
		}
		return w.value
	}
	if v, known := t.fetched[ok]; known {
		return v
	}
	var v []byte
	err := t.tx.QueryRow(t.ctx, "SELECT value FROM kv WHERE bucket = $1 AND key = $2", b.name, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		t.fail(err)
		return nil
	}
	if v == nil {
		v = []byte{}
	}
	return v
}

func (b *bucket) Put(key, value []byte) error { return b.t.put(b.name, key, value, false) }
func (b *bucket) Delete(key []byte) error     { return b.t.put(b.name, key, nil, true) }
func (b *bucket) Cursor() kv.Cursor           { return &cursor{b: b} }

func (b *bucket) ForEach(fn func(k, v []byte) error) error {
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			return err
		}
	}
	return b.t.err
}

func (b *bucket) NextSequence() (uint64, error) {
	t := b.t
	if !t.writable {
		return 0, errors.New("pgstore: sequence in a read-only transaction")
	}
	if t.err != nil {
		return 0, t.err
	}
	var n int64
	err := t.tx.QueryRow(t.ctx, `INSERT INTO kv_sequences (bucket, n) VALUES ($1, 1)
		ON CONFLICT (bucket) DO UPDATE SET n = kv_sequences.n + 1 RETURNING n`, b.name).Scan(&n)
	if err != nil {
		t.fail(err)
		return 0, err
	}
	return uint64(n), nil
}

// cursor reads ahead in chunks in the direction it moves; a write in the
// transaction drops the read-ahead, and the next move reads again from
// the current key.
type cursor struct {
	b    *bucket
	cur  []byte // the key the cursor is on; nil before the first move
	rows []row  // read-ahead after (or before) cur
	fwd  bool
	full bool // the read-ahead ended at the bucket's end
	gen  uint64
	n    int // the next chunk size
}

type row struct{ k, v []byte }

const (
	firstChunk = 16
	maxChunk   = 512
)

func (c *cursor) First() ([]byte, []byte) { return c.load(nil, true, true) }
func (c *cursor) Last() ([]byte, []byte)  { return c.load(nil, false, true) }
func (c *cursor) Seek(seek []byte) ([]byte, []byte) {
	return c.load(append([]byte(nil), seek...), true, true)
}

func (c *cursor) Next() ([]byte, []byte) { return c.step(true) }
func (c *cursor) Prev() ([]byte, []byte) { return c.step(false) }

func (c *cursor) Delete() error {
	if c.cur == nil {
		return errors.New("pgstore: cursor delete with no current key")
	}
	return c.b.Delete(c.cur)
}

func (c *cursor) step(fwd bool) ([]byte, []byte) {
	if c.cur == nil {
		return nil, nil
	}
	if fwd == c.fwd && c.gen == c.b.t.gen {
		if len(c.rows) > 0 {
			r := c.rows[0]
			c.rows = c.rows[1:]
			c.cur = r.k
			return r.k, r.v
		}
		if c.full {
			return nil, nil
		}
	}
	return c.load(c.cur, fwd, false)
}

// load reads a chunk from the key from (nil: the bucket's end on that
// side), including from itself when inclusive, and lands on its first row.
func (c *cursor) load(from []byte, fwd, inclusive bool) ([]byte, []byte) {
	t := c.b.t
	if t.err != nil {
		return nil, nil
	}
	t.flush()
	if inclusive || c.n == 0 {
		c.n = firstChunk
	}
	var q string
	args := []any{c.b.name, c.n}
	switch {
	case from == nil && fwd:
		q = "SELECT key, value FROM kv WHERE bucket = $1 ORDER BY key LIMIT $2"
	case from == nil:
		q = "SELECT key, value FROM kv WHERE bucket = $1 ORDER BY key DESC LIMIT $2"
	case fwd && inclusive:
		q = "SELECT key, value FROM kv WHERE bucket = $1 AND key >= $3 ORDER BY key LIMIT $2"
	case fwd:
		q = "SELECT key, value FROM kv WHERE bucket = $1 AND key > $3 ORDER BY key LIMIT $2"
	default:
		q = "SELECT key, value FROM kv WHERE bucket = $1 AND key < $3 ORDER BY key DESC LIMIT $2"
	}
	if from != nil {
		args = append(args, from)
	}
	rows, err := t.tx.Query(t.ctx, q, args...)
	if err != nil {
		t.fail(err)
		return nil, nil
	}
	var got []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.k, &r.v); err != nil {
			rows.Close()
			t.fail(err)
			return nil, nil
		}
		if r.v == nil {
			r.v = []byte{}
		}
		got = append(got, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		t.fail(err)
		return nil, nil
	}
	c.full = len(got) < c.n
	c.n = min(2*c.n, maxChunk)
	c.fwd, c.gen = fwd, t.gen
	if len(got) == 0 {
		if from == nil || inclusive {
			c.cur = nil
		}
		c.rows = nil
		return nil, nil
	}
	c.cur, c.rows = got[0].k, got[1:]
	return got[0].k, got[0].v
}

// SetSequence raises the bucket's NextSequence counter to at least n, so
// the next call returns more than n (for copying a store from another
// backend). Reach it with a type assertion on the transaction.
func (t *tx) SetSequence(name []byte, n uint64) error {
	if !t.writable {
		return errors.New("pgstore: sequence in a read-only transaction")
	}
	if t.err != nil {
		return t.err
	}
	_, err := t.tx.Exec(t.ctx, `INSERT INTO kv_sequences (bucket, n) VALUES ($1, $2)
		ON CONFLICT (bucket) DO UPDATE SET n = greatest(kv_sequences.n, EXCLUDED.n)`, name, int64(n))
	t.fail(err)
	return err
}
