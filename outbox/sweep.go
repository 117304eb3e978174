package outbox

import (
	"context"
	"encoding/binary"
	"log/slog"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

// sweepChunk bounds the expiry entries one sweep transaction handles.
const sweepChunk = 2000

// sweepLoop runs the retention sweep every SweepInterval.
func (o *Outbox) sweepLoop(ctx context.Context) {
	for {
		if _, err := o.sweep(ctx); err != nil && ctx.Err() == nil {
			o.log.Error("outbox retention sweep", slog.Any("err", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-o.cfg.After(o.cfg.SweepInterval):
		}
	}
}

// sweepCounts says what one sweep did.
type sweepCounts struct {
	Expired int // undelivered SETs moved to the dead letter
	Purged  int // delivered or dead records removed
	Keys    int // idempotency keys forgotten
}

// sweep moves undelivered SETs past Retention to the dead letter, purges
// delivered records past DeliveredRetention and dead letters past
// Retention and forgets old idempotency keys.
func (o *Outbox) sweep(ctx context.Context) (sweepCounts, error) {
	var total sweepCounts
	for {
		now := o.now()
		var c sweepCounts
		var dead []*Record
		var done int
		err := o.store.update(ctx, func(tx kv.Tx) error {
			c, dead, done = sweepCounts{}, dead[:0], 0
			metas := map[string]*streamMeta{}
			meta := func(id string) (*streamMeta, error) {
				if m, ok := metas[id]; ok {
					return m, nil
				}
				m, err := getMeta(tx, id)
				metas[id] = m
				return m, err
			}
			cur := tx.Bucket(bktExpiry).Cursor()
			limit := uint64(now.UnixNano())
			for k, _ := cur.First(); k != nil && done < sweepChunk; k, _ = cur.First() {
				if len(k) < 9 || binary.BigEndian.Uint64(k[:8]) > limit {
					break
				}
				kind, id := k[8], string(k[9:])
				if err := cur.Delete(); err != nil {
					return err
				}
				done++
				switch kind {
				case expKey:
					v := tx.Bucket(bktKeys).Get([]byte(id))
					if len(v) == 8 && binary.BigEndian.Uint64(v) <= limit {
						if err := tx.Bucket(bktKeys).Delete([]byte(id)); err != nil {
							return err
						}
						c.Keys++
					}
				case expQueued:
					r, err := getRecord(tx, id)
					if err != nil || r == nil || r.State != StateQueued || r.QueuedAt.Add(o.cfg.Retention).After(now) {
						continue
					}
					m, err := meta(r.StreamID)
					if err != nil || m == nil {
						continue
					}
					if err := o.markDead(tx, m, r, now, "retention expired"); err != nil {
						return err
					}
					c.Expired++
					dead = append(dead, r)
				case expRecord:
					r, err := getRecord(tx, id)
					if err != nil || r == nil {
						continue
					}
					var due bool
					switch r.State {
					case StateDelivered:
						due = !r.DeliveredAt.Add(o.cfg.DeliveredRetention).After(now)
					case StateDead:
						due = !r.DeadAt.Add(o.cfg.Retention).After(now)
					}
					if !due {
						continue
					}
					if r.State == StateDead {
						if m, err := meta(r.StreamID); err == nil && m != nil {
							m.Dead--
						}
					}
					if err := dropRecord(tx, r); err != nil {
						return err
					}
					c.Purged++
				}
			}
			for _, m := range metas {
				if m != nil {
					if err := putMeta(tx, m); err != nil {
						return err
					}
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total.Expired += c.Expired
		total.Purged += c.Purged
		total.Keys += c.Keys
		o.afterDelivery(nil, dead, now)
		if done < sweepChunk {
			break
		}
	}
	return total, nil
}

// dropRecord removes a record that is no longer queued, with its indexes.
func dropRecord(tx kv.Tx, r *Record) error {
	k := seqKey(r.StreamID, r.Seq)
	for _, b := range [][]byte{bktHist, bktDead, bktQueue, bktPolled} {
		if err := tx.Bucket(b).Delete(k); err != nil {
			return err
		}
	}
	return tx.Bucket(bktSets).Delete([]byte(r.JTI))
}
