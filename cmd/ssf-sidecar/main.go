// Command ssf-sidecar turns an unmodified authentik into an OpenID Shared
// Signals Framework 1.0 transmitter.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "ssf-sidecar: not wired yet")
	os.Exit(2)
}
