package restore

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// pgSubstitute expands restore_command as PostgreSQL does.
func pgSubstitute(cmd, f, p string) string {
	var b strings.Builder
	for i := 0; i < len(cmd); i++ {
		if cmd[i] == '%' && i+1 < len(cmd) {
			switch cmd[i+1] {
			case 'f':
				b.WriteString(f)
				i++
				continue
			case 'p':
				b.WriteString(p)
				i++
				continue
			case '%':
				b.WriteByte('%')
				i++
				continue
			}
		}
		b.WriteByte(cmd[i])
	}
	return b.String()
}

// TestRestoreCommand runs the restore_command through the shell as
// PostgreSQL would, with awkward paths and URLs: walship gets exactly its
// arguments, and a spooled segment is moved without running it.
func TestRestoreCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "it's a dir")
	if err := os.MkdirAll(filepath.Join(dir, "pg_wal"), 0o755); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(dir, "wal ship")
	if err := os.WriteFile(fake, []byte("#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done >args\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	repoURL := "s3://bkt/p?endpoint=http://127.0.0.1:9000&x=50%25'"
	cmd := RestoreCommand(fake, repoURL, "/keys/age id", "--tip-timeline", "2")
	const seg = "000000020000000000000003"
	run := func() {
		t.Helper()
		sh := exec.Command("sh", "-c", pgSubstitute(cmd, seg, "pg_wal/RECOVERYXLOG"))
		sh.Dir = dir
		if out, err := sh.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmd, err, out)
		}
	}
	run()
	b, err := os.ReadFile(filepath.Join(dir, "args"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"--repo", repoURL, "wal-fetch", "--age-identity-file", "/keys/age id", "--tip-timeline", "2", seg, "pg_wal/RECOVERYXLOG"}
	if got := strings.Split(strings.TrimSpace(string(b)), "\n"); !slices.Equal(got, want) {
		t.Errorf("walship got %q\nwant %q\nfrom %s", got, want, cmd)
	}
	// A spooled segment: moved by the shell, walship not run.
	os.Remove(filepath.Join(dir, "args"))
	spool := SpoolDir(dir, repoURL)
	if err := os.MkdirAll(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(spool, seg), []byte("wal"), 0o600); err != nil {
		t.Fatal(err)
	}
	run()
	if got, err := os.ReadFile(filepath.Join(dir, "pg_wal/RECOVERYXLOG")); err != nil || string(got) != "wal" {
		t.Errorf("the spooled segment was not moved into place: %q, %v", got, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "args")); err == nil {
		t.Error("walship ran although the segment was spooled")
	}

	// A spool of another boot (which a power failure may have torn) is
	// not served, nor one without a boot, where Linux names boots.
	if bootID() == "" {
		t.Fatalf("no boot id in %s", bootIDFile)
	}
	if filepath.Base(spool) != bootID() {
		t.Fatalf("SpoolDir = %s, want this boot's", spool)
	}
	for _, other := range []string{filepath.Join(filepath.Dir(spool), "0c6f4b1e-2d3a-4f5b-8c9d-0e1f2a3b4c5d"), filepath.Dir(spool)} {
		if err := os.MkdirAll(other, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(other, seg), []byte("torn"), 0o600); err != nil {
			t.Fatal(err)
		}
		run()
		if _, err := os.Stat(filepath.Join(dir, "args")); err != nil {
			t.Errorf("%s: walship did not run: the segment of another boot was taken", other)
		}
		os.Remove(filepath.Join(dir, "args"))
		os.Remove(filepath.Join(other, seg))
	}
}
