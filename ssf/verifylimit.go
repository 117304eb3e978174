package ssf

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// BucketVerifications holds the time of each stream's last accepted
// verification request (key: the stream id; value: RFC 3339 with
// nanoseconds), so that replicas sharing a store enforce one
// min_verification_interval per stream between them.
const BucketVerifications = "ssf_verification"

// verifyClaimTries bounds the compare-and-swap loop of one claim.
const verifyClaimTries = 20

// claimVerification takes the stream's verification slot at now, unless
// one was taken less than interval before (by this process or by another
// sharing kv): then it returns how long until the next one. seen is the
// last verification this process knows of (the stream record's). The
// write is conditional on the entry read, so of two replicas claiming at
// once one wins and the other is refused. A nil kv keeps to seen alone.
func claimVerification(ctx context.Context, kv KV, streamID string, seen, now time.Time, interval time.Duration) (time.Duration, error) {
	key := []byte(streamID)
	for try := 0; ; try++ {
		last := seen
		var old []byte
		if kv != nil {
			var err error
			if old, err = kv.Get(BucketVerifications, key); err != nil {
				return 0, fmt.Errorf("read the last verification of %s: %w", streamID, err)
			}
			if t, err := time.Parse(time.RFC3339Nano, string(old)); err == nil && t.After(last) {
				last = t
			}
		}
		if !last.IsZero() {
			if wait := last.Add(interval).Sub(now); wait > 0 {
				return wait, nil
			}
		}
		if kv == nil {
			return 0, nil
		}
		err := kv.Commit(ctx, []outbox.Mark{{Bucket: BucketVerifications, Key: key,
			Value: []byte(now.UTC().Format(time.RFC3339Nano)), IfValue: true, Expect: old}})
		if err == nil {
			return 0, nil
		}
		if !errors.Is(err, outbox.ErrCondition) || try >= verifyClaimTries {
			return 0, fmt.Errorf("record the verification of %s: %w", streamID, err)
		}
	}
}
