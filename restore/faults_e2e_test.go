package restore

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/pgtest"
)

// faultSource is a repository on MinIO holding a base backup and the WAL
// after it, streamed by `walship archive`, of a primary that was then
// stopped, with the digest of what it held.
type faultSource struct {
	bucket  string
	version int
	digest  string // count and md5 of the table load
}

// archivedSource writes rows, takes `walship backup` while the archiver
// streams, writes rows over several more segments (the last one unfinished,
// in pieces), waits until everything is acknowledged and stops the primary.
func archivedSource(t *testing.T, bin, repoURL, bucket string) faultSource {
	s := faultSource{bucket: bucket, version: pgtest.DefaultVersion}
	c := pgtest.Start(t, pgtest.Options{Version: s.version})
	c.Exec(t, "CREATE TABLE load (id int PRIMARY KEY, v text)")
	c.Exec(t, "INSERT INTO load SELECT g, md5(g::text) FROM generate_series(1, 10000) g")
	a := startArchiver(t, bin, repoURL, c)
	waitFor(t, 30*time.Second, "the archiver to stream", func() bool {
		a.check(t)
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'") == "1"
	})
	cmd := exec.Command(bin, "--repo", repoURL, "backup", "--fast", "--part-size", "1MiB", "--pg", c.ConnString())
	cmd.Dir = "/"
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("walship backup: %v\n%s", err, out)
	}
	c.Exec(t, "INSERT INTO load SELECT g, md5(g::text) FROM generate_series(10001, 25000) g")
	c.Exec(t, "SELECT pg_switch_wal()")
	c.Exec(t, "INSERT INTO load SELECT g, md5(g::text) FROM generate_series(25001, 40000) g")
	s.digest = tableDigest(t, c)
	flushed := c.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, 30*time.Second, "acknowledgement of "+flushed, func() bool {
		a.check(t)
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication", flushed) == "t"
	})
	c.Stop(t)
	a.stop(t)
	return s
}

func tableDigest(t *testing.T, c *pgtest.Cluster) string {
	return c.Scalar(t, "SELECT count(*) || ':' || md5(coalesce(string_agg(id::text || v, ',' ORDER BY id), '')) FROM load")
}

// restoreResult is one `walship restore --start` run.
type restoreResult struct {
	dir  string
	out  string
	err  error
	took time.Duration
}

// restoreStart runs `walship restore --start` of the latest state from
// repoURL into dir (absent or empty) as the server user: extraction, then
// PostgreSQL's recovery with wal-fetch as restore_command, both reading
// the repository through repoURL.
func restoreStart(t *testing.T, bin, repoURL, dir string, version int, env ...string) restoreResult {
	binDir, err := pgtest.BinDir(version)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--repo", repoURL, "restore", "--target-dir", dir, "--start", "--pg-bin", binDir)
	cmd.Dir = "/"
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C")
	cmd.Env = append(cmd.Env, env...)
	pgtest.RunAs(t, cmd)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	return restoreResult{dir: dir, out: string(out), err: err, took: time.Since(start)}
}

// checkComplete fails t unless r completed and the restored cluster holds
// what the primary held.
func (r restoreResult) checkComplete(t *testing.T, s faultSource) {
	t.Helper()
	if r.err != nil {
		t.Fatalf("walship restore --start: %v\n%s", r.err, lastLines(r.out, 40))
	}
	c := pgtest.StartDataDir(t, r.dir, pgtest.Options{Version: s.version})
	if got := tableDigest(t, c); got != s.digest {
		t.Errorf("the restore completed with %s in table load, the primary held %s: recovery ended short", got, s.digest)
	}
	c.Stop(t)
}

// checkLoud fails t unless r failed with a non-zero exit and a message
// that contains every one of want, and left nothing in its target, or a
// data directory that a start recovers (recovery.signal, and backup_label
// or a cluster in archive recovery), never one that comes up short.
func (r restoreResult) checkLoud(t *testing.T, want ...string) {
	t.Helper()
	var ee *exec.ExitError
	if !errors.As(r.err, &ee) || ee.ExitCode() == 0 {
		t.Fatalf("walship restore --start: %v, want a failure; output:\n%s", r.err, lastLines(r.out, 40))
	}
	t.Logf("walship restore failed (%v) after %s; last lines:\n%s", r.err, r.took.Round(time.Millisecond), lastLines(r.out, 6))
	for _, w := range want {
		if !strings.Contains(r.out, w) {
			t.Errorf("the failure does not say %q:\n%s", w, lastLines(r.out, 40))
		}
	}
	entries, err := os.ReadDir(r.dir)
	if err != nil || len(entries) == 0 {
		return // nothing left behind
	}
	if _, err := os.Stat(filepath.Join(r.dir, "recovery.signal")); err != nil {
		t.Errorf("the failed restore left a data directory without recovery.signal: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "backup_label")); err == nil {
		return // recovery never began: a start begins it from the backup
	}
	wantArchiveRecovery(t, r.dir)
}

// TestRestoreUnderStorageFaults restores a base backup and the WAL after it
// with `walship restore --start`, whose extraction and wal-fetch read
// MinIO through a proxy injecting faults. A restore must either complete
// with the primary's data or fail with a non-zero exit and a message that
// says why, leaving nothing, or a cluster that still needs recovery; never
// a recovery that ended early and came up with less. A full disk in the
// restore target must fail the restore and leave the target empty.
func TestRestoreUnderStorageFaults(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	bucket := srv.Bucket(t)
	start := time.Now()
	s := archivedSource(t, bin, "s3://"+bucket+"/pg?endpoint="+srv.URL(), bucket)
	t.Logf("source archived in %s", time.Since(start).Round(time.Millisecond))
	proxy := faultproxy.Start(t, srv.URL())
	viaProxy := "s3://" + bucket + "/pg?endpoint=" + proxy.URL()
	target := func(t *testing.T) string { return filepath.Join(pgtest.MkdirOwned(t), "data") }

	// Faults the clients and wal-fetch retry: resets, 500 and 503 answers
	// before the body, WAL bodies cut short, and latency, on every kind
	// of read, few enough that the retries get through: the restore must
	// complete.
	t.Run("retried faults", func(t *testing.T) {
		proxy.Set(
			// wal-fetch tries each file four times.
			faultproxy.Rule{Op: faultproxy.Get, Key: "/wal/", Fault: faultproxy.Truncate, Every: 4, Limit: 3},
			// The S3 client tries each request three times: one fault
			// in three requests at most.
			faultproxy.Rule{Op: faultproxy.Get, Cycle: []faultproxy.Fault{faultproxy.Reset, faultproxy.SlowDown, faultproxy.InternalError}, Every: 3},
			faultproxy.Rule{Op: faultproxy.List, Cycle: []faultproxy.Fault{faultproxy.SlowDown, faultproxy.Reset, faultproxy.InternalError}, Every: 3},
			faultproxy.Rule{Op: faultproxy.Any, Fault: faultproxy.Delay, Delay: 20 * time.Millisecond, Every: 2},
		)
		r := restoreStart(t, bin, viaProxy, target(t), s.version)
		injected := proxy.Injected()
		t.Logf("faults injected per rule %v; restore took %s", injected, r.took.Round(time.Millisecond))
		proxy.Clear()
		r.checkComplete(t, s)
		for i, n := range injected {
			if n == 0 {
				t.Errorf("rule %d injected no fault", i)
			}
		}
	})

	// Backup archive bodies cut short, a few times: each cut part is
	// extracted again from its start, and the restore completes.
	t.Run("backup read cut short, then read", func(t *testing.T) {
		proxy.Set(faultproxy.Rule{Op: faultproxy.Get, Key: "/backups/", Fault: faultproxy.Truncate, Every: 2, Limit: 3})
		r := restoreStart(t, bin, viaProxy, target(t), s.version)
		injected := proxy.Injected()
		t.Logf("faults injected %v; restore took %s", injected, r.took.Round(time.Millisecond))
		proxy.Clear()
		r.checkComplete(t, s)
		if injected[0] == 0 || !strings.Contains(r.out, "download failed; trying again") {
			t.Errorf("no backup download was cut and tried again (faults %v):\n%s", injected, lastLines(r.out, 20))
		}
	})

	// Every read of the backup cut short: the restore fails after its
	// attempts, naming the object, and removes what it extracted.
	t.Run("backup read always cut short", func(t *testing.T) {
		proxy.Set(faultproxy.Rule{Op: faultproxy.Get, Key: ".tar", Fault: faultproxy.Truncate})
		r := restoreStart(t, bin, viaProxy, target(t), s.version)
		t.Logf("faults injected %v; restore failed after %s", proxy.Injected(), r.took.Round(time.Millisecond))
		proxy.Clear()
		r.checkLoud(t, "backups/", "unexpected EOF", "trying again")
		if strings.Contains(r.out, "damaged tar archive") {
			t.Errorf("a download cut short is reported as a damaged archive:\n%s", lastLines(r.out, 5))
		}
		if _, err := os.Stat(r.dir); err == nil {
			if entries, _ := os.ReadDir(r.dir); len(entries) > 0 {
				t.Errorf("the failed extraction left %d entries in %s", len(entries), r.dir)
			}
		}
	})

	// backup.json cut short: the restore cannot plan, and says so,
	// instead of planning as if the backup were not there.
	t.Run("backup.json cut short", func(t *testing.T) {
		proxy.Set(faultproxy.Rule{Op: faultproxy.Get, Key: "backup.json", Fault: faultproxy.Truncate})
		r := restoreStart(t, bin, viaProxy, target(t), s.version)
		proxy.Clear()
		r.checkLoud(t, "backup.json", "unexpected EOF")
		if _, err := os.Stat(r.dir); err == nil {
			t.Errorf("the restore that could not plan made its target %s", r.dir)
		}
	})

	// A listing cut short: the restore cannot plan, and says so.
	t.Run("listing cut short", func(t *testing.T) {
		proxy.Set(faultproxy.Rule{Op: faultproxy.List, Fault: faultproxy.Truncate})
		r := restoreStart(t, bin, viaProxy, target(t), s.version)
		proxy.Clear()
		r.checkLoud(t, "list", "unexpected EOF")
		if _, err := os.Stat(r.dir); err == nil {
			t.Errorf("the restore that could not plan made its target %s", r.dir)
		}
	})

	// The WAL cannot be read at all: recovery must stop, not end before
	// the first segment and promote what the backup alone holds.
	t.Run("WAL unavailable", func(t *testing.T) {
		proxy.Set(faultproxy.Rule{Op: faultproxy.Get, Key: "/wal/", Fault: faultproxy.SlowDown})
		r := restoreStart(t, bin, viaProxy, target(t), s.version, "AWS_MAX_ATTEMPTS=1")
		t.Logf("faults injected %v; restore failed after %s", proxy.Injected(), r.took.Round(time.Millisecond))
		// The prefetcher wal-fetch left running must not hammer a store
		// that says to slow down.
		before := proxy.Requests(faultproxy.Any)
		time.Sleep(2 * time.Second)
		if n := proxy.Requests(faultproxy.Any) - before; n > 20 {
			t.Errorf("%d requests in the 2s after the restore failed, from what it left running; want it to back off", n)
		}
		proxy.Clear()
		r.checkLoud(t, "SlowDown", "could not restore file")
	})

	t.Run("full disk", func(t *testing.T) { restoreFullDisk(t, bin, viaProxy) })
}

// restoreFullDisk restores into a tmpfs too small for the backup: the
// restore must fail saying the disk is full and leave the target empty.
func restoreFullDisk(t *testing.T, bin, repoURL string) {
	mnt := pgtest.MkdirOwned(t)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a small tmpfs for a full disk (needs root and CAP_SYS_ADMIN): %v %s", err, out)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	pgtest.Own(t, mnt)
	dir := filepath.Join(mnt, "data")
	r := restoreStart(t, bin, repoURL, dir, pgtest.DefaultVersion)
	t.Logf("restore into 8 MB failed after %s", r.took.Round(time.Millisecond))
	r.checkLoud(t, "no space left on device")
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("the failed restore left its target %s", dir)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if used := (st.Blocks - st.Bfree) * uint64(st.Bsize); used > 64<<10 {
		t.Errorf("the failed restore left %d bytes on the full file system", used)
	}
}
