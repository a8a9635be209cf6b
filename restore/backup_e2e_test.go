package restore

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/location"
)

// TestBaseBackupRestores takes a base backup with `walship backup` while a
// write load runs and the archiver streams, restores it with ExtractBackup
// and the archived WAL, and checks it against oracles nobody here wrote:
// pg_verifybackup on the extracted backup (PostgreSQL 14-16: Debian's tool
// reads only their manifest version), PostgreSQL's recovery, pg_amcheck,
// and table digests equal to the primary's. A tablespace is restored to a
// new place on 15 and 17. Archives are cut into parts of 1 MiB, so that
// the parts are extracted in parallel.
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
}

func backupRestore(t *testing.T, bin string, version int, repoURL string) {
	c := pgtest.Start(t, pgtest.Options{Version: version})
	withTablespace := version == 15 || version == 17
	if withTablespace {
		c.Exec(t, fmt.Sprintf("CREATE TABLESPACE ts LOCATION '%s'", pgtest.MkdirOwned(t)))
		c.Exec(t, "CREATE TABLE in_ts TABLESPACE ts AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 20000) g")
		c.Exec(t, "CREATE INDEX ON in_ts (v) TABLESPACE ts") // a second file: the archive has two parts
	}
	c.Exec(t, "CREATE TABLE load (id bigserial PRIMARY KEY, v text)")
	arch := startArchiver(t, bin, repoURL, c)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})

	// A write load runs during the backup. It stops between statements, not
	// by cancelling one: a cancelled INSERT may still commit after the
	// digest below was taken.
	var stopping atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		conn := c.Conn(t)
		for !stopping.Load() {
			if _, err := conn.Exec(context.Background(), "INSERT INTO load (v) SELECT md5(g::text) FROM generate_series(1, 300) g"); err != nil {
				t.Error(err)
				return
			}
		}
	})
	stopLoad := func() { stopping.Store(true) }
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
	wg.Wait()

	digest := func(c *pgtest.Cluster, table string) string {
		return c.Scalar(t, "SELECT count(*) || ':' || md5(coalesce(string_agg(id::text || v, ',' ORDER BY id), '')) FROM "+table)
	}
	want := digest(c, "load")
	var wantTS string
	if withTablespace {
		wantTS = digest(c, "in_ts")
	}
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
	if version <= 16 {
		verify, err := pgtest.ClientBin("pg_verifybackup")
		if err != nil {
			t.Fatal(err)
		}
		args := []string{"-n", target}
		if len(tsMap) > 0 {
			// Moving a tablespace rewrites tablespace_map, on purpose.
			args = append(args, "--ignore", "tablespace_map")
		}
		if out, err := exec.Command(verify, args...).CombinedOutput(); err != nil {
			t.Fatalf("pg_verifybackup: %v\n%s", err, out)
		}
	}
	if err := os.WriteFile(filepath.Join(target, "recovery.signal"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range append([]string{target}, mapValues(tsMap)...) {
		pgtest.Own(t, d)
	}
	r := pgtest.StartDataDir(t, target, pgtest.Options{Version: version, Conf: []string{
		fmt.Sprintf(`restore_command = '"%s" --repo "%s" wal-fetch "%%f" "%%p"'`, bin, repoURL),
		"recovery_target_timeline = 'latest'",
		"recovery_target_action = 'promote'",
	}})
	waitFor(t, time.Minute, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	if got := digest(r, "load"); got != want {
		t.Errorf("restored load table %s, primary had %s", got, want)
	}
	if withTablespace {
		if got := digest(r, "in_ts"); got != wantTS {
			t.Errorf("restored tablespace table %s, primary had %s", got, wantTS)
		}
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

func mapValues(m map[uint32]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
