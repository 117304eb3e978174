// Command proxybench runs the side-by-side proxy benchmark (package
// proxy/bench) until the cmd wiring offers it as "ssf-sidecar bench proxy".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/proxy/bench"
)

func main() {
	var o bench.Options
	var rows string
	flag.DurationVar(&o.Duration, "duration", 0, "length of each measured run (default 5s)")
	flag.DurationVar(&o.Warmup, "warmup", 0, "warm-up before each run (default 1s)")
	flag.IntVar(&o.Connections, "connections", 0, "connections for the saturating load (default 128)")
	flag.IntVar(&o.BodySize, "body", 0, "upstream response body size in bytes (default 512)")
	flag.StringVar(&o.Generator, "generator", "", "wrk or go (default: wrk when installed)")
	flag.BoolVar(&o.CompareTransport, "compare-transport", false, "add a row for the proxy with its fast path off")
	flag.StringVar(&rows, "rows", "", "comma-separated subset of direct,sidecar,nginx")
	flag.Parse()
	if rows != "" {
		o.Rows = strings.Split(rows, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := bench.Run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
