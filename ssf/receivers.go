package ssf

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Scopes a receiver token may carry (CAEP interoperability profile §2.7.2).
const (
	ScopeManage = "ssf.manage"
	ScopeRead   = "ssf.read"
)

// Subject formats a receiver may ask for.
const (
	SubjectFormatEmail   = "email"
	SubjectFormatIssSub  = "iss_sub"
	SubjectFormatComplex = "complex"
)

// Receiver profiles.
const (
	ProfileSSF    = "ssf"    // SSF 1.0 final
	ProfileLegacy = "legacy" // older RISC/SSE shape (RISC push URI, subject inside the event)
)

// Token is one static bearer token of a receiver with the scopes it grants.
// Value is a secret: it is never logged or returned.
type Token struct {
	Value  string   `yaml:"value" json:"value"`
	Scopes []string `yaml:"scopes" json:"scopes"`
}

// UnmarshalYAML accepts either a bare string (scopes ssf.manage and ssf.read)
// or a {value, scopes} mapping.
func (t *Token) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		t.Value = n.Value
		t.Scopes = []string{ScopeManage, ScopeRead}
		return nil
	}
	var raw struct {
		Value  string   `yaml:"value"`
		Scopes []string `yaml:"scopes"`
	}
	if err := n.Decode(&raw); err != nil {
		return err
	}
	t.Value, t.Scopes = raw.Value, raw.Scopes
	if t.Scopes == nil {
		t.Scopes = []string{ScopeManage, ScopeRead}
	}
	return nil
}

// String hides the token value.
func (t Token) String() string { return fmt.Sprintf("token(scopes=%v)", t.Scopes) }

// Receiver is one party allowed to manage streams on the transmitter.
type Receiver struct {
	Name           string
	Tokens         []Token
	OAuthClientIDs []string
	// RequireScopes makes OAuth tokens carry ssf.manage / ssf.read (default
	// true). Static tokens always carry their configured scopes.
	RequireScopes bool
	// Audience is the aud of the receiver's streams (default: Name).
	Audience string
	// SubjectFormat is email (default), iss_sub or complex.
	SubjectFormat string
	// SubjectIss is the iss of iss_sub subjects.
	SubjectIss string
	// Profile is ssf (default) or legacy.
	Profile string
	// MaxStreams caps the receiver's streams (0: the transmitter's
	// Config.MaxStreamsPerReceiver). 1 gives one stream per receiver: a
	// second create answers 409 naming the stream that exists.
	MaxStreams int
}

type receiverFile struct {
	Receivers []receiverEntry `yaml:"receivers"`
}

type receiverEntry struct {
	Name           string   `yaml:"name"`
	Tokens         []Token  `yaml:"tokens"`
	OAuthClientIDs []string `yaml:"oauth_client_ids"`
	RequireScopes  *bool    `yaml:"require_scopes"`
	Audience       string   `yaml:"audience"`
	SubjectFormat  string   `yaml:"subject_format"`
	SubjectIss     string   `yaml:"subject_iss"`
	Profile        string   `yaml:"profile"`
	MaxStreams     *int     `yaml:"max_streams"`
}

// LoadReceivers reads and parses a receivers file (see ParseReceivers).
func LoadReceivers(path string) ([]Receiver, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("receivers file: %w", err)
	}
	rs, err := ParseReceivers(data)
	if err != nil {
		return nil, fmt.Errorf("receivers file %s: %w", path, err)
	}
	return rs, nil
}

// ParseReceivers parses a receivers file (YAML, or JSON which YAML accepts)
// and validates it, reporting every problem at once. Token values never
// appear in the errors.
func ParseReceivers(data []byte) ([]Receiver, error) {
	var f receiverFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("no receivers: the file is empty")
		}
		return nil, fmt.Errorf("cannot parse receivers: %s", describeYAMLError(err))
	}
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(f.Receivers) == 0 {
		add("no receivers: the file has no 'receivers' entries")
	}
	names := map[string]bool{}
	tokens := map[string]string{}
	clients := map[string]string{}
	out := make([]Receiver, 0, len(f.Receivers))
	for i, e := range f.Receivers {
		label := fmt.Sprintf("receiver #%d", i+1)
		if e.Name == "" {
			add("%s: missing name", label)
		} else {
			label = fmt.Sprintf("receiver %q", e.Name)
			if names[e.Name] {
				add("%s: duplicate name", label)
			}
			names[e.Name] = true
		}
		if len(e.Tokens) == 0 && len(e.OAuthClientIDs) == 0 {
			add("%s: has neither tokens nor oauth_client_ids, so it could never authenticate", label)
		}
		for j, t := range e.Tokens {
			switch {
			case t.Value == "":
				add("%s: token #%d is empty", label, j+1)
			case strings.ContainsAny(t.Value, " \t\r\n"):
				add("%s: token #%d contains whitespace", label, j+1)
			default:
				if other, dup := tokens[t.Value]; dup {
					add("%s: token #%d is the same as a token of %s (tokens must be unique)", label, j+1, other)
				} else {
					tokens[t.Value] = label
				}
			}
			if len(t.Scopes) == 0 {
				add("%s: token #%d has no scopes", label, j+1)
			}
			for _, s := range t.Scopes {
				if !strings.HasPrefix(s, "ssf.") {
					add("%s: token #%d has unknown scope %s (scopes start with \"ssf.\")", label, j+1, shownWord(s))
				}
			}
		}
		for _, c := range e.OAuthClientIDs {
			if c == "" {
				add("%s: empty oauth_client_ids entry", label)
				continue
			}
			if other, dup := clients[c]; dup {
				add("%s: oauth client id %q is also listed by %s", label, c, other)
			}
			clients[c] = label
		}
		r := Receiver{
			Name: e.Name, Tokens: e.Tokens, OAuthClientIDs: e.OAuthClientIDs,
			RequireScopes: e.RequireScopes == nil || *e.RequireScopes,
			Audience:      e.Audience, SubjectFormat: e.SubjectFormat, SubjectIss: e.SubjectIss,
			Profile: e.Profile,
		}
		if r.Audience == "" {
			r.Audience = r.Name
		}
		if r.SubjectFormat == "" {
			r.SubjectFormat = SubjectFormatEmail
		}
		if r.Profile == "" {
			r.Profile = ProfileSSF
		}
		switch r.SubjectFormat {
		case SubjectFormatEmail, SubjectFormatComplex:
		case SubjectFormatIssSub:
			if r.SubjectIss == "" {
				add("%s: subject_format iss_sub needs subject_iss", label)
			}
		default:
			add("%s: unknown subject_format %s (want email, iss_sub or complex)", label, shownWord(r.SubjectFormat))
		}
		if r.SubjectIss != "" {
			if u, err := url.Parse(r.SubjectIss); err != nil || !u.IsAbs() {
				add("%s: subject_iss %q is not an absolute URL", label, r.SubjectIss)
			}
		}
		if e.MaxStreams != nil {
			if *e.MaxStreams < 1 {
				add("%s: max_streams %d must be at least 1 (leave it out for the transmitter's default)", label, *e.MaxStreams)
			}
			r.MaxStreams = *e.MaxStreams
		}
		switch r.Profile {
		case ProfileSSF, ProfileLegacy:
		default:
			add("%s: unknown profile %s (want ssf or legacy)", label, shownWord(r.Profile))
		}
		out = append(out, r)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return out, nil
}

// MinTokenLength is the shortest static token the checks accept without a
// warning.
const MinTokenLength = 24

// knownScopes are the scopes some route checks.
var knownScopes = []string{ScopeManage, ScopeRead, "ssf.manage.poll"}

// placeholderWords mark a token copied from an example and never replaced.
var placeholderWords = []string{"replace-with", "replace_with", "changeme", "change-me", "example", "placeholder", "your-token", "<token>"}

// ReceiverWarnings lists what is valid but unsafe in receivers: tokens that
// are short or still an example's placeholder. Token values never appear.
func ReceiverWarnings(rs []Receiver) []string {
	var out []string
	for _, r := range rs {
		for j, t := range r.Tokens {
			low := strings.ToLower(t.Value)
			for _, w := range placeholderWords {
				if strings.Contains(low, w) {
					out = append(out, fmt.Sprintf("receiver %q: token #%d looks like an example's placeholder: replace it with a long random value (e.g. openssl rand -hex 32)", r.Name, j+1))
					break
				}
			}
			for _, sc := range t.Scopes {
				if !slices.Contains(knownScopes, sc) {
					hint := "it grants nothing"
					if g := Suggest(sc, knownScopes); g != "" {
						hint = "did you mean " + g + "?"
					}
					out = append(out, fmt.Sprintf("receiver %q: token #%d has the unknown scope %q: %s", r.Name, j+1, sc, hint))
				}
			}
			if len(t.Value) < MinTokenLength {
				out = append(out, fmt.Sprintf("receiver %q: token #%d is only %d characters: use at least %d random characters", r.Name, j+1, len(t.Value), MinTokenLength))
			}
		}
	}
	return out
}

// describeYAMLError rewrites a YAML decoding error without the values it
// may quote (a token in the wrong place must not reach a log), and with the
// receivers file's key names instead of Go type names.
func describeYAMLError(err error) string {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		if m := yamlLine.FindString(err.Error()); m != "" {
			return "not valid YAML (at " + m + ")"
		}
		return "not valid YAML"
	}
	msgs := make([]string, 0, len(te.Errors))
	for _, e := range te.Errors {
		line := yamlLine.FindString(e)
		if m := yamlUnknownField.FindStringSubmatch(e); m != nil {
			hint := ""
			if s := closestKey(m[1]); s != "" {
				hint = " (did you mean " + s + "?)"
			}
			msgs = append(msgs, fmt.Sprintf("%s: unknown key %s%s", line, ShownKey(m[1]), hint))
			continue
		}
		msgs = append(msgs, fmt.Sprintf("%s: a value has the wrong type (a list, mapping or text where another is expected)", line))
	}
	return strings.Join(msgs, "; ")
}

// ShownKey quotes a configuration key for an error message when it looks
// like a key name (letters, '_', '-' and '.', at most 40); anything else
// may be a token pasted as a key and is described by its length instead.
func ShownKey(k string) string {
	if len(k) > 0 && len(k) <= 40 && strings.Trim(k, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-.") == "" {
		return strconv.Quote(k)
	}
	return fmt.Sprintf("(a key of %d characters, not shown)", len(k))
}

// shownWord quotes a value that reads as a word (a misspelt scope, format
// or profile) and otherwise gives only its length: a token written into the
// wrong field must not come back in the error.
func shownWord(v string) string {
	if len(v) <= 40 && strings.Trim(v, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-.") == "" {
		return strconv.Quote(v)
	}
	return fmt.Sprintf("(a value of %d characters, not shown)", len(v))
}

var (
	yamlLine         = regexp.MustCompile(`line \d+`)
	yamlUnknownField = regexp.MustCompile(`field (\S+) not found in type`)
)

// receiverKeys are the keys a receivers file knows.
var receiverKeys = []string{"receivers", "name", "tokens", "value", "scopes", "oauth_client_ids", "require_scopes", "audience", "subject_format", "subject_iss", "profile", "max_streams"}

// closestKey returns the receivers-file key k is a typo of, or "".
func closestKey(k string) string {
	return Suggest(strings.ReplaceAll(k, "-", "_"), receiverKeys)
}

// Suggest returns the candidate s is most likely a typo of (a small edit
// distance away, or equal with '_' and '-' swapped), or "" when none is
// close. The command line uses it for flags and config keys too.
func Suggest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	low := strings.ToLower(s)
	for _, c := range candidates {
		if c == low || c == strings.ReplaceAll(low, "_", "-") || c == strings.ReplaceAll(low, "-", "_") {
			return c
		}
		if d := levenshtein(low, c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= max(2, len(s)/4) {
		return best
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// hasScope reports whether scopes holds want.
func hasScope(scopes []string, want string) bool {
	for _, s := range scopes {
		if s == want {
			return true
		}
	}
	return false
}
