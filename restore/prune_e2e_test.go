package restore

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/lease"
	"github.com/walship/walship/storage/location"
)

// TestPruneThenRecover takes three backups, kills a fourth midway (one of
// its archive objects stored, the next one being written), prunes with
// --keep 2 while the archiver runs, and checks: the killed backup was never
// visible and leaves nothing behind, not even its temporary file, the
// oldest backup and the WAL only it needed are gone, and point-in-time
// recovery to the oldest kept point still works.
func TestPruneThenRecover(t *testing.T) {
	bin := clitest.Binary(t)
	repoDir := filepath.Join(pgtest.MkdirOwned(t), "repo")
	repoURL := "file://" + repoDir
	c := pgtest.Start(t, pgtest.Options{})
	c.Exec(t, "CREATE TABLE load (id bigserial PRIMARY KEY, v text)")
	arch := startArchiver(t, bin, repoURL, c)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})
	run := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--repo", repoURL}, args...)...)
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		return cmd
	}
	var ids []string
	for i := range 3 {
		c.Exec(t, "INSERT INTO load (v) SELECT md5(g::text) FROM generate_series(1, 20000) g")
		c.Exec(t, "SELECT pg_switch_wal()")
		out, err := run("backup", "--fast", "--pg", c.ConnString(), "--lease-ttl", "3s").Output()
		if err != nil {
			t.Fatalf("backup %d: %v", i, err)
		}
		ids = append(ids, strings.TrimSpace(string(out)))
	}
	rowsAtOldestKept := c.Scalar(t, "SELECT count(*) FROM load")
	_ = rowsAtOldestKept
	// A backup killed midway, throttled so that it is midway for seconds.
	c.Exec(t, "INSERT INTO load (v) SELECT md5(g::text) FROM generate_series(1, 20000) g")
	killed := run("backup", "--fast", "--pg", c.ConnString(), "--lease-ttl", "1s", "--max-rate", "4096", "--part-size", "1MiB")
	if err := killed.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = killed.Process.Kill(); _ = killed.Wait() })
	raw := &rawRepo{store: "file", dir: repoDir}
	var killedID string
	waitFor(t, time.Minute, "the fourth backup midway", func() bool {
		killedID = midway(raw.raw(t), ids[2], true)
		return killedID != ""
	})
	_ = killed.Process.Signal(syscall.SIGKILL)
	killedAt := time.Now()
	_ = killed.Wait()
	t.Logf("killed backup %s holding %q", killedID, under(raw.raw(t), killedID))

	list := func() listingJSON {
		out, err := run("list", "--json").Output()
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		var l listingJSON
		if err := json.Unmarshal(out, &l); err != nil {
			t.Fatal(err)
		}
		return l
	}
	if l := list(); len(l.Backups) != 3 {
		t.Fatalf("list shows %d backups after a killed one, want the 3 complete ones", len(l.Backups))
	}
	// The killed backup's lease expires (TTL 1s), and prune waits out the
	// clock skew it allows. The archiver writes meanwhile: a sweep of what
	// is older than 2s never meets its writes.
	time.Sleep(time.Until(killedAt.Add(time.Second + lease.DefaultClockSkew + 500*time.Millisecond)))
	if out, err := run("prune", "--keep", "2", "--sweep-older-than", "2s").CombinedOutput(); err != nil {
		t.Fatalf("prune: %v\n%s", err, out)
	}
	l := list()
	if len(l.Backups) != 2 || l.Backups[0].ID != ids[1] || len(l.Unfinished) != 0 {
		t.Fatalf("after prune: backups %v, unfinished %v; want %v and none", l.Backups, l.Unfinished, ids[1:])
	}
	if l.Window == nil || l.Window.To.Before(l.Window.From) {
		t.Errorf("list shows no recoverable window: %+v", l.Window)
	}
	loc, _ := location.Parse(repoURL)
	st, err := location.Open(t.Context(), loc)
	if err != nil {
		t.Fatal(err)
	}
	repo := catalog.New(st, catalog.Options{})
	for _, e := range raw.raw(t) {
		kind, path, _ := strings.Cut(e, " ")
		if !strings.HasPrefix(path, catalog.BackupsPrefix) || path == catalog.BackupsPrefix {
			continue
		}
		if kind == "temp" || !strings.HasPrefix(path, catalog.BackupsPrefix+ids[1]+"/") && !strings.HasPrefix(path, catalog.BackupsPrefix+ids[2]+"/") {
			t.Errorf("stray after prune: %s", e)
		}
	}
	oldest, err := repo.ReadBackup(t.Context(), ids[1])
	if err != nil {
		t.Fatal(err)
	}
	ext, err := repo.WALExtents(t.Context(), oldest.SegmentSize)
	if err != nil || len(ext) == 0 {
		t.Fatal(err)
	}
	if first := ext[0].First; first >= uint64(oldest.StartLSN)/oldest.SegmentSize+1 || first*oldest.SegmentSize > uint64(oldest.StartLSN) {
		t.Errorf("WAL now starts at segment %d; the oldest kept backup starts at %s", first, oldest.StartLSN)
	}
	c.Stop(t)
	arch.stop(t)

	// Recovery to the oldest kept point: backup ids[1], to its end.
	target := pgtest.MkdirOwned(t)
	if err := ExtractBackup(t.Context(), repo, oldest, target, nil, ExtractBackupOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Own(t, target)
	r := pgtest.StartDataDir(t, target, pgtest.Options{Conf: []string{
		fmt.Sprintf(`restore_command = '"%s" --repo "%s" wal-fetch "%%f" "%%p"'`, bin, repoURL),
		"recovery_target = 'immediate'",
		"recovery_target_action = 'promote'",
	}})
	waitFor(t, time.Minute, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	if got := r.Scalar(t, "SELECT count(*) FROM load"); got != "40000" {
		t.Errorf("recovered to the oldest kept backup's end: %s rows, want the 40000 written before it", got)
	}
}

// listingJSON is the part of `walship list --json` these tests read.
type listingJSON struct {
	Backups    []struct{ ID string } `json:"backups"`
	Unfinished []string              `json:"unfinished_backups"`
	Window     *struct {
		From, To time.Time
	} `json:"recoverable_window"`
}
