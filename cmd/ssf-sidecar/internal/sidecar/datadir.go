package sidecar

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// What goes wrong with a data dir, said so an operator knows what to do:
// another process holds the store, or a restore brought back only part of
// it. Both degrade the start (authentik stays reachable) instead of failing.

// DBFile is the bbolt file's name in the data dir.
const DBFile = "ssf-sidecar.db"

// LockedError says another process holds the bbolt file's lock.
type LockedError struct {
	path   string
	holder string // "pid 123 (ssf-sidecar serve …)", or "" when unknown
}

func (e *LockedError) Error() string {
	who := "another process"
	if e.holder != "" {
		who = "another process (" + e.holder + ")"
	}
	return fmt.Sprintf("%s is locked by %s: is another sidecar running on this data dir?", e.path, who)
}

// restoreError: the store lists key files that are not there.
type restoreError struct {
	dir      string
	problems ssf.RestoreProblems
}

func (e *restoreError) Error() string {
	return "incomplete data dir (partial restore?): " + e.problems.Describe(e.dir)
}

// storeFix says how to get out of a store error.
func storeFix(se *storeError) string {
	var le *LockedError
	var re *restoreError
	switch {
	case errors.As(se.Err, &le):
		return "two sidecars cannot share a data dir: stop the other one, or give this one its own --data-dir " +
			"(a Deployment on bbolt needs strategy Recreate); this one takes over as soon as the lock is free"
	case errors.As(se.Err, &re):
		var fixes []string
		p := re.problems
		if len(p.MissingKeys) > 0 || p.SealKeyMissing || p.SealKeyWrong {
			fixes = append(fixes, fmt.Sprintf("restore %s, signing-key-*.pem and %s together from the same backup into %s; the sidecar picks them up on its own", DBFile, ssf.SecretKeyFile, re.dir))
		}
		var flags []string
		if len(p.MissingKeys) > 0 {
			flags = append(flags, "--forget-missing-keys (a new signing key is generated; receivers fetch it from the JWKS)")
		}
		if p.SealKeyMissing || p.SealKeyWrong {
			flags = append(flags, "--drop-lost-secrets (the affected push streams are paused until their receiver sets a new authorization_header)")
		}
		fixes = append(fixes, fmt.Sprintf("or, without the backup, run 'ssf-sidecar repair --data-dir %s' with %s", re.dir, strings.Join(flags, " and/or ")))
		return strings.Join(fixes, "; ")
	}
	return fmt.Sprintf("make the data dir %s writable by this process (uid %d), or give --data-dir a writable volume; retried automatically", se.Dir, os.Geteuid())
}

// ExplainOpenError turns a lock timeout into a LockedError naming the
// holder; other errors are returned as they are.
func ExplainOpenError(path string, err error) error {
	if errors.Is(err, bolterrors.ErrTimeout) {
		return &LockedError{path: path, holder: LockHolder(path)}
	}
	// "outbox: open P: open P: permission denied" says the path twice.
	var pe *fs.PathError
	if errors.As(err, &pe) && pe.Path == path {
		return fmt.Errorf("cannot %s %s: %w", pe.Op, pe.Path, pe.Err)
	}
	return err
}

// LockHolder names the process holding a lock on path, from /proc/locks
// (Linux); "" when it cannot be told.
func LockHolder(path string) string {
	st, err := os.Stat(path)
	if err != nil {
		return ""
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return ""
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		return ""
	}
	inode := strconv.FormatUint(sys.Ino, 10)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		// 1: FLOCK  ADVISORY  WRITE 4242 08:01:1234 0 EOF
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[1] == "->" {
			continue
		}
		dev := strings.Split(f[5], ":")
		if len(dev) != 3 || dev[2] != inode {
			continue
		}
		pid := f[4]
		if pid == strconv.Itoa(os.Getpid()) {
			continue
		}
		desc := "pid " + pid
		if cmd, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline")); err == nil && len(cmd) > 0 {
			args := strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")
			args[0] = filepath.Base(args[0])
			if len(args) > 2 {
				args = args[:2]
			}
			desc += ": " + strings.Join(args, " ")
		}
		return desc
	}
	return ""
}

// RestoreFix says how to complete a data dir whose restore left out the
// files problems names.
func RestoreFix(dir string, problems ssf.RestoreProblems) string {
	return storeFix(&storeError{Dir: dir, Err: &restoreError{dir: dir, problems: problems}})
}
