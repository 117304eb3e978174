package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Child serves one benchmark role in a process of its own, so that the
// sidecar and the upstream each get their own runtime, as nginx has its own
// processes. args is one of
//
//	upstream <body bytes>
//	sidecar <upstream URL> [transport]
//
// It prints "READY <url>" on stdout once listening and serves until ctx is
// done. A command that offers the benchmark routes an argument of its own to
// Child and names that command in Options.ChildCommand.
func Child(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New("bench child: no role")
	}
	switch args[0] {
	case "upstream":
		size := 512
		if len(args) > 1 {
			n, err := strconv.Atoi(args[1])
			if err != nil || n <= 0 {
				return fmt.Errorf("bench child: body size %q", args[1])
			}
			size = n
		}
		up, err := startUpstream(size)
		if err != nil {
			return err
		}
		defer up.Close()
		fmt.Fprintf(stdout, "READY http://%s\n", up.Addr())
		<-ctx.Done()
		return nil
	case "sidecar":
		if len(args) < 2 {
			return errors.New("bench child: sidecar needs the upstream URL")
		}
		url, done, err := startSidecar(ctx, args[1], len(args) > 2 && args[2] == "transport")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "READY %s\n", url)
		<-ctx.Done()
		return <-done
	}
	return fmt.Errorf("bench child: unknown role %q", args[0])
}

// childProc is a running Child.
type childProc struct {
	cmd    *exec.Cmd
	url    string
	exited chan struct{}
}

// startChild runs command + args and waits for its READY line.
func startChild(ctx context.Context, command []string, args ...string) (*childProc, error) {
	argv := append(append([]string{}, command[1:]...), args...)
	cmd := exec.CommandContext(ctx, command[0], argv...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &childProc{cmd: cmd, exited: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	go func() { _ = cmd.Wait(); close(c.exited) }()
	select {
	case l := <-lines:
		if u, ok := strings.CutPrefix(l, "READY "); ok {
			c.url = u
			return c, nil
		}
		c.stop()
		return nil, fmt.Errorf("bench child %v: unexpected %q", args, l)
	case <-c.exited:
		return nil, fmt.Errorf("bench child %v exited at start", args)
	case <-time.After(10 * time.Second):
		c.stop()
		return nil, fmt.Errorf("bench child %v did not get ready", args)
	}
}

func (c *childProc) stop() {
	if c.cmd.Process == nil {
		return
	}
	_ = c.cmd.Process.Signal(os.Interrupt)
	select {
	case <-c.exited:
	case <-time.After(5 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}
