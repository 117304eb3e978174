package main

import (
	"context"
	"io"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demo"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/demoreceiver"
	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/testkit"
)

// The whole-system tests act in the demo's world; these names keep them
// short, and the methods in e2e_test.go are theirs.
type (
	demoWorld    struct{ *demo.World }
	demoOptions  = demo.Options
	demoReceiver = demoreceiver.Receiver
	receivedSET  = demoreceiver.SET
	syncBuffer   = testkit.SyncBuffer
	roHealth     = testkit.Health
)

const demoReceiverToken = demo.ReceiverToken

var (
	startDemoReceiver = demoreceiver.Start
	freeAddr          = testkit.FreeAddr
	listenAddrs       = testkit.ListenAddrs
)

// startDemoWorld starts the demo's world with the sidecar built as serve
// builds it (version, seal keys from the configured encryption key).
func startDemoWorld(ctx context.Context, o demoOptions) (*demoWorld, error) {
	o.SidecarOptions = sidecarOptions(o.SidecarOptions...)
	w, err := demo.Start(ctx, o)
	if err != nil {
		return nil, err
	}
	return &demoWorld{w}, nil
}

// runDemoScript plays the demo's script in w.
func runDemoScript(ctx context.Context, w *demoWorld, out io.Writer, timeout time.Duration) (string, error) {
	return demo.Script(ctx, w.World, out, timeout)
}
