package main

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestReloadWithoutRestart: a changed receivers file (new token, removed
// receiver) and a rotated admin token take effect on a file change, on
// SIGHUP and through `receivers reload`; a broken file keeps the set in
// force and the log says so.
func TestReloadWithoutRestart(t *testing.T) {
	dir := t.TempDir()
	const tokA, tokB = "receiver-token-aaaaaaaaaaaaaaaaaaaa", "receiver-token-bbbbbbbbbbbbbbbbbbbb"
	const adminA, adminB = "admin-token-aaaaaaaaaaaaaaaaaaaaaa", "admin-token-bbbbbbbbbbbbbbbbbbbbbb"
	recv := writeFile(t, dir, "receivers.yaml", "receivers:\n  - name: hr\n    tokens: [\""+tokA+"\"]\n  - name: gone\n    tokens: [\"receiver-token-gggggggggggggggggggg\"]\n")
	tokFile := writeFile(t, dir, "admin-token", adminA+"\n")
	s := startServe(t, map[string]string{"SSF_RECEIVERS": recv}, "--data-dir", filepath.Join(dir, "data"), "--admin-token-file", tokFile)
	status := func(url, tok string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	ssfStatus := func(tok string) int { return status(s.front+"/ssf/streams", tok) }
	adminStatus := func(tok string) int { return status(s.admin+"/admin/streams", tok) }
	eventually := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 15 s\n%s", what, s.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if ssfStatus(tokA) != 200 || ssfStatus(tokB) != 401 || adminStatus(adminA) != 200 {
		t.Fatalf("start: A %d B %d admin %d", ssfStatus(tokA), ssfStatus(tokB), adminStatus(adminA))
	}

	// 1. The file changes: token B replaces A, receiver "gone" is removed.
	os.WriteFile(recv, []byte("receivers:\n  - name: hr\n    tokens: [\""+tokB+"\"]\n"), 0o600)
	eventually("new token accepted on file change", func() bool { return ssfStatus(tokB) == 200 })
	if ssfStatus(tokA) != 401 {
		t.Fatal("the replaced token still works")
	}
	if !strings.Contains(s.logs.String(), "configuration reloaded") || !strings.Contains(s.logs.String(), "removed=[gone]") {
		t.Fatalf("reload not logged:\n%s", s.logs.String())
	}

	// 2. A broken file: the set in force stays, and the log says so.
	os.WriteFile(recv, []byte("receivers:\n  - name: hr\n    tokens: [\""+tokA+"\"]\n  - name: hr\n"), 0o600)
	eventually("broken file refused", func() bool {
		return strings.Contains(s.logs.String(), "reload refused: the receivers and admin token in force are kept")
	})
	if ssfStatus(tokB) != 200 || ssfStatus(tokA) != 401 {
		t.Fatal("a broken receivers file changed the set in force")
	}
	code, out, errs := cli(t, "receivers", "reload", "--admin-url", s.admin, "--admin-token", adminA)
	if code != exitFailure || !strings.Contains(errs, "reload refused") || !strings.Contains(errs, "duplicate name") {
		t.Fatalf("receivers reload of a broken file: exit %d\n%s%s", code, out, errs)
	}

	// 3. Fixed, and reloaded through the admin API by the CLI.
	os.WriteFile(recv, []byte("receivers:\n  - name: hr\n    tokens: [\""+tokA+"\", \""+tokB+"\"]\n"), 0o600)
	code, out, errs = cli(t, "receivers", "reload", "--admin-url", s.admin, "--admin-token", adminA)
	if code != exitOK || !strings.Contains(out, "reloaded: 1 receiver(s)") || !strings.Contains(out, "changed hr") {
		t.Fatalf("receivers reload: exit %d\n%s%s", code, out, errs)
	}
	if ssfStatus(tokA) != 200 || ssfStatus(tokB) != 200 {
		t.Fatal("reload through the admin API did not apply")
	}

	// 4. SIGHUP: the environment now names another receivers file, which
	// no file watch can notice.
	const tokC = "receiver-token-cccccccccccccccccccc"
	other := writeFile(t, dir, "other.yaml", "receivers:\n  - name: hr\n    tokens: [\""+tokC+"\"]\n")
	t.Setenv("SSF_RECEIVERS", other)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually("reload on SIGHUP", func() bool { return ssfStatus(tokC) == 200 })
	if ssfStatus(tokA) != 401 || !strings.Contains(s.logs.String(), "trigger=SIGHUP") {
		t.Fatalf("SIGHUP reload:\n%s", s.logs.String())
	}

	// 5. The admin token rotates when its file changes.
	os.WriteFile(tokFile, []byte(adminB+"\n"), 0o600)
	eventually("admin token rotated", func() bool { return adminStatus(adminB) == 200 })
	if adminStatus(adminA) != 401 {
		t.Fatal("the old admin token still works")
	}
	if strings.Contains(s.logs.String(), adminA) || strings.Contains(s.logs.String(), adminB) || strings.Contains(s.logs.String(), tokA) {
		t.Fatal("a token was logged")
	}
}
