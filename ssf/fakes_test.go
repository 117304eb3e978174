package ssf

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
)

// fakeQueue records what the transmitter hands the queue.
type fakeQueue struct {
	mu      sync.Mutex
	sets    []outbox.SET
	marks   []outbox.Mark
	streams map[string]outbox.StreamConfig
	calls   int
	err     error
	// kv, when set, receives the stream store's marks (SetStream,
	// DeleteStream), as the outbox's own store would.
	kv KV
}

func newFakeQueue() *fakeQueue { return &fakeQueue{streams: map[string]outbox.StreamConfig{}} }

func (q *fakeQueue) Enqueue(_ context.Context, sets []outbox.SET, marks []outbox.Mark) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.calls++
	if q.err != nil {
		return q.err
	}
	q.sets = append(q.sets, sets...)
	q.marks = append(q.marks, marks...)
	return nil
}

func (q *fakeQueue) SetStream(ctx context.Context, c outbox.StreamConfig, with ...outbox.Mark) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.commitWith(ctx, with); err != nil {
		return err
	}
	q.streams[c.ID] = c
	return nil
}

func (q *fakeQueue) DeleteStream(ctx context.Context, id string, with ...outbox.Mark) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.commitWith(ctx, with); err != nil {
		return err
	}
	delete(q.streams, id)
	return nil
}

// commitWith commits the stream store's marks the way the outbox would,
// in the store the fake was given (none: they are dropped, and the test
// reads no stream records).
func (q *fakeQueue) commitWith(ctx context.Context, with []outbox.Mark) error {
	if len(with) == 0 || q.kv == nil {
		return nil
	}
	return q.kv.Commit(ctx, with)
}

func (q *fakeQueue) Poll(context.Context, string, outbox.PollRequest) (outbox.PollResponse, error) {
	return outbox.PollResponse{Sets: map[string]string{}}, nil
}

func (q *fakeQueue) take() []outbox.SET {
	q.mu.Lock()
	defer q.mu.Unlock()
	s := q.sets
	q.sets = nil
	return s
}

var (
	testKeyOnce sync.Once
	testKeyPEM  []byte
)

// testKeyFile writes a shared RSA-2048 key (generated once per test run).
func testKeyFile(t testing.TB) string {
	t.Helper()
	testKeyOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		testKeyPEM = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)})
	})
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, testKeyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func testKeys(t testing.TB) *Keys {
	t.Helper()
	k, err := NewKeys(context.Background(), KeyConfig{Files: []string{testKeyFile(t)}})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// serve runs one request through a transmitter's handler.
func serve(tr *Transmitter, method, path, token, body string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	rec := httptest.NewRecorder()
	tr.Handler().ServeHTTP(rec, req)
	return rec
}
