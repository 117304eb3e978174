package outbox

import (
	"context"
	"encoding/binary"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// bktPolled holds the poll hand-out leases: a handed-out SET's queue key
// (stream id 0x00 seq) → the lease's end (unix nanos, on the lease
// clock). They live in the store, so every replica sharing it sees them
// and they survive a restart: a SET handed out by one replica is not
// handed out by another until its lease ends (RFC 8936 redelivery), and a
// receiver that got SETs just before a restart does not get them again
// early. An entry leaves with its SET's queue entry (ack, setErr,
// retention, discard); an ended one is only overwritten by the next
// hand-out.
var bktPolled = []byte("outbox.polled")

// leaseClock is the time leases are measured on: the backend's own clock
// when it has one every process agrees on (a database's now()), else now.
func leaseClock(tx kv.Tx, now func() time.Time) time.Time {
	if t, ok := tx.Now(); ok {
		return t
	}
	return now()
}

func leaseEnd(v []byte) time.Time {
	if len(v) != 8 {
		return time.Time{} // unreadable: treated as ended
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v)))
}

// pollPick is what one look at a poll stream's queue found.
type pollPick struct {
	picked []*Record
	// more: SETs beyond picked were eligible (or the lease bound held
	// them back).
	more bool
	// live counts the SETs under an unexpired lease; nextIn is how long
	// until the first of those leases ends (0: none).
	live   int
	nextIn time.Duration
}

// pickPoll finds up to limit queued SETs of the stream not under an
// unexpired lease, in queue order, keeping the stream's leases at most
// maxLeases. onlyAnnounce stops at the first SET that is not an Announce
// SET (a stream no longer enabled); the stream's stored status, read in
// the same transaction, decides over it, so a pause or resume made through
// another replica holds here at once.
func (o *Outbox) pickPoll(tx kv.Tx, stream string, limit int, onlyAnnounce bool) (pollPick, error) {
	var pp pollPick
	m, err := getMeta(tx, stream)
	if err != nil {
		return pp, err
	}
	if m != nil {
		onlyAnnounce = m.Config.Status != StatusEnabled
	}
	now := leaseClock(tx, o.now)
	p := streamPrefix(stream)
	leased := map[uint64]bool{}
	var next time.Time
	c := tx.Bucket(bktPolled).Cursor()
	for k, v := c.Seek(p); k != nil && hasPrefix(k, p); k, v = c.Next() {
		end := leaseEnd(v)
		if !end.After(now) {
			continue
		}
		leased[seqOf(k)] = true
		if next.IsZero() || end.Before(next) {
			next = end
		}
	}
	pp.live = len(leased)
	if !next.IsZero() {
		pp.nextIn = next.Sub(now)
	}
	room := min(limit, maxLeases-pp.live)
	var jtis []string
	q := tx.Bucket(bktQueue).Cursor()
	for k, v := q.Seek(p); k != nil && hasPrefix(k, p); k, v = q.Next() {
		if leased[seqOf(k)] {
			continue
		}
		if onlyAnnounce {
			// A paused stream's head: look at each record before taking it.
			r, err := getRecord(tx, string(v))
			if err != nil {
				return pp, err
			}
			if r == nil || !r.Announce {
				break
			}
			if len(pp.picked) >= room {
				pp.more = true
				break
			}
			pp.picked = append(pp.picked, r)
			continue
		}
		if len(jtis) >= room {
			pp.more = true
			break
		}
		jtis = append(jtis, string(v))
	}
	if len(jtis) == 0 {
		return pp, nil
	}
	if f, ok := tx.(kv.Prefetcher); ok {
		keys := make([]kv.BucketKey, len(jtis))
		for i, j := range jtis {
			keys[i] = kv.BucketKey{Bucket: bktSets, Key: []byte(j)}
		}
		f.Prefetch(keys)
	}
	for _, j := range jtis {
		r, err := getRecord(tx, j)
		if err != nil {
			return pp, err
		}
		if r != nil {
			pp.picked = append(pp.picked, r)
		}
	}
	return pp, nil
}

// lease picks up to limit queued SETs not under lease and leases them in
// one write: a read-only look first, so a poll that finds nothing writes
// nothing, then the same look again in the write transaction, which is
// the one that decides (a replica that leased the same SETs meanwhile
// wins, and this poll takes what is left). The look also says whether
// more were eligible and how long until the next lease ends.
func (o *Outbox) lease(ctx context.Context, st *streamState, limit int) (pollPick, error) {
	onlyAnnounce := o.onlyAnnounce(st)
	var look pollPick
	err := o.store.view(func(tx kv.Tx) error {
		var err error
		look, err = o.pickPoll(tx, st.id, limit, onlyAnnounce)
		return err
	})
	if err != nil || len(look.picked) == 0 {
		return look, err
	}
	prefetch := make([]kv.BucketKey, 0, len(look.picked)+1)
	prefetch = append(prefetch, kv.BucketKey{Bucket: bktStreams, Key: []byte(st.id)})
	for _, r := range look.picked {
		prefetch = append(prefetch, kv.BucketKey{Bucket: bktSets, Key: []byte(r.JTI)})
	}
	var got pollPick
	err = o.store.updatePrefetch(ctx, prefetch, func(tx kv.Tx) error {
		var err error
		if got, err = o.pickPoll(tx, st.id, limit, onlyAnnounce); err != nil {
			return err
		}
		return o.putLeases(tx, st.id, got.picked)
	})
	if err != nil {
		return pollPick{}, err
	}
	return got, nil
}

// onlyAnnounce: a stream no longer enabled hands out only the Announce
// SETs at its head (the stream-updated SET of the pause or disable).
func (o *Outbox) onlyAnnounce(st *streamState) bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.cfg.Status != StatusEnabled
}

// putLeases leases the picked SETs for LeaseTimeout from now (on the
// lease clock).
func (o *Outbox) putLeases(tx kv.Tx, stream string, picked []*Record) error {
	if len(picked) == 0 {
		return nil
	}
	end := binaryTime(leaseClock(tx, o.now).Add(o.cfg.LeaseTimeout))
	b := tx.Bucket(bktPolled)
	for _, r := range picked {
		if err := b.Put(seqKey(stream, r.Seq), end); err != nil {
			return err
		}
	}
	return nil
}

// unlease ends the leases of SETs handed out but not sent (signing
// failed), so the next poll hands them out again.
func (o *Outbox) unlease(ctx context.Context, stream string, recs []*Record) error {
	return o.store.update(ctx, func(tx kv.Tx) error {
		b := tx.Bucket(bktPolled)
		for _, r := range recs {
			if err := b.Delete(seqKey(stream, r.Seq)); err != nil {
				return err
			}
		}
		return nil
	})
}

// clearPollLeases ends every hand-out lease of a stream (it was disabled),
// discardChunk per transaction.
func (o *Outbox) clearPollLeases(ctx context.Context, stream string) error {
	p := streamPrefix(stream)
	for {
		n := 0
		err := o.store.update(ctx, func(tx kv.Tx) error {
			n = 0
			c := tx.Bucket(bktPolled).Cursor()
			for k, _ := c.Seek(p); k != nil && hasPrefix(k, p) && n < discardChunk; k, _ = c.Seek(p) {
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
			return nil
		})
		if err != nil || n < discardChunk {
			return err
		}
	}
}

// liveLeases counts a stream's SETs under an unexpired hand-out lease.
func (o *Outbox) liveLeases(tx kv.Tx, stream string) int {
	now := leaseClock(tx, o.now)
	p := streamPrefix(stream)
	n := 0
	c := tx.Bucket(bktPolled).Cursor()
	for k, v := c.Seek(p); k != nil && hasPrefix(k, p); k, v = c.Next() {
		if leaseEnd(v).After(now) {
			n++
		}
	}
	return n
}

// handedOut reports whether a queued SET was handed out by a poll and not
// acknowledged since (its lease may have ended).
func handedOut(tx kv.Tx, r *Record) bool {
	return tx.Bucket(bktPolled).Get(seqKey(r.StreamID, r.Seq)) != nil
}
