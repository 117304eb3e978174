package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ssf-sidecar/ssf-sidecar/outbox"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// runCLI runs the command line in process with the environment env (the
// SSF_* variables of the test process are cleared first).
func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	for _, o := range options {
		t.Setenv(o.env, "")
	}
	for _, k := range []string{"SSF_ADMIN_URL", "SSF_ADMIN_TOKEN"} {
		t.Setenv(k, "")
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestNoSecretInAnyConfigOutput feeds secret-looking values through every
// way configuration reaches the sidecar (flags, environment, config file,
// a receivers list inline in the config file, a receivers file given as
// the config file, malformed receivers files) into config check, receivers
// check and serve, and scans everything they print.
func TestNoSecretInAnyConfigOutput(t *testing.T) {
	dir := t.TempDir()
	const tok = "s3cr3t-receiver-token-must-not-leak-0001"
	const tok2 = "s3cr3t-receiver-token-must-not-leak-0002"
	const admin = "s3cr3t-admin-token-must-not-leak-0003"
	const ak = "s3cr3t-authentik-token-must-not-leak-0004"
	const key = "s3cr3t-authentik-secret-key-must-not-leak-0005"
	const upPass = "s3cr3t-upstream-password-must-not-leak-0006"
	const pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7s3cr3tk3y\n-----END PRIVATE KEY-----"
	secrets := []string{tok, tok2, admin, ak, key, "s3cr3t", "MIIEvQIBADANBg"}

	recvFile := writeFile(t, dir, "receivers.yaml", "receivers:\n  - name: acme-hr\n    tokens: [\""+tok+"\"]\n")
	inline := writeFile(t, dir, "inline.yaml", "upstream: http://127.0.0.1:9000\nreceivers:\n  - name: acme-hr\n    tokens: [\""+tok+"\"]\n")
	mapping := writeFile(t, dir, "mapping.yaml", "upstream: http://127.0.0.1:9000\nreceivers: {name: acme, tokens: [\""+tok+"\"]}\nadmin-token: [\""+admin+"\"]\n")
	secretsInFile := writeFile(t, dir, "secrets.yaml", "upstream: http://127.0.0.1:9000\nadmin-token: "+admin+"\nauthentik-token: "+ak+"\nauthentik-secret-key: "+key+"\npoll-interval: "+tok+"\nlisten: "+tok2+"\n")
	notYAML := writeFile(t, dir, "broken.yaml", "upstream: [\""+tok+"\"\n  - ]]\n")
	typeErr := writeFile(t, dir, "typeerr.yaml", "receivers:\n  - name: a\n    require_scopes: "+tok+"\n    tokens: {value: \""+tok2+"\"}\n")
	dupTok := writeFile(t, dir, "dup.yaml", "receivers:\n  - name: a\n    tokens: [\""+tok+"\"]\n  - name: b\n    tokens: [{value: \""+tok+"\", scopes: [ssf.mange]}]\n    audiance: x\n")
	tokKey := writeFile(t, dir, "tokkey.yaml", "receivers:\n  - name: a\n    tokens: [\""+tok2+"\"]\n    "+tok+": x\n")
	cfgKey := writeFile(t, dir, "cfgkey.yaml", "upstream: http://127.0.0.1:9000\n"+ak+": x\n")
	data := t.TempDir()

	cases := []struct {
		name string
		env  map[string]string
		args []string
	}{
		{"inline receivers list in --config", nil, []string{"config", "check", "--config", inline, "--data-dir", data}},
		{"inline receivers list, serve", nil, []string{"serve", "--config", inline, "--data-dir", data}},
		{"receivers file as --config", nil, []string{"config", "check", "--config", recvFile, "--data-dir", data}},
		{"receivers file as --config, serve", nil, []string{"serve", "--config", recvFile}},
		{"mapping values", nil, []string{"config", "check", "--config", mapping}},
		{"secrets in the config file and in wrong keys", nil, []string{"config", "check", "--config", secretsInFile}},
		{"secrets in the config file, json", nil, []string{"config", "check", "--json", "--config", secretsInFile}},
		{"config file that is not YAML", nil, []string{"config", "check", "--config", notYAML}},
		{"receivers file with type errors", nil, []string{"receivers", "check", typeErr}},
		{"receivers file with type errors via config", nil, []string{"config", "check", "--upstream", "http://ak:9000", "--receivers", typeErr}},
		{"duplicate tokens and typos", nil, []string{"receivers", "check", "--json", dupTok}},
		{"tokens where paths belong", map[string]string{"SSF_ADMIN_TOKEN_FILE": admin, "SSF_RECEIVERS": tok, "SSF_TLS_CERT": tok2, "SSF_TLS_KEY": pem}, []string{"config", "check", "--upstream", "http://ak:9000"}},
		{"a token as the config file", nil, []string{"serve", "--config", ak}},
		{"a signing key pasted instead of its path", map[string]string{"SSF_SIGNING_KEY": pem}, []string{"config", "check", "--upstream", "http://ak:9000"}},
		{"a signing key pasted in the config file", nil, []string{"serve", "--config", writeFile(t, dir, "pem.yaml", "upstream: http://ak:9000\nsigning-key: |\n  "+strings.ReplaceAll(pem, "\n", "\n  ")+"\n")}},
		{"secrets by flag", nil, []string{"config", "check", "--upstream", "http://ak:9000", "--data-dir", data,
			"--admin-token", admin, "--authentik-token", ak, "--authentik-secret-key", key, "--receivers", recvFile}},
		{"secrets by flag, json", nil, []string{"config", "check", "--json", "--upstream", "http://ak:9000", "--data-dir", data,
			"--admin-token", admin, "--authentik-token", ak, "--authentik-secret-key", key, "--receivers", recvFile}},
		{"secrets by environment", map[string]string{"SSF_ADMIN_TOKEN": admin, "SSF_AUTHENTIK_TOKEN": ak, "SSF_AUTHENTIK_SECRET_KEY": key,
			"SSF_UPSTREAM": "http://ak:9000", "SSF_RECEIVERS": recvFile, "SSF_DATA_DIR": data}, []string{"config", "check"}},
		{"secret in a duration by environment", map[string]string{"SSF_UPSTREAM": "http://ak:9000", "SSF_ADMIN_TOKEN": admin}, []string{"config", "check", "--poll-interval", "x", "--upsteam", admin}},
		{"serve with secrets, refused for another reason", map[string]string{"SSF_ADMIN_TOKEN": admin, "SSF_AUTHENTIK_TOKEN": ak}, []string{"serve", "--upstream", "http://ak:9000",
			"--authentik-secret-key", key, "--receivers", dupTok, "--listen", "9580"}},
		{"a token as a key of the receivers file", nil, []string{"receivers", "check", tokKey}},
		{"a token as a key of the config file", nil, []string{"config", "check", "--config", cfgKey, "--data-dir", data}},
		{"a password in the upstream URL", nil, []string{"config", "check", "--upstream", "http://ops:" + upPass + "@ak:9000", "--data-dir", data}},
		{"a password in the upstream URL, json", map[string]string{"SSF_UPSTREAM": "http://ops:" + upPass + "@ak:9000"}, []string{"config", "check", "--json", "--data-dir", data}},
		{"serve starts with a password in the upstream URL", nil, []string{"serve", "--upstream", "http://ops:" + upPass + "@127.0.0.1:1",
			"--data-dir", t.TempDir(), "--listen", "127.0.0.1:0", "--admin-listen", "localhost:0", "--log-level", "debug"}},
		{"serve starts with secrets", map[string]string{"SSF_ADMIN_TOKEN": admin, "SSF_AUTHENTIK_TOKEN": ak, "SSF_AUTHENTIK_SECRET_KEY": key}, []string{"serve",
			"--upstream", "http://127.0.0.1:1", "--receivers", recvFile, "--data-dir", data, "--listen", "127.0.0.1:0", "--admin-listen", "localhost:0", "--log-level", "debug"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if strings.HasPrefix(tc.name, "serve starts") {
				// serve runs until its context ends: give it a moment.
				ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
				defer cancel()
				for k, v := range tc.env {
					t.Setenv(k, v)
				}
				var out, errb bytes.Buffer
				run(ctx, tc.args, &out, &errb)
				scanForSecrets(t, out.String()+errb.String(), secrets)
				if !strings.Contains(errb.String(), "ssf-sidecar started") {
					t.Fatalf("serve did not start:\n%s", errb.String())
				}
				return
			}
			code, out, errs := runCLI(t, tc.env, tc.args...)
			t.Logf("exit %d\n%s%s", code, out, errs)
			scanForSecrets(t, out+errs, secrets)
		})
	}
}

func scanForSecrets(t *testing.T, all string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(all, s) {
			t.Fatalf("output contains the secret %q:\n%s", s, all)
		}
	}
}

// TestInlineReceiversListIsExplained: the message says what to do instead.
func TestInlineReceiversListIsExplained(t *testing.T) {
	dir := t.TempDir()
	inline := writeFile(t, dir, "inline.yaml", "upstream: http://127.0.0.1:9000\nreceivers:\n  - name: acme-hr\n    tokens: [\"s3cr3t-token-value-that-must-not-leak-0001\"]\n")
	code, _, errs := runCLI(t, nil, "config", "check", "--config", inline)
	if code != exitConfig || !strings.Contains(errs, "receivers must be the path of a receivers file, not a list") {
		t.Fatalf("exit %d:\n%s", code, errs)
	}
}

// TestBooleanFlagsBareValuedEnvFile: every boolean option works bare (also
// followed by more flags, and as the last flag), with =true|false, from the
// environment and from the config file.
func TestBooleanFlagsBareValuedEnvFile(t *testing.T) {
	for _, o := range options {
		if !o.isBool {
			continue
		}
		t.Run(o.name, func(t *testing.T) {
			dir := t.TempDir()
			base := []string{"--upstream", "http://ak:9000", "--data-dir", dir}
			get := func(c Config) bool {
				switch o.name {
				case "allow-private-endpoints":
					return c.AllowPrivateEndpoints
				case "trace-all-routes":
					return c.TraceAllRoutes
				case "trace-propagation":
					return c.TracePropagation
				}
				t.Fatalf("test does not know option %s", o.name)
				return false
			}
			check := func(label string, env map[string]string, want bool, args ...string) {
				t.Helper()
				for _, oo := range options {
					t.Setenv(oo.env, "")
				}
				for k, v := range env {
					t.Setenv(k, v)
				}
				cfg, _, rest, err := loadConfig("serve", args, &bytes.Buffer{})
				if err != nil {
					t.Fatalf("%s: %v", label, err)
				}
				if len(rest) > 0 {
					t.Fatalf("%s: arguments left over: %q", label, rest)
				}
				if get(cfg) != want {
					t.Fatalf("%s: %s = %v, want %v", label, o.name, get(cfg), want)
				}
			}
			flagName := "--" + o.name
			check("bare, then more flags", nil, true, append([]string{flagName}, append(base, "--listen", "127.0.0.1:9180")...)...)
			check("bare, last", nil, true, append(base, flagName)...)
			check("bare, before --flag=value", nil, true, append(base, flagName, "--listen=127.0.0.1:9180")...)
			check("=true", nil, true, append(base, flagName+"=true")...)
			check("=false", nil, false, append(base, flagName+"=false")...)
			check("env true", map[string]string{o.env: "true"}, true, base...)
			check("env false, flag wins", map[string]string{o.env: "false"}, true, append(base, flagName)...)
			file := writeFile(t, dir, "c.yaml", o.name+": true\n")
			check("config file", nil, true, append(base, "--config", file)...)
			file = writeFile(t, dir, "c2.yaml", o.name+": yes please\n")
			_, _, _, err := loadConfig("serve", append(base, "--config", file), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), "is not true or false") {
				t.Fatalf("bad value in the file: %v", err)
			}
			var u usageError
			_, _, _, err = loadConfig("serve", append(base, flagName+"=maybe"), &bytes.Buffer{})
			if err == nil || !strings.Contains(err.Error(), "not true or false") || !asUsage(err, &u) {
				t.Fatalf("bad value as a flag: %v", err)
			}
		})
	}
}

func asUsage(err error, u *usageError) bool {
	v, ok := err.(usageError)
	*u = v
	return ok
}

// TestFlagTypoIsShortWithSuggestion: a typo gives one line naming the flag
// it probably meant, not the whole usage.
func TestFlagTypoIsShortWithSuggestion(t *testing.T) {
	code, out, errs := runCLI(t, nil, "serve", "--upsteam", "http://ak:9000")
	if code != exitUsage {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(errs, "unknown flag --upsteam: did you mean --upstream?") {
		t.Fatalf("no suggestion:\n%s", errs)
	}
	if n := strings.Count(errs+out, "\n"); n > 2 {
		t.Fatalf("%d lines of output for a typo:\n%s%s", n, out, errs)
	}
	code, _, errs = runCLI(t, nil, "streams", "list", "--admin-ulr", "http://x")
	if code != exitUsage || !strings.Contains(errs, "did you mean --admin-url?") {
		t.Fatalf("admin command typo: exit %d\n%s", code, errs)
	}
	dir := t.TempDir()
	file := writeFile(t, dir, "c.yaml", "upstream: http://ak:9000\nallow_private_endpoints: true\n")
	_, _, errs = runCLI(t, nil, "config", "check", "--config", file)
	if !strings.Contains(errs, "did you mean allow-private-endpoints?") {
		t.Fatalf("config key with underscores:\n%s", errs)
	}
	recv := writeFile(t, dir, "r.yaml", "receivers:\n  - name: a\n    tokens: [x-long-enough-token-value-123456]\n    audiance: https://a.example/\n")
	_, _, errs = runCLI(t, nil, "receivers", "check", recv)
	if !strings.Contains(errs, `unknown key "audiance" (did you mean audience?)`) || strings.Contains(errs, "receiverEntry") {
		t.Fatalf("receivers file typo:\n%s", errs)
	}
}

// TestHelpOnStdout: help is asked for, so it goes to stdout, with booleans
// shown without a value.
func TestHelpOnStdout(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"help"}, {"serve", "--help"}, {"help", "serve"}, {"streams", "--help"}, {"streams", "list", "--help"}} {
		code, out, errs := runCLI(t, nil, args...)
		if code != exitOK || out == "" || errs != "" {
			t.Fatalf("%q: exit %d, stdout %d bytes, stderr:\n%s", args, code, len(out), errs)
		}
	}
	_, out, _ := runCLI(t, nil, "serve", "--help")
	if !strings.Contains(out, "  --allow-private-endpoints\n") || !strings.Contains(out, "  --poll-interval duration\n") {
		t.Fatalf("serve --help does not show kinds:\n%s", out)
	}
	_, out, _ = runCLI(t, nil, "help", "serve")
	if !strings.Contains(out, "--upstream") {
		t.Fatalf("help serve does not show serve's flags:\n%s", out)
	}
}

// TestConfigCheckAgreesWithServe: what serve refuses, config check refuses;
// what serve warns about, config check reports.
func TestConfigCheckAgreesWithServe(t *testing.T) {
	dir := t.TempDir()
	oauthOnly := writeFile(t, dir, "poll.yaml", "receivers:\n  - name: hr\n    oauth_client_ids: [hr]\n")
	placeholder := writeFile(t, dir, "ph.yaml", "receivers:\n  - name: hr\n    tokens: [replace-with-a-long-random-token, short]\n")
	scopes := writeFile(t, dir, "sc.yaml", "receivers:\n  - name: hr\n    tokens: [{value: a-long-enough-token-value-0123456789, scopes: [ssf.mange]}]\n")
	emptyAdmin := writeFile(t, dir, "ea.yaml", "upstream: http://ak:9000\nadmin-listen:\n")
	base := []string{"--upstream", "http://ak:9000", "--data-dir", dir}
	refused := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--listen", "9580"}, nil, `--listen "9580" is not host:port (did you mean :9580?)`},
		{[]string{"--issuer", "https://sso.example.com/ssf/"}, nil, "ends with a slash"},
		{[]string{"--config", emptyAdmin}, nil, "--admin-listen is empty"},
		{nil, map[string]string{"SSF_ADMIN_LISTEN": " "}, "--admin-listen is empty"},
		{nil, map[string]string{"SSF_LISTEN": " "}, "--listen is empty"},
		{[]string{"--poll-interval", "5"}, nil, `"5" is not a duration`},
	}
	for _, r := range refused {
		for _, cmd := range [][]string{{"config", "check"}, {"serve"}} {
			code, _, errs := runCLI(t, r.env, append(append(cmd, base...), r.args...)...)
			if code != exitConfig || !strings.Contains(errs, r.want) {
				t.Errorf("%v %v: exit %d, want %d with %q:\n%s", cmd, r.args, code, exitConfig, r.want, errs)
			}
			if strings.Contains(errs, "must be greater than zero") {
				t.Errorf("a bad duration is reported twice:\n%s", errs)
			}
		}
	}
	warned := []struct {
		args []string
		want string
	}{
		{[]string{"--receivers", oauthOnly}, `receiver "hr" lists oauth_client_ids but --oauth-issuer is not set`},
		{[]string{"--receivers", placeholder}, "looks like an example's placeholder"},
		{[]string{"--receivers", placeholder}, "token #2 is only 5 characters"},
		{nil, "--issuer is not set"},
		{[]string{"--receivers", scopes}, `unknown scope "ssf.mange": did you mean ssf.manage?`},
	}
	for _, w := range warned {
		code, out, errs := runCLI(t, nil, append(append([]string{"config", "check"}, base...), w.args...)...)
		if code != exitOK || !strings.Contains(out, "warning: ") || !strings.Contains(out, w.want) {
			t.Errorf("config check %v: exit %d, want warning %q:\n%s%s", w.args, code, w.want, out, errs)
		}
	}
	code, out, _ := runCLI(t, nil, "receivers", "check", placeholder)
	if code != exitOK || !strings.Contains(out, "looks like an example's placeholder") {
		t.Errorf("receivers check does not warn about placeholders: exit %d\n%s", code, out)
	}
	code, out, errs := runCLI(t, nil, "config", "check", "--json", "--upstream", "http://ak:9000", "--issuer", "https://sso.example.com/ssf")
	if code != exitOK || !strings.Contains(out, `"valid": true`) {
		t.Errorf("config check --json: exit %d\n%s%s", code, out, errs)
	}
}

// TestCLIConsistency: exit codes, auth errors that say where the token
// comes from, --admin-url mistakes explained, health following
// SSF_ADMIN_URL, --json where the README promises it, and a resumed
// stream without its pause reason.
func TestCLIConsistency(t *testing.T) {
	const token = "cli-admin-token-0123456789abcdef"
	s := startServe(t, map[string]string{"SSF_ADMIN_TOKEN": token}, "--data-dir", t.TempDir())
	admin := []string{"--admin-url", s.admin}

	t.Setenv("SSF_ADMIN_TOKEN", "")
	code, _, errs := cli(t, append([]string{"streams", "list"}, admin...)...)
	if code != exitAuth || !strings.Contains(errs, "no admin token given (set --admin-token or SSF_ADMIN_TOKEN") {
		t.Errorf("no token: exit %d %s", code, errs)
	}
	code, _, errs = cli(t, append([]string{"streams", "list", "--admin-token", "wrong"}, admin...)...)
	if code != exitAuth || !strings.Contains(errs, "the admin token from --admin-token is not the sidecar's") {
		t.Errorf("wrong flag token: exit %d %s", code, errs)
	}
	t.Setenv("SSF_ADMIN_TOKEN", "wrong-too")
	code, _, errs = cli(t, append([]string{"streams", "list"}, admin...)...)
	if code != exitAuth || !strings.Contains(errs, "the admin token from SSF_ADMIN_TOKEN is not the sidecar's") {
		t.Errorf("wrong env token: exit %d %s", code, errs)
	}
	t.Setenv("SSF_ADMIN_TOKEN", token)
	code, _, errs = cli(t, "streams", "list", "--admin-url", s.front)
	if code != exitNoServer || !strings.Contains(errs, "is not the admin API") {
		t.Errorf("proxy port as admin URL: exit %d %s", code, errs)
	}
	code, _, errs = cli(t, "streams", "list", "--admin-url", "127.0.0.1:9090")
	if code != exitUsage || !strings.Contains(errs, "use http://127.0.0.1:9090") {
		t.Errorf("admin URL without scheme: exit %d %s", code, errs)
	}
	if code, _, errs = cli(t, "streams", "list", "--help"); code != exitOK || strings.Contains(errs, token) {
		t.Errorf("help: exit %d %s", code, errs)
	}
	_, help, _ := cli(t, "streams", "list", "--help")
	if strings.Contains(help, token) || strings.Contains(help, "--reason") || strings.Contains(help, "--state") {
		t.Errorf("streams list --help shows the token or flags of other commands:\n%s", help)
	}

	// health follows SSF_ADMIN_URL over SSF_ADMIN_LISTEN, and ends its line.
	t.Setenv("SSF_ADMIN_LISTEN", "127.0.0.1:1")
	t.Setenv("SSF_ADMIN_URL", s.admin)
	code, out, errs := cli(t, "health")
	if code != exitOK || !strings.HasSuffix(out, "}\n") {
		t.Errorf("health with SSF_ADMIN_URL: exit %d %q %s", code, out, errs)
	}
	if code, _, _ = cli(t, "health", "--admin-url", "http://127.0.0.1:1"); code != exitNoServer {
		t.Errorf("health --admin-url: exit %d", code)
	}
	t.Setenv("SSF_ADMIN_URL", "")
	t.Setenv("SSF_ADMIN_LISTEN", "")

	code, out, _ = cli(t, append([]string{"outbox", "purge", "no-such-stream", "no-such-jti"}, admin...)...)
	if code != exitNotFound {
		t.Errorf("purge of an unknown jti: exit %d %s", code, out)
	}
}

// TestResumeClearsReason: after a pause with a reason and a resume, no
// view shows the old reason; verify on a paused stream says it is held.
func TestResumeClearsReason(t *testing.T) {
	w := newSystem(t)
	ctx := context.Background()
	id, err := w.CreatePushStream(ctx, []string{ssf.EventSessionRevoked})
	if err != nil {
		t.Fatal(err)
	}
	admin := []string{"--admin-url", w.AdminURL}
	if code, out, errs := cli(t, append([]string{"streams", "pause", id, "--reason", "maintenance window"}, admin...)...); code != exitOK {
		t.Fatalf("pause: %d %s%s", code, out, errs)
	}
	code, out, _ := cli(t, append([]string{"streams", "verify", id}, admin...)...)
	if code != exitOK || !strings.Contains(out, "held and goes out when the stream is resumed") {
		t.Errorf("verify on a paused stream: %d %s", code, out)
	}
	code, out, _ = cli(t, append([]string{"streams", "verify", id, "--json"}, admin...)...)
	if code != exitOK || !strings.Contains(out, `"held_until_resume": true`) {
		t.Errorf("verify --json: %d %s", code, out)
	}
	if code, _, _ := cli(t, append([]string{"streams", "resume", id}, admin...)...); code != exitOK {
		t.Fatal("resume")
	}
	_, show, _ := cli(t, append([]string{"streams", "show", id}, admin...)...)
	_, list, _ := cli(t, append([]string{"streams", "list", "--json"}, admin...)...)
	status, body := w.call(t, demoReceiverToken, http.MethodGet, "/ssf/status?stream_id="+id, nil)
	_, dash := getBody(t, w.AdminURL+"/admin/dashboard/api/overview")
	for name, text := range map[string]string{"streams show": show, "streams list --json": list, "GET /ssf/status": string(body), "dashboard": dash} {
		if strings.Contains(text, "maintenance window") || strings.Contains(text, "set by the transmitter's operator") {
			t.Errorf("%s still shows the pause reason after resume:\n%s", name, text)
		}
	}
	if status != http.StatusOK || !strings.Contains(string(body), `"enabled"`) {
		t.Errorf("status: %d %s", status, body)
	}
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestPortInUseIsNotStarted: a taken port fails the start without a
// "started" line before it, and the message names the port once.
func TestPortInUseIsNotStarted(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, admin := listenAddrs(t)
	code, _, errs := runCLI(t, nil, "serve", "--upstream", "http://127.0.0.1:1", "--data-dir", t.TempDir(),
		"--listen", taken.Addr().String(), "--admin-listen", admin, "--issuer", "http://127.0.0.1/ssf", "--log-format", "text")
	if code != exitFailure || !strings.Contains(errs, "address already in use") {
		t.Fatalf("exit %d:\n%s", code, errs)
	}
	if strings.Contains(errs, "ssf-sidecar started") {
		t.Fatalf("started was logged before the bind failed:\n%s", errs)
	}
	if strings.Contains(errs, "proxy: proxy:") || strings.Count(errs, "listen on") != 1 {
		t.Fatalf("doubled prefix:\n%s", errs)
	}
	// With the ports free, it starts, and says that authentik is not there.
	taken.Close()
	s := startServe(t, nil, "--upstream", "http://127.0.0.1:1", "--data-dir", t.TempDir())
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(s.logs.String(), "authentik is not answering yet") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about an unreachable authentik:\n%s", s.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestLastErrorAndEmptyTables: a last error carries its time and says when
// a delivery succeeded after it; an empty table says so.
func TestLastErrorAndEmptyTables(t *testing.T) {
	at := time.Date(2026, 12, 2, 0, 46, 0, 0, time.UTC)
	s := outbox.StreamStats{LastError: "500 Internal Server Error", LastErrorAt: at, LastSuccess: at.Add(time.Minute)}
	if got := lastErrorText(s); got != "500 Internal Server Error at 2026-12-02T00:46:00Z (delivered since)" {
		t.Errorf("lastErrorText = %q", got)
	}
	s.LastSuccess = at.Add(-time.Minute)
	if got := lastErrorText(s); strings.Contains(got, "delivered since") {
		t.Errorf("lastErrorText = %q", got)
	}
	var b bytes.Buffer
	table(&b, []string{"JTI", "EVENT"}, nil)
	if !strings.Contains(b.String(), "(none)") {
		t.Errorf("empty table:\n%s", b.String())
	}
}
