package main

import (
	"os"
	"strings"
	"testing"
)

// The README is part of the contract: it starts with the two commands and
// documents every flag with its environment variable and default.
func TestREADMEMatchesConfiguration(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	head := readme[:min(len(readme), 400)]
	if !strings.Contains(head, "go run ./cmd/ssf-sidecar demo") || !strings.Contains(head, "go test -race ./...") {
		t.Errorf("README must start with the run and test commands:\n%s", head)
	}
	for _, o := range options {
		row := "| `--" + o.name + "` | `" + o.env + "` |"
		if !strings.Contains(readme, row) {
			t.Errorf("README configuration reference lacks %s / %s", o.name, o.env)
			continue
		}
		line := readme[strings.Index(readme, row):]
		line = line[:strings.Index(line, "\n")]
		if o.def != "" && !strings.Contains(line, "`"+o.def+"`") {
			t.Errorf("README gives a different default for --%s: %s", o.name, line)
		}
	}
	for _, c := range commands() {
		if !strings.Contains(readme, "ssf-sidecar "+c.name) {
			t.Errorf("README never shows the %q command", c.name)
		}
	}
}
