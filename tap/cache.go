package tap

import (
	"sync"
	"time"
)

// cache is a small bounded map with per-entry expiry. When full, the entry
// closest to expiry is evicted (a scan; sizes are a few thousand).
type cache[K comparable, V any] struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	clock func() time.Time
	m     map[K]cacheEntry[V]
}

type cacheEntry[V any] struct {
	v   V
	exp time.Time
}

func newCache[K comparable, V any](max int, ttl time.Duration, clock func() time.Time) *cache[K, V] {
	return &cache[K, V]{max: max, ttl: ttl, clock: clock, m: make(map[K]cacheEntry[V])}
}

func (c *cache[K, V]) get(k K) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if !ok || (c.ttl > 0 && c.clock().After(e.exp)) {
		var zero V
		return zero, false
	}
	return e.v, true
}

func (c *cache[K, V]) put(k K, v V) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		var victim K
		var first = true
		var oldest time.Time
		for key, e := range c.m {
			if c.ttl > 0 && now.After(e.exp) {
				delete(c.m, key)
				continue
			}
			if first || e.exp.Before(oldest) {
				victim, oldest, first = key, e.exp, false
			}
		}
		if len(c.m) >= c.max && !first {
			delete(c.m, victim)
		}
	}
	c.m[k] = cacheEntry[V]{v: v, exp: now.Add(c.ttl)}
}

func (c *cache[K, V]) del(k K) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, k)
}

// rewrite replaces, in place, every value fn changes (ok true).
func (c *cache[K, V]) rewrite(fn func(V) (V, bool)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if v, ok := fn(e.v); ok {
			e.v = v
			c.m[k] = e
		}
	}
}

// delWhere removes every entry whose value matches.
func (c *cache[K, V]) delWhere(match func(V) bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.m {
		if match(e.v) {
			delete(c.m, k)
		}
	}
}

// rateLimiter is a token bucket per key (a client IP, or a confirmed
// caller), bounded in size.
type rateLimiter struct {
	mu      sync.Mutex
	rate    float64
	burst   float64
	max     int
	clock   func() time.Time
	buckets map[string]*bucket
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newRateLimiter(rate float64, burst, max int, clock func() time.Time) *rateLimiter {
	return &rateLimiter{rate: rate, burst: float64(burst), max: max, clock: clock, buckets: map[string]*bucket{}}
}

// bucketLocked returns key's bucket, refilled to now; nil when the map is
// full of buckets that still carry state. l.mu is held.
func (l *rateLimiter) bucketLocked(key string) *bucket {
	now := l.clock()
	b, ok := l.buckets[key]
	if !ok {
		if len(l.buckets) >= l.max {
			// Forget full buckets first; they carry no state worth keeping.
			for k, v := range l.buckets {
				if v.tokens+now.Sub(v.last).Seconds()*l.rate >= l.burst {
					delete(l.buckets, k)
				}
			}
			if len(l.buckets) >= l.max {
				return nil
			}
		}
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	return b
}

// has reports whether key has a token left, without taking it.
func (l *rateLimiter) has(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key)
	return b != nil && b.tokens >= 1
}

// spend takes a token from key after the fact (a failure it is charged
// for), down to an empty bucket.
func (l *rateLimiter) spend(key string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.bucketLocked(key); b != nil {
		b.tokens = max(0, b.tokens-1)
	}
}

// allow takes a token from key, reporting false when there is none.
func (l *rateLimiter) allow(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.bucketLocked(key)
	if b == nil || b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// len is the number of entries, expired ones included.
func (c *cache[K, V]) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
