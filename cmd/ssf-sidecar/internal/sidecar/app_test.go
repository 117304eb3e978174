package sidecar

import (
	"testing"
	"time"
)

// TestTapRecheckMapping: 0 on the command line is off for the tap (whose
// own zero would mean its default), other values pass unchanged.
func TestTapRecheckMapping(t *testing.T) {
	if d := tapRecheck(0); d >= 0 {
		t.Errorf("tapRecheck(0) = %v: the tap would re-check at its default", d)
	}
	if d := tapRecheck(90 * time.Second); d != 90*time.Second {
		t.Errorf("tapRecheck(90s) = %v", d)
	}
}
