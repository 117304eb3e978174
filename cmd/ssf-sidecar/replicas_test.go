//go:build linux

package main

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSystemThreeReplicas runs three sidecar processes on one PostgreSQL
// schema behind a TCP balancer, in front of one simulated authentik, and
// holds them to what one sidecar promises: streams, verification, pause,
// long polls, acks and signing keys are shared; every revocation that got
// its answer yields one SET, also while replicas are killed with SIGKILL;
// and no stream ever has two deliveries in flight at once.
func TestSystemThreeReplicas(t *testing.T) {
	s := startReplicaSet(t, replicaOptions{replicas: 3, poller: true})
	lb := s.lb.URL()
	r := s.rigs
	// Every case leaves all three replicas running for the next one.
	restartAll := func(t *testing.T) {
		for i, rig := range r {
			if rig.child == nil {
				if e := rig.startQuiet(); e != "" {
					t.Fatalf("restart replica %d: %s", i, e)
				}
			}
		}
	}

	t.Run("StreamCreatedOnOneIsReadOnAll", func(t *testing.T) {
		id, _ := s.createStream(t, r[0].front, "read", "read", evSessionRevoked)
		defer s.deleteStream(t, "read", id)
		s.waitKnown(t, "read", id)
		for i, rig := range r {
			data := s.mustCall(t, http.StatusOK, rig.front, replicaToken("read"), http.MethodGet, "/ssf/streams?stream_id="+id, nil)
			if !strings.Contains(string(data), s.rx.URL("read")) || !strings.Contains(string(data), evSessionRevoked) {
				t.Errorf("replica %d serves the stream differently: %s", i, data)
			}
		}
		// Another receiver does not see it on any replica.
		for i, rig := range r {
			if code, _, _ := s.call(rig.front, replicaToken("verify"), http.MethodGet, "/ssf/streams?stream_id="+id, nil); code == http.StatusOK {
				t.Errorf("replica %d serves the stream to another receiver", i)
			}
		}
	})

	t.Run("VerificationAskedOnOneIsDeliveredOnce", func(t *testing.T) {
		id, _ := s.createStream(t, r[0].front, "verify", "verify", evSessionRevoked)
		defer s.deleteStream(t, "verify", id)
		s.waitKnown(t, "verify", id)
		for i := 1; i < 3; i++ {
			state := fmt.Sprintf("state-on-replica-%d", i)
			if !eventually(20*time.Second, func() bool {
				code, _, err := s.call(r[i].front, replicaToken("verify"), http.MethodPost, "/ssf/verify", map[string]any{"stream_id": id, "state": state})
				return err == nil && code == http.StatusNoContent // 429 inside min_verification_interval
			}) {
				t.Fatalf("verification request on replica %d never accepted", i)
			}
			withState := func(got []rxDelivery) int {
				n := 0
				for _, d := range got {
					if verificationState(d.Claims) == state {
						n++
					}
				}
				return n
			}
			if !s.rx.waitUntil("verify", 20*time.Second, func(got []rxDelivery) bool { return withState(got) >= 1 }) {
				t.Fatalf("verification %q asked on replica %d never delivered", state, i)
			}
			s.settle(t, id)
			got, overlaps := s.rx.received("verify")
			if n := withState(got); n != 1 {
				t.Errorf("verification %q delivered %d times, want once", state, n)
			}
			if overlaps != 0 {
				t.Errorf("%d deliveries overlapped on the stream", overlaps)
			}
		}
	})

	t.Run("PausedOnOneHoldsEverywhere", func(t *testing.T) {
		id, _ := s.createStream(t, lb, "pause", "pause", evSessionRevoked)
		defer s.deleteStream(t, "pause", id)
		s.waitKnown(t, "pause", id)
		if !s.rx.waitUntil("pause", 20*time.Second, func(got []rxDelivery) bool { return len(got) >= 1 }) {
			t.Fatal("the stream's first verification never arrived")
		}
		s.settle(t, id)
		s.mustCall(t, http.StatusOK, r[0].front, replicaToken("pause"), http.MethodPost, "/ssf/status", map[string]any{"stream_id": id, "status": "paused"})
		pausedAt := time.Now()
		const k = 6
		for i := 0; i < k; i++ {
			rv, err := s.revoke(lb)
			if err != nil || !rv.acked {
				t.Fatalf("revocation %d: %v (answered %v)", i, err, rv.acked)
			}
		}
		// Held in the shared queue, as every replica's admin API says.
		for i, rig := range r {
			var b, d int64
			eventually(20*time.Second, func() bool {
				var err error
				b, d, err = s.stats(rig, id)
				return err == nil && (b == k || d > 1) // d > 1: pushed already, past the verification
			})
			if b != k {
				t.Errorf("replica %d: backlog %d (delivered %d), want %d held", i, b, d, k)
				break
			}
		}
		for i, rig := range r {
			if !eventuallyEvery(20*time.Second, 400*time.Millisecond, func() bool {
				code, data, err := s.call(rig.front, replicaToken("pause"), http.MethodGet, "/ssf/status?stream_id="+id, nil)
				return err == nil && code == http.StatusOK && strings.Contains(string(data), `"paused"`)
			}) {
				t.Errorf("replica %d does not report the stream paused", i)
			}
		}
		time.Sleep(time.Second) // room for a wrongful push from any replica
		resumedAt := time.Now()
		s.mustCall(t, http.StatusOK, r[2].front, replicaToken("pause"), http.MethodPost, "/ssf/status", map[string]any{"stream_id": id, "status": "enabled"})
		revoked := func(got []rxDelivery) (n int) {
			for _, d := range got {
				if d.Event == "session-revoked" {
					n++
				}
			}
			return n
		}
		if !s.rx.waitUntil("pause", 30*time.Second, func(got []rxDelivery) bool { return revoked(got) >= k }) {
			got, _ := s.rx.received("pause")
			t.Fatalf("%d of %d held SETs delivered after resume", revoked(got), k)
		}
		s.settle(t, id)
		got, overlaps := s.rx.received("pause")
		var wrongful []string
		for _, d := range got {
			if d.At.After(pausedAt) && d.At.Before(resumedAt) && d.Event != "stream-updated" {
				wrongful = append(wrongful, fmt.Sprintf("%s at +%v", d.Event, d.At.Sub(pausedAt).Round(time.Millisecond)))
			}
		}
		if len(wrongful) > 0 {
			t.Errorf("%d SETs pushed while the stream was paused (times after the pause answered): %s", len(wrongful), strings.Join(wrongful, ", "))
		}
		if n := revoked(got); n != k {
			t.Errorf("%d session-revoked SETs, want %d", n, k)
		}
		if overlaps != 0 {
			t.Errorf("%d deliveries overlapped on the stream", overlaps)
		}
	})

	t.Run("LongPollOnOneWakesForSETOnAnother", func(t *testing.T) {
		id, path := s.createStream(t, r[0].front, "longpoll", "", evSessionRevoked)
		defer s.deleteStream(t, "longpoll", id)
		s.waitKnown(t, "longpoll", id)
		// Nothing waits on the stream yet (a poll stream gets no
		// verification unless asked).
		if sets, err := s.poll(r[1].front, "longpoll", path, nil, false, 10); err != nil || len(sets) != 0 {
			t.Fatalf("poll stream not empty at start: %v %v", sets, err)
		}
		type answer struct {
			sets map[string]string
			err  error
			at   time.Time
		}
		done := make(chan answer, 1)
		go func() {
			sets, err := s.poll(r[1].front, "longpoll", path, nil, true, 10)
			done <- answer{sets, err, time.Now()}
		}()
		time.Sleep(time.Second) // let the long poll reach replica 1 and wait
		select {
		case a := <-done:
			t.Fatalf("the long poll returned before any SET: %v %v", a.sets, a.err)
		default:
		}
		rv, err := s.revoke(r[2].front)
		if err != nil || !rv.acked {
			t.Fatalf("revocation through replica 2: %v (answered %v)", err, rv.acked)
		}
		setAt := time.Now()
		select {
		case a := <-done:
			if a.err != nil || len(a.sets) != 1 {
				t.Fatalf("long poll on replica 1 answered %v %v, want the SET made on replica 2", a.sets, a.err)
			}
			// The server holds a long poll up to 30 s: an answer well
			// before that came from the wake-up, not the timeout.
			if d := a.at.Sub(setAt); d > 15*time.Second {
				t.Errorf("long poll woke %v after the SET was made", d)
			}
			for _, c := range a.sets {
				if _, err := s.rx.verify.Verify(ctxBG, c); err != nil {
					t.Errorf("polled SET does not verify: %v", err)
				}
			}
		case <-time.After(40 * time.Second):
			t.Fatal("the long poll on replica 1 never answered")
		}
	})

	t.Run("AckOnOneHoldsOnAll", func(t *testing.T) {
		id, path := s.createStream(t, lb, "ack", "", evSessionRevoked)
		defer s.deleteStream(t, "ack", id)
		s.waitKnown(t, "ack", id)
		const k = 3
		for i := 0; i < k; i++ {
			if rv, err := s.revoke(lb); err != nil || !rv.acked {
				t.Fatalf("revocation %d: %v", i, err)
			}
		}
		got := map[string]bool{}
		if !eventually(20*time.Second, func() bool {
			sets, err := s.poll(r[0].front, "ack", path, nil, false, 10)
			for jti := range sets {
				got[jti] = true
			}
			return err == nil && len(got) >= k
		}) {
			t.Fatalf("replica 0 handed out %d of %d SETs", len(got), k)
		}
		var jtis []string
		for j := range got {
			jtis = append(jtis, j)
		}
		if _, err := s.poll(r[1].front, "ack", path, jtis, false, 0); err != nil {
			t.Fatalf("ack on replica 1: %v", err)
		}
		for i, rig := range r {
			if !eventually(10*time.Second, func() bool {
				b, d, err := s.stats(rig, id)
				return err == nil && b == 0 && d == k
			}) {
				b, d, err := s.stats(rig, id)
				t.Errorf("replica %d: backlog %d, delivered %d (%v) after the ack, want 0 and %d", i, b, d, err, k)
			}
			sets, err := s.poll(rig.front, "ack", path, nil, false, 10)
			if err != nil {
				t.Fatal(err)
			}
			for jti := range sets {
				if got[jti] {
					t.Errorf("replica %d hands out %s again after its ack on replica 1", i, jti)
				}
			}
		}
	})

	t.Run("SixtyRevocationsGiveSixtySETs", func(t *testing.T) {
		id, _ := s.createStream(t, lb, "sixty", "sixty", evSessionRevoked)
		defer s.deleteStream(t, "sixty", id)
		s.waitKnown(t, "sixty", id)
		const n = 60
		revs := s.revokeMany(t, lb, n, 6)
		alias := map[string]string{}
		for _, rv := range revs {
			if !rv.acked {
				t.Fatalf("revocation of %s not answered with 204 while every replica runs", rv.uuid)
			}
			alias[rv.uuid], alias[rv.hash] = rv.uuid, rv.uuid
		}
		count := func(got []rxDelivery) map[string]map[string]int {
			return tallyJTIs(got, "session-revoked", func(d receivedSET) string { return sessionKey(alias, d) })
		}
		if !s.rx.waitUntil("sixty", 60*time.Second, func(got []rxDelivery) bool { return len(count(got)) >= n }) {
			got, _ := s.rx.received("sixty")
			t.Fatalf("%d of %d sessions have their SET", len(count(got)), n)
		}
		s.settle(t, id)
		got, overlaps := s.rx.received("sixty")
		tally := count(got)
		total, _ := totals(tally)
		for k, jtis := range tally {
			if k == "" {
				t.Errorf("a SET names a session that was not revoked here")
			}
			if len(jtis) != 1 {
				t.Errorf("session %s revoked under %d jtis", k, len(jtis))
			}
		}
		if total != n {
			t.Errorf("%d session-revoked SETs for %d revocations, with every replica running", total, n)
		}
		if overlaps != 0 {
			t.Errorf("%d deliveries overlapped on the stream", overlaps)
		}
	})

	t.Run("EventAPIActionsOnceEachAcrossKills", func(t *testing.T) {
		defer restartAll(t)
		id, _ := s.createStream(t, lb, "events", "events", evCredentialChange)
		defer s.deleteStream(t, "events", id)
		s.waitKnown(t, "events", id)
		// The poller has read the event API once, so its cursor is set.
		if !eventually(20*time.Second, func() bool { return s.metricSum("ssf_sidecar_poller_polls_total") >= 1 }) {
			t.Fatal("no replica's event-API poller completed a read")
		}
		changes := 0
		change := func() {
			t.Helper()
			u, err := s.user(fmt.Sprintf("evt%d", changes))
			if err != nil {
				t.Fatal(err)
			}
			if err := s.ak.SystemSetPassword(u.PK, "changed-password-"+strconv.Itoa(changes), "source_sync"); err != nil {
				t.Fatal(err)
			}
			changes++
		}
		perUser := func(got []rxDelivery) map[string]map[string]int {
			return tallyJTIs(got, "credential-change", func(d receivedSET) string { return userEmailOf(d.Claims) })
		}
		waitAll := func(when string) {
			t.Helper()
			if !s.rx.waitUntil("events", 45*time.Second, func(got []rxDelivery) bool { return len(perUser(got)) >= changes }) {
				got, _ := s.rx.received("events")
				t.Fatalf("%s: %d of %d password changes have their SET", when, len(perUser(got)), changes)
			}
		}
		for i := 0; i < 3; i++ {
			change()
		}
		waitAll("all replicas up")
		var kills []time.Time
		for i := range r {
			change()
			kills = append(kills, time.Now())
			r[i].killQuiet()
			change()
			change()
			if e := r[i].startQuiet(); e != "" {
				t.Fatalf("restart replica %d: %s", i, e)
			}
			waitAll(fmt.Sprintf("replica %d killed and restarted", i))
		}
		s.settle(t, id)
		got, overlaps := s.rx.received("events")
		tally := perUser(got)
		received, distinct := totals(tally)
		for e, jtis := range tally {
			if len(jtis) != 1 {
				t.Errorf("one password change of %s gave %d SETs (distinct jtis)", e, len(jtis))
			}
		}
		if distinct != changes {
			t.Errorf("%d distinct SETs for %d password changes", distinct, changes)
		}
		t.Logf("%d password changes, %d kills; %d SETs received, %d distinct", changes, len(kills), received, distinct)
		checkRedeliveries(t, got, kills)
		if overlaps != 0 {
			t.Errorf("%d deliveries overlapped on the stream", overlaps)
		}
	})

	t.Run("KeyRotatedOnOneSignsOnAll", func(t *testing.T) {
		id, path := s.createStream(t, lb, "keys", "", evSessionRevoked)
		defer s.deleteStream(t, "keys", id)
		s.waitKnown(t, "keys", id)
		var out, errb strings.Builder
		if code := run(ctxBG, []string{"keys", "rotate", "--admin-url", r[0].admin}, &out, &errb); code != exitOK {
			t.Fatalf("keys rotate on replica 0: exit %d: %s", code, errb.String())
		}
		rotatedAt := time.Now()
		f := strings.Fields(out.String())
		if len(f) < 4 || f[0] != "new" {
			t.Fatalf("keys rotate said %q", out.String())
		}
		newKID := f[3]
		signsNew := make([]bool, len(r))
		deadline := rotatedAt.Add(30 * time.Second)
		for !(signsNew[0] && signsNew[1] && signsNew[2]) {
			if time.Now().After(deadline) {
				t.Fatalf("30 s after the rotation, replicas signing with the new key: %v", signsNew)
			}
			for i, rig := range r {
				if signsNew[i] {
					continue
				}
				if rv, err := s.revoke(rig.front); err != nil || !rv.acked {
					t.Fatalf("revocation through replica %d: %v", i, err)
				}
				asked := time.Now()
				var sets map[string]string
				eventually(10*time.Second, func() bool {
					var err error
					sets, err = s.poll(rig.front, "keys", path, nil, false, 10)
					return err == nil && len(sets) > 0
				})
				var acks []string
				for jti, c := range sets {
					acks = append(acks, jti)
					if _, err := s.rx.verify.Verify(ctxBG, c); err != nil {
						t.Errorf("SET from replica %d does not verify with the JWKS: %v", i, err)
					}
					kid := kidOf(t, c)
					if kid == newKID && !signsNew[i] {
						signsNew[i] = true
						// What one replica signs with, every replica publishes.
						for j, other := range r {
							if _, ok := fetchPublishedKeys(t, other.front+"/ssf/jwks.json")[newKID]; !ok {
								t.Errorf("replica %d signs with %s %v after the rotation; replica %d does not publish it yet",
									i, newKID, time.Since(rotatedAt).Round(time.Millisecond), j)
							}
						}
					} else if kid != newKID && asked.Sub(rotatedAt) > 5*time.Second {
						t.Errorf("replica %d signs with %s %v after the rotation to %s", i, kid, asked.Sub(rotatedAt).Round(time.Millisecond), newKID)
					}
				}
				if _, err := s.poll(rig.front, "keys", path, acks, false, 0); err != nil {
					t.Fatal(err)
				}
			}
		}
	})

	t.Run("RandomKillsLoseNoAcknowledgedRevocation", func(t *testing.T) {
		defer restartAll(t)
		id, _ := s.createStream(t, lb, "chaos", "chaos", evSessionRevoked)
		defer s.deleteStream(t, "chaos", id)
		s.waitKnown(t, "chaos", id)
		seed := uint64(time.Now().UnixNano())
		if v := os.Getenv("SSF_CRASH_SEED"); v != "" {
			seed, _ = strconv.ParseUint(v, 10, 64)
		}
		t.Logf("seed %d (SSF_CRASH_SEED=%d reproduces the kill schedule)", seed, seed)
		rng := rand.New(rand.NewPCG(seed, seed^0x3e91))

		stop := make(chan struct{})
		var mu sync.Mutex
		var revs []revocation
		var wg sync.WaitGroup
		for w := 0; w < 3; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					rv, err := s.revoke(lb)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					revs = append(revs, rv)
					mu.Unlock()
					if !rv.acked {
						time.Sleep(20 * time.Millisecond)
					}
				}
			}()
		}
		var kills []time.Time
		for k := 0; k < 6; k++ {
			time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
			i := rng.IntN(len(r))
			kills = append(kills, time.Now())
			r[i].killQuiet()
			time.Sleep(time.Duration(rng.IntN(800)) * time.Millisecond)
			if e := r[i].startQuiet(); e != "" {
				close(stop)
				wg.Wait()
				t.Fatalf("restart replica %d: %s", i, e)
			}
		}
		time.Sleep(500 * time.Millisecond)
		close(stop)
		wg.Wait()

		alias := map[string]string{}
		acked := map[string]bool{}
		survived := map[string]bool{}
		for _, rv := range revs {
			alias[rv.uuid], alias[rv.hash] = rv.uuid, rv.uuid
			if rv.acked {
				acked[rv.uuid] = true
			}
			if _, ok := s.ak.Session(rv.uuid); ok {
				survived[rv.uuid] = true
			}
		}
		if len(acked) < 20 {
			t.Fatalf("too little load to judge: %d of %d revocations acknowledged", len(acked), len(revs))
		}
		perSession := func(got []rxDelivery) map[string]map[string]int {
			return tallyJTIs(got, "session-revoked", func(d receivedSET) string { return sessionKey(alias, d) })
		}
		missing := func(got []rxDelivery) int {
			m, n := perSession(got), 0
			for u := range acked {
				if len(m[u]) == 0 {
					n++
				}
			}
			return n
		}
		if !s.rx.waitUntil("chaos", 60*time.Second, func(got []rxDelivery) bool { return missing(got) == 0 }) {
			got, _ := s.rx.received("chaos")
			t.Errorf("%d of %d acknowledged revocations have no SET", missing(got), len(acked))
		}
		s.settle(t, id)
		got, overlaps := s.rx.received("chaos")
		tally := perSession(got)
		received, distinct := totals(tally)
		for u, jtis := range tally {
			if len(jtis) > 1 {
				t.Errorf("session %s revoked under %d jtis: the action was issued twice", u, len(jtis))
			}
			if survived[u] {
				t.Errorf("a session authentik still holds got a session-revoked SET")
			}
		}
		t.Logf("%d kills; %d revocations sent, %d acknowledged; %d SETs received, %d distinct", len(kills), len(revs), len(acked), received, distinct)
		checkRedeliveries(t, got, kills)
		if overlaps != 0 {
			t.Errorf("%d deliveries overlapped on the stream: two replicas pushed it at once", overlaps)
		}
	})

	if n := s.rx.rejected(); n != 0 {
		t.Errorf("the receivers rejected %d SETs", n)
	}
}

// revokeMany sends n revocations through base from workers goroutines.
func (s *replicaSet) revokeMany(t *testing.T, base string, n, workers int) []revocation {
	t.Helper()
	out := make([]revocation, n)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	next := make(chan int, n)
	for i := 0; i < n; i++ {
		next <- i
	}
	close(next)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				rv, err := s.revoke(base)
				if err != nil {
					errs <- err
				}
				out[i] = rv
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// settle waits until the stream's queue is empty as a running replica
// sees it, then a moment more, so a duplicate or a late push has the
// chance to show.
func (s *replicaSet) settle(t *testing.T, id string) {
	t.Helper()
	if !eventually(30*time.Second, func() bool {
		for _, rig := range s.rigs {
			if rig.child == nil {
				continue
			}
			b, _, err := s.stats(rig, id)
			return err == nil && b == 0
		}
		return false
	}) {
		t.Errorf("stream %s still has a backlog 30 s on", id)
	}
	time.Sleep(time.Second)
}

// redeliveryWindow is how long before a kill a SET the receiver accepted
// may still lack its committed outcome: one group commit of the outbox,
// with room for a loaded machine.
const redeliveryWindow = 2 * time.Second

// checkRedeliveries holds repeats of a jti to the at-least-once rule: a
// SET comes again only after a kill that came within redeliveryWindow of
// its first delivery (accepted, its outcome not yet committed). Any other repeat is a delivery the system knew it had
// made, or a second replica pushing the stream.
func checkRedeliveries(t *testing.T, got []rxDelivery, kills []time.Time) {
	t.Helper()
	last := map[string]time.Time{}
	bad := 0
	for _, d := range got {
		prev, seen := last[d.JTI]
		last[d.JTI] = d.At
		if !seen {
			continue
		}
		explained := slices.ContainsFunc(kills, func(k time.Time) bool {
			// The receiver records a push once its handler ends, so one
			// the killed replica sent may show just after the kill.
			return d.At.After(k) && prev.After(k.Add(-redeliveryWindow)) && prev.Before(k.Add(redeliveryWindow))
		})
		if !explained {
			bad++
			if bad <= 5 {
				t.Errorf("%s %s delivered again %v after its first delivery with no kill just after that one",
					d.Event, d.JTI, d.At.Sub(prev).Round(time.Millisecond))
			}
		}
	}
	if bad > 5 {
		t.Errorf("%d redeliveries in all that no kill explains", bad)
	}
}

// tallyJTIs counts the deliveries of one event type by action (key) and
// jti: more than one jti for an action means it was issued twice, more
// than one delivery of a jti is a redelivery.
func tallyJTIs(got []rxDelivery, event string, key func(receivedSET) string) map[string]map[string]int {
	m := map[string]map[string]int{}
	for _, d := range got {
		if d.Event != event {
			continue
		}
		k := key(d.receivedSET)
		if m[k] == nil {
			m[k] = map[string]int{}
		}
		m[k][d.JTI]++
	}
	return m
}

// totals is the number of deliveries and of distinct jtis in a tally.
func totals(tally map[string]map[string]int) (received, distinct int) {
	for _, jtis := range tally {
		distinct += len(jtis)
		for _, c := range jtis {
			received += c
		}
	}
	return received, distinct
}

// verificationState is the state of a verification SET ("" for others).
func verificationState(claims map[string]any) string {
	events, _ := claims["events"].(map[string]any)
	for uri, body := range events {
		if strings.HasSuffix(uri, "/verification") {
			b, _ := body.(map[string]any)
			st, _ := b["state"].(string)
			return st
		}
	}
	return ""
}
