package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestDemoCommand runs the README's first command end to end: every scripted
// action must reach the receiver as exactly one verified SET.
func TestDemoCommand(t *testing.T) {
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"demo"}, &out, &errb)
	if code != exitOK {
		t.Fatalf("demo exit %d\nstdout:\n%s\nstderr:\n%s", code, out.String(), errb.String())
	}
	s := out.String()
	for _, want := range []string{
		"← verification",
		"← session-revoked      initiator=user",
		"← session-revoked      initiator=admin",
		"← credential-change    initiator=user",
		"← account-disabled",
		"8 SETs expected, 8 received and verified, 0 missing, 0 unexpected, 0 rejected",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}
