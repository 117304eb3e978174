package ssf

import (
	"context"
	"net/http"
	"slices"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// txRecorder is a backend that records, for each committed read-write
// transaction, the buckets it wrote.
type txRecorder struct {
	kv.Backend
	mu      sync.Mutex
	commits [][]string
}

func (r *txRecorder) Update(ctx context.Context, fn func(kv.Tx) error) error {
	var wrote []string
	err := r.Backend.Update(ctx, func(tx kv.Tx) error {
		wrote = wrote[:0]
		return fn(recordingTx{Tx: tx, wrote: &wrote})
	})
	if err == nil && len(wrote) > 0 {
		r.mu.Lock()
		r.commits = append(r.commits, slices.Clone(wrote))
		r.mu.Unlock()
	}
	return err
}

// writers returns the commits that wrote both buckets, and those that
// wrote either.
func (r *txRecorder) writers(a, b string) (both, either int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.commits {
		ha, hb := slices.Contains(c, a), slices.Contains(c, b)
		if ha && hb {
			both++
		}
		if ha || hb {
			either++
		}
	}
	return both, either
}

func (r *txRecorder) reset() {
	r.mu.Lock()
	r.commits = nil
	r.mu.Unlock()
}

type recordingTx struct {
	kv.Tx
	wrote *[]string
}

func (t recordingTx) note(name []byte) {
	if !slices.Contains(*t.wrote, string(name)) {
		*t.wrote = append(*t.wrote, string(name))
	}
}

func (t recordingTx) Bucket(name []byte) kv.Bucket {
	b := t.Tx.Bucket(name)
	if b == nil {
		return nil
	}
	return recordingBucket{Bucket: b, tx: t, name: name}
}

func (t recordingTx) CreateBucketIfNotExists(name []byte) (kv.Bucket, error) {
	b, err := t.Tx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return recordingBucket{Bucket: b, tx: t, name: name}, nil
}

type recordingBucket struct {
	kv.Bucket
	tx   recordingTx
	name []byte
}

func (b recordingBucket) Put(k, v []byte) error { b.tx.note(b.name); return b.Bucket.Put(k, v) }
func (b recordingBucket) Delete(k []byte) error { b.tx.note(b.name); return b.Bucket.Delete(k) }
func (b recordingBucket) Cursor() kv.Cursor     { return recordingCursor{Cursor: b.Bucket.Cursor(), b: b} }

type recordingCursor struct {
	kv.Cursor
	b recordingBucket
}

func (c recordingCursor) Delete() error { c.b.tx.note(c.b.name); return c.Cursor.Delete() }

// TestStreamStateOneTransaction: the transmitter's record of a stream and
// the queue's configuration of it are written in one transaction — at
// creation, at each change and at deletion — so no crash between two
// commits can leave one owner knowing a stream the other does not.
func TestStreamStateOneTransaction(t *testing.T) {
	rec := &txRecorder{}
	h := &harness{t: t, dir: t.TempDir(), clock: newClock(), wrap: func(b kv.Backend) kv.Backend { rec.Backend = b; return rec }}
	h.open()
	t.Cleanup(h.close)
	const queueBucket = "outbox.streams"

	check := func(what string) {
		t.Helper()
		both, either := rec.writers(BucketStreams, queueBucket)
		if both == 0 || both != either {
			t.Errorf("%s: %d transactions wrote the stream's record or its queue configuration, %d of them both; want every one to write both", what, either, both)
		}
		rec.reset()
	}
	rec.reset()
	w := h.create(acmeTok, map[string]any{"delivery": map[string]any{"method": MethodPollURN}})
	check("create")
	if r := h.do("POST", "/ssf/status", acmeTok, map[string]any{"stream_id": w.StreamID, "status": "paused"}); r.status != http.StatusOK {
		t.Fatalf("pause: %d %s", r.status, r.body)
	}
	check("pause")
	if r := h.do("DELETE", "/ssf/streams?stream_id="+w.StreamID, acmeTok, nil); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	// Deletion discards the queue in chunks after the transaction that
	// stops the stream; that first one must also remove the record.
	both, _ := rec.writers(BucketStreams, queueBucket)
	if both != 1 {
		t.Errorf("delete: %d transactions removed the record together with the queue's change, want 1", both)
	}
	if _, ok, err := h.tr.store.GetStream(context.Background(), w.StreamID); err != nil || ok {
		t.Errorf("the deleted stream's record: present %v, %v", ok, err)
	}
}
