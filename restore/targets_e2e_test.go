package restore

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
)

// marker is the state of the primary right after one committed step: the
// targets that name that moment, and what a restore to it must hold.
type marker struct {
	n      int
	time   string // clock_timestamp() after the commit
	lsn    string // pg_current_wal_insert_lsn() after the commit
	xid    string // the step's transaction
	name   string // a restore point made after the commit
	digest string
}

// TestRestoreTargets is the status-row oracle: during a write load it
// records, per step, a marker row and the moment's time, LSN, xid and
// restore point; `walship restore` to each target must come up with exactly
// the markers up to it and the data digest the primary had then. Two
// backups bracket the steps, so that planning has to choose.
//
// The whole set runs on PostgreSQL 16 with a file repository; 14, 15, 17
// and 18 run the latest, time, exclusive xid and restore point targets
// against MinIO through both S3 clients and a file repository.
func TestRestoreTargets(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	repos := map[string]func(t *testing.T) string{
		"file": func(t *testing.T) string { return "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo") },
		"s3":   func(t *testing.T) string { return "s3://" + srv.Bucket(t) + "/pitr?endpoint=" + srv.URL() },
		"minio": func(t *testing.T) string {
			return "minio://" + strings.TrimPrefix(srv.URL(), "http://") + "/" + srv.Bucket(t) + "/pitr?secure=false"
		},
	}
	t.Run("pg16-file-all", func(t *testing.T) { restoreTargets(t, bin, 16, repos["file"](t), true) })
	for _, m := range []struct {
		version int
		backend string
	}{{14, "minio"}, {15, "s3"}, {17, "file"}, {18, "s3"}} {
		t.Run(fmt.Sprintf("pg%d-%s", m.version, m.backend), func(t *testing.T) {
			repo := repos[m.backend](t)
			restoreTargets(t, bin, m.version, repo, false)
			if m.version == 15 {
				storageOutage(t, bin, m.version, repo, srv.URL())
			}
		})
	}
}

func restoreTargets(t *testing.T, bin string, version int, repoURL string, all bool) {
	c := pgtest.Start(t, pgtest.Options{Version: version})
	// The restored node's own configuration, for restore --start
	// --keep-running: a port of its own and a socket directory it can use.
	ownPort := freeTCPPort(t)
	if err := appendConf(filepath.Join(c.DataDir(), "postgresql.conf"), fmt.Sprintf("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '/tmp'\n", ownPort)); err != nil {
		t.Fatal(err)
	}
	c.Exec(t, "CREATE TABLE marker (n int PRIMARY KEY)")
	c.Exec(t, "CREATE TABLE data (id int PRIMARY KEY, v text)")
	arch := startArchiver(t, bin, repoURL, c)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})
	digest := func(c *pgtest.Cluster) string {
		return c.Scalar(t, "SELECT (SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM marker) || ' ' || (SELECT count(*) || ':' || md5(coalesce(string_agg(id::text || v, ',' ORDER BY id), '')) FROM data)")
	}
	var markers []marker
	step := func(n int) {
		// One transaction writes the marker and rewrites rows that every
		// step rewrites, so that a restore to the wrong point shows in the
		// digest too.
		m := marker{n: n}
		m.xid = c.Scalar(t, `WITH d AS (
				INSERT INTO data SELECT g, md5(g::text || $1::text) FROM generate_series(1, 2000) g
				ON CONFLICT (id) DO UPDATE SET v = excluded.v RETURNING 1)
			INSERT INTO marker SELECT $1::int FROM (SELECT count(*) FROM d) x RETURNING pg_current_xact_id()::text`, strconv.Itoa(n))
		m.time = c.Scalar(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
		m.lsn = c.Scalar(t, "SELECT pg_current_wal_insert_lsn()::text")
		m.name = fmt.Sprintf("rp%d", n)
		c.Scalar(t, "SELECT pg_create_restore_point($1)::text", m.name)
		m.digest = digest(c)
		markers = append(markers, m)
		time.Sleep(20 * time.Millisecond) // distinct commit times
	}
	backup := func() string {
		cmd := exec.Command(bin, "--repo", repoURL, "backup", "--fast", "--pg", c.ConnString())
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("walship backup: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	b1 := backup()
	for n := 1; n <= 3; n++ {
		step(n)
	}
	b2 := backup()
	for n := 4; n <= 6; n++ {
		step(n)
	}
	final := digest(c)
	flushed := c.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, time.Minute, "the archiver to store everything", func() bool {
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", flushed) == "t"
	})
	c.Stop(t)
	arch.stop(t)

	restoreTo := func(t *testing.T, args ...string) (string, string, error) {
		dir := filepath.Join(pgtest.MkdirOwned(t), "data")
		cmd := exec.Command(bin, append([]string{"--repo", repoURL, "restore", "--target-dir", dir}, args...)...)
		cmd.Dir = "/"
		pgtest.RunAs(t, cmd)
		out, err := cmd.CombinedOutput()
		return dir, string(out), err
	}
	for _, tc := range []struct {
		name   string
		args   []string
		want   string // digest
		backup string
		always bool // also in the shorter runs
	}{
		{"latest", nil, final, b2, true},
		{"immediate", []string{"--to-immediate"}, markers[2].digest, b2, false},
		{"time in the first backup's span", []string{"--to-time", markers[1].time}, markers[1].digest, b1, true},
		{"time after the second backup", []string{"--to-time", markers[4].time}, markers[4].digest, b2, false},
		{"lsn", []string{"--to-lsn", markers[3].lsn}, markers[3].digest, b2, false},
		{"xid", []string{"--to-xid", markers[0].xid}, markers[0].digest, b1, false},
		{"xid exclusive", []string{"--to-xid", markers[5].xid, "--exclusive"}, markers[4].digest, b2, true},
		{"restore point", []string{"--to-name", markers[2].name}, markers[2].digest, b1, true},
		{"chosen backup", []string{"--backup", b1, "--to-lsn", markers[4].lsn}, markers[4].digest, b1, false},
	} {
		if !all && !tc.always {
			continue
		}
		t.Run(tc.name, func(t *testing.T) {
			dir, out, err := restoreTo(t, tc.args...)
			if err != nil {
				t.Fatalf("walship restore %q: %v\n%s", tc.args, err, out)
			}
			if tc.backup != "" && !strings.Contains(out, "backup    "+tc.backup) {
				t.Errorf("restored a backup other than %s:\n%s", tc.backup, out)
			}
			if strings.Contains(out, "commit-time index") {
				t.Errorf("planned without the commit-time index:\n%s", out)
			}
			if _, err := os.Stat(filepath.Join(dir, "backup_manifest")); err != nil {
				t.Errorf("backup_manifest not kept: %v", err)
			}
			r := pgtest.StartDataDir(t, dir, pgtest.Options{Version: version})
			waitFor(t, time.Minute, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
			if got := digest(r); got != tc.want {
				t.Errorf("restored %s\nwant     %s", got, tc.want)
			}
			if got := r.Scalar(t, "SHOW archive_mode"); got != "off" {
				t.Errorf("archive_mode %s on the restored node, want off", got)
			}
			if tc.name == "latest" {
				amcheck, err := pgtest.ClientBin("pg_amcheck")
				if err != nil {
					t.Fatal(err)
				}
				cmd := exec.Command(amcheck, "--install-missing", "--heapallindexed", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port()), "-U", "postgres", "postgres")
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("pg_amcheck on the restored cluster: %v\n%s", err, out)
				}
			}
		})
	}
	if !all {
		return
	}
	t.Run("start", func(t *testing.T) {
		dir, out, err := restoreTo(t, "--to-time", markers[3].time, "--start", "--pg-bin", c.BinDir())
		if err != nil {
			t.Fatalf("restore --start: %v\n%s", err, out)
		}
		if !strings.Contains(out, "on timeline 2") || !strings.Contains(out, "last transaction replayed at") || !strings.Contains(out, "server stopped") {
			t.Errorf("restore --start reported:\n%s", out)
		}
		r := pgtest.StartDataDir(t, dir, pgtest.Options{Version: version})
		if got := r.Scalar(t, "SELECT pg_is_in_recovery()"); got != "f" {
			t.Errorf("after restore --start the node is still in recovery")
		}
		if got := digest(r); got != markers[3].digest {
			t.Errorf("restored %s\nwant     %s", got, markers[3].digest)
		}
	})
	t.Run("start paused, kept running", func(t *testing.T) {
		dir, out, err := restoreTo(t, "--to-name", markers[4].name, "--target-action", "pause", "--start", "--keep-running", "--pg-bin", c.BinDir())
		stopKept := func() {
			cmd := exec.Command(filepath.Join(c.BinDir(), "pg_ctl"), "-D", dir, "-m", "immediate", "stop")
			pgtest.RunAs(t, cmd)
			_ = cmd.Run()
		}
		t.Cleanup(stopKept)
		if err != nil {
			t.Fatalf("restore --start --keep-running: %v\n%s", err, out)
		}
		if !strings.Contains(out, "on timeline 1") || !strings.Contains(out, "server running") {
			t.Errorf("restore --start --keep-running reported:\n%s", out)
		}
		conn, err := pgx.Connect(t.Context(), fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres", ownPort))
		if err != nil {
			t.Fatalf("connect to the kept server: %v", err)
		}
		defer conn.Close(context.Background())
		var inRecovery bool
		var got string
		if err := conn.QueryRow(t.Context(), "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || !inRecovery {
			t.Errorf("the kept server: in recovery %v (%v), want paused in recovery", inRecovery, err)
		}
		if err := conn.QueryRow(t.Context(), "SELECT coalesce(string_agg(n::text, ',' ORDER BY n), '') FROM marker").Scan(&got); err != nil || got != "1,2,3,4,5" {
			t.Errorf("markers on the paused server %q (%v), want 1-5", got, err)
		}
	})
	t.Run("dry run", func(t *testing.T) {
		dir, out, err := restoreTo(t, "--to-xid", markers[4].xid, "--dry-run")
		if err != nil || !strings.Contains(out, "backup    "+b2) || !strings.Contains(out, "stop      ") {
			t.Errorf("restore --dry-run: %v, printed:\n%s", err, out)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("restore --dry-run created %s (%v)", dir, err)
		}
	})
	t.Run("start as root", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "data")
		out, err := exec.Command(bin, "--repo", repoURL, "restore", "--target-dir", dir, "--start").CombinedOutput()
		if code := exitCode(err); code != 2 || !strings.Contains(string(out), "refuses to run as root") {
			t.Errorf("restore --start as root: exit %d:\n%s", code, out)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("restore --start as root wrote %s", dir)
		}
	})
	t.Run("verify and damage", func(t *testing.T) {
		run := func(repo string, args ...string) (string, int) {
			cmd := exec.Command(bin, append([]string{"--repo", repo}, args...)...)
			pgtest.RunAs(t, cmd)
			out, err := cmd.CombinedOutput()
			return string(out), exitCode(err)
		}
		if out, code := run(repoURL, "verify"); code != 0 || !strings.Contains(out, "verified") || strings.Contains(out, "PROBLEM") {
			t.Fatalf("verify of a sound repository: exit %d:\n%s", code, out)
		}
		// A damaged copy: a segment that only recovery from b1 reads gets
		// a flipped byte, another one goes missing, and b2's base.tar is
		// cut short.
		src := strings.TrimPrefix(repoURL, "file://")
		dst := filepath.Join(pgtest.MkdirOwned(t), "damaged")
		if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
			t.Fatalf("copy the repository: %v\n%s", err, out)
		}
		damaged := "file://" + dst
		repo := openFileRepo(t, dst)
		bk1, err := repo.ReadBackup(t.Context(), b1)
		if err != nil {
			t.Fatal(err)
		}
		bk2, err := repo.ReadBackup(t.Context(), b2)
		if err != nil {
			t.Fatal(err)
		}
		before := wal.SegmentOf(1, bk2.StartLSN, 1<<20)
		before.No--
		corrupt := catalog.SegmentKey(before, 1<<20)
		flipByte(t, repo.Store(), corrupt, 1<<30)
		gone := before
		gone.No = (uint64(bk1.EndLSN) >> 20) + 1
		if gone.No >= before.No {
			t.Fatalf("no segment between b1's end %s and %s", bk1.EndLSN, corrupt)
		}
		goneKey := catalog.SegmentKey(gone, 1<<20)
		if err := os.Remove(filepath.Join(dst, goneKey)); err != nil {
			t.Fatal(err)
		}
		base2 := catalog.BackupObjectKey(b2, "base.tar")
		if err := os.Truncate(filepath.Join(dst, base2), 4096); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, dst)
		out, code := run(damaged, "verify")
		if strings.Contains(out, "permission denied") {
			t.Fatalf("verify could not read the damaged copy:\n%s", out)
		}
		t.Logf("verify of the damaged copy:\n%s", out)
		if code != 1 {
			t.Errorf("verify of a damaged repository: exit %d, want 1:\n%s", code, out)
		}
		for _, want := range []string{
			"PROBLEM " + corrupt + ": ",
			"PROBLEM " + goneKey + ": missing; backup " + b1 + " recovers along timeline 1 only up to",
			"PROBLEM " + base2 + ": ",
			"backup " + b2 + " cannot be restored",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("verify output lacks %q:\n%s", want, out)
			}
		}
		// Restore refuses b1 across the missing segment before any
		// download, and fails loudly on b2's damaged archive, leaving
		// nothing behind.
		for _, args := range [][]string{{"--backup", b1}, {"--backup", b2}} {
			dir := filepath.Join(pgtest.MkdirOwned(t), "data")
			out, code := run(damaged, append([]string{"restore", "--target-dir", dir}, args...)...)
			if code != 1 {
				t.Errorf("restore %q from the damaged repository: exit %d:\n%s", args, code, out)
			}
			if entries, _ := os.ReadDir(dir); len(entries) > 0 {
				t.Errorf("restore %q left %d entries in %s", args, len(entries), dir)
			}
		}
		if _, err := os.Stat(filepath.Join(dst, goneKey)); !os.IsNotExist(err) {
			t.Fatal(err)
		}
		// With the missing segment back, b1's recovery reads the damaged
		// one: wal-fetch fails and recovery stops instead of promoting.
		if out, err := exec.Command("cp", "-a", filepath.Join(src, goneKey), filepath.Join(dst, goneKey)).CombinedOutput(); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		dir := filepath.Join(pgtest.MkdirOwned(t), "data")
		out, code = run(damaged, "restore", "--target-dir", dir, "--backup", b1, "--to-lsn", markers[4].lsn, "--start", "--pg-bin", c.BinDir())
		if code != 1 || !strings.Contains(out, "stopped before recovery reached its target") {
			t.Errorf("restore --start through a damaged segment: exit %d:\n%s", code, out)
		}
	})
	t.Run("refusals", func(t *testing.T) {
		before := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
		dir, out, err := restoreTo(t, "--to-time", before)
		if code := exitCode(err); code != 1 || !strings.Contains(out, "outside the recoverable window") {
			t.Errorf("a time before every backup: exit %d, output:\n%s", code, out)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("a refused restore created %s (%v)", dir, err)
		}
		for _, args := range [][]string{
			{"--to-time", "2026-11-28 10:00:00"}, // no zone
			{"--to-lsn", "nope"},
			{"--to-xid", "1"},
			{"--to-lsn", "0/1", "--to-xid", "5"},
			{"--target-action", "explode"},
			{"--to-immediate", "--exclusive"},
			{"--tablespace-map", "nothing"},
		} {
			_, out, err := restoreTo(t, args...)
			if code := exitCode(err); code != 2 {
				t.Errorf("restore %q: exit %d, want 2 (usage); output:\n%s", args, code, out)
			}
		}
		// A directory that is not empty.
		full := pgtest.MkdirOwned(t)
		if err := os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o644); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, full)
		cmd := exec.Command(bin, "--repo", repoURL, "restore", "--target-dir", full)
		pgtest.RunAs(t, cmd)
		out2, err := cmd.CombinedOutput()
		if code := exitCode(err); code != 1 || !strings.Contains(string(out2), "is not empty") {
			t.Errorf("restore into a directory that is not empty: exit %d:\n%s", code, out2)
		}
		if b, err := os.ReadFile(filepath.Join(full, "keep")); err != nil || string(b) != "mine" {
			t.Errorf("the existing file was touched: %q, %v", b, err)
		}
	})
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}

func freeTCPPort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func appendConf(path, text string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func openFileRepo(t *testing.T, dir string) *catalog.Repo {
	st, err := file.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	return catalog.New(st, catalog.Options{})
}

// storageOutage restores the latest state, then makes the repository
// unreachable from the server's restore_command (its endpoint points at a
// closed port, as in an outage) before starting PostgreSQL: wal-fetch
// retries, then exits 126, and recovery stops with an error instead of
// ending early and promoting with less than was archived.
func storageOutage(t *testing.T, bin string, version int, repoURL, endpoint string) {
	t.Run("storage outage during recovery", func(t *testing.T) {
		dir := filepath.Join(pgtest.MkdirOwned(t), "data")
		cmd := exec.Command(bin, "--repo", repoURL, "restore", "--target-dir", dir)
		pgtest.RunAs(t, cmd)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("restore: %v\n%s", err, out)
		}
		auto := filepath.Join(dir, "postgresql.auto.conf")
		b, err := os.ReadFile(auto)
		if err != nil {
			t.Fatal(err)
		}
		down := strings.ReplaceAll(string(b), strings.TrimPrefix(endpoint, "http://"), "127.0.0.1:1")
		if down == string(b) {
			t.Fatalf("restore_command does not name the endpoint %s:\n%s", endpoint, b)
		}
		if err := os.WriteFile(auto, []byte(down), 0o600); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, dir)
		bins, err := pgtest.BinDir(version)
		if err != nil {
			t.Fatal(err)
		}
		server := exec.Command(filepath.Join(bins, "postgres"), "-D", dir, "-c", fmt.Sprintf("port=%d", freeTCPPort(t)),
			"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+dir)
		pgtest.RunAs(t, server)
		var log strings.Builder
		server.Stdout, server.Stderr = &log, &log
		if err := server.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- server.Wait() }()
		select {
		case err = <-done:
		case <-time.After(3 * time.Minute):
			_ = server.Process.Kill()
			<-done
			t.Fatalf("PostgreSQL kept running through the outage:\n%s", lastLines(log.String(), 20))
		}
		out := log.String()
		if err == nil || strings.Contains(out, "archive recovery complete") || strings.Contains(out, "selected new timeline") {
			t.Errorf("recovery ended instead of stopping (exit %v):\n%s", err, lastLines(out, 20))
		}
		if !strings.Contains(out, "wal-fetch") {
			t.Errorf("the server log does not show wal-fetch failing:\n%s", lastLines(out, 20))
		}
		if _, err := os.Stat(filepath.Join(dir, "recovery.signal")); err != nil {
			t.Errorf("recovery.signal is gone: the node left recovery (%v)", err)
		}
	})
}
