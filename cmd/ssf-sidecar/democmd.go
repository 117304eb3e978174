package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demo"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
)

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	keep := fs.Bool("keep", false, "leave everything running to explore, with the URLs printed (Ctrl-C stops)")
	verbose := fs.Bool("verbose", false, "show the sidecar's own logs")
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for every SET to arrive")
	serveAK := fs.Bool("serve-authentik", false, "run only the simulated authentik, to put 'ssf-sidecar serve' in front of it yourself (Ctrl-C stops)")
	akListen := fs.String("authentik-listen", "127.0.0.1:9000", "address of the simulated authentik (with --serve-authentik)")
	help := func() {
		fmt.Fprintln(stdout, "Usage: ssf-sidecar demo [flags]\n\n"+
			"Runs a simulated authentik, the sidecar in front of it and a receiver that verifies every SET,\n"+
			"plays a scripted user and admin, and prints what the receiver got. Nothing outside this machine is used.\n"+
			"With --serve-authentik it runs only the simulated authentik, for trying 'serve' end to end.\n\nFlags:")
		printFlags(stdout, fs)
	}
	if err := parseNoArgs(fs, args, help); err != nil {
		return err
	}
	if *serveAK {
		return demo.ServeAuthentik(ctx, *akListen, stdout)
	}
	o := demo.RunOptions{Timeout: *timeout, Keep: *keep, SidecarOptions: []sidecar.Option{sidecar.WithVersion(buildVersion())}}
	if *verbose {
		o.Logger = newLogger(stderr, "text", "info")
	}
	return demo.Run(ctx, stdout, o)
}
