package main

import (
	"os"
	"path/filepath"
	"regexp"
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
		if o.envOnly {
			row = "| (environment only) | `" + o.env + "` |"
		}
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

// Every line of the README's Guarantees section names the tests that hold
// it; those tests must exist.
func TestREADMEGuaranteesNameRealTests(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	start := strings.Index(s, "## Guarantees")
	end := strings.Index(s, "## Performance")
	if start < 0 || end < start {
		t.Fatal("README has no Guarantees section before Performance")
	}
	dirs := map[string]string{"cmd": ".", "outbox": "../../outbox", "ssf": "../../ssf", "tap": "../../tap",
		"proxy": "../../proxy", "admin": "../../ssf/admin"}
	sources := map[string]string{}
	for pkg, dir := range dirs {
		files, _ := filepath.Glob(filepath.Join(dir, "*_test.go"))
		if pkg == "cmd" {
			// The binary's tree: its own tests and its internal packages'.
			more, _ := filepath.Glob(filepath.Join(dir, "internal", "*", "*_test.go"))
			files = append(files, more...)
		}
		var b strings.Builder
		for _, f := range files {
			d, _ := os.ReadFile(f)
			b.Write(d)
		}
		sources[pkg] = b.String()
	}
	refs := regexp.MustCompile("`(cmd|outbox|ssf|tap|proxy|admin) ((?:Test|Fuzz)[A-Za-z0-9_]+)`").FindAllStringSubmatch(s[start:end], -1)
	if len(refs) < 30 {
		t.Fatalf("only %d test references in the Guarantees section", len(refs))
	}
	for _, r := range refs {
		if !strings.Contains(sources[r[1]], "func "+r[2]+"(") {
			t.Errorf("Guarantees names %s %s, which does not exist", r[1], r[2])
		}
	}
}
