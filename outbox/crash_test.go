package outbox

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs the outbox in a child process (this test binary,
// selected by crashChildEnv), kills it with SIGKILL at several points, and
// checks after the last restart that every committed jti was delivered.

const crashChildEnv = "OUTBOX_CRASH_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(m.Run())
}

// crashChild: args from the environment: db path, receiver URL, first
// index, count of signals to enqueue (each one SET on each of two
// streams). It prints "committed <jti>" once an Enqueue is durable, then
// keeps delivering until killed.
func crashChild() int {
	path := os.Getenv("OUTBOX_CRASH_DB")
	url := os.Getenv("OUTBOX_CRASH_URL")
	first, _ := strconv.Atoi(os.Getenv("OUTBOX_CRASH_FIRST"))
	count, _ := strconv.Atoi(os.Getenv("OUTBOX_CRASH_COUNT"))
	st, err := Open(path, StoreOptions{}) // fsync on: committed must mean durable
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ob, err := New(Config{Store: st, Signer: newSigner(nil), AllowPrivateEndpoints: true, PushTimeout: 5 * time.Second})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	for _, s := range []string{"s1", "s2"} {
		if err := ob.SetStream(ctx, StreamConfig{ID: s, Method: MethodPush, Status: StatusEnabled, EndpointURL: url}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	go func() { _ = ob.Run(ctx) }()
	out := bufio.NewWriter(os.Stdout)
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				sets := []SET{makeSET("s1", fmt.Sprintf("s1-%06d", i)), makeSET("s2", fmt.Sprintf("s2-%06d", i))}
				if err := ob.Enqueue(ctx, sets, nil); err != nil {
					fmt.Fprintln(os.Stderr, err)
					continue
				}
				mu.Lock()
				fmt.Fprintf(out, "committed %s\ncommitted %s\n", sets[0].JTI, sets[1].JTI)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	for i := first; i < first+count; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	mu.Lock()
	fmt.Fprintln(out, "enqueued")
	out.Flush()
	mu.Unlock()
	select {} // deliver until killed
}

func TestCrashRecovery(t *testing.T) {
	var mu sync.Mutex
	received := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		jti := jtiOfCompact(string(b))
		mu.Lock()
		received[jti]++
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	db := t.TempDir() + "/crash.db"
	committed := map[string]bool{}

	// run starts a child and kills it once killAfter lines of "committed"
	// were read (killAfter < 0: once everything committed was delivered).
	run := func(first, count, killAfter int) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"=1", "OUTBOX_CRASH_DB="+db, "OUTBOX_CRASH_URL="+srv.URL,
			"OUTBOX_CRASH_FIRST="+strconv.Itoa(first), "OUTBOX_CRASH_COUNT="+strconv.Itoa(count))
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { _ = cmd.Process.Kill() }() // also when the round fails
		lines := make(chan string, 1024)
		go func() {
			sc := bufio.NewScanner(stdout)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		seen, enqueued := 0, false
		deadline := time.After(2 * time.Minute)
		allDelivered := func() bool {
			mu.Lock()
			defer mu.Unlock()
			for j := range committed {
				if received[j] == 0 {
					return false
				}
			}
			return true
		}
	loop:
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("child exited early")
				}
				if j, found := strings.CutPrefix(l, "committed "); found {
					committed[j] = true
					seen++
					if killAfter > 0 && seen >= killAfter {
						break loop
					}
				}
				if l == "enqueued" {
					enqueued = true
					if killAfter == 0 {
						break loop
					}
				}
			case <-deadline:
				t.Fatal("crash round timed out")
			case <-time.After(5 * time.Millisecond):
				// The last round ends once the child has said that all
				// its SETs are committed and each was delivered: a quiet
				// moment before that is a loaded machine, not the end.
				if killAfter < 0 && enqueued && allDelivered() {
					break loop
				}
			}
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		// Lines already written by the child before the kill are committed too.
		for l := range lines {
			if j, found := strings.CutPrefix(l, "committed "); found {
				committed[j] = true
			}
		}
	}
	run(0, 2000, 1)      // killed right after the first commit
	run(2000, 2000, 400) // mid-load
	run(4000, 2000, 1500)
	run(6000, 0, 0)    // killed at once after a restart
	run(6000, 500, -1) // restart, deliver everything
	mu.Lock()
	defer mu.Unlock()
	missing, dups := 0, 0
	for j := range committed {
		if received[j] == 0 {
			missing++
		}
	}
	for _, n := range received {
		if n > 1 {
			dups += n - 1
		}
	}
	t.Logf("committed %d, received %d distinct, %d duplicates", len(committed), len(received), dups)
	if missing > 0 {
		t.Errorf("%d committed SETs never delivered", missing)
	}
	// In flight at a crash: at most one signed batch per stream per kill.
	if limit := 4 * 2 * 32; dups > limit {
		t.Errorf("%d duplicates, more than the %d in flight at the crashes", dups, limit)
	}

}
