package outbox

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	err := Config{PushTimeout: -1, MaxBackoff: time.Millisecond, Workers: -2, LeaseTTL: -time.Second}.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"Store", "Signer", "PushTimeout", "MaxBackoff", "Workers", "LeaseTTL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate does not report %s: %v", want, err)
		}
	}
	if _, err := New(Config{}); err == nil {
		t.Error("New accepted an empty config")
	}
	if err := (Config{LeaseTTL: time.Microsecond}).Validate(); err == nil || !strings.Contains(err.Error(), "LeaseTTL") {
		t.Errorf("a LeaseTTL too short to renew at a third of it: %v", err)
	}
}

// TestLeaseDefaults: the dispatch lease lasts 15s unless configured (a
// holder that died is waited out that long), also with long push
// attempts, and each Outbox is its own holder.
func TestLeaseDefaults(t *testing.T) {
	tests := []struct {
		push, ttl, want time.Duration
	}{
		{0, 0, 15 * time.Second},
		// The heartbeat renews the lease during an attempt, so the
		// failover time does not grow with the push timeout.
		{time.Minute, 0, 15 * time.Second},
		{0, 5 * time.Second, 5 * time.Second},
	}
	for _, tc := range tests {
		c := Config{PushTimeout: tc.push, LeaseTTL: tc.ttl}
		c.defaults()
		if c.LeaseTTL != tc.want {
			t.Errorf("PushTimeout %v, LeaseTTL %v: default %v, want %v", tc.push, tc.ttl, c.LeaseTTL, tc.want)
		}
	}
	a, b := Config{}, Config{}
	a.defaults()
	b.defaults()
	if a.HolderID == "" || a.HolderID == b.HolderID {
		t.Errorf("holder ids %q and %q, want distinct", a.HolderID, b.HolderID)
	}
}

// TestConcurrencyLimits: StreamConcurrency allows that many attempts in
// flight on one stream; Workers caps attempts over all streams; the hooks
// see every attempt and delivery.
func TestConcurrencyLimits(t *testing.T) {
	tests := []struct {
		name        string
		streams     int
		streamConc  int
		workers     int
		wantMax     int64
		holdUntilMx bool
	}{
		{"one per stream keeps order", 1, 1, 64, 1, false},
		{"four per stream", 1, 4, 64, 4, true},
		{"global cap over streams", 3, 1, 1, 1, false},
		{"streams in parallel", 3, 1, 64, 3, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var inflight, maxSeen atomic.Int64
			release := make(chan struct{})
			var once sync.Once
			rc := newReceiver(t, func(n int, r *http.Request, w http.ResponseWriter) {
				cur := inflight.Add(1)
				for {
					m := maxSeen.Load()
					if cur <= m || maxSeen.CompareAndSwap(m, cur) {
						break
					}
				}
				if tc.holdUntilMx {
					if cur >= tc.wantMax {
						once.Do(func() { close(release) })
					}
					select {
					case <-release:
					case <-r.Context().Done():
					}
				}
				inflight.Add(-1)
				w.WriteHeader(202)
			})
			var attempts, delivered atomic.Int64
			h := newHarness(t, nil, func(c *Config) {
				c.SweepInterval = noSweep
				c.StreamConcurrency = tc.streamConc
				c.Workers = tc.workers
				c.Hooks.OnAttempt = func(_, _, _ string, a Attempt) { attempts.Add(1) }
				c.Hooks.OnDelivered = func(_, _ string, _ time.Duration) { delivered.Add(1) }
			})
			var sets []SET
			for s := range tc.streams {
				id := string(rune('a' + s))
				h.pushStream(id, rc.srv.URL, "")
				for _, j := range jtis(id, 12) {
					sets = append(sets, makeSET(id, j))
				}
			}
			h.enqueue(sets...)
			rc.waitFor(t, len(sets), 10*time.Second)
			if got := maxSeen.Load(); got != tc.wantMax {
				t.Errorf("max in flight = %d, want %d", got, tc.wantMax)
			}
			eventually(t, 5*time.Second, "hooks", func() bool {
				return attempts.Load() == int64(len(sets)) && delivered.Load() == int64(len(sets))
			})
			if tc.streamConc == 1 {
				byStream := map[string][]string{}
				for _, j := range rc.accepted() {
					byStream[j[:1]] = append(byStream[j[:1]], j)
				}
				for id, got := range byStream {
					want := jtis(id, 12)
					for i := range want {
						if got[i] != want[i] {
							t.Errorf("stream %s order %v", id, got)
							break
						}
					}
				}
			}
			all, err := h.ob.AllStats(context.Background())
			if err != nil || len(all) != tc.streams {
				t.Fatalf("AllStats = %v, %v", all, err)
			}
		})
	}
}
