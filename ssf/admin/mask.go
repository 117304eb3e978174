package admin

import (
	"bytes"
	"encoding/json"
	"sort"
	"strings"
	"unicode/utf8"
)

// Subjects are personal data: the dashboard shows them masked unless the
// operator asks for one SET's subject explicitly. Masking is done on the
// server so a page left open on a shared screen never holds the clear
// value in its DOM.

// maskValue hides most of a subject identifier while keeping it
// recognisable: "alice@example.com" → "a***@example.com", "8f3c…" → "8***".
func maskValue(s string) string {
	if s == "" {
		return ""
	}
	if at := strings.LastIndexByte(s, '@'); at > 0 && at < len(s)-1 {
		return firstRune(s[:at]) + "***" + s[at:]
	}
	return firstRune(s) + "***"
}

func firstRune(s string) string {
	for _, r := range s {
		return string(r)
	}
	return ""
}

// unmaskedKeys are sub_id members that say what kind of identifier it is,
// not who it is.
var unmaskedKeys = map[string]bool{"format": true, "iss": true, "issuer": true}

// sensitiveKeys are masked wherever they occur in the claims, not only
// under sub_id.
var sensitiveKeys = map[string]bool{"email": true, "phone_number": true, "sub": true, "username": true}

// maskTree returns v with every identifying string replaced by its masked
// form. inSubject marks values below sub_id, where every member but the
// format and issuer is identifying.
func maskTree(v any, inSubject bool, key string) any {
	switch t := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(t))
		for k, x := range t {
			out[k] = maskTree(x, inSubject || k == "sub_id", k)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = maskTree(x, inSubject, key)
		}
		return out
	case string:
		if (inSubject && !unmaskedKeys[key]) || sensitiveKeys[key] {
			return maskValue(t)
		}
		return t
	default:
		return v
	}
}

// decodeClaims parses a SET's claims as a JSON object. Claims come from
// the store; a damaged record yields an error, never a panic.
func decodeClaims(raw []byte) (map[string]any, error) {
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, err
	}
	if m == nil {
		m = map[string]any{}
	}
	return m, nil
}

// maskClaims returns the claims with identifying values masked.
func maskClaims(claims map[string]any) map[string]any {
	return maskTree(claims, false, "").(map[string]any)
}

// subjectSummary renders sub_id as one short line: "email a***@example.com",
// "user: email a***@x.org, session: opaque 4***". reveal leaves values
// as they are.
func subjectSummary(sub any, reveal bool) string {
	m, ok := sub.(map[string]any)
	if !ok {
		return ""
	}
	var b strings.Builder
	writeSubject(&b, m, reveal, 0)
	return b.String()
}

func writeSubject(b *strings.Builder, m map[string]any, reveal bool, depth int) {
	format, _ := m["format"].(string)
	if depth > 4 {
		b.WriteString("…")
		return
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		if k != "format" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	if format != "complex" && format != "" {
		b.WriteString(format)
		for _, k := range keys {
			if unmaskedKeys[k] {
				continue
			}
			s, ok := m[k].(string)
			if !ok {
				continue
			}
			if !reveal {
				s = maskValue(s)
			}
			b.WriteByte(' ')
			b.WriteString(s)
		}
		return
	}
	first := true
	for _, k := range keys {
		sub, ok := m[k].(map[string]any)
		if !ok {
			continue
		}
		if !first {
			b.WriteString(", ")
		}
		first = false
		b.WriteString(k)
		b.WriteString(": ")
		writeSubject(b, sub, reveal, depth+1)
	}
}

// searchQuery is the operator's timeline search, normalised.
type searchQuery struct {
	text string // lower case; "" matches everything
	// raw: the text appears literally in the JSON of any value containing
	// it (no character JSON encoders escape), so the raw claims can rule a
	// record out before they are decoded.
	raw bool
}

// parseSearch normalises the q parameter: trimmed, at most 200 bytes,
// lower case.
func parseSearch(q string) searchQuery {
	q = strings.TrimSpace(q)
	if len(q) > 200 {
		q = q[:200]
	}
	q = strings.ToLower(q)
	return searchQuery{text: q, raw: !strings.ContainsFunc(q, func(r rune) bool {
		return r < 0x20 || r == '"' || r == '\\' || r == '<' || r == '>' || r == '&' ||
			r == 0x2028 || r == 0x2029 || r == utf8.RuneError
	})}
}

// mayMatch is a cheap test before decoding: false only when the record
// cannot match.
func (q searchQuery) mayMatch(jti string, rawClaims []byte) bool {
	if q.text == "" || !q.raw {
		return true
	}
	return strings.Contains(strings.ToLower(jti), q.text) || bytes.Contains(bytes.ToLower(rawClaims), []byte(q.text))
}

// matches reports whether a SET matches: its jti, or any identifier in its
// subject, contains the text (case-insensitive).
func (q searchQuery) matches(jti string, claims map[string]any) bool {
	if q.text == "" {
		return true
	}
	if strings.Contains(strings.ToLower(jti), q.text) {
		return true
	}
	return containsString(claims["sub_id"], q.text, 0)
}

func containsString(v any, needle string, depth int) bool {
	if depth > 8 {
		return false
	}
	switch t := v.(type) {
	case map[string]any:
		for k, x := range t {
			if k == "format" {
				continue
			}
			if containsString(x, needle, depth+1) {
				return true
			}
		}
	case []any:
		for _, x := range t {
			if containsString(x, needle, depth+1) {
				return true
			}
		}
	case string:
		return strings.Contains(strings.ToLower(t), needle)
	}
	return false
}
