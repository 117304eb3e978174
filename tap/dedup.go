package tap

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// De-duplication.
//
// Every signal the tap publishes leaves a record in BucketDedup, keyed
// "<kind>/<user>/<time>/<signal id>", holding its source and exact keys
// (session hash, session uuid, device type+pk, request id). A new signal
// from the other source (traffic vs event API; reconciliation counts as
// traffic) is a duplicate when an unconsumed record of the same kind and
// user
//
//  1. shares an exact key with it (from either source), or else
//  2. has no conflicting exact key (two different session hashes, two
//     different device pks) and lies within DedupWindow of it, on
//     authentik's `created` for the event API and the response time for the
//     traffic — the closest such record wins.
//
// A matched record is marked consumed, so two logouts of one user from two
// sessions, seen by both sources, still make two signals. The match and the
// consumption commit atomically with the cursor or journal mark.
//
// Replicas sharing a store check and record optimistically: every (kind,
// user) has a version in BucketDedupSeq, read before the records are
// scanned and bumped, on the condition that it is still the version read,
// in the very commit that records the signal (or consumes the match) and
// publishes it. Of two replicas that checked at once, one commit lands; the
// other is refused, finds the version moved and checks again, now seeing
// the first one's record.
type dedupRecord struct {
	Source   Source    `json:"source"`
	Time     time.Time `json:"time"`
	Exact    []string  `json:"exact,omitempty"`
	Consumed bool      `json:"consumed,omitempty"`
}

func sourceGroup(s Source) string {
	if s == SourceEventAPI {
		return "event_api"
	}
	return "traffic"
}

func dedupUser(u User) string {
	switch {
	case u.PK != 0:
		return "pk" + strconv.FormatInt(u.PK, 10)
	case u.UID != "":
		return "uid" + u.UID
	default:
		return "em" + strings.ToLower(u.Email)
	}
}

// exactKeys are the keys that name one action unambiguously.
func exactKeys(s Signal) []string {
	var k []string
	if s.SessionHash != "" {
		k = append(k, "sh:"+s.SessionHash)
	}
	if s.SessionUUID != "" {
		k = append(k, "su:"+s.SessionUUID)
	}
	if s.Device != nil && s.Device.PK != "" {
		k = append(k, "dev:"+s.Device.Type+":"+s.Device.PK)
	}
	if s.RequestID != "" {
		k = append(k, "rq:"+s.RequestID)
	}
	return k
}

// conflicts reports exact keys of the same family with different values.
func conflicts(a, b []string) bool {
	fam := func(k string) string { f, _, _ := strings.Cut(k, ":"); return f }
	for _, x := range a {
		for _, y := range b {
			if fam(x) == fam(y) && fam(x) != "rq" && x != y {
				return true
			}
		}
	}
	return false
}

// strongKeys drops request ids, which may be shared by several actions.
func strongKeys(k []string) []string {
	out := k[:0:0]
	for _, x := range k {
		if !strings.HasPrefix(x, "rq:") {
			out = append(out, x)
		}
	}
	return out
}

func shares(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

func dedupPrefix(s Signal) string { return string(s.Kind) + "/" + dedupUser(s.Subject) + "/" }

// dedupCheck looks for the other source's record of the same action.
// It returns the marks to commit: the consumed record when s is a
// duplicate, or s's own record otherwise.
// The first mark is always the version guard (see dedupRaced).
func (t *Tap) dedupCheck(s Signal) (dup bool, marks []Mark, err error) {
	seqKey := []byte(dedupPrefix(s))
	seq, err := t.cfg.KV.Get(BucketDedupSeq, seqKey)
	if err != nil {
		return false, nil, fmt.Errorf("tap: dedup version: %w", err)
	}
	guard := Mark{Bucket: BucketDedupSeq, Key: seqKey, Value: nextSeq(seq), IfValue: true, Expect: seq}
	mine := exactKeys(s)
	var bestKey []byte
	var best dedupRecord
	bestScore := time.Duration(-1)
	exactHit := false
	err = t.cfg.KV.Scan(BucketDedup, []byte(dedupPrefix(s)), func(k, v []byte) error {
		var r dedupRecord
		if json.Unmarshal(v, &r) != nil {
			return nil
		}
		// An exact key names one action whichever source reported it (a
		// device is added once; authentik ≥2026.8 records model_updated and
		// mfa_device_added for the same enrolment).
		if shares(strongKeys(mine), r.Exact) {
			if !exactHit {
				exactHit, bestKey, best = true, append([]byte(nil), k...), r
			}
			return nil
		}
		if exactHit || r.Consumed || sourceGroup(r.Source) == sourceGroup(s.Source) || conflicts(mine, r.Exact) {
			return nil
		}
		gap := s.Time.Sub(r.Time)
		if gap < 0 {
			gap = -gap
		}
		if gap <= t.cfg.DedupWindow && (bestScore < 0 || gap < bestScore) {
			bestScore, bestKey, best = gap, append([]byte(nil), k...), r
		}
		return nil
	})
	if err != nil {
		return false, nil, fmt.Errorf("tap: dedup scan: %w", err)
	}
	if bestKey != nil {
		// The record now stands for both observations: later reports of
		// the same action match it on any of their exact keys.
		best.Consumed = best.Consumed || !exactHit || sourceGroup(best.Source) != sourceGroup(s.Source)
		for _, k := range mine {
			if !slices.Contains(best.Exact, k) {
				best.Exact = append(best.Exact, k)
			}
		}
		b, _ := json.Marshal(best)
		return true, []Mark{guard, {Bucket: BucketDedup, Key: bestKey, Value: b}}, nil
	}
	b, _ := json.Marshal(dedupRecord{Source: s.Source, Time: s.Time.UTC(), Exact: mine})
	key := fmt.Sprintf("%s%020d/%s", dedupPrefix(s), s.Time.UnixNano(), s.ID)
	return false, []Mark{guard, {Bucket: BucketDedup, Key: []byte(key), Value: b}}, nil
}

// nextSeq is the version after seq (8 bytes, big-endian; absent is 0).
func nextSeq(seq []byte) []byte {
	var n uint64
	if len(seq) == 8 {
		n = binary.BigEndian.Uint64(seq)
	}
	return binary.BigEndian.AppendUint64(nil, n+1)
}

// dedupRaced reports whether the version a failed commit was conditioned
// on has moved since the check: another replica recorded a signal of the
// same kind and user in between, and the check must be made again.
func (t *Tap) dedupRaced(marks []Mark) bool {
	if len(marks) == 0 || marks[0].Bucket != BucketDedupSeq {
		return false
	}
	cur, err := t.cfg.KV.Get(BucketDedupSeq, marks[0].Key)
	return err == nil && !sameValue(cur, marks[0].Expect)
}

// sameValue compares stored values, telling absent (nil) from empty.
func sameValue(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// pruneDedup removes records older than DedupRetention.
func (t *Tap) pruneDedup() []Mark {
	cutoff := t.cfg.Clock().Add(-t.cfg.DedupRetention)
	var marks []Mark
	_ = t.cfg.KV.Scan(BucketDedup, nil, func(k, v []byte) error {
		var r dedupRecord
		if json.Unmarshal(v, &r) != nil || r.Time.Before(cutoff) {
			marks = append(marks, Mark{Bucket: BucketDedup, Key: append([]byte(nil), k...), Delete: true})
		}
		return nil
	})
	return marks
}
