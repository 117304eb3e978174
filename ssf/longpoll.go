package ssf

import "sync"

// DefaultMaxLongPollsPerReceiver caps the long polls one receiver keeps
// waiting at once (across its tokens and streams).
const DefaultMaxLongPollsPerReceiver = 8

// longPolls counts the long polls waiting per receiver. A poll over the
// cap is answered at once (as with returnImmediately), so a receiver
// cannot pile up thousands of waiting requests; an RFC 8936 receiver polls
// again anyway.
type longPolls struct {
	max int
	mu  sync.Mutex
	n   map[string]int
}

// acquire takes a long-poll slot for receiver; false when it has max
// waiting already.
func (l *longPolls) acquire(receiver string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = map[string]int{}
	}
	if l.n[receiver] >= l.max {
		return false
	}
	l.n[receiver]++
	return true
}

func (l *longPolls) release(receiver string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n[receiver]--; l.n[receiver] <= 0 {
		delete(l.n, receiver)
	}
}
