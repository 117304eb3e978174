package pgstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

type benchSigner struct{}

func (benchSigner) Sign(context.Context, []byte) (string, error) { return "x.y.z", nil }

// BenchmarkEnqueue compares durable enqueue on PostgreSQL with bbolt (fsync
// on for both) at 1, 64 and 256 concurrent producers, side by side in one
// run: each op is one Enqueue of one SET, group-committed with whatever
// the other producers queued meanwhile. Compare the ns/op of the pairs.
func BenchmarkEnqueue(b *testing.B) {
	for _, producers := range []int{1, 64, 256} {
		for _, backend := range backends {
			b.Run(fmt.Sprintf("producers=%d/%s", producers, backend), func(b *testing.B) {
				st, _, _ := benchStore(b, backend)
				ob, err := outbox.New(outbox.Config{Store: st, Signer: benchSigner{}})
				if err != nil {
					b.Fatal(err)
				}
				ctx := context.Background()
				if err := ob.SetStream(ctx, outbox.StreamConfig{ID: "s", Method: outbox.MethodPoll, Status: outbox.StatusEnabled}); err != nil {
					b.Fatal(err)
				}
				var next atomic.Int64
				b.ResetTimer()
				var wg sync.WaitGroup
				for range producers {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for {
							i := next.Add(1)
							if i > int64(b.N) {
								return
							}
							jti := fmt.Sprintf("j%09d", i)
							claims, _ := json.Marshal(map[string]any{"jti": jti, "events": map[string]any{"urn:x": map[string]any{}}})
							if err := ob.Enqueue(ctx, []outbox.SET{{StreamID: "s", JTI: jti, Claims: claims}}, nil); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.StopTimer()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sets/s")
			})
		}
	}
}
