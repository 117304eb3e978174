package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func resolveArgs(t *testing.T, args []string, env map[string]string) (Config, map[string]rawValue, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	set := bindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse: %v", err)
	}
	return resolve(set, func(k string) string { return env[k] })
}

func TestConfigDefaults(t *testing.T) {
	c, raw, err := resolveArgs(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":9080" || c.AdminListen != "127.0.0.1:9090" || c.Issuer != "http://localhost:9080/ssf" ||
		c.DataDir != "./data" || c.PollInterval != 5*time.Second || c.DefaultSubjects != "ALL" ||
		c.Retention != 720*time.Hour || c.DeliveredRetention != 72*time.Hour || c.PushTimeout != 10*time.Second ||
		c.MaxBackoff != 10*time.Minute || c.PauseAfter != 72*time.Hour || c.KeyOverlap != 168*time.Hour ||
		c.MaxBody != 64<<10 || c.LogFormat != "json" || c.LogLevel != "info" || c.AllowPrivateEndpoints {
		t.Fatalf("defaults differ from DESIGN.md: %+v", c)
	}
	if raw["listen"].source != "default" {
		t.Fatalf("source = %q", raw["listen"].source)
	}
}

func TestConfigPrecedenceFlagEnvFile(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("listen: ':7000'\nissuer: https://file.example/ssf\npoll-interval: 9s\ntrusted-proxies: [10.0.0.0/8, 192.168.1.1]\n"), 0o600)
	env := map[string]string{"SSF_CONFIG": file, "SSF_ISSUER": "https://env.example/ssf", "SSF_LISTEN": ":7100"}
	c, raw, err := resolveArgs(t, []string{"--listen", ":7200"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":7200" {
		t.Errorf("flag must win: listen = %q", c.Listen)
	}
	if c.Issuer != "https://env.example/ssf" {
		t.Errorf("env must win over file: issuer = %q", c.Issuer)
	}
	if c.PollInterval != 9*time.Second {
		t.Errorf("file must win over default: poll-interval = %v", c.PollInterval)
	}
	if len(c.TrustedProxies) != 2 || c.TrustedProxies[1].String() != "192.168.1.1/32" {
		t.Errorf("trusted proxies from a YAML list: %v", c.TrustedProxies)
	}
	if !strings.HasPrefix(raw["poll-interval"].source, "config file") {
		t.Errorf("source = %q", raw["poll-interval"].source)
	}
}

func TestConfigReportsEveryProblemAtOnce(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	os.WriteFile(file, []byte("listn: x\n"), 0o600)
	c, _, perr := resolveArgs(t, []string{"--config", file, "--poll-interval", "soon", "--max-body", "huge",
		"--trusted-proxies", "not-a-cidr", "--issuer", "ssf.example.com/ssf", "--default-subjects", "some"}, nil)
	_, verr := validateAll(c, perr)
	if verr == nil {
		t.Fatal("no error")
	}
	msg := verr.Error()
	for _, want := range []string{
		`unknown key "listn"`,
		`--poll-interval given on the command line: "soon" is not a duration`,
		`--max-body`,
		`"not-a-cidr" is not a CIDR`,
		`--upstream is required`,
		`--issuer "ssf.example.com/ssf" is not an absolute URL`,
		`--default-subjects "SOME"`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("missing %q in:\n%s", want, msg)
		}
	}
}

func TestConfigDeepChecks(t *testing.T) {
	dir := t.TempDir()
	recv := filepath.Join(dir, "receivers.yaml")
	os.WriteFile(recv, []byte(`receivers:
  - name: a
    tokens: ["same-token-value-1234567890"]
  - name: b
    tokens: ["same-token-value-1234567890"]
`), 0o600)
	c, _, perr := resolveArgs(t, []string{"--upstream", "http://ak:9000", "--signing-key", filepath.Join(dir, "missing.pem"), "--receivers", recv}, nil)
	_, err := validateAll(c, perr)
	if err == nil {
		t.Fatal("no error")
	}
	msg := err.Error()
	if !strings.Contains(msg, "--signing-key") || !strings.Contains(msg, "missing.pem") {
		t.Errorf("unreadable key file not reported:\n%s", msg)
	}
	if !strings.Contains(msg, "is the same as a token of receiver") {
		t.Errorf("duplicate token not reported:\n%s", msg)
	}
	if strings.Contains(msg, "same-token-value") {
		t.Errorf("the token itself leaked into the message:\n%s", msg)
	}
}

func TestConfigCheckCommandHidesSecrets(t *testing.T) {
	var out, errb bytes.Buffer
	t.Setenv("SSF_ADMIN_TOKEN", "very-secret-admin-token")
	code := run(context.Background(), []string{"config", "check", "--upstream", "http://ak:9000", "--data-dir", t.TempDir()}, &out, &errb)
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if strings.Contains(out.String(), "very-secret-admin-token") {
		t.Fatal("config check printed a secret")
	}
	if !strings.Contains(out.String(), "admin-token") || !strings.Contains(out.String(), "(set, hidden)") {
		t.Fatalf("output:\n%s", out.String())
	}
	code = run(context.Background(), []string{"config", "check"}, &out, &errb)
	if code != exitConfig {
		t.Fatalf("missing upstream: exit %d, want %d", code, exitConfig)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "64KiB": 65536, "1MiB": 1 << 20, "2M": 2 << 20, "10KB": 10000} {
		got, err := parseSize(in)
		if err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "0", "lots", "1TiB9"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}

func TestUnknownCommandAndHelp(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"frobnicate"}, &out, &errb); code != exitUsage {
		t.Fatalf("exit %d", code)
	}
	errb.Reset()
	if code := run(context.Background(), []string{"serve", "--help"}, &out, &errb); code != exitOK {
		t.Fatalf("serve --help exit %d", code)
	}
	if !strings.Contains(out.String(), "SSF_UPSTREAM") {
		t.Fatalf("serve --help does not show env names on stdout:\n%s", out.String())
	}
}
