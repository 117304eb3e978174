package ssf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"net/netip"
	"net/url"
	"regexp"
	"sort"
	"strings"
)

// Subject is a subject identifier (RFC 9493, SSF §3): a simple format with
// string members, an aliases list, or a complex subject made of simple ones.
type Subject struct {
	Format string
	// Fields holds the string members of a simple subject (email, iss,
	// sub, id, phone_number, uri, url, jti, issuer, assertion_id).
	Fields map[string]string
	// IPs holds the members of an ip-addresses subject.
	IPs []string
	// Identifiers holds the members of an aliases subject.
	Identifiers []Subject
	// Members holds the members of a complex subject (user, session, …).
	Members map[string]Subject
}

// simpleFormats lists every simple format understood and its required
// members (RFC 9493 §3.2, SSF §3.5). No other member is allowed.
var simpleFormats = map[string][]string{
	"account":           {"uri"},
	"email":             {"email"},
	"iss_sub":           {"iss", "sub"},
	"opaque":            {"id"},
	"phone_number":      {"phone_number"},
	"did":               {"url"},
	"uri":               {"uri"},
	"jwt_id":            {"iss", "jti"},
	"saml_assertion_id": {"issuer", "assertion_id"},
}

var e164 = regexp.MustCompile(`^\+[1-9][0-9]{1,14}$`)

// maxSubjectSize bounds a subject's JSON so the store stays small.
const maxSubjectSize = 4096

// EmailSubject returns an email subject.
func EmailSubject(email string) Subject {
	return Subject{Format: "email", Fields: map[string]string{"email": email}}
}

// IssSubSubject returns an iss_sub subject.
func IssSubSubject(iss, sub string) Subject {
	return Subject{Format: "iss_sub", Fields: map[string]string{"iss": iss, "sub": sub}}
}

// OpaqueSubject returns an opaque subject.
func OpaqueSubject(id string) Subject {
	return Subject{Format: "opaque", Fields: map[string]string{"id": id}}
}

// ParseSubject decodes and validates a subject identifier. The error says
// which member is wrong and why.
func ParseSubject(data []byte) (Subject, error) {
	if len(data) > maxSubjectSize {
		return Subject{}, fmt.Errorf("subject is larger than %d bytes", maxSubjectSize)
	}
	return parseSubject(data, 0)
}

func parseSubject(data []byte, depth int) (Subject, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return Subject{}, errors.New("subject must be a JSON object")
	}
	var format string
	if err := json.Unmarshal(m["format"], &format); err != nil || format == "" {
		return Subject{}, errors.New("subject.format is missing or not a string")
	}
	delete(m, "format")
	s := Subject{Format: format}
	switch format {
	case "aliases":
		if depth > 0 {
			return s, errors.New("aliases may not be nested in aliases or complex subjects")
		}
		var ids []json.RawMessage
		if err := json.Unmarshal(m["identifiers"], &ids); err != nil || len(ids) == 0 {
			return s, errors.New("aliases.identifiers must be a non-empty array")
		}
		delete(m, "identifiers")
		for i, raw := range ids {
			id, err := parseSubject(raw, depth+1)
			if err != nil {
				return s, fmt.Errorf("aliases.identifiers[%d]: %w", i, err)
			}
			if id.Format == "complex" {
				return s, fmt.Errorf("aliases.identifiers[%d]: complex subjects are not allowed in aliases", i)
			}
			s.Identifiers = append(s.Identifiers, id)
		}
	case "complex":
		if depth > 0 {
			return s, errors.New("complex subjects may not be nested")
		}
		if len(m) == 0 {
			return s, errors.New("complex subject has no members")
		}
		s.Members = map[string]Subject{}
		for name, raw := range m {
			mem, err := parseSubject(raw, depth+1)
			if err != nil {
				return s, fmt.Errorf("complex member %q: %w", name, err)
			}
			s.Members[name] = mem
		}
		m = nil
	case "ip-addresses":
		if err := json.Unmarshal(m["ip-addresses"], &s.IPs); err != nil || len(s.IPs) == 0 {
			return s, errors.New("ip-addresses must be a non-empty array of strings")
		}
		for i, ip := range s.IPs {
			if _, err := netip.ParseAddr(ip); err != nil {
				return s, fmt.Errorf("ip-addresses[%d] is not an IP address", i)
			}
		}
		delete(m, "ip-addresses")
	default:
		members, ok := simpleFormats[format]
		if !ok {
			return s, fmt.Errorf("subject.format %q is not supported", format)
		}
		s.Fields = map[string]string{}
		for _, name := range members {
			var v string
			if err := json.Unmarshal(m[name], &v); err != nil || v == "" {
				return s, fmt.Errorf("%s subject needs a non-empty string member %q", format, name)
			}
			s.Fields[name] = v
			delete(m, name)
		}
		if err := checkSimple(s); err != nil {
			return s, err
		}
	}
	for name := range m {
		return s, fmt.Errorf("%s subject has an unexpected member %q", format, name)
	}
	return s, nil
}

func checkSimple(s Subject) error {
	f := s.Fields
	switch s.Format {
	case "email":
		a, err := mail.ParseAddress(f["email"])
		if err != nil || a.Address != f["email"] || a.Name != "" {
			return errors.New("email subject: email is not a valid addr-spec")
		}
	case "phone_number":
		if !e164.MatchString(f["phone_number"]) {
			return errors.New("phone_number subject: phone_number is not in E.164 form (+ and up to 15 digits)")
		}
	case "account":
		u := f["uri"]
		if !strings.HasPrefix(u, "acct:") || !strings.Contains(u[5:], "@") || strings.HasPrefix(u[5:], "@") || strings.HasSuffix(u, "@") {
			return errors.New("account subject: uri must be an acct: URI (acct:user@host)")
		}
	case "uri":
		if u, err := url.Parse(f["uri"]); err != nil || !u.IsAbs() {
			return errors.New("uri subject: uri must be an absolute URI")
		}
	case "did":
		if !strings.HasPrefix(f["url"], "did:") {
			return errors.New(`did subject: url must start with "did:"`)
		}
	case "iss_sub", "jwt_id":
		if u, err := url.Parse(f["iss"]); err != nil || u.Scheme == "" {
			return fmt.Errorf("%s subject: iss must be a URI", s.Format)
		}
	}
	return nil
}

// MarshalJSON writes the subject in its RFC 9493 form.
func (s Subject) MarshalJSON() ([]byte, error) {
	m := map[string]any{"format": s.Format}
	for k, v := range s.Fields {
		m[k] = v
	}
	if s.IPs != nil {
		m["ip-addresses"] = s.IPs
	}
	if s.Identifiers != nil {
		m["identifiers"] = s.Identifiers
	}
	for k, v := range s.Members {
		m[k] = v
	}
	return json.Marshal(m)
}

// UnmarshalJSON parses and validates a subject.
func (s *Subject) UnmarshalJSON(data []byte) error {
	v, err := ParseSubject(data)
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// key is a canonical string for the subject (sorted JSON).
func (s Subject) key() string {
	b, _ := json.Marshal(s)
	return string(b)
}

// Matches reports whether the two subjects describe the same principal per
// SSF §8.1.3.1: simple subjects match when identical; complex subjects match
// when every member defined on both sides matches (a missing member matches
// anything). A simple subject is compared as a complex one with that
// subject as its "user" member, and an aliases subject matches when any of
// its identifiers does.
func (s Subject) Matches(o Subject) bool {
	if s.Format == "aliases" {
		for _, id := range s.Identifiers {
			if id.Matches(o) {
				return true
			}
		}
		return false
	}
	if o.Format == "aliases" {
		return o.Matches(s)
	}
	if s.Format == "complex" || o.Format == "complex" {
		a, b := s.asComplex(), o.asComplex()
		for name, am := range a {
			if bm, ok := b[name]; ok && !am.Matches(bm) {
				return false
			}
		}
		return true
	}
	if s.Format != o.Format || len(s.Fields) != len(o.Fields) {
		return false
	}
	for k, v := range s.Fields {
		if o.Fields[k] != v {
			return false
		}
	}
	if len(s.IPs) != len(o.IPs) {
		return false
	}
	a, b := append([]string(nil), s.IPs...), append([]string(nil), o.IPs...)
	sort.Strings(a)
	sort.Strings(b)
	return bytes.Equal([]byte(strings.Join(a, ",")), []byte(strings.Join(b, ",")))
}

func (s Subject) asComplex() map[string]Subject {
	if s.Format == "complex" {
		return s.Members
	}
	return map[string]Subject{"user": s}
}
