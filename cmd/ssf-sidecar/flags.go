package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/ssf-sidecar/ssf-sidecar/ssf"
)

// parseFlags parses args on fs without the flag package's own output: help
// goes to stdout (printed by help), and a mistake is one short line with a
// suggestion instead of the whole flag list.
func parseFlags(fs *flag.FlagSet, args []string, help func()) error {
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	err := fs.Parse(args)
	if err == nil {
		return nil
	}
	if errors.Is(err, flag.ErrHelp) {
		if help != nil {
			help()
		}
		return flag.ErrHelp
	}
	return usageError{flagMistake(fs, err)}
}

// flagMistake rewrites the flag package's error for people: the flag with
// two dashes, the closest known flag for a typo, and where the list is.
func flagMistake(fs *flag.FlagSet, err error) string {
	msg := err.Error()
	more := fmt.Sprintf(" (run 'ssf-sidecar %s --help' for the flags)", fs.Name())
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		name = strings.TrimLeft(name, "-")
		if s := suggestFlag(fs, name); s != "" {
			return fmt.Sprintf("%s: unknown flag --%s: did you mean --%s?", fs.Name(), name, s)
		}
		return fmt.Sprintf("%s: unknown flag --%s%s", fs.Name(), name, more)
	}
	if name, ok := strings.CutPrefix(msg, "flag needs an argument: -"); ok {
		return fmt.Sprintf("%s: --%s needs a value (--%s VALUE or --%s=VALUE)", fs.Name(), name, name, name)
	}
	// invalid value "x" for flag -name: reason
	if rest, ok := strings.CutPrefix(msg, "invalid value "); ok {
		if i := strings.Index(rest, " for flag -"); i >= 0 {
			tail := rest[i+len(" for flag -"):]
			if j := strings.Index(tail, ": "); j >= 0 {
				return fmt.Sprintf("%s: --%s: %s", fs.Name(), tail[:j], tail[j+2:])
			}
		}
	}
	if name, ok := strings.CutPrefix(msg, "invalid boolean value "); ok {
		return fmt.Sprintf("%s: %s: use true or false", fs.Name(), name)
	}
	return fs.Name() + ": " + msg + more
}

// suggestFlag returns the defined flag closest to name, or "" when none is
// close enough to be a typo of it.
func suggestFlag(fs *flag.FlagSet, name string) string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
	return closest(name, names)
}

// closest returns the candidate s is a likely typo of, or "".
func closest(s string, candidates []string) string { return ssf.Suggest(s, candidates) }

// printFlags lists fs's flags with two dashes, the kind of value each takes
// (none for a boolean) and its usage.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	fs.VisitAll(func(f *flag.Flag) {
		kind, usage := flag.UnquoteUsage(f)
		if rf, ok := f.Value.(*rawFlag); ok {
			kind = rf.kind
		}
		if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
			kind = ""
		}
		line := "  --" + f.Name
		if kind != "" {
			line += " " + kind
		}
		fmt.Fprintln(w, line)
		def := ""
		if _, raw := f.Value.(*rawFlag); !raw && f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
			def = fmt.Sprintf(" (default %s)", f.DefValue)
		}
		fmt.Fprintf(w, "        %s%s\n", usage, def)
	})
}

// parseNoArgs parses a command's flags like parseFlags and refuses anything
// left after them. The stray arguments are counted, never quoted: a token
// pasted in the wrong place must not come back in the error.
func parseNoArgs(fs *flag.FlagSet, args []string, help func()) error {
	if err := parseFlags(fs, args, help); err != nil {
		return err
	}
	return noArgs(fs.Name(), fs.Args())
}

// noArgs refuses arguments left over after a command's flags.
func noArgs(command string, rest []string) error {
	if len(rest) == 0 {
		return nil
	}
	return usageError{fmt.Sprintf("%s takes no arguments, got %d (flags go before any argument, each as --name or --name=value)", command, len(rest))}
}
