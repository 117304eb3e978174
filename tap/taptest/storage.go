package taptest

import (
	"encoding/binary"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/tap"
)

// testJournal: entries are written, read back in key order, rewritten
// and deleted, and a conditioned write holds only against the value the
// writer saw.
func (s Suite) testJournal(t *testing.T) {
	kv := s.New(t)().KV
	j := tap.BucketJournal
	if err := kv.Commit(ctx, []tap.Mark{put(j, "b", "open-b"), put(j, "a", "open-a"), put(j, "c", "open-c")}); err != nil {
		t.Fatal(err)
	}
	if got := scan(t, kv, j, ""); !slices.Equal(got, []string{"a=open-a", "b=open-b", "c=open-c"}) {
		t.Fatalf("journal = %v", got)
	}
	// The outcome replaces the intent, on the condition that it is
	// still the intent as written.
	if err := kv.Commit(ctx, []tap.Mark{ifValue(put(j, "b", "done-b"), []byte("open-b"))}); err != nil {
		t.Fatalf("conditioned rewrite: %v", err)
	}
	if err := kv.Commit(ctx, []tap.Mark{ifValue(put(j, "b", "again"), []byte("open-b"))}); err == nil {
		t.Fatal("a rewrite conditioned on a stale value was accepted")
	}
	if v := get(t, kv, j, "b"); string(v) != "done-b" {
		t.Fatalf("entry b = %q after a refused rewrite", v)
	}
	// A conditioned delete of a stale value is refused; of the current
	// one it removes the entry.
	del := tap.Mark{Bucket: j, Key: []byte("b"), Delete: true}
	if err := kv.Commit(ctx, []tap.Mark{ifValue(del, []byte("open-b"))}); err == nil {
		t.Fatal("a delete conditioned on a stale value was accepted")
	}
	if err := kv.Commit(ctx, []tap.Mark{ifValue(del, []byte("done-b"))}); err != nil {
		t.Fatalf("conditioned delete: %v", err)
	}
	if v := get(t, kv, j, "b"); v != nil {
		t.Fatalf("deleted entry reads %q", v)
	}
	// Expecting absence: refused for an entry that exists, accepted for
	// one that does not (and then the entry exists).
	if err := kv.Commit(ctx, []tap.Mark{ifValue(put(j, "a", "x"), nil)}); err == nil {
		t.Fatal("a write expecting absence over an existing entry was accepted")
	}
	if err := kv.Commit(ctx, []tap.Mark{ifValue(put(j, "b", "open-b2"), nil)}); err != nil {
		t.Fatalf("write expecting absence: %v", err)
	}
	// A plain delete of an entry never written is no error.
	if err := kv.Commit(ctx, []tap.Mark{{Bucket: j, Key: []byte("never"), Delete: true}}); err != nil {
		t.Fatalf("delete of a missing entry: %v", err)
	}
	if got := scan(t, kv, j, ""); !slices.Equal(got, []string{"a=open-a", "b=open-b2", "c=open-c"}) {
		t.Fatalf("journal = %v", got)
	}
}

// testJournalClaim: two replicas that read one entry and both try to claim
// it by a conditioned rewrite: one claim lands, the other is refused, and
// the loser's later conditioned writes (with what it read) are refused too.
func (s Suite) testJournalClaim(t *testing.T) {
	open := s.New(t)
	a, b := open().KV, open().KV
	j := tap.BucketJournal
	if err := a.Commit(ctx, []tap.Mark{put(j, "i1", "open")}); err != nil {
		t.Fatal(err)
	}
	readA, readB := get(t, a, j, "i1"), get(t, b, j, "i1")
	if string(readA) != "open" || string(readB) != "open" {
		t.Fatalf("replicas read %q and %q", readA, readB)
	}
	if err := b.Commit(ctx, []tap.Mark{ifValue(put(j, "i1", "claimed by B"), readB)}); err != nil {
		t.Fatalf("B's claim: %v", err)
	}
	// A's claim, with a SET-like side write: refused as a whole.
	err := a.Commit(ctx, []tap.Mark{ifValue(put(j, "i1", "claimed by A"), readA), put("taptest_sets", "i1", "A")})
	if err == nil {
		t.Fatal("the second claim was accepted")
	}
	if v := get(t, a, "taptest_sets", "i1"); v != nil {
		t.Fatalf("the refused claim's other mark landed: %q", v)
	}
	if err := a.Commit(ctx, []tap.Mark{ifValue(tap.Mark{Bucket: j, Key: []byte("i1"), Delete: true}, readA)}); err == nil {
		t.Fatal("the loser's delete, conditioned on what it read, was accepted")
	}
	if v := get(t, a, j, "i1"); string(v) != "claimed by B" {
		t.Fatalf("entry = %q, want B's claim", v)
	}
}

// testCursorFenced: the cursor moves only under the poller lease's current
// token. A holder that lost the lease (released, or taken over after it
// ran out) has its fenced writes refused, cursor and SETs alike.
func (s Suite) testCursorFenced(t *testing.T) {
	open := s.New(t)
	ra, rb := open(), open()
	c := tap.BucketCursor
	ta, held, err := ra.Lease.Acquire(ctx, tap.PollerLeaseName, "A", tap.DefaultPollerLeaseTTL)
	if err != nil || !held {
		t.Fatalf("A acquires: token %d held %v err %v", ta, held, err)
	}
	if _, held, err := rb.Lease.Acquire(ctx, tap.PollerLeaseName, "B", tap.DefaultPollerLeaseTTL); err != nil || held {
		t.Fatalf("B acquired a lease A holds: held %v err %v", held, err)
	}
	fenceA := tap.Mark{Fence: tap.Fence{Lease: tap.PollerLeaseName, Token: ta}}
	if err := ra.KV.Commit(ctx, []tap.Mark{fenceA, put(c, "events", "1")}); err != nil {
		t.Fatalf("the holder's fenced cursor write: %v", err)
	}
	// A renews: same token, its writes still hold.
	if tok, held, err := ra.Lease.Acquire(ctx, tap.PollerLeaseName, "A", tap.DefaultPollerLeaseTTL); err != nil || !held || tok != ta {
		t.Fatalf("A renews: token %d (had %d) held %v err %v", tok, ta, held, err)
	}
	if err := ra.KV.Commit(ctx, []tap.Mark{fenceA, put(c, "events", "2")}); err != nil {
		t.Fatalf("fenced write after renewal: %v", err)
	}
	if err := ra.Lease.Release(ctx, tap.PollerLeaseName, "A", ta); err != nil {
		t.Fatal(err)
	}
	tb, held, err := rb.Lease.Acquire(ctx, tap.PollerLeaseName, "B", tap.DefaultPollerLeaseTTL)
	if err != nil || !held || tb <= ta {
		t.Fatalf("B takes over: token %d (A had %d) held %v err %v", tb, ta, held, err)
	}
	if v := get(t, rb.KV, c, "events"); string(v) != "2" {
		t.Fatalf("B reads the cursor %q, want A's last (2)", v)
	}
	// A, late: its cursor write and the SET with it are refused.
	if err := ra.KV.Commit(ctx, []tap.Mark{fenceA, put(c, "events", "3-stale"), put("taptest_sets", "e3", "A")}); err == nil {
		t.Fatal("a stale holder's fenced write was accepted")
	}
	if v := get(t, rb.KV, "taptest_sets", "e3"); v != nil {
		t.Fatalf("the stale holder's SET landed: %q", v)
	}
	fenceB := tap.Mark{Fence: tap.Fence{Lease: tap.PollerLeaseName, Token: tb}}
	if err := rb.KV.Commit(ctx, []tap.Mark{fenceB, put(c, "events", "3")}); err != nil {
		t.Fatalf("the new holder's fenced write: %v", err)
	}
	if v := get(t, ra.KV, c, "events"); string(v) != "3" {
		t.Fatalf("cursor = %q, want B's 3", v)
	}
	if _, held, err := ra.Lease.Acquire(ctx, tap.PollerLeaseName, "A", tap.DefaultPollerLeaseTTL); err != nil || held {
		t.Fatalf("A took the lease back from B: held %v err %v", held, err)
	}
}

// testFenceOnlyMark: a mark with only a fence writes nothing, and refuses
// the commit when stale.
func (s Suite) testFenceOnlyMark(t *testing.T) {
	r := s.New(t)()
	tok, held, err := r.Lease.Acquire(ctx, tap.PollerLeaseName, "A", tap.DefaultPollerLeaseTTL)
	if err != nil || !held {
		t.Fatalf("acquire: %v %v", held, err)
	}
	if err := r.KV.Commit(ctx, []tap.Mark{{Fence: tap.Fence{Lease: tap.PollerLeaseName, Token: tok}}}); err != nil {
		t.Fatalf("a fence-only commit under the current token: %v", err)
	}
	if err := r.KV.Commit(ctx, []tap.Mark{{Fence: tap.Fence{Lease: tap.PollerLeaseName, Token: tok + 1}}, put("b", "k", "v")}); err == nil {
		t.Fatal("a commit fenced with a token never granted was accepted")
	}
	if err := r.KV.Commit(ctx, []tap.Mark{{Fence: tap.Fence{Lease: "taptest/never-held", Token: 1}}}); err == nil {
		t.Fatal("a commit fenced by a lease nobody holds was accepted")
	}
	if v := get(t, r.KV, "b", "k"); v != nil {
		t.Fatalf("a refused commit wrote %q", v)
	}
}

// version returns the next version after v (8 bytes big-endian, absent 0).
func nextVersion(v []byte) []byte {
	var n uint64
	if len(v) == 8 {
		n = binary.BigEndian.Uint64(v)
	}
	return binary.BigEndian.AppendUint64(nil, n+1)
}

// testDedupCheckAndRecord: the de-duplication check-and-record as the tap
// makes it. Two replicas read the (kind, user) version and find no record;
// both commit their record with the version bumped on condition. One
// lands; the other is refused with nothing of it written, reads again,
// finds the first one's record and consumes it instead.
func (s Suite) testDedupCheckAndRecord(t *testing.T) {
	open := s.New(t)
	a, b := open().KV, open().KV
	d, seq := tap.BucketDedup, tap.BucketDedupSeq
	group := "session_revoked/pk7/"
	va, vb := get(t, a, seq, group), get(t, b, seq, group)
	if va != nil || vb != nil || len(scan(t, a, d, group)) != 0 {
		t.Fatal("a fresh store has de-duplication state")
	}
	bump := func(v []byte) tap.Mark { return ifValue(put(seq, group, string(nextVersion(v))), v) }
	if err := b.Commit(ctx, []tap.Mark{bump(vb), put(d, group+"001/e:1", "event_api"), put("taptest_sets", "e:1", "B")}); err != nil {
		t.Fatalf("B records: %v", err)
	}
	err := a.Commit(ctx, []tap.Mark{bump(va), put(d, group+"002/t:1", "traffic"), put("taptest_sets", "t:1", "A")})
	if err == nil {
		t.Fatal("A's record, checked against a version that has moved, was accepted")
	}
	if len(scan(t, a, d, group)) != 1 || get(t, a, "taptest_sets", "t:1") != nil {
		t.Fatalf("A's refused commit left marks: %v", scan(t, a, d, group))
	}
	// A checks again: the version has moved and B's record is there.
	va = get(t, a, seq, group)
	if got := scan(t, a, d, group); !slices.Equal(got, []string{group + "001/e:1=event_api"}) {
		t.Fatalf("A's second check reads %v", got)
	}
	if err := a.Commit(ctx, []tap.Mark{bump(va), put(d, group+"001/e:1", "event_api,consumed")}); err != nil {
		t.Fatalf("A consumes B's record: %v", err)
	}
	if got := scan(t, b, d, group); !slices.Equal(got, []string{group + "001/e:1=event_api,consumed"}) {
		t.Fatalf("records = %v", got)
	}
	if got := scan(t, b, "taptest_sets", ""); !slices.Equal(got, []string{"e:1=B"}) {
		t.Fatalf("SETs = %v, want B's one", got)
	}
	// Another (kind, user) has a version of its own.
	if v := get(t, a, seq, "session_revoked/pk8/"); v != nil {
		t.Fatalf("an untouched group has version %x", v)
	}
}

// testDedupNoLostUpdate: writers racing on one version, each retrying its
// read-check-commit until its commit lands, never lose an update: every
// record lands and the version counts them all.
func (s Suite) testDedupNoLostUpdate(t *testing.T) {
	open := s.New(t)
	const writers, each = 4, 5
	seq, d, group := tap.BucketDedupSeq, tap.BucketDedup, "mfa_added/pk1/"
	kvs := make([]tap.KV, writers)
	kvs[0] = open().KV
	for i := 1; i < writers; i++ {
		kvs[i] = kvs[0]
		if s.Shared {
			kvs[i] = open().KV
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			kv := kvs[w]
			for n := range each {
				for attempt := 0; ; attempt++ {
					v, err := kv.Get(seq, []byte(group))
					if err != nil {
						errs <- err
						return
					}
					m := ifValue(put(seq, group, string(nextVersion(v))), v)
					if kv.Commit(ctx, []tap.Mark{m, put(d, fmt.Sprintf("%s%d-%d", group, w, n), "r")}) == nil {
						break
					}
					if attempt == 1000 {
						errs <- fmt.Errorf("writer %d: no commit landed in 1000 attempts", w)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if n := len(scan(t, kvs[0], d, group)); n != writers*each {
		t.Errorf("%d records, want %d", n, writers*each)
	}
	if v := get(t, kvs[0], seq, group); len(v) != 8 || binary.BigEndian.Uint64(v) != writers*each {
		t.Errorf("version %x, want %d", v, writers*each)
	}
}

// testPrune: old records go in one commit of deletes (some of keys already
// gone), the rest stay, scans by prefix see exactly what is left.
func (s Suite) testPrune(t *testing.T) {
	kv := s.New(t)().KV
	d := tap.BucketDedup
	var marks []tap.Mark
	for _, g := range []string{"password_changed/pk1/", "password_changed/pk10/", "password_changed/pk2/"} {
		for i := range 3 {
			marks = append(marks, put(d, fmt.Sprintf("%s%020d/id%d", g, i, i), "r"))
		}
	}
	if err := kv.Commit(ctx, marks); err != nil {
		t.Fatal(err)
	}
	if n := len(scan(t, kv, d, "password_changed/pk1/")); n != 3 {
		t.Fatalf("prefix pk1/ sees %d records, want 3 (not pk10's)", n)
	}
	var prune []tap.Mark
	for _, m := range marks {
		if string(m.Key[len(m.Key)-1]) != "2" {
			prune = append(prune, tap.Mark{Bucket: d, Key: m.Key, Delete: true})
		}
	}
	prune = append(prune, tap.Mark{Bucket: d, Key: []byte("password_changed/pk3/gone"), Delete: true})
	if err := kv.Commit(ctx, prune); err != nil {
		t.Fatalf("prune: %v", err)
	}
	got := scan(t, kv, d, "")
	want := []string{
		fmt.Sprintf("password_changed/pk1/%020d/id2=r", 2),
		fmt.Sprintf("password_changed/pk10/%020d/id2=r", 2),
		fmt.Sprintf("password_changed/pk2/%020d/id2=r", 2),
	}
	if !slices.Equal(got, want) {
		t.Fatalf("after pruning: %v, want %v", got, want)
	}
}
