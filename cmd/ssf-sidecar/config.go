package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/ssf-sidecar/ssf-sidecar/cmd/ssf-sidecar/internal/sidecar"
	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// Config is everything `serve` needs, resolved from flags, environment and
// the config file (in that order of precedence) over the defaults: the
// sidecar's own configuration, and what only the command line keeps.
type Config struct {
	sidecar.Config

	// flagValues are the command line's raw values (a reload resolves
	// them again with the environment and the config file).
	flagValues map[string]string
	// badValue names the options whose value did not parse: Validate does
	// not report them a second time.
	badValue map[string]bool
}

// option is one configuration key: its flag, its environment variable and
// the key a config file uses (the flag name).
type option struct {
	name    string // flag name, also the config-file key
	env     string
	def     string
	usage   string
	secret  bool // never printed back
	isBool  bool // may be written bare: --flag means --flag=true
	envOnly bool // no flag: a secret that must not show in the process list
	apply   func(c *Config, v string) error
}

func str(p func(*Config) *string) func(*Config, string) error {
	return func(c *Config, v string) error { *p(c) = strings.TrimSpace(v); return nil }
}

func dur(p func(*Config) *time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s is not a duration (examples: 30s, 10m, 72h)", shown(v))
		}
		if d < 0 {
			return fmt.Errorf("%s is negative", shown(v))
		}
		*p(c) = d
		return nil
	}
}

func boolean(p func(*Config) *bool) func(*Config, string) error {
	return func(c *Config, v string) error {
		b, err := strconv.ParseBool(strings.TrimSpace(v))
		if err != nil {
			return fmt.Errorf("%s is not true or false", shown(v))
		}
		*p(c) = b
		return nil
	}
}

// options is the configuration contract of DESIGN.md: names, environment
// variables and defaults are part of the product.
var options = []option{
	{name: "listen", env: "SSF_LISTEN", def: ":9080", usage: "address clients and receivers reach", apply: str(func(c *Config) *string { return &c.Listen })},
	{name: "upstream", env: "SSF_UPSTREAM", usage: "authentik's base URL, e.g. http://authentik-server:9000 (required for serve)", apply: str(func(c *Config) *string { return &c.Upstream })},
	{name: "issuer", env: "SSF_ISSUER", def: "http://localhost:9080/ssf", usage: "public issuer URL; discovery is at /.well-known/ssf-configuration + the issuer's path", apply: str(func(c *Config) *string { return &c.Issuer })},
	{name: "data-dir", env: "SSF_DATA_DIR", def: "./data", usage: "directory for the bbolt file and the generated signing key (unused with --database-url)", apply: str(func(c *Config) *string { return &c.DataDir })},
	{name: "signing-key", env: "SSF_SIGNING_KEY", usage: "PEM private key files, comma-separated: the first signs, the rest are only published (default: generate one)", apply: func(c *Config, v string) error {
		c.SigningKeys = splitList(v)
		return nil
	}},
	{name: "authentik-token", env: "SSF_AUTHENTIK_TOKEN", secret: true, usage: "authentik API token for the event-API poller and look-ups (without it the poller is off)", apply: str(func(c *Config) *string { return &c.AuthentikToken })},
	{name: "receivers", env: "SSF_RECEIVERS", usage: "YAML (or JSON) file listing receivers", apply: str(func(c *Config) *string { return &c.Receivers })},
	{name: "oauth-issuer", env: "SSF_OAUTH_ISSUER", usage: "issuer URL of an authentik OAuth2 provider whose access tokens receivers may present", apply: str(func(c *Config) *string { return &c.OAuthIssuer })},
	{name: "admin-listen", env: "SSF_ADMIN_LISTEN", def: "127.0.0.1:9090", usage: "address of /metrics, /healthz, /readyz, the admin API and the dashboard", apply: str(func(c *Config) *string { return &c.AdminListen })},
	{name: "allow-private-endpoints", env: "SSF_ALLOW_PRIVATE_ENDPOINTS", def: "false", isBool: true, usage: "allow push endpoints on loopback, private and link-local addresses (and http)", apply: boolean(func(c *Config) *bool { return &c.AllowPrivateEndpoints })},
	{name: "poll-interval", env: "SSF_POLL_INTERVAL", def: "5s", usage: "how often authentik's event API is read", apply: dur(func(c *Config) *time.Duration { return &c.PollInterval })},
	{name: "directory-recheck", env: "SSF_DIRECTORY_RECHECK", def: "5m", usage: "how often a pass re-reads authentik's users for background changes such as an LDAP sync deactivating one (0: never)", apply: dur(func(c *Config) *time.Duration { return &c.DirectoryRecheck })},
	{name: "backfill", env: "SSF_BACKFILL", def: "0s", usage: "on a fresh data dir, how far back the event-API poller starts (0: now)", apply: dur(func(c *Config) *time.Duration { return &c.Backfill })},
	{name: "trusted-proxies", env: "SSF_TRUSTED_PROXIES", usage: "comma-separated CIDRs whose X-Forwarded-* headers are believed", apply: func(c *Config, v string) error {
		c.TrustedProxies = nil
		var errs []error
		for _, s := range splitList(v) {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				if a, aerr := netip.ParseAddr(s); aerr == nil {
					p = netip.PrefixFrom(a, a.BitLen())
				} else {
					errs = append(errs, fmt.Errorf("%s is not a CIDR (example: 10.0.0.0/8)", shown(s)))
					continue
				}
			}
			c.TrustedProxies = append(c.TrustedProxies, p.Masked())
		}
		return errors.Join(errs...)
	}},
	{name: "tls-cert", env: "SSF_TLS_CERT", usage: "PEM certificate file: serve TLS and HTTP/2 on --listen", apply: str(func(c *Config) *string { return &c.TLSCert })},
	{name: "tls-key", env: "SSF_TLS_KEY", usage: "PEM key file for --tls-cert", apply: str(func(c *Config) *string { return &c.TLSKey })},
	{name: "log-format", env: "SSF_LOG_FORMAT", def: "json", usage: "json or text", apply: str(func(c *Config) *string { return &c.LogFormat })},
	{name: "log-level", env: "SSF_LOG_LEVEL", def: "info", usage: "debug, info, warn or error", apply: str(func(c *Config) *string { return &c.LogLevel })},
	{name: "authentik-secret-key", env: "SSF_AUTHENTIK_SECRET_KEY", secret: true, usage: "authentik's SECRET_KEY: with --authentik-token, verify session cookies locally and never replay them to authentik", apply: str(func(c *Config) *string { return &c.AuthentikSecretKey })},
	{name: "admin-token", env: "SSF_ADMIN_TOKEN", secret: true, usage: "bearer token for the admin API and dashboard (without it they answer only on loopback)", apply: str(func(c *Config) *string { return &c.AdminToken })},
	{name: "admin-token-file", env: "SSF_ADMIN_TOKEN_FILE", usage: "file holding the admin token instead of --admin-token (re-read on reload: rotate the token without a restart)", apply: str(func(c *Config) *string { return &c.AdminTokenFile })},
	{name: "admin-hosts", env: "SSF_ADMIN_HOSTS", usage: "comma-separated extra Host names the admin API answers to (e.g. an Ingress name); IP literals, localhost and Kubernetes Service names are always accepted", apply: func(c *Config, v string) error {
		c.AdminHosts = splitList(v)
		return nil
	}},
	{name: "default-subjects", env: "SSF_DEFAULT_SUBJECTS", def: "ALL", usage: "ALL or NONE: which subjects a new stream includes", apply: func(c *Config, v string) error {
		c.DefaultSubjects = strings.ToUpper(strings.TrimSpace(v))
		return nil
	}},
	{name: "retention", env: "SSF_RETENTION", def: "720h", usage: "how long an undelivered SET is kept", apply: dur(func(c *Config) *time.Duration { return &c.Retention })},
	{name: "delivered-retention", env: "SSF_DELIVERED_RETENTION", def: "72h", usage: "how long records of delivered SETs are kept", apply: dur(func(c *Config) *time.Duration { return &c.DeliveredRetention })},
	{name: "push-timeout", env: "SSF_PUSH_TIMEOUT", def: "10s", usage: "total time for one push attempt (connect: 5s)", apply: dur(func(c *Config) *time.Duration { return &c.PushTimeout })},
	{name: "max-backoff", env: "SSF_MAX_BACKOFF", def: "10m", usage: "cap on the wait between attempts on a failing stream", apply: dur(func(c *Config) *time.Duration { return &c.MaxBackoff })},
	{name: "pause-after", env: "SSF_PAUSE_AFTER", def: "72h", usage: "a stream failing this long is paused by the transmitter", apply: dur(func(c *Config) *time.Duration { return &c.PauseAfter })},
	{name: "lease-ttl", env: "SSF_LEASE_TTL", def: "0s", usage: "with --database-url, how long a replica's dispatch and event-API poller leases last unrenewed: a dead replica's work moves to another within it (0: 15s); holders renew it every third of that, also during a long push attempt or poll wait", apply: dur(func(c *Config) *time.Duration { return &c.LeaseTTL })},
	{name: "key-overlap", env: "SSF_KEY_OVERLAP", def: "168h", usage: "how long a retired signing key stays in the JWKS", apply: dur(func(c *Config) *time.Duration { return &c.KeyOverlap })},
	{name: "min-verification-interval", env: "SSF_MIN_VERIFICATION_INTERVAL", def: "5s", usage: "least time between a receiver's verification requests on one stream (advertised as min_verification_interval; enforced with 1s of slack; 1s to 2m)", apply: dur(func(c *Config) *time.Duration { return &c.MinVerification })},
	{name: "max-body", env: "SSF_MAX_BODY", def: "64KiB", usage: "largest SSF management or poll request body (e.g. 64KiB, 1MiB)", apply: func(c *Config, v string) error {
		n, err := parseSize(v)
		if err != nil {
			return err
		}
		c.MaxBody = n
		return nil
	}},
	{name: "trace-url", env: "SSF_TRACE_URL", usage: "link template of your tracing UI with {trace_id}, e.g. https://tempo.example/trace/{trace_id} (dashboard links)", apply: str(func(c *Config) *string { return &c.TraceURL })},
	{name: "max-connections", env: "SSF_MAX_CONNECTIONS", def: "10000", usage: "most client connections open at once on --listen; more are closed at once", apply: func(c *Config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < 1 {
			return fmt.Errorf("%s is not a positive number", shown(v))
		}
		c.MaxConnections = n
		return nil
	}},
	{name: "trace-propagation", env: "SSF_TRACE_PROPAGATION", def: "true", isBool: true, usage: "send W3C traceparent with each push, and to authentik when the sidecar starts the trace (when OTEL_* turns tracing on)", apply: boolean(func(c *Config) *bool { return &c.TracePropagation })},
	{name: "trace-all-routes", env: "SSF_TRACE_ALL_ROUTES", def: "false", isBool: true, usage: "trace every proxied request, not only tapped and SSF routes (when OTEL_* turns tracing on)", apply: boolean(func(c *Config) *bool { return &c.TraceAllRoutes })},
	{name: "config", env: "SSF_CONFIG", usage: "YAML file holding any of these keys", apply: str(func(c *Config) *string { return &c.ConfigFile })},
	{name: "database-url", env: "SSF_DATABASE_URL", secret: true, usage: "PostgreSQL URL or key=value DSN: keep the state there, shared by several replicas (default: bbolt in --data-dir)", apply: str(func(c *Config) *string { return &c.DatabaseURL })},
	{name: "database-schema", env: "SSF_DATABASE_SCHEMA", def: "ssf_sidecar", usage: "schema the sidecar owns in that database", apply: str(func(c *Config) *string { return &c.DatabaseSchema })},
	{name: "encryption-key-file", env: "SSF_ENCRYPTION_KEY_FILE", usage: "file holding the key that seals secrets kept in the database: at least 32 random bytes as hex or base64 (required with --database-url)", apply: str(func(c *Config) *string { return &c.EncryptionKeyFile })},
	{name: "encryption-key", env: "SSF_ENCRYPTION_KEY", secret: true, envOnly: true, usage: "the --encryption-key-file text itself, from the environment only", apply: func(c *Config, v string) error { c.EncryptionKey = v; return nil }},
	{name: "previous-encryption-key-file", env: "SSF_PREVIOUS_ENCRYPTION_KEY_FILE", usage: "file holding the encryption key being rotated out: secrets sealed under it are still opened, new ones are sealed under --encryption-key-file (see ssf-sidecar rekey)", apply: str(func(c *Config) *string { return &c.PreviousEncryptionKeyFile })},
	{name: "previous-encryption-key", env: "SSF_PREVIOUS_ENCRYPTION_KEY", secret: true, envOnly: true, usage: "the --previous-encryption-key-file text itself, from the environment only", apply: func(c *Config, v string) error { c.PreviousEncryptionKey = v; return nil }},
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// parseSize reads a byte size such as 65536, 64KiB, 64KB, 1MiB or 2M.
func parseSize(v string) (int64, error) {
	s := strings.TrimSpace(v)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(s), strings.ToUpper(u.suffix)) {
			s = strings.TrimSpace(s[:len(s)-len(u.suffix)])
			mult = u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || n > (1<<40)/mult {
		return 0, fmt.Errorf("%s is not a size (examples: 65536, 64KiB, 1MiB)", shown(v))
	}
	return n * mult, nil
}

// configSource records where each raw value came from, for messages.
type rawValue struct {
	value  string
	source string // "flag", "environment SSF_X", "config file", "default"
}

// bindFlags registers every option on fs and returns the raw values the
// flags set. Boolean options may be written bare (--allow-private-endpoints)
// or with a value (--allow-private-endpoints=false), as with any Go tool.
func bindFlags(fs *flag.FlagSet) map[string]string {
	set := map[string]string{}
	for _, o := range options {
		if o.envOnly {
			continue
		}
		usage := o.usage + " (env " + o.env
		if o.def != "" && (!o.isBool || o.def == "true") {
			usage += ", default " + o.def
		}
		usage += ")"
		fs.Var(&rawFlag{name: o.name, set: set, isBool: o.isBool, kind: optionKind(o)}, o.name, usage)
	}
	return set
}

// rawFlag records a flag's raw value for resolve; booleans are checked
// when given, so a wrong value fails the parse like any other flag error.
type rawFlag struct {
	name   string
	set    map[string]string
	isBool bool
	kind   string
}

func (f *rawFlag) String() string { return "" }

func (f *rawFlag) Set(v string) error {
	if f.isBool {
		if _, err := strconv.ParseBool(strings.TrimSpace(v)); err != nil {
			return fmt.Errorf("%s is not true or false", shown(v))
		}
	}
	f.set[f.name] = v
	return nil
}

// IsBoolFlag lets the flag package accept a bare boolean flag.
func (f *rawFlag) IsBoolFlag() bool { return f.isBool }

// optionKind names the kind of value an option takes, for --help.
func optionKind(o option) string {
	switch {
	case o.isBool:
		return ""
	case strings.HasSuffix(o.def, "s") || strings.HasSuffix(o.def, "m") || strings.HasSuffix(o.def, "h"):
		if _, err := time.ParseDuration(o.def); err == nil {
			return "duration"
		}
	}
	switch o.name {
	case "max-body":
		return "size"
	case "signing-key":
		return "files"
	case "trusted-proxies":
		return "cidrs"
	case "config", "receivers", "tls-cert", "tls-key", "data-dir":
		return "path"
	case "listen", "admin-listen":
		return "host:port"
	case "upstream", "issuer", "oauth-issuer", "trace-url":
		return "url"
	}
	return "string"
}

// origin says where a value came from, for error messages.
func (rv rawValue) origin() string {
	switch {
	case strings.HasPrefix(rv.source, "flag "):
		return "given on the command line"
	case strings.HasPrefix(rv.source, "environment "):
		return "from " + strings.TrimPrefix(rv.source, "environment ")
	case strings.HasPrefix(rv.source, "config file"):
		return "from the config file"
	}
	return rv.source
}

// resolve builds a Config from flags, environment, config file and defaults,
// and reports every problem it finds at once.
func resolve(fromFlags map[string]string, getenv func(string) string) (Config, map[string]rawValue, error) {
	var errs []error
	raw := map[string]rawValue{}
	byName := map[string]option{}
	for _, o := range options {
		byName[o.name] = o
	}
	lookup := func(o option) (rawValue, bool) {
		if v, ok := fromFlags[o.name]; ok {
			return rawValue{v, "flag --" + o.name}, true
		}
		if v := getenv(o.env); v != "" {
			return rawValue{v, "environment " + o.env}, true
		}
		return rawValue{}, false
	}
	// The config file is located first, by flag or environment only.
	var fileValues map[string]string
	if rv, ok := lookup(byName["config"]); ok && strings.TrimSpace(rv.value) != "" {
		var err error
		fileValues, err = readConfigFile(strings.TrimSpace(rv.value), byName)
		if err != nil {
			errs = append(errs, err)
		}
	}
	var c Config
	badValue := map[string]bool{}
	for _, o := range options {
		rv, ok := lookup(o)
		if !ok {
			if v, inFile := fileValues[o.name]; inFile {
				rv, ok = rawValue{v, "config file key " + o.name}, true
			}
		}
		if !ok {
			rv = rawValue{o.def, "default"}
		}
		raw[o.name] = rv
		if rv.value == "" && o.def == "" {
			continue
		}
		if err := o.apply(&c, rv.value); err != nil {
			errs = append(errs, fmt.Errorf("--%s %s: %w", o.name, rv.origin(), err))
			badValue[o.name] = true
		}
	}
	if c.AdminTokenFile != "" {
		if c.AdminToken != "" {
			errs = append(errs, errors.New("--admin-token and --admin-token-file both give the admin token: use one"))
		} else if tok, err := readTokenFile(c.AdminTokenFile); err != nil {
			errs = append(errs, fmt.Errorf("--admin-token-file: %w", err))
		} else {
			c.AdminToken = tok
		}
	}
	c.badValue, c.flagValues = badValue, fromFlags
	return c, raw, errors.Join(errs...)
}

// listOptions may be given as a YAML list in a config file.
var listOptions = map[string]bool{"signing-key": true, "trusted-proxies": true}

// readConfigFile reads a YAML mapping whose keys are flag names. No value
// from the file is ever quoted in an error: a receivers list or a token
// pasted into the wrong file must not end up in a log.
func readConfigFile(path string, known map[string]option) (map[string]string, error) {
	if secretLike(path) {
		return nil, errors.New("--config takes the path of a YAML file; the value given does not look like one (it is not shown)")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("--config: cannot read %s: %w", path, err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("--config: %s is not a YAML mapping of option names to values%s", path, yamlErrorLine(err))
	}
	out := map[string]string{}
	var errs []error
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	names := make([]string, 0, len(known))
	for n := range known {
		if n != "config" {
			names = append(names, n)
		}
	}
	for _, k := range keys {
		v := m[k]
		if _, ok := known[k]; !ok || k == "config" {
			hint := "keys are the flag names, e.g. listen, upstream, issuer"
			if s := closest(k, names); s != "" {
				hint = "did you mean " + s + "?"
			}
			errs = append(errs, fmt.Errorf("--config: %s: unknown key %s (%s)", path, ssf.ShownKey(k), hint))
			continue
		}
		switch tv := v.(type) {
		case []any:
			if k == "receivers" {
				errs = append(errs, fmt.Errorf("--config: %s: receivers must be the path of a receivers file, not a list: put the list in its own file and give its path here (or as --receivers / SSF_RECEIVERS)", path))
				continue
			}
			if !listOptions[k] {
				errs = append(errs, fmt.Errorf("--config: %s: %s takes a single value, not a list", path, k))
				continue
			}
			parts := make([]string, 0, len(tv))
			scalar := true
			for _, p := range tv {
				if !isScalar(p) {
					scalar = false
					break
				}
				parts = append(parts, fmt.Sprint(p))
			}
			if !scalar {
				errs = append(errs, fmt.Errorf("--config: %s: %s must be a list of plain values", path, k))
				continue
			}
			out[k] = strings.Join(parts, ",")
		case nil:
			out[k] = ""
		default:
			if !isScalar(tv) {
				what := "a single value"
				if k == "receivers" {
					what = "the path of a receivers file"
				}
				errs = append(errs, fmt.Errorf("--config: %s: %s must be %s, not a mapping", path, k, what))
				continue
			}
			out[k] = fmt.Sprint(tv)
		}
	}
	return out, errors.Join(errs...)
}

func isScalar(v any) bool {
	switch v.(type) {
	case map[string]any, map[any]any, []any:
		return false
	}
	return true
}

// yamlErrorLine keeps only the position of a YAML error: the parser's
// messages may quote the offending value, which may be a secret.
func yamlErrorLine(err error) string {
	if m := yamlLineRE.FindString(err.Error()); m != "" {
		return " (at " + m + ")"
	}
	return ""
}

var yamlLineRE = regexp.MustCompile(`line \d+`)

// Validate checks what `serve` needs beyond well-formed values, reporting
// every problem at once. Checks that need other packages (key files,
// receivers file) are done by checkDeep.
// minLeaseTTL is the shortest --lease-ttl accepted.
const minLeaseTTL = time.Second

func (c Config) Validate() error {
	var errs []error
	if c.Upstream == "" {
		errs = append(errs, errors.New("--upstream is required: authentik's base URL, e.g. http://authentik-server:9000 (env SSF_UPSTREAM)"))
	} else if u, err := url.Parse(c.Upstream); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, fmt.Errorf("--upstream %s is not an absolute http(s) URL", shownURL(c.Upstream)))
	}
	if err := checkIssuer(c.Issuer); err != nil {
		errs = append(errs, err)
	}
	if c.OAuthIssuer != "" {
		if u, err := url.Parse(c.OAuthIssuer); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, fmt.Errorf("--oauth-issuer %s is not an absolute http(s) URL", shownURL(c.OAuthIssuer)))
		}
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("--data-dir must not be empty"))
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key go together: give both or neither"))
	}
	for _, f := range []struct{ flag, path string }{{"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}} {
		if f.path != "" && secretLike(f.path) {
			errs = append(errs, fmt.Errorf("--%s takes the path of a PEM file, not its contents (the value given is not shown)", f.flag))
			continue
		}
		if f.path != "" {
			if _, err := os.Stat(f.path); err != nil {
				errs = append(errs, fmt.Errorf("--%s: %w", f.flag, err))
			}
		}
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("--log-format %s: use json or text", shown(c.LogFormat)))
	}
	switch strings.ToLower(c.LogLevel) {
	case "debug", "info", "warn", "warning", "error":
	default:
		errs = append(errs, fmt.Errorf("--log-level %s: use debug, info, warn or error", shown(c.LogLevel)))
	}
	switch c.DefaultSubjects {
	case "ALL", "NONE":
	default:
		errs = append(errs, fmt.Errorf("--default-subjects %s: use ALL or NONE", shown(c.DefaultSubjects)))
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"poll-interval", c.PollInterval}, {"retention", c.Retention}, {"delivered-retention", c.DeliveredRetention}, {"push-timeout", c.PushTimeout}, {"max-backoff", c.MaxBackoff}, {"pause-after", c.PauseAfter}} {
		if d.v <= 0 && !c.badValue[d.flag] {
			errs = append(errs, fmt.Errorf("--%s must be greater than zero", d.flag))
		}
	}
	if c.LeaseTTL != 0 && c.LeaseTTL < minLeaseTTL {
		// Holders renew every third of the lifetime; below a second a busy
		// database round trip could outlast it.
		errs = append(errs, fmt.Errorf("--lease-ttl %s must be 0 (the default, 15s) or at least %s", c.LeaseTTL, minLeaseTTL))
	}
	if c.DatabaseURL != "" {
		if _, err := c.encryptionKey(); err != nil {
			errs = append(errs, err)
		}
		if _, err := c.previousEncryptionKey(); err != nil {
			errs = append(errs, err)
		}
	} else if c.EncryptionKeyFile != "" || c.EncryptionKey != "" || c.PreviousEncryptionKeyFile != "" || c.PreviousEncryptionKey != "" {
		errs = append(errs, errors.New("--encryption-key-file / SSF_ENCRYPTION_KEY (and the previous key) are only used with --database-url"))
	}
	if c.MinVerification != 0 && (c.MinVerification < time.Second || c.MinVerification > 2*time.Minute) {
		errs = append(errs, fmt.Errorf("--min-verification-interval %s: use 1s to 2m (the OpenID conformance suite waits at most 2m)", c.MinVerification))
	}
	for _, l := range []struct{ flag, v string }{{"listen", c.Listen}, {"admin-listen", c.AdminListen}} {
		if err := checkListen(l.flag, l.v); err != nil {
			errs = append(errs, err)
		}
	}
	if c.Listen == c.AdminListen && c.Listen != "" {
		errs = append(errs, fmt.Errorf("--listen and --admin-listen are both %s: the admin API must have its own address", shown(c.Listen)))
	}
	return errors.Join(errs...)
}

func checkIssuer(issuer string) error {
	u, err := url.Parse(issuer)
	if err != nil || !u.IsAbs() || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return fmt.Errorf("--issuer %s is not an absolute URL (example: https://sso.example.com/ssf)", shownURL(issuer))
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("--issuer %s must not have a query or fragment", shownURL(issuer))
	}
	if strings.HasSuffix(u.Path, "/") {
		return fmt.Errorf("--issuer %s ends with a slash: receivers compare iss exactly, so give it without one (%s)", shownURL(issuer), shownURL(strings.TrimRight(issuer, "/")))
	}
	return nil
}

// checkListen refuses a listen address serve could not bind as meant: empty
// (which would be a random port on every interface) or without a port.
func checkListen(flag, v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("--%s is empty: give host:port (for example 127.0.0.1:9090), or leave the key out for the default", flag)
	}
	host, port, err := net.SplitHostPort(v)
	if err != nil {
		hint := ""
		if _, perr := strconv.Atoi(v); perr == nil {
			hint = fmt.Sprintf(" (did you mean :%s?)", v)
		}
		return fmt.Errorf("--%s %s is not host:port%s", flag, shown(v), hint)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		if _, err := net.LookupPort("tcp", port); err != nil {
			return fmt.Errorf("--%s %s: %s is not a port", flag, shown(v), shown(port))
		}
	}
	_ = host
	return nil
}

// configWarning is one thing serve warns about at start. byComponent marks
// those the tap or the transmitter log themselves, so serve does not log
// them twice.
type configWarning struct {
	msg         string
	byComponent bool
}

// Warnings are what serve would warn about at start: config check and
// serve report the same list.
func (c Config) Warnings(raw map[string]rawValue, receivers []ssf.Receiver) []configWarning {
	var w []configWarning
	add := func(own bool, format string, a ...any) {
		w = append(w, configWarning{msg: fmt.Sprintf(format, a...), byComponent: own})
	}
	if rv, ok := raw["issuer"]; ok && rv.source == "default" {
		add(false, "--issuer is not set: SETs are signed with the default iss %s, which receivers outside this machine will reject; set it to the public URL receivers use (env SSF_ISSUER)", c.Issuer)
	}
	if c.AuthentikToken == "" {
		add(true, "no --authentik-token: the event-API poller is off, so actions that never cross the proxy (flows run by outposts, LDAP sync, background tasks) are not seen")
	}
	if len(receivers) == 0 {
		add(false, "no receivers configured (--receivers): nobody can create streams yet")
	}
	for _, r := range receivers {
		if len(r.OAuthClientIDs) > 0 && c.OAuthIssuer == "" {
			add(true, "receiver %q lists oauth_client_ids but --oauth-issuer is not set: its OAuth tokens are refused", r.Name)
		}
	}
	for _, m := range ssf.ReceiverWarnings(receivers) {
		add(false, "%s", m)
	}
	return w
}

// shown quotes a configuration value for an error message, unless it may be
// a secret put in the wrong place: a long value without the punctuation of
// an address, a path or a URL is described, not quoted.
func shown(v string) string {
	if len(v) <= 12 || (strings.ContainsAny(v, ":/.") && !strings.ContainsAny(v, "\n")) {
		if len(v) <= 200 {
			return strconv.Quote(v)
		}
	}
	return fmt.Sprintf("(a value of %d characters, not shown)", len(v))
}

// secretLike reports whether a value given as a path looks like a secret
// pasted in its place; such a value is never put in a message.
func secretLike(v string) bool {
	return strings.Contains(v, "-----BEGIN") || strings.HasPrefix(shown(v), "(a value")
}

// shownURL quotes a URL for an error message without its password.
func shownURL(v string) string {
	if u, err := url.Parse(v); err == nil && u.User != nil {
		return strconv.Quote(u.Redacted())
	}
	return shown(v)
}

// withoutPassword is v with the password of a URL's user information
// masked, for output and logs.
var withoutPassword = sidecar.WithoutPassword
