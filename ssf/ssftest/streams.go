package ssftest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// RunStreamStore runs the behaviour of the sealed stream store
// (ssf.NewSealedStreamStore) on the stores newStore makes.
//
// Concurrent writers, as this suite holds them: PutStream replaces the
// whole record and the last commit wins (a record is never a mix of two
// writes); subjects are entries of their own, so writes of different
// subjects (or of streams) from two handles all land; a subject set added
// on one handle and removed on the other at once ends in exactly one of
// the two lists.
func RunStreamStore(t *testing.T, newStore func(t *testing.T) Store) {
	t.Run("CreateReadUpdateDelete", func(t *testing.T) { testStreamCRUD(t, newStore(t)) })
	t.Run("Subjects", func(t *testing.T) { testStreamSubjects(t, newStore(t)) })
	t.Run("OwnershipByReceiver", func(t *testing.T) { testStreamOwnership(t, newStore(t)) })
	t.Run("ConcurrentWriters", func(t *testing.T) { testStreamConcurrent(t, newStore(t)) })
	t.Run("SecretSealed", func(t *testing.T) { testStreamSecretSealed(t, newStore(t)) })
	t.Run("PreviousKey", func(t *testing.T) { testStreamPreviousKey(t, newStore(t)) })
}

func streams(t *testing.T, kv ssf.KV, key []byte, previous ...[]byte) ssf.StreamStore {
	t.Helper()
	s, err := ssf.NewSealedStreamStore(kv, key, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

var created = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func pushStream(id, receiver, secret string) ssf.StreamRecord {
	return ssf.StreamRecord{ID: id, Receiver: receiver, Audience: "aud-" + receiver, Method: ssf.MethodPushURN,
		EndpointURL: "https://rx.example/" + id, AuthorizationHeader: secret, Status: ssf.StatusEnabled,
		DefaultSubjects: "ALL", Created: created, Updated: created, EventsRequested: []string{ssf.EventSessionRevoked}}
}

func pollStream(id, receiver string) ssf.StreamRecord {
	return ssf.StreamRecord{ID: id, Receiver: receiver, Audience: "aud-" + receiver, Method: ssf.MethodPollURN,
		Status: ssf.StatusEnabled, DefaultSubjects: "NONE", Created: created, Updated: created,
		EventsRequested: []string{ssf.EventSessionRevoked, ssf.EventCredentialChange}}
}

func mustGet(t *testing.T, s ssf.StreamStore, id string) ssf.StreamRecord {
	t.Helper()
	r, ok, err := s.GetStream(ctx, id)
	if err != nil || !ok {
		t.Fatalf("GetStream(%s) = %v, %v", id, ok, err)
	}
	return r
}

func sameRecord(a, b ssf.StreamRecord) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return a.Created.Equal(b.Created) && a.Updated.Equal(b.Updated) && a.LastVerification.Equal(b.LastVerification) &&
		bytes.Equal(ja, jb)
}

func ids(recs []ssf.StreamRecord) []string {
	var out []string
	for _, r := range recs {
		out = append(out, r.ID)
	}
	slices.Sort(out)
	return out
}

func testStreamCRUD(t *testing.T, st Store) {
	s := streams(t, st.Open(), sealA)
	if _, ok, err := s.GetStream(ctx, "a"); ok || err != nil {
		t.Fatalf("GetStream on an empty store = %v, %v", ok, err)
	}
	if l, err := s.ListStreams(ctx); len(l) != 0 || err != nil {
		t.Fatalf("ListStreams on an empty store = %v, %v", l, err)
	}
	a := pushStream("a", "r1", "Bearer a-secret")
	ab := pollStream("ab", "r1") // shares a prefix with "a": a delete must not spill over
	a.LastVerification = created.Add(time.Minute)
	for _, r := range []ssf.StreamRecord{a, ab} {
		if err := s.PutStream(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetSubject(ctx, "ab", ssf.EmailSubject("keep@example.com"), true); err != nil {
		t.Fatal(err)
	}
	if err := s.SetSubject(ctx, "a", ssf.EmailSubject("gone@example.com"), true); err != nil {
		t.Fatal(err)
	}

	s = streams(t, st.Open(), sealA) // reopened: what was committed is there
	if got := mustGet(t, s, "a"); !sameRecord(got, a) {
		t.Fatalf("read back\n got %+v\nwant %+v", got, a)
	}
	if got := mustGet(t, s, "ab"); !sameRecord(got, ab) {
		t.Fatalf("read back\n got %+v\nwant %+v", got, ab)
	}
	l, err := s.ListStreams(ctx)
	if err != nil || fmt.Sprint(ids(l)) != "[a ab]" {
		t.Fatalf("ListStreams = %v, %v", ids(l), err)
	}

	a.Status, a.Reason, a.Updated = ssf.StatusPaused, "paused by the receiver", created.Add(time.Hour)
	a.EndpointURL, a.AuthorizationHeader = "https://rx.example/moved", "Bearer rotated"
	if err := s.PutStream(ctx, a); err != nil {
		t.Fatal(err)
	}
	s = streams(t, st.Open(), sealA)
	if got := mustGet(t, s, "a"); !sameRecord(got, a) {
		t.Fatalf("update lost\n got %+v\nwant %+v", got, a)
	}

	if err := s.DeleteStream(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteStream(ctx, "never"); err != nil {
		t.Fatalf("deleting a stream never made: %v", err)
	}
	s = streams(t, st.Open(), sealA)
	if _, ok, err := s.GetStream(ctx, "a"); ok || err != nil {
		t.Fatalf("deleted stream: GetStream = %v, %v", ok, err)
	}
	if added, removed, err := s.Subjects(ctx, "a"); len(added)+len(removed) != 0 || err != nil {
		t.Fatalf("subjects of a deleted stream: %v %v %v", added, removed, err)
	}
	if l, _ := s.ListStreams(ctx); fmt.Sprint(ids(l)) != "[ab]" {
		t.Fatalf("after delete ListStreams = %v", ids(l))
	}
	if added, _, _ := s.Subjects(ctx, "ab"); len(added) != 1 {
		t.Fatalf("deleting a took the subjects of ab: %v", added)
	}
}

func subjectSet(subjs []ssf.Subject) []string {
	var out []string
	for _, s := range subjs {
		b, _ := json.Marshal(s)
		out = append(out, string(b))
	}
	slices.Sort(out)
	return out
}

func testStreamSubjects(t *testing.T, st Store) {
	s := streams(t, st.Open(), sealA)
	for _, r := range []ssf.StreamRecord{pollStream("s1", "r1"), pollStream("s2", "r1")} {
		if err := s.PutStream(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	alice, bob := ssf.EmailSubject("alice@example.com"), ssf.IssSubSubject("https://idp.example/", "bob")
	phone := ssf.Subject{Format: "phone_number", Fields: map[string]string{"phone_number": "+12065550100"}}
	steps := []struct {
		stream string
		subj   ssf.Subject
		added  bool
	}{
		{"s1", alice, true}, {"s1", bob, true}, {"s1", phone, false},
		{"s1", alice, true}, // twice: still once
		{"s2", alice, false},
		{"s1", bob, false}, // moves from added to removed
	}
	for _, step := range steps {
		if err := s.SetSubject(ctx, step.stream, step.subj, step.added); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string][2][]string{
		"s1": {subjectSet([]ssf.Subject{alice}), subjectSet([]ssf.Subject{bob, phone})},
		"s2": {nil, subjectSet([]ssf.Subject{alice})},
		"s3": {nil, nil},
	}
	check := func(s ssf.StreamStore) {
		t.Helper()
		for id, w := range want {
			added, removed, err := s.Subjects(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(subjectSet(added)) != fmt.Sprint(w[0]) || fmt.Sprint(subjectSet(removed)) != fmt.Sprint(w[1]) {
				t.Fatalf("Subjects(%s) = %v / %v; want %v / %v", id, subjectSet(added), subjectSet(removed), w[0], w[1])
			}
		}
	}
	check(s)
	check(streams(t, st.Open(), sealA))
}

func testStreamOwnership(t *testing.T, st Store) {
	a, b := st.pair()
	sa, sb := streams(t, a, sealA), streams(t, b, sealA)
	for i := range 3 {
		if err := sa.PutStream(ctx, pushStream(fmt.Sprintf("acme-%d", i), "acme", "Bearer acme")); err != nil {
			t.Fatal(err)
		}
		if err := sb.PutStream(ctx, pollStream(fmt.Sprintf("globex-%d", i), "globex")); err != nil {
			t.Fatal(err)
		}
	}
	// An update through the other handle keeps the owner it is given.
	g := pollStream("globex-1", "globex")
	g.Description = "changed through the other handle"
	if err := sa.PutStream(ctx, g); err != nil {
		t.Fatal(err)
	}
	check := func(s ssf.StreamStore) {
		t.Helper()
		l, err := s.ListStreams(ctx)
		if err != nil {
			t.Fatal(err)
		}
		own := map[string][]string{}
		for _, r := range l {
			own[r.Receiver] = append(own[r.Receiver], r.ID)
			if r.Audience != "aud-"+r.Receiver {
				t.Errorf("stream %s: audience %q does not follow its receiver %q", r.ID, r.Audience, r.Receiver)
			}
		}
		if fmt.Sprint(own) != "map[acme:[acme-0 acme-1 acme-2] globex:[globex-0 globex-1 globex-2]]" {
			t.Fatalf("streams by receiver = %v", own)
		}
		if r := mustGet(t, s, "globex-1"); r.Receiver != "globex" || r.Description != g.Description {
			t.Fatalf("globex-1 = %+v", r)
		}
		if r := mustGet(t, s, "acme-2"); r.AuthorizationHeader != "Bearer acme" {
			t.Fatal("acme-2 lost its push secret")
		}
	}
	check(sa)
	check(sb)
	check(streams(t, st.Open(), sealA)) // and after a restart
}

func testStreamConcurrent(t *testing.T, st Store) {
	a, b := st.pair()
	handles := []ssf.StreamStore{streams(t, a, sealA), streams(t, b, sealA)}
	if err := handles[0].PutStream(ctx, pushStream("shared", "acme", "Bearer initial")); err != nil {
		t.Fatal(err)
	}
	const n = 8
	contested := ssf.EmailSubject("contested@example.com")
	var wg sync.WaitGroup
	errs := make(chan error, 2*4*n)
	for w, s := range handles {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range n {
				own := pollStream(fmt.Sprintf("w%d-%d", w, i), "acme")
				// Each version of "shared" is consistent in itself: the
				// secret, the description and the reason name one write.
				tag := fmt.Sprintf("w%d-%d", w, i)
				sh := pushStream("shared", "acme", "Bearer "+tag)
				sh.Description, sh.Reason = tag, tag
				for _, err := range []error{
					s.PutStream(ctx, own),
					s.PutStream(ctx, sh),
					s.SetSubject(ctx, "shared", ssf.OpaqueSubject(tag), true),
					s.SetSubject(ctx, "shared", contested, w == 0),
				} {
					if err != nil {
						errs <- err
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write: %v", err)
	}
	check := func(s ssf.StreamStore) {
		t.Helper()
		l, err := s.ListStreams(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(l) != 2*n+1 {
			t.Fatalf("%d streams after %d distinct writes: %v", len(l), 2*n+1, ids(l))
		}
		sh := mustGet(t, s, "shared")
		if sh.Description == "" || sh.Reason != sh.Description || sh.AuthorizationHeader != "Bearer "+sh.Description {
			t.Fatalf("shared is a mix of writes: description %q, reason %q, secret of %s", sh.Description, sh.Reason,
				strings.TrimPrefix(sh.AuthorizationHeader, "Bearer "))
		}
		added, removed, err := s.Subjects(ctx, "shared")
		if err != nil {
			t.Fatal(err)
		}
		in := func(l []ssf.Subject) int {
			c := 0
			for _, x := range l {
				if x.Format == contested.Format && x.Fields["email"] == contested.Fields["email"] {
					c++
				}
			}
			return c
		}
		if in(added)+in(removed) != 1 {
			t.Fatalf("the contested subject is in %d added and %d removed lists; want exactly one", in(added), in(removed))
		}
		if got := len(added) + len(removed) - 1; got != 2*n {
			t.Fatalf("%d of %d distinct subjects landed", got, 2*n)
		}
	}
	check(handles[0])
	check(handles[1])
	check(streams(t, st.Open(), sealA)) // and after a restart
}

func testStreamSecretSealed(t *testing.T, st Store) {
	a, b := st.pair()
	const header = "Bearer push-header-that-must-stay-sealed"
	if err := streams(t, a, sealA).PutStream(ctx, pushStream("p", "acme", header)); err != nil {
		t.Fatal(err)
	}
	if r := mustGet(t, streams(t, b, sealA), "p"); r.AuthorizationHeader != header {
		t.Fatal("the other handle reads another push header")
	}
	raw := rawValues(t, b, ssf.BucketStreams, ssf.BucketSubjects)
	if len(raw) != 1 {
		t.Fatalf("stored values: %d, want 1", len(raw))
	}
	for k, v := range raw {
		if bytes.Contains(v, []byte("push-header-that-must-stay-sealed")) {
			t.Fatalf("%s holds the push header in clear", k)
		}
		if !bytes.Contains(v, []byte("sealed:v2:"+ssf.KeyID(sealA)+":")) {
			t.Fatalf("%s does not name the key it is sealed under (%s): %.60s…", k, ssf.KeyID(sealA), v)
		}
	}
	_, _, err := streams(t, b, sealB).GetStream(ctx, "p")
	if err == nil {
		t.Fatal("the push header opened under another key")
	}
	if strings.Contains(err.Error(), "push-header") || !strings.Contains(err.Error(), ssf.KeyID(sealA)) {
		t.Fatalf("error under another key: %v (want the key id it was sealed under, and never the header)", err)
	}
}

func testStreamPreviousKey(t *testing.T, st Store) {
	kv := st.Open()
	const header = "Bearer sealed-under-the-old-key"
	if err := streams(t, kv, sealA).PutStream(ctx, pushStream("p", "acme", header)); err != nil {
		t.Fatal(err)
	}
	if err := streams(t, kv, sealA).PutStream(ctx, pollStream("q", "acme")); err != nil {
		t.Fatal(err)
	}
	rotated := streams(t, kv, sealB, sealA) // new current key, old as previous
	r := mustGet(t, rotated, "p")
	if r.AuthorizationHeader != header {
		t.Fatal("the previous key does not open the push header")
	}
	// The next write seals under the current key.
	r.Description = "written after the rotation"
	if err := rotated.PutStream(ctx, r); err != nil {
		t.Fatal(err)
	}
	v := rawValues(t, kv, ssf.BucketStreams)[ssf.BucketStreams+"/p"]
	if !bytes.Contains(v, []byte("sealed:v2:"+ssf.KeyID(sealB)+":")) {
		t.Fatalf("a write after the rotation is not sealed under the current key: %.60s…", v)
	}
	if r := mustGet(t, streams(t, kv, sealB), "p"); r.AuthorizationHeader != header {
		t.Fatal("the current key alone does not open what was written after the rotation")
	}
	if _, _, err := streams(t, kv, sealA).GetStream(ctx, "p"); err == nil {
		t.Fatal("the old key alone still opens a value sealed under the new one")
	}
}
