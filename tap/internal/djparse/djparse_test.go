package djparse

import (
	"encoding/json"
	"strconv"
	"testing"
)

func TestInt(t *testing.T) {
	cases := []struct {
		in string
		n  int64
		ok bool
	}{
		{"12", 12, true},
		{" 3", 3, true},
		{"3\t\n", 3, true},
		{"\u00a03\u2003", 3, true}, // Unicode spaces
		{"٣", 3, true},             // ARABIC-INDIC DIGIT THREE
		{"١٢", 12, true},
		{"\U0001D7D7", 9, true}, // MATHEMATICAL BOLD DIGIT NINE (end of the first of five runs)
		{"\U0001D7D8", 0, true}, // MATHEMATICAL DOUBLE-STRUCK DIGIT ZERO (second run)
		{"\U0001D7E1", 9, true}, // its nine
		{"1_000", 1000, true},
		{"+7", 7, true},
		{"-7", -7, true},
		{"", 0, false},
		{" ", 0, false},
		{"_1", 0, false},
		{"1_", 0, false},
		{"1__0", 0, false},
		{"+_1", 0, false},
		{"1 2", 0, false},
		{"0x10", 0, false},
		{"12a", 0, false},
		{"Ⅻ", 0, false}, // a numeral letter, not a decimal digit
		{"1234567890123456789", 0, false},
	}
	for _, tc := range cases {
		n, ok := Int(tc.in)
		if n != tc.n || ok != tc.ok {
			t.Errorf("Int(%q) = %d %v, want %d %v", tc.in, n, ok, tc.n, tc.ok)
		}
	}
}

func TestBool(t *testing.T) {
	cases := []struct {
		in    string
		v, ok bool
	}{
		{`true`, true, true}, {`false`, false, true},
		{`"false"`, false, true}, {`"False"`, false, true}, {`"0"`, false, true}, {`"off"`, false, true}, {`"n"`, false, true},
		{`"true"`, true, true}, {`"yes"`, true, true}, {`"1"`, true, true}, {`"ON"`, true, true},
		{`0`, false, true}, {`1`, true, true}, {`0.0`, false, true},
		{`2`, false, false}, {`null`, false, false}, {`"fAlse"`, false, false}, {`""`, false, false}, {`[]`, false, false},
	}
	for _, tc := range cases {
		v, ok := Bool(json.RawMessage(tc.in))
		if v != tc.v || ok != tc.ok {
			t.Errorf("Bool(%s) = %v %v, want %v %v", tc.in, v, ok, tc.v, tc.ok)
		}
	}
}

func FuzzInt(f *testing.F) {
	for _, s := range []string{"12", " 3", "٣", "1_0", "-0", "\U0001D7E1", "_"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, ok := Int(s)
		if !ok {
			return
		}
		// whatever is accepted, its ASCII form must read back the same
		if m, err := strconv.ParseInt(strconv.FormatInt(n, 10), 10, 64); err != nil || m != n {
			t.Fatalf("Int(%q) = %d does not round-trip", s, n)
		}
	})
}

func FuzzBool(f *testing.F) {
	for _, s := range []string{`true`, `"false"`, `0`, `null`, `"x"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, ok := Bool(b)
		if !ok && v {
			t.Fatal("rejected value reported true")
		}
	})
}
