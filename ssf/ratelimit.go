package ssf

import (
	"context"
	"log/slog"
	"math"
	"net/http"
	"sync/atomic"
	"time"
)

// Defaults of the per-receiver management-call limit.
const (
	DefaultManagementBurst    = 60
	DefaultManagementInterval = time.Second
)

// limitTimeout bounds one take of a token, store write included. A take
// that does not finish in time serves the call (see callLimiter).
const limitTimeout = 2 * time.Second

// callLimiter is a token bucket per receiver for management calls (stream
// configuration, status, subjects, verification; poll has its own bound and
// never comes here): a receiver may make burst calls at once and then one
// per interval. A call beyond that is answered 429 with Retry-After.
//
// The buckets are kept by a LimitStore — by default in the store the
// transmitter is given (KV), so a restart does not hand every receiver a
// fresh burst, and a shared backend can hold them for several replicas.
// The limit never locks receivers out because of the store: when taking a
// token fails (a full disk, a store that does not answer), the call is
// served, counted, and logged once per run of failures.
type callLimiter struct {
	bucket LimitBucket
	clock  func() time.Time
	store  LimitStore
	log    *slog.Logger

	failures atomic.Int64 // takes that failed and were served
	failing  atomic.Bool  // in a run of failures (logged at its start)
}

func newCallLimiter(burst int, interval time.Duration, clock func() time.Time, store LimitStore, log *slog.Logger) *callLimiter {
	if burst <= 0 {
		return nil
	}
	if store == nil {
		store = NewKVLimitStore(nil)
	}
	return &callLimiter{bucket: LimitBucket{Burst: burst, Interval: interval}, clock: clock, store: store, log: orDiscard(log)}
}

// allow takes one token of receiver's bucket. When none is left it returns
// false and how long until one is.
func (l *callLimiter) allow(receiver string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), limitTimeout)
	defer cancel()
	ok, wait, err := l.store.Take(ctx, receiver, l.clock(), l.bucket)
	if err != nil {
		l.failures.Add(1)
		if !l.failing.Swap(true) {
			l.log.Warn("management-call limit: the bucket could not be kept in the store; calls are served until it can",
				slog.String("receiver", receiver), slog.String("error", err.Error()))
		}
		return true, 0
	}
	if l.failing.Load() && l.failing.Swap(false) {
		l.log.Info("management-call limit: the store keeps the buckets again", slog.String("receiver", receiver),
			slog.Int64("served_unrecorded_total", l.failures.Load()))
	}
	return ok, wait
}

// ManagementLimitFailures counts management calls served because their
// receiver's bucket could not be read or written in the store.
func (t *Transmitter) ManagementLimitFailures() int64 {
	if t.calls == nil {
		return 0
	}
	return t.calls.failures.Load()
}

// tooManyCalls is the 429 of the management-call limit.
func tooManyCalls(wait time.Duration) *apiError {
	secs := int(math.Ceil(wait.Seconds()))
	if secs < 1 {
		secs = 1
	}
	return &apiError{Status: http.StatusTooManyRequests, Code: "too_many_requests", RetryAfter: secs,
		Desc: "too many management calls from this receiver; retry later"}
}
