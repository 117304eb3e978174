package sidecar

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolterrors "go.etcd.io/bbolt/errors"
)

// TestLockHolderNamed: the process holding the store's lock is named.
func TestLockHolderNamed(t *testing.T) {
	flock, err := exec.LookPath("flock")
	if err != nil {
		t.Skip("flock(1) is not installed")
	}
	path := filepath.Join(t.TempDir(), DBFile)
	os.WriteFile(path, nil, 0o600)
	cmd := exec.Command(flock, path, "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	want := "pid " + strconv.Itoa(cmd.Process.Pid)
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := LockHolder(path)
		if strings.HasPrefix(got, want+": ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("LockHolder = %q, want %s", got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e := ExplainOpenError(path, bolterrors.ErrTimeout)
	if !strings.Contains(e.Error(), "locked by another process ("+want) {
		t.Fatalf("error: %v", e)
	}
}

// TestOpenErrorNamesThePathOnce: the store's open error says the path once
// and still counts as a disk error (it degrades the start).
func TestOpenErrorNamesThePathOnce(t *testing.T) {
	path := "/data/" + DBFile
	inner := &fs.PathError{Op: "open", Path: path, Err: syscall.EACCES}
	err := ExplainOpenError(path, fmt.Errorf("outbox: open %s: %w", path, inner))
	if strings.Count(err.Error(), path) != 1 || !strings.Contains(err.Error(), "permission denied") || !isDiskError(err) {
		t.Fatalf("%v (disk error %v)", err, isDiskError(err))
	}
}
