package sidecar

import (
	"net/netip"
	"net/url"
	"time"
)

// Config is the assembled sidecar's configuration. The command resolves it
// from flags, environment and the config file; Build takes it as it is
// (the checks are the command's).
type Config struct {
	Listen                string
	Upstream              string
	Issuer                string
	DataDir               string
	SigningKeys           []string
	AuthentikToken        string
	Receivers             string
	OAuthIssuer           string
	AdminListen           string
	AllowPrivateEndpoints bool
	PollInterval          time.Duration
	Backfill              time.Duration
	DirectoryRecheck      time.Duration
	TrustedProxies        []netip.Prefix
	TLSCert, TLSKey       string
	LogFormat, LogLevel   string
	AuthentikSecretKey    string
	AdminToken            string
	AdminTokenFile        string
	AdminHosts            []string
	DefaultSubjects       string
	Retention             time.Duration
	DeliveredRetention    time.Duration
	PushTimeout           time.Duration
	MaxBackoff            time.Duration
	PauseAfter            time.Duration
	LeaseTTL              time.Duration
	KeyOverlap            time.Duration
	MinVerification       time.Duration
	MaxBody               int64
	TraceURL              string
	TraceAllRoutes        bool
	MaxConnections        int
	TracePropagation      bool
	ConfigFile            string
	// DatabaseURL selects PostgreSQL (several replicas) instead of bbolt.
	DatabaseURL       string
	DatabaseSchema    string
	EncryptionKeyFile string
	// EncryptionKey is the key's text from SSF_ENCRYPTION_KEY.
	EncryptionKey string
	// PreviousEncryptionKeyFile and PreviousEncryptionKey give the key
	// being rotated out (see rekey).
	PreviousEncryptionKeyFile string
	PreviousEncryptionKey     string
}

// WithoutPassword is v with the password of a URL's user information
// masked, for output and logs; any other value is returned as it is.
func WithoutPassword(v string) string {
	if u, err := url.Parse(v); err == nil && u.User != nil {
		if _, has := u.User.Password(); has {
			return u.Redacted()
		}
	}
	return v
}
