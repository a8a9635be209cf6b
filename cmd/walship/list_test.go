package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/walship/walship/archiver"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
)

func TestList(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	dir := filepath.Join(t.TempDir(), "repo")
	st, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	repo := catalog.New(st, catalog.Options{})
	c.Exec(t, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g")
	if _, err := archiver.Run(t.Context(), repo, archiver.Config{ConnString: c.ConnString(), UntilCaughtUp: true}); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
	c.Exec(t, "SELECT pg_switch_wal()")
	if _, err := archiver.Run(t.Context(), repo, archiver.Config{ConnString: c.ConnString(), UntilCaughtUp: true}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := walship(t, nil, "--repo", "file://"+dir, "list", "--pg", c.ConnString())
	if code != exitOK {
		t.Fatalf("list: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"BACKUP", "(none)", "TIMELINE", "none", "slot walship: active=false", "wal_status=reserved"} {
		if !strings.Contains(out, want) {
			t.Errorf("list output lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = walship(t, nil, "--repo", "file://"+dir, "list", "--json")
	if code != exitOK {
		t.Fatalf("list --json: exit %d: %s", code, errOut)
	}
	var l listing
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --json: %v\n%s", err, out)
	}
	if len(l.WAL) != 1 || l.WAL[0].Timeline != 1 || l.WAL[0].Segments < 1 || l.WAL[0].End == "" || l.Meta == nil {
		t.Errorf("list --json: %+v", l)
	}
	// With max_slot_wal_keep_size set, the slot has a safe_wal_size: how
	// much more WAL the primary may write before it invalidates the slot.
	c.Exec(t, "ALTER SYSTEM SET max_slot_wal_keep_size = '1GB'")
	c.Exec(t, "SELECT pg_reload_conf()")
	code, out, errOut = walship(t, nil, "--repo", "file://"+dir, "list", "--json", "--pg", c.ConnString())
	if code != exitOK {
		t.Fatalf("list --json --pg: exit %d: %s", code, errOut)
	}
	l = listing{}
	if err := json.Unmarshal([]byte(out), &l); err != nil {
		t.Fatalf("list --json --pg: %v\n%s", err, out)
	}
	if s := l.Slot; s == nil || s.Name != "walship" || s.WALStatus != "reserved" || s.SafeWALSize == nil || *s.SafeWALSize <= 0 || *s.SafeWALSize > 1<<30+64<<20 {
		t.Errorf("list --json --pg: slot %+v, want wal_status reserved and a safe_wal_size of about 1GB at most\n%s", s, out)
	}
	code, out, _ = walship(t, nil, "--repo", "file://"+dir, "list", "--pg", c.ConnString())
	if code != exitOK || strings.Contains(out, "safe_wal_size=unlimited") || !strings.Contains(out, "safe_wal_size=") {
		t.Errorf("list --pg with max_slot_wal_keep_size: exit %d\n%s", code, out)
	}

	// A repository that is not one yet says so.
	code, out, _ = walship(t, nil, "--repo", "file://"+t.TempDir(), "list")
	if code != exitOK || !strings.Contains(out, "not a walship repository yet") {
		t.Errorf("empty repository: exit %d, %q", code, out)
	}
}
