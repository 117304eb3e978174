package main

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionFrom(t *testing.T) {
	vcs := func(rev, modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	rev := "95be93710fb5c0ffee0123456789abcdef012345"
	for _, tc := range []struct {
		name    string
		stamped string
		bi      *debug.BuildInfo
		want    string
	}{
		{"no build info", "", nil, release},
		{"-buildvcs=false", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, release},
		{"stamped wins", "2.0.0-rc1", &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}, Settings: vcs(rev, "true")}, "2.0.0-rc1"},
		{"a tag", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.1.0"}}, "0.1.0"},
		{"a checkout", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs(rev, "false")}, release + "+95be93710fb5"},
		{"pseudo-version, dirty: the revision once", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261126224121-95be93710fb5+dirty"}, Settings: vcs(rev, "true")}, release + "+95be93710fb5.dirty"},
		{"pseudo-version after a tag", "", &debug.BuildInfo{Main: debug.Module{Version: "v0.1.1-0.20261126224121-95be93710fb5"}, Settings: vcs(rev, "false")}, release + "+95be93710fb5"},
	} {
		if got := versionFrom(tc.stamped, tc.bi); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// The binary built here (a test binary carries no VCS information) reports
// the release, a semantic version, which is the newest entry of README.md's
// changes.
func TestVersionIsTheRelease(t *testing.T) {
	if !regexp.MustCompile(`^\d+\.\d+\.\d+$`).MatchString(release) {
		t.Fatalf("release %q is not MAJOR.MINOR.PATCH", release)
	}
	var out bytes.Buffer
	if err := runVersion(context.Background(), nil, &out, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "ssf-sidecar "+release+"\n" {
		t.Errorf("ssf-sidecar version printed %q, want the release %s", got, release)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, changes, ok := strings.Cut(string(readme), "\n## Changes and upgrade notes\n")
	if !ok {
		t.Fatal(`README.md has no "## Changes and upgrade notes" section`)
	}
	newest := regexp.MustCompile(`(?m)^### (\S+)`).FindStringSubmatch(changes)
	if newest == nil || newest[1] != release {
		t.Errorf("the newest entry of README.md's changes is %v, want %s (raise both together)", newest, release)
	}
	for _, f := range []string{"../../deploy/helm/ssf-sidecar/Chart.yaml"} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(b), `appVersion: "`+release+`"`) {
			t.Errorf("%s: appVersion is not the release %s", f, release)
		}
	}
}

// TestVersionCommandLine: version takes --json and --help like every
// command, and a stray argument or flag is wrong usage (exit 2).
func TestVersionCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		inStdout string
	}{
		{[]string{"version", "--json"}, 0, `{"version":"` + release + `"}`},
		{[]string{"version", "--help"}, 0, "Usage: ssf-sidecar version"},
		{[]string{"version", "extra"}, 2, ""},
		{[]string{"version", "--jsn"}, 2, ""},
	} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), tc.args, &stdout, &stderr)
		if code != tc.code || !strings.Contains(stdout.String(), tc.inStdout) {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d with %q", tc.args, code, stdout.String(), stderr.String(), tc.code, tc.inStdout)
		}
	}
}

// TestStrayArgumentNotQuoted: an argument where none belongs is wrong usage,
// and the error counts it without quoting it (it may be a pasted token).
func TestStrayArgumentNotQuoted(t *testing.T) {
	const secret = "tok-Zq8Xv3StrayArgumentSecret"
	for _, cmd := range []string{"version", "health", "repair", "migrate-store", "demo", "serve", "migrate"} {
		var stdout, stderr bytes.Buffer
		code := run(context.Background(), []string{cmd, secret}, &stdout, &stderr)
		out := stdout.String() + stderr.String()
		if code != 2 || strings.Contains(out, secret) || !strings.Contains(out, "takes no arguments, got 1") {
			t.Errorf("%s %s: exit %d, output %q; want exit 2 counting the argument without quoting it", cmd, "<secret>", code, strings.ReplaceAll(out, secret, "<secret>"))
		}
	}
}

// TestHelpHidesEnvironmentSecrets: no command's --help shows a value taken
// from the environment that may hold a secret (a database URL carries its
// password, the key variables hold key text).
func TestHelpHidesEnvironmentSecrets(t *testing.T) {
	const pw = "db-password-in-env-Hx71"
	t.Setenv("SSF_DATABASE_URL", "postgres://ssf:"+pw+"@db.example/ak")
	t.Setenv("SSF_ENCRYPTION_KEY", pw+"-enc")
	t.Setenv("SSF_PREVIOUS_ENCRYPTION_KEY", pw+"-prev")
	t.Setenv("SSF_ADMIN_TOKEN", pw+"-admin")
	for _, c := range commands() {
		var out bytes.Buffer
		code := run(context.Background(), []string{c.name, "--help"}, &out, &out)
		if code != 0 || out.Len() == 0 {
			t.Errorf("%s --help: exit %d, %d bytes of output", c.name, code, out.Len())
		}
		if strings.Contains(out.String(), pw) {
			t.Errorf("%s --help shows a secret from the environment:\n%s", c.name, strings.ReplaceAll(out.String(), pw, "<secret>"))
		}
	}
}
