package main

import (
	"regexp"
	"runtime/debug"
	"strings"
)

// release is the version of this source tree: the release it is, or was
// last cut as. It is raised with every release, together with the newest
// entry of README.md's "Changes and upgrade notes" (a test keeps the two
// equal), so a binary reports a real version even when it was built
// without VCS information (go build -buildvcs=false, a source tarball, the
// Dockerfile without --build-arg VERSION).
const release = "0.2.0"

func buildVersion() string {
	bi, _ := debug.ReadBuildInfo()
	return versionFrom(version, bi)
}

// pseudoVersion matches the versions Go makes up for untagged commits
// (v0.0.0-20261126224121-95be93710fb5).
var pseudoVersion = regexp.MustCompile(`-(?:0\.)?\d{14}-[0-9a-f]{12}(?:\+dirty)?$`)

// versionFrom is the reported version: the stamped one when -ldflags set
// it; else the module's tag when the binary was built from one (go install
// …@v0.1.0); else the release, followed by the commit it was built from and
// ".dirty" for uncommitted changes when the build recorded them
// (0.1.0+95be93710fb5.dirty).
func versionFrom(stamped string, bi *debug.BuildInfo) string {
	if stamped != "" {
		return stamped
	}
	v := release
	if bi == nil {
		return v
	}
	if mv := bi.Main.Version; strings.HasPrefix(mv, "v") && !pseudoVersion.MatchString(mv) {
		return strings.TrimPrefix(strings.TrimSuffix(mv, "+dirty"), "v")
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if len(rev) >= 12 {
		v += "+" + rev[:12]
		if dirty {
			v += ".dirty"
		}
	}
	return v
}
