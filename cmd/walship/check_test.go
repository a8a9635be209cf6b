package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/internal/pgtest"
)

// TestCheckPrimary runs check against a real primary: before anything is
// archived, after, as a role without REPLICATION, and against a repository
// of another cluster; and check --read-only, which writes nothing.
func TestCheckPrimary(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := "file://" + filepath.Join(t.TempDir(), "repo")
	expect := func(t *testing.T, wantCode int, want []string, args ...string) string {
		t.Helper()
		code, out, errOut := walship(t, nil, args...)
		if code != wantCode {
			t.Fatalf("walship %q: exit %d, want %d\nstdout %s\nstderr %s", args, code, wantCode, out, errOut)
		}
		for _, w := range want {
			if !strings.Contains(out+errOut, w) {
				t.Errorf("walship %q: output lacks %q:\n%s%s", args, w, out, errOut)
			}
		}
		return out
	}
	expect(t, exitOK, []string{"replication connection ok", "slot walship: none yet", "walship.json: none yet", "all checks passed"},
		"--repo", repo, "--pg", c.ConnString(), "check")
	expect(t, exitOK, nil, "--repo", repo, "--pg", c.ConnString(), "archive", "--until-caught-up")
	system := c.Scalar(t, "SELECT system_identifier::text FROM pg_control_system()")
	expect(t, exitOK, []string{"walship.json: system " + system, "slot walship: active=false", "wal_status=reserved"},
		"--repo", repo, "--pg", c.ConnString(), "check")

	c.Exec(t, "CREATE ROLE plain LOGIN")
	plain := strings.Replace(c.ConnString(), "user=postgres", "user=plain", 1)
	expect(t, exitFailed, []string{"REPLICATION", "FAILED: primary", "check failed:"}, "--repo", repo, "--pg", plain, "check")

	other := pgtest.Start(t, pgtest.Options{Fresh: true})
	expect(t, exitFailed, []string{"belongs to system " + system, "use another repository"}, "--repo", repo, "--pg", other.ConnString(), "check")

	out := expect(t, exitOK, []string{"list    ok", "get     ok", "primary: not checked"}, "--repo", repo, "check", "--read-only")
	if strings.Contains(out, "put") || strings.Contains(out, "delete") {
		t.Errorf("check --read-only wrote:\n%s", out)
	}
}
