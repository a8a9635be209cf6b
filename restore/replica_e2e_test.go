package restore

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
)

// TestReplica seeds a standby with `walship replica` from a MinIO
// repository: it catches up from the repository (rows written after the
// backup, whose WAL the primary no longer has to keep) and then streams from
// the primary through the slot walship created, seeing rows written after
// it started.
func TestReplica(t *testing.T) {
	bin := clitest.Binary(t)
	srv := minioEnv(t)
	repoURL := "s3://" + srv.Bucket(t) + "/replica?endpoint=" + srv.URL()
	c := pgtest.Start(t, pgtest.Options{Version: 17})
	c.Exec(t, "CREATE TABLE t (id int PRIMARY KEY)")
	arch := startArchiver(t, bin, repoURL, c)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})
	cmd := exec.Command(bin, "--repo", repoURL, "backup", "--fast", "--pg", c.ConnString())
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("walship backup: %v\n%s", err, out)
	}
	c.Exec(t, "INSERT INTO t SELECT generate_series(1, 1000)")
	c.Exec(t, "SELECT pg_switch_wal()")

	dir := filepath.Join(pgtest.MkdirOwned(t), "standby")
	conninfo := fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=standby1", c.Port())
	cmd = exec.Command(bin, "--repo", repoURL, "replica", "--target-dir", dir, "--primary-conninfo", conninfo, "--slot", "standby1", "--create-slot")
	pgtest.RunAs(t, cmd)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("walship replica: %v\n%s", err, out)
	}
	if got := c.Scalar(t, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'standby1' AND restart_lsn IS NOT NULL"); got != "1" {
		t.Fatalf("slot standby1 with reserved WAL: %s", got)
	}
	s := pgtest.StartDataDir(t, dir, pgtest.Options{Version: 17})
	waitFor(t, time.Minute, "the standby to replay the archived rows", func() bool {
		return s.Scalar(t, "SELECT count(*) FROM t") == "1000"
	})
	if got := s.Scalar(t, "SELECT pg_is_in_recovery()"); got != "t" {
		t.Fatalf("the seeded node is not a standby: pg_is_in_recovery() = %s", got)
	}
	c.Exec(t, "INSERT INTO t SELECT generate_series(1001, 1500)")
	waitFor(t, time.Minute, "the standby to stream new rows", func() bool {
		return s.Scalar(t, "SELECT count(*) FROM t") == "1500"
	})
	if got := c.Scalar(t, "SELECT state || ' ' || coalesce((SELECT active::text FROM pg_replication_slots WHERE slot_name = 'standby1'), '?') FROM pg_stat_replication WHERE application_name = 'standby1'"); got != "streaming true" {
		t.Errorf("standby1 on the primary: %q, want streaming through its active slot", got)
	}
	if got := s.Scalar(t, "SHOW primary_slot_name"); got != "standby1" {
		t.Errorf("primary_slot_name %q", got)
	}
	if got := s.Scalar(t, "SHOW restore_command"); !strings.Contains(got, "wal-fetch") {
		t.Errorf("restore_command %q", got)
	}
	arch.stop(t)
}
