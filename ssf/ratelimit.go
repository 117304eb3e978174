package ssf

import (
	"math"
	"net/http"
	"sync"
	"time"
)

// Defaults of the per-receiver management-call limit.
const (
	DefaultManagementBurst    = 60
	DefaultManagementInterval = time.Second
)

// callLimiter is a token bucket per receiver for management calls (stream
// configuration, status, subjects, verification; poll has its own bound):
// a receiver may make burst calls at once and then one per interval. A
// call beyond that is answered 429 with Retry-After.
//
// The state is in memory: a restart refills every bucket, which is at most
// one extra burst per receiver.
type callLimiter struct {
	burst    float64
	interval time.Duration
	clock    func() time.Time

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newCallLimiter(burst int, interval time.Duration, clock func() time.Time) *callLimiter {
	if burst <= 0 {
		return nil
	}
	return &callLimiter{burst: float64(burst), interval: interval, clock: clock, buckets: map[string]*bucket{}}
}

// allow takes one token of receiver's bucket. When none is left it returns
// false and how long until one is.
func (l *callLimiter) allow(receiver string) (bool, time.Duration) {
	if l == nil {
		return true, 0
	}
	now := l.clock()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[receiver]
	if b == nil {
		b = &bucket{tokens: l.burst, at: now}
		l.buckets[receiver] = b
	}
	if el := now.Sub(b.at); el > 0 {
		b.tokens = math.Min(l.burst, b.tokens+float64(el)/float64(l.interval))
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true, 0
	}
	return false, time.Duration((1 - b.tokens) * float64(l.interval))
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
