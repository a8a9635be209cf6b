package restore

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRewriteTablespaceMap(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "tablespace_map")
	// 16390's path holds an escaped newline and backslash.
	in := "16389 /srv/ts1\n16390 /srv/odd\\\nname\\\\x\n16391 /srv/keep\n"
	if err := os.WriteFile(p, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewriteTablespaceMap(p, map[uint32]string{16389: "/new/ts1", 16390: "/new/a\nb"}); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	want := "16389 /new/ts1\n16390 /new/a\\\nb\n16391 /srv/keep\n"
	if string(got) != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if err := rewriteTablespaceMap(p, map[uint32]string{99: "/x"}); err == nil {
		t.Error("a tablespace missing from the map was accepted")
	}
	if err := os.WriteFile(p, []byte("garbage\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := rewriteTablespaceMap(p, map[uint32]string{1: "/x"}); err == nil {
		t.Error("a malformed map was accepted")
	}
}
