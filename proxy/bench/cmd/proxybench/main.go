// Command proxybench runs the side-by-side proxy benchmark (package
// proxy/bench) until the cmd wiring offers it as "ssf-sidecar bench proxy".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := bench.Child(ctx, os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	var o bench.Options
	var inProcess bool
	var rows string
	flag.DurationVar(&o.Duration, "duration", 0, "length of each measured run (default 3s)")
	flag.DurationVar(&o.Warmup, "warmup", 0, "warm-up before each run (default 1s)")
	flag.IntVar(&o.Rounds, "rounds", 0, "measurements per target, interleaved; medians shown (default 3)")
	flag.IntVar(&o.Connections, "connections", 0, "connections for the saturating load (default 128)")
	flag.IntVar(&o.BodySize, "body", 0, "upstream response body size in bytes (default 512)")
	flag.StringVar(&o.Generator, "generator", "", "wrk or go (default: wrk when installed)")
	flag.BoolVar(&o.CompareTransport, "compare-transport", false, "add a row for the proxy with its fast path off")
	flag.StringVar(&rows, "rows", "", "comma-separated subset of direct,sidecar,nginx")
	flag.BoolVar(&inProcess, "in-process", false, "run upstream and sidecar in this process instead of child processes")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of this process to the file (use with -in-process)")
	flag.Parse()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	if !inProcess {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		o.ChildCommand = []string{exe, "child"}
	}
	if rows != "" {
		o.Rows = strings.Split(rows, ",")
	}
	if err := bench.Run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		stop()
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
