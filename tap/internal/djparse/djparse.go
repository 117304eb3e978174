// Package djparse reads values the way authentik's Python stack does, so
// that the tap and the simulated authentik agree with the real one on what
// a request says: Python's int() for primary keys in paths and queries,
// DRF's BooleanField for booleans in request bodies.
package djparse

import (
	"encoding/json"
	"strings"
	"unicode"
)

// Int parses s as Python's int() does, which is how authentik (Django's
// IntegerField) reads a pk from a path or query: surrounding Unicode
// whitespace, an optional sign, decimal digits of any script (Unicode
// category Nd, such as "٣") and single underscores between digits. ok is
// false for anything int() rejects or that does not fit in an int64.
func Int(s string) (n int64, ok bool) {
	s = strings.TrimFunc(s, unicode.IsSpace)
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "" {
		return 0, false
	}
	prevDigit := false
	digits := 0
	for _, r := range s {
		if r == '_' {
			if !prevDigit {
				return 0, false
			}
			prevDigit = false
			continue
		}
		d, isDigit := decimalValue(r)
		if !isDigit {
			return 0, false
		}
		digits++
		if digits > 18 {
			return 0, false
		}
		n = n*10 + int64(d)
		prevDigit = true
	}
	if !prevDigit {
		return 0, false // empty, or a trailing underscore
	}
	if neg {
		n = -n
	}
	return n, true
}

// decimalValue is the value of a Unicode decimal digit (category Nd). Every
// Nd block is a run of ten consecutive code points starting at a zero.
func decimalValue(r rune) (int, bool) {
	if r >= '0' && r <= '9' {
		return int(r - '0'), true
	}
	if !unicode.Is(unicode.Nd, r) {
		return 0, false
	}
	// Adjacent blocks (the mathematical digits run five in a row) are told
	// apart by their distance from the run's first code point.
	first := r
	for first > 0 && unicode.Is(unicode.Nd, first-1) {
		first--
	}
	return int((r - first) % 10), true
}

// Bool reads a JSON value as DRF's BooleanField.to_internal_value does:
// true/false, the strings of TRUE_VALUES/FALSE_VALUES, and the numbers 1
// and 0. ok is false for anything DRF rejects (null included: is_active
// does not allow it).
func Bool(raw json.RawMessage) (v, ok bool) {
	if strings.TrimSpace(string(raw)) == "null" {
		return false, false
	}
	var b bool
	if json.Unmarshal(raw, &b) == nil {
		return b, true
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		switch s {
		case "t", "T", "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "1":
			return true, true
		case "f", "F", "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF", "0":
			return false, true
		}
		return false, false
	}
	var f float64
	if json.Unmarshal(raw, &f) == nil {
		switch f {
		case 1:
			return true, true
		case 0:
			return false, true
		}
	}
	return false, false
}
