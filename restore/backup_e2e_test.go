package restore

import (
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/location"
)

// TestBaseBackupRestores takes a base backup with `walship backup` while
// pgbench runs and the archiver streams, restores it with ExtractBackup and
// the archived WAL, and checks it against oracles nobody here wrote:
// pg_verifybackup on the extracted backup (every file's size and checksum
// as the server listed them), PostgreSQL's recovery to a position after
// the backup at which the primary's tables were digested, pg_amcheck, and
// the digests. A tablespace is restored to a new place on 15 and 17.
// Archives are cut into parts of 1 MiB, so that the parts are extracted in
// parallel.
func TestBaseBackupRestores(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	fileRepo := func(t *testing.T) string { return "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo") }
	for _, v := range pgtest.Versions() {
		t.Run(fmt.Sprintf("pg%d-file", v), func(t *testing.T) { backupRestore(t, bin, v, fileRepo(t)) })
	}
	t.Run("pg16-s3", func(t *testing.T) {
		backupRestore(t, bin, 16, "s3://"+srv.Bucket(t)+"/pg?endpoint="+srv.URL())
	})
	t.Run("pg18-minio", func(t *testing.T) {
		backupRestore(t, bin, 18, "minio://"+strings.TrimPrefix(srv.URL(), "http://")+"/"+srv.Bucket(t)+"/pg?secure=false")
	})
}

// pgbenchTables are what pgbench -i makes and pgbench's default script
// writes.
var pgbenchTables = []string{"pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history"}

// tablesDigest digests tables' rows, in an order that does not depend on
// their physical places.
func tablesDigest(t *testing.T, c *pgtest.Cluster, tables ...string) string {
	t.Helper()
	var parts []string
	for _, table := range tables {
		parts = append(parts, table+"="+c.Scalar(t, "SELECT count(*) || ':' || md5(coalesce(string_agg(r::text, ',' ORDER BY r::text), '')) FROM "+table+" r"))
	}
	return strings.Join(parts, " ")
}

// startPgbench runs pgbench's default read-write script on c with two
// clients until the returned function stops it; that function returns
// once no transaction of pgbench's can still commit.
func startPgbench(t *testing.T, c *pgtest.Cluster) func() {
	t.Helper()
	pgbench, err := pgtest.ClientBin("pgbench")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(pgbench, "-i", "-q", "-s", "1", c.ConnString()).CombinedOutput(); err != nil {
		t.Fatalf("pgbench -i: %v\n%s", err, out)
	}
	cmd := exec.Command(pgbench, "-n", "-c", "2", "-j", "1", "-T", "600", c.ConnString())
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		select {
		case err := <-done:
			t.Fatalf("pgbench ended before it was stopped: %v\n%s", err, out.String())
		default:
		}
		_ = cmd.Process.Kill()
		<-done
		// A COMMIT the server received may still finish after the client
		// went: wait for pgbench's sessions to end.
		waitFor(t, time.Minute, "pgbench's sessions to end", func() bool {
			return c.Scalar(t, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'") == "0"
		})
		if n := c.Scalar(t, "SELECT count(*) FROM pgbench_history"); n == "0" {
			t.Fatalf("pgbench committed nothing:\n%s", out.String())
		}
	}
	t.Cleanup(func() {
		if !stopped {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	return stop
}

func backupRestore(t *testing.T, bin string, version int, repoURL string) {
	c := pgtest.Start(t, pgtest.Options{Version: version})
	withTablespace := version == 15 || version == 17
	tables := pgbenchTables
	if withTablespace {
		c.Exec(t, fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", pgtest.MkdirOwned(t)))
		c.Exec(t, "CREATE TABLE in_ts TABLESPACE ts AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
		c.Exec(t, "CREATE INDEX ON in_ts (v) TABLESPACE ts") // a second file: the archive has two parts
		tables = append(slices.Clone(tables), "in_ts")
	}
	arch := startArchiver(t, bin, repoURL, c)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})

	stopLoad := startPgbench(t, c)
	time.Sleep(300 * time.Millisecond)
	cmd := exec.Command(bin, "--repo", repoURL, "backup", "--fast", "--part-size", "1MiB", "--pg", c.ConnString())
	cmd.Dir = "/"
	pgtest.RunAs(t, cmd)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("walship backup: %v\n%s", err, stderr.String())
	}
	id := strings.TrimSpace(string(out))
	time.Sleep(300 * time.Millisecond)
	stopLoad()

	// The point recovery stops at: nothing runs, so the tables hold
	// exactly what every transaction committed before it wrote.
	want := tablesDigest(t, c, tables...)
	stopAt := c.Scalar(t, "SELECT pg_current_wal_insert_lsn()")
	c.Exec(t, "UPDATE pgbench_branches SET bbalance = bbalance + 1") // after the target: must not be restored
	flushed := c.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, time.Minute, "the archiver to store everything", func() bool {
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", flushed) == "t"
	})
	c.Stop(t)
	arch.stop(t)

	loc, err := location.Parse(repoURL)
	if err != nil {
		t.Fatal(err)
	}
	st, err := location.Open(t.Context(), loc)
	if err != nil {
		t.Fatal(err)
	}
	repo := catalog.New(st, catalog.Options{})
	b, err := repo.ReadBackup(t.Context(), id)
	if err != nil {
		t.Fatalf("backup %q: %v\n%s", id, err, stderr.String())
	}
	if stop, err := wal.ParseLSN(stopAt); err != nil || stop <= b.EndLSN {
		t.Fatalf("the target %s (%v) is not after the backup's end %s", stopAt, err, b.EndLSN)
	}
	target := pgtest.MkdirOwned(t)
	tsMap := map[uint32]string{}
	for _, o := range b.Objects {
		if o.OID != 0 {
			tsMap[o.OID] = pgtest.MkdirOwned(t)
		}
	}
	archives := b.Archives()
	if withTablespace != (len(tsMap) == 1) || len(archives) != 1+len(tsMap) {
		t.Fatalf("backup objects %+v: want one tablespace archive: %v", b.Objects, withTablespace)
	}
	for _, parts := range archives {
		if len(parts) < 2 {
			t.Fatalf("archive %s is one part of %d bytes; want 1 MiB parts", parts[0].Name, parts[0].Size)
		}
	}
	if err := ExtractBackup(t.Context(), repo, b, target, tsMap, ExtractBackupOptions{}); err != nil {
		t.Fatal(err)
	}
	verifyBackup(t, target, version, len(tsMap) > 0)
	if err := os.WriteFile(filepath.Join(target, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]string{target}, mapValues(tsMap)...) {
		pgtest.Own(t, d)
	}
	r := pgtest.StartDataDir(t, target, pgtest.Options{Version: version, Conf: []string{
		fmt.Sprintf(`restore_command = '"%s" --repo "%s" wal-fetch "%%f" "%%p"'`, bin, repoURL),
		"recovery_target_timeline = 'latest'",
		"recovery_target_lsn = '" + stopAt + "'",
		"recovery_target_inclusive = off",
		"recovery_target_action = 'promote'",
	}})
	waitFor(t, time.Minute, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	if got := tablesDigest(t, r, tables...); got != want {
		t.Errorf("restored to %s:\n%s\nthe primary had there\n%s", stopAt, got, want)
	}
	if withTablespace {
		for oid, dir := range tsMap {
			link, err := os.Readlink(filepath.Join(target, "pg_tblspc", strconv.FormatUint(uint64(oid), 10)))
			if err != nil || link != dir {
				t.Errorf("tablespace %d links to %q (%v), want the new place %s", oid, link, err, dir)
			}
		}
	}
	amcheck, err := pgtest.ClientBin("pg_amcheck")
	if err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(amcheck, "--install-missing", "--heapallindexed", "-h", "127.0.0.1", "-p", strconv.Itoa(r.Port()), "-U", "postgres", "postgres")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("pg_amcheck on the restored cluster: %v\n%s", err, out)
	}
}

// verifyBackup runs Debian's pg_verifybackup (15) on the backup extracted
// into dir, without parsing WAL (-n). It reads manifests of version 1 only;
// the version 2 that PostgreSQL 17 and later write differs in the version
// number and a System-Identifier line, so for those it checks a copy of
// the manifest with that line removed and the manifest's checksum made
// again: the files, sizes and checksums are the server's, unchanged.
func verifyBackup(t *testing.T, dir string, version int, movedTablespace bool) {
	t.Helper()
	verify, err := pgtest.ClientBin("pg_verifybackup")
	if err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(dir, catalog.ManifestName)
	args := []string{"-n"}
	if version >= 17 {
		b, err := os.ReadFile(manifest)
		if err != nil {
			t.Fatal(err)
		}
		v1 := manifestVersion1(t, b)
		manifest = filepath.Join(t.TempDir(), "backup_manifest.v1")
		if err := os.WriteFile(manifest, v1, 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "-m", manifest)
	}
	if movedTablespace {
		// Moving a tablespace rewrites tablespace_map, on purpose.
		args = append(args, "--ignore", "tablespace_map")
	}
	args = append(args, dir)
	if out, err := exec.Command(verify, args...).CombinedOutput(); err != nil {
		t.Fatalf("pg_verifybackup %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if version >= 17 {
		// The rewritten manifest still has the tool check every file: one
		// size made wrong is found.
		b, err := os.ReadFile(manifest)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		i := strings.LastIndex(s, "\n\"Manifest-Checksum\"")
		wrong := strings.Replace(s[:i+1], `"Path": "PG_VERSION", "Size": 3,`, `"Path": "PG_VERSION", "Size": 4,`, 1)
		if wrong == s[:i+1] {
			t.Fatalf("the manifest lists no PG_VERSION of 3 bytes")
		}
		if err := os.WriteFile(manifest, fmt.Appendf(nil, "%s\"Manifest-Checksum\": \"%x\"}\n", wrong, sha256.Sum256([]byte(wrong))), 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(verify, args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "PG_VERSION") {
			t.Fatalf("pg_verifybackup with a wrong size for PG_VERSION: %v\n%s", err, out)
		}
	}
}

// manifestVersion1 rewrites a version 2 backup manifest as version 1.
func manifestVersion1(t *testing.T, m []byte) []byte {
	t.Helper()
	s := string(m)
	const v2 = `"PostgreSQL-Backup-Manifest-Version": 2,`
	if !strings.Contains(s, v2) {
		t.Fatalf("backup_manifest does not begin as version 2 does:\n%.200s", s)
	}
	s = strings.Replace(s, v2, `"PostgreSQL-Backup-Manifest-Version": 1,`, 1)
	sysid := regexp.MustCompile(`(?m)^"System-Identifier": [0-9]+,\n`)
	if len(sysid.FindAllString(s, -1)) != 1 {
		t.Fatalf("backup_manifest has no System-Identifier line:\n%.200s", s)
	}
	s = sysid.ReplaceAllString(s, "")
	// The checksum covers everything before its own line.
	i := strings.LastIndex(s, "\n\"Manifest-Checksum\": \"")
	if i < 0 {
		t.Fatalf("backup_manifest has no Manifest-Checksum line")
	}
	body := s[:i+1]
	return fmt.Appendf(nil, "%s\"Manifest-Checksum\": \"%x\"}\n", body, sha256.Sum256([]byte(body)))
}

func mapValues(m map[uint32]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
