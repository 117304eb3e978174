package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox/kv"
)

func fullRecord() *Record {
	at := time.Date(2026, 11, 26, 9, 30, 15, 123456789, time.UTC)
	return &Record{
		JTI: "4d3559ec67504aaba65d40b0363faad8", StreamID: "s-1", Seq: seqOrigin + 41,
		EventType:   "https://schemas.openid.net/secevent/caep/event-type/session-revoked",
		Claims:      json.RawMessage(`{"iss":"https://idp.example","jti":"4d3559ec67504aaba65d40b0363faad8","txt":"a b"}`),
		Labels:      map[string]string{"user": "42", "source": "traffic", "": "empty key"},
		TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Announce:    true, State: StateDead,
		EnqueuedAt: at, QueuedAt: at.Add(time.Second), DeadAt: at.Add(time.Hour),
		Reason:       "receiver: invalid_audience",
		AttemptCount: 11,
		Attempts: []Attempt{
			{Time: at.Add(time.Minute), StatusCode: 500, Latency: 1500 * time.Microsecond, Outcome: "retry", Error: "500 Internal Server Error"},
			{Time: at.Add(-time.Hour * 24 * 365 * 60), Outcome: "dead", Error: "invalid_audience"},
		},
	}
}

// TestRecordCodec round-trips records through the stored form, reads
// records an earlier version stored as JSON, and refuses damaged ones.
func TestRecordCodec(t *testing.T) {
	for name, r := range map[string]*Record{
		"full":    fullRecord(),
		"minimal": {JTI: "j", StreamID: "s", State: StateQueued, Claims: json.RawMessage(`{}`)},
		"empty":   {},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := decodeRecord(encodeRecord(nil, r))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, r) {
				t.Fatalf("round trip:\n got %+v\nwant %+v", got, r)
			}
		})
	}
	t.Run("legacy JSON", func(t *testing.T) {
		r := fullRecord()
		v, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeRecord(v)
		if err != nil {
			t.Fatal(err)
		}
		if got.JTI != r.JTI || !got.DeadAt.Equal(r.DeadAt) || len(got.Attempts) != 2 || got.Attempts[0].Latency != r.Attempts[0].Latency ||
			string(got.Claims) != string(r.Claims) || got.Labels["user"] != "42" {
			t.Fatalf("legacy record read as %+v", got)
		}
	})
	t.Run("damaged", func(t *testing.T) {
		v := encodeRecord(nil, fullRecord())
		for cut := 0; cut < len(v); cut++ {
			if _, err := decodeRecord(v[:cut]); err == nil {
				t.Fatalf("record cut at %d of %d bytes accepted", cut, len(v))
			}
		}
		for _, bad := range [][]byte{nil, {0x02}, []byte("not a record"), append(bytes.Clone(v), 0), []byte(`{"jti":`)} {
			if _, err := decodeRecord(bad); err == nil {
				t.Fatalf("%q accepted", bad)
			}
		}
	})
	t.Run("decoded record owns its bytes", func(t *testing.T) {
		v := encodeRecord(nil, fullRecord())
		got, err := decodeRecord(v)
		if err != nil {
			t.Fatal(err)
		}
		for i := range v {
			v[i] = 0xff
		}
		if want := fullRecord(); !reflect.DeepEqual(got, want) {
			t.Fatalf("the decoded record changed with its input: %+v", got)
		}
	})
}

// TestLegacyJSONRecordDelivered opens a store holding a queued SET whose
// record an earlier version wrote as JSON, and delivers it.
func TestLegacyJSONRecordDelivered(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "legacy.db")
	st, err := Open(path, StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	srv, got := countingReceiver(t, nil)
	ob, err := New(Config{Store: st, Signer: newSigner(t), AllowPrivateEndpoints: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ob.SetStream(ctx, StreamConfig{ID: "s", Method: MethodPush, Status: StatusPaused, EndpointURL: srv.URL}); err != nil {
		t.Fatal(err)
	}
	if err := ob.Enqueue(ctx, []SET{makeSET("s", "old-1")}, nil); err != nil {
		t.Fatal(err)
	}
	// Rewrite the record as JSON, the way earlier versions stored it.
	err = st.db.Update(context.Background(), func(tx kv.Tx) error {
		r, err := getRecord(tx, "old-1")
		if err != nil || r == nil {
			t.Fatalf("record: %v %v", r, err)
		}
		v, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return tx.Bucket(bktSets).Put([]byte("old-1"), v)
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = ob.Run(runCtx); close(done) }()
	defer func() { cancel(); <-done; st.Close() }()
	if err := ob.SetStream(ctx, StreamConfig{ID: "s", Method: MethodPush, Status: StatusEnabled, EndpointURL: srv.URL}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for got.Load() < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got.Load() != 1 {
		t.Fatalf("the legacy record was not delivered (%d posts)", got.Load())
	}
	for time.Now().Before(deadline) {
		var r *Record
		_ = st.db.View(context.Background(), func(tx kv.Tx) error { r, _ = getRecord(tx, "old-1"); return nil })
		if r != nil && r.State == StateDelivered {
			var v []byte
			_ = st.db.View(context.Background(), func(tx kv.Tx) error { v = bytes.Clone(tx.Bucket(bktSets).Get([]byte("old-1"))); return nil })
			if len(v) == 0 || v[0] != recordV1 {
				t.Fatalf("the delivered record was not rewritten in the binary form: %q", v)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the legacy record was not marked delivered")
}

func TestEnqueueStoresCompactClaims(t *testing.T) {
	st, err := Open(filepath.Join(t.TempDir(), "c.db"), StoreOptions{NoSync: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ob, err := New(Config{Store: st, Signer: newSigner(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := ob.SetStream(ctx, StreamConfig{ID: "s", Method: MethodPoll, Status: StatusEnabled}); err != nil {
		t.Fatal(err)
	}
	s := makeSET("s", "pretty")
	s.Claims = json.RawMessage("{\n  \"jti\": \"pretty\",\n  \"txt\": \"a b\"\n}")
	if err := ob.Enqueue(ctx, []SET{s}, nil); err != nil {
		t.Fatal(err)
	}
	var r *Record
	_ = st.db.View(context.Background(), func(tx kv.Tx) error { r, err = getRecord(tx, "pretty"); return nil })
	if err != nil || r == nil {
		t.Fatalf("record: %v %v", r, err)
	}
	if want := `{"jti":"pretty","txt":"a b"}`; string(r.Claims) != want || strings.Contains(string(r.Claims), "\n") {
		t.Fatalf("stored claims %s, want %s", r.Claims, want)
	}
}
