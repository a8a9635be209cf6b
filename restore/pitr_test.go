package restore

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/location"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.Cleanup()
	miniotest.Cleanup()
	clitest.Cleanup()
	os.Exit(code)
}

// TestPITR archives a cluster's WAL with wal-push as its archive_command,
// restores a base backup to a named restore point with wal-fetch as
// restore_command, and checks that exactly the rows written before the
// restore point are there: PostgreSQL's own recovery is the oracle. On
// PostgreSQL 15, pg_waldump also reads every segment fetched back.
func TestPITR(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	fileRepo := func(t *testing.T) string { return "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo") }
	s3Repo := func(t *testing.T) string { return "s3://" + srv.Bucket(t) + "/pitr?endpoint=" + srv.URL() }
	for _, c := range []struct {
		name    string
		version int
		segMB   int
		repo    func(*testing.T) string
	}{
		{"pg15-file", 15, 1, fileRepo},
		{"pg15-s3", 15, 1, s3Repo},
		{"pg17-file", 17, 1, fileRepo},
		{"pg17-s3-16MB", 17, 16, s3Repo},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			pitr(t, bin, c.version, c.segMB, c.repo(t))
			t.Logf("%s took %v", c.name, time.Since(start).Round(time.Millisecond))
		})
	}
}

const restorePoint = "walship_test"

func pitr(t *testing.T, bin string, version, segMB int, repo string) {
	c := pgtest.Start(t, pgtest.Options{Version: version, WALSegSizeMB: segMB, Conf: []string{
		"archive_mode = on",
		fmt.Sprintf(`archive_command = '"%s" --repo "%s" wal-push "%%p"'`, bin, repo),
	}})
	c.Exec(t, "CREATE TABLE pitr (id int PRIMARY KEY, v text)")
	c.Exec(t, "INSERT INTO pitr SELECT g, md5(g::text) FROM generate_series(1, 100) g")
	target := baseBackup(t, c)
	c.Exec(t, "INSERT INTO pitr SELECT g, md5(g::text) FROM generate_series(101, 5000) g")
	c.Exec(t, "SELECT pg_create_restore_point($1)", restorePoint)
	c.Exec(t, "INSERT INTO pitr SELECT g, md5(g::text) FROM generate_series(5001, 10000) g")
	last := c.Scalar(t, "SELECT pg_walfile_name(pg_current_wal_lsn())")
	c.Exec(t, "SELECT pg_switch_wal()")
	waitArchived(t, c, last)

	if err := os.WriteFile(filepath.Join(target, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pgtest.Own(t, target)
	r := pgtest.StartDataDir(t, target, pgtest.Options{Version: version, Conf: []string{
		fmt.Sprintf(`restore_command = '"%s" --repo "%s" wal-fetch "%%f" "%%p"'`, bin, repo),
		"recovery_target_name = '" + restorePoint + "'",
		"recovery_target_action = 'promote'",
		"archive_mode = off", // a restored copy must not archive into its source's repository
	}})
	waitFor(t, 60*time.Second, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	if got := r.Scalar(t, "SELECT count(*) || ' ' || max(id) FROM pitr"); got != "5000 5000" {
		t.Errorf("restored rows (count, max id) = %s, want 5000 5000: recovery did not stop at the restore point", got)
	}
	serverLog, err := os.ReadFile(r.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`" from archive`, `recovery stopping at restore point "` + restorePoint + `"`} {
		if !strings.Contains(string(serverLog), want) {
			t.Errorf("the restored server's log does not say %s:\n%s", want, lastLines(string(serverLog), 30))
		}
	}
	if tli := r.Scalar(t, "SELECT timeline_id FROM pg_control_checkpoint()"); tli != "2" {
		t.Errorf("restored timeline %s, want 2 after promotion", tli)
	}
	if version == 15 {
		out := waldumpFetched(t, bin, repo, uint64(segMB)<<20)
		if !strings.Contains(out, "RESTORE_POINT "+restorePoint) {
			t.Errorf("pg_waldump over the fetched segments does not show the restore point")
		}
	}
}

// baseBackup backs c up into a new directory owned by the server user, with
// no WAL: pg_basebackup -X none where Debian's (15) can back up the server,
// the low-level backup API elsewhere. Both wait until the backup's WAL is
// archived.
func baseBackup(t *testing.T, c *pgtest.Cluster) string {
	target := filepath.Join(pgtest.MkdirOwned(t), "data")
	if c.Version() == pgtest.DefaultVersion {
		bb, err := pgtest.ClientBin("pg_basebackup")
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bb, "-D", target, "-d", c.ReplConnString(), "-c", "fast", "-X", "none")
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("pg_basebackup: %v\n%s", err, out)
		}
		return target
	}
	ctx := context.Background()
	conn := c.Conn(t)
	start, stop := "pg_backup_start('walship-test', true)", "pg_backup_stop(true)"
	if c.Version() < 15 {
		start, stop = "pg_start_backup('walship-test', true, false)", "pg_stop_backup(false, true)"
	}
	if _, err := conn.Exec(ctx, "SELECT "+start); err != nil {
		t.Fatal(err)
	}
	if err := copyDataDir(c.DataDir(), target); err != nil {
		t.Fatal(err)
	}
	var label, spcmap string
	if err := conn.QueryRow(ctx, "SELECT labelfile, spcmapfile FROM "+stop).Scan(&label, &spcmap); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, "backup_label"), []byte(label), 0o600); err != nil {
		t.Fatal(err)
	}
	if spcmap != "" {
		if err := os.WriteFile(filepath.Join(target, "tablespace_map"), []byte(spcmap), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Own(t, target)
	return target
}

// copyDataDir copies a running server's data directory as a low-level backup
// does: without WAL, the postmaster's files, or files that vanish meanwhile.
func copyDataDir(src, dst string) error {
	skip := map[string]bool{"postmaster.pid": true, "postmaster.opts": true}
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		rel, _ := filepath.Rel(src, path)
		out := filepath.Join(dst, rel)
		switch {
		case d.IsDir():
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			if rel == "pg_wal" {
				return os.MkdirAll(filepath.Join(out, "archive_status"), 0o700)
			}
			return nil
		case skip[rel], strings.HasPrefix(rel, "pg_wal"+string(filepath.Separator)):
			return nil
		}
		in, err := os.Open(path)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			return err
		}
		defer in.Close()
		f, err := os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, in)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
}

// waitArchived waits until the server has archived segment name.
func waitArchived(t *testing.T, c *pgtest.Cluster, name string) {
	t.Helper()
	waitFor(t, 60*time.Second, "archiving of "+name, func() bool {
		got := c.Scalar(t, "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver")
		f := strings.Fields(got)
		if len(f) > 1 && f[1] != "0" {
			b, _ := os.ReadFile(c.LogPath())
			t.Fatalf("archive_command failed (%s); server log:\n%s", got, lastLines(string(b), 30))
		}
		return len(f) > 0 && len(f[0]) >= 24 && f[0][:24] >= name
	})
}

func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waldumpFetched fetches every complete segment of timeline 1 with the
// wal-fetch command into a directory and runs pg_waldump over them, which
// must read every record to the end of the last one.
func waldumpFetched(t *testing.T, bin, repo string, segSize uint64) string {
	ctx := context.Background()
	loc, err := location.Parse(repo)
	if err != nil {
		t.Fatal(err)
	}
	s, err := location.Open(ctx, loc)
	if err != nil {
		t.Fatal(err)
	}
	var segs []wal.Segment
	for oi, err := range s.List(ctx, catalog.TimelinePrefix(1)) {
		if err != nil {
			t.Fatal(err)
		}
		o, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil {
			t.Fatalf("unexpected key %s: %v", oi.Key, err)
		}
		if o.Kind == catalog.Segment {
			segs = append(segs, o.Segment)
		}
	}
	slices.SortFunc(segs, func(a, b wal.Segment) int { return int(a.No) - int(b.No) })
	if len(segs) < 2 {
		t.Fatalf("the repository holds %d segments of timeline 1", len(segs))
	}
	dir := t.TempDir()
	for i, seg := range segs {
		if i > 0 && seg.No != segs[i-1].No+1 {
			t.Fatalf("the archive has a gap before %s", seg.Name(segSize))
		}
		name := seg.Name(segSize)
		if out, err := exec.Command(bin, "--repo", repo, "wal-fetch", name, filepath.Join(dir, name)).CombinedOutput(); err != nil {
			t.Fatalf("wal-fetch %s: %v\n%s", name, err, out)
		}
	}
	waldump, err := pgtest.ClientBin("pg_waldump")
	if err != nil {
		t.Fatal(err)
	}
	first, last := segs[0].Name(segSize), segs[len(segs)-1].Name(segSize)
	out, err := exec.Command(waldump, "--path", dir, first, last).CombinedOutput()
	if err != nil {
		t.Fatalf("pg_waldump %s..%s: %v\n%s", first, last, err, lastLines(string(out), 20))
	}
	t.Logf("pg_waldump read %d records from %d fetched segments, %s to %s", strings.Count(string(out), "\n"), len(segs), first, last)
	return string(out)
}

// minioEnv starts the test run's MinIO for t and puts its credentials in
// the environment, which walship, the servers, and so archive_command and
// restore_command, inherit.
// walshipOn returns a maker of walship commands on repoURL, run as the
// server user from /.
func walshipOn(t *testing.T, bin, repoURL string) func(args ...string) *exec.Cmd {
	return func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, append([]string{"--repo", repoURL}, args...)...)
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		return cmd
	}
}

func minioEnv(t *testing.T) *miniotest.Server {
	srv := miniotest.Start(t)
	t.Setenv("AWS_ACCESS_KEY_ID", srv.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", srv.SecretKey)
	t.Setenv("AWS_REGION", "us-east-1")
	return srv
}
