package restore

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
)

// TestRestoreAcrossTimelines archives a primary, seeds a standby with
// `walship replica`, promotes it and points the archiver at it, so that the
// repository holds timeline 1 and its successor 2. A restore of the latest
// state replays the backup taken on timeline 1 along timeline 2; a time
// target before the promotion stops on timeline 1's part of the path; and a
// stray timeline 3 (a history file branching off early, as a test restore
// that promoted and archived would leave) neither takes over "latest" nor
// cuts recovery short at its branch point.
func TestRestoreAcrossTimelines(t *testing.T) {
	bin := clitest.Binary(t)
	repoURL := "file://" + filepath.Join(pgtest.MkdirOwned(t), "repo")
	const version = 15
	p := pgtest.Start(t, pgtest.Options{Version: version})
	p.Exec(t, "CREATE TABLE marker (n int PRIMARY KEY, tli int)")
	arch := startArchiver(t, bin, repoURL, p)
	waitFor(t, time.Minute, "the archiver to stream", func() bool {
		return p.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship'") == "1"
	})
	walship := func(args ...string) string {
		t.Helper()
		out, err := walshipOn(t, bin, repoURL)(args...).CombinedOutput()
		if err != nil {
			t.Fatalf("walship %q: %v\n%s", args, err, out)
		}
		return string(out)
	}
	walship("backup", "--fast", "--pg", p.ConnString())
	p.Exec(t, "INSERT INTO marker VALUES (1, 1)")

	standbyDir := filepath.Join(pgtest.MkdirOwned(t), "standby")
	walship("replica", "--target-dir", standbyDir, "--primary-conninfo",
		fmt.Sprintf("host=127.0.0.1 port=%d user=postgres application_name=standby", p.Port()))
	s := pgtest.StartDataDir(t, standbyDir, pgtest.Options{Version: version})
	p.Exec(t, "INSERT INTO marker VALUES (2, 1)")
	waitFor(t, time.Minute, "the standby to replay", func() bool { return s.Scalar(t, "SELECT count(*) FROM marker") == "2" })
	beforePromotion := s.Scalar(t, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
	time.Sleep(20 * time.Millisecond)

	// Failover: the archiver stores what it has, the old primary goes,
	// the standby is promoted and the archiver follows it.
	flushed := p.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, time.Minute, "the archiver to store timeline 1", func() bool {
		return p.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", flushed) == "t"
	})
	arch.stop(t)
	p.Stop(t)
	s.Exec(t, "SELECT pg_promote()")
	waitFor(t, time.Minute, "promotion", func() bool { return s.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
	s.Exec(t, "INSERT INTO marker VALUES (3, 2)")
	arch = startArchiver(t, bin, repoURL, s)
	s.Exec(t, "INSERT INTO marker VALUES (4, 2)")
	final := s.Scalar(t, "SELECT string_agg(n || ':' || tli, ',' ORDER BY n) FROM marker")
	flushed = s.Scalar(t, "SELECT pg_current_wal_flush_lsn()")
	waitFor(t, time.Minute, "the archiver to store timeline 2", func() bool {
		return s.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", flushed) == "t"
	})
	arch.stop(t)
	s.Stop(t)

	restoreAndCheck := func(t *testing.T, want string, wantTLI string, args ...string) {
		t.Helper()
		dir := filepath.Join(pgtest.MkdirOwned(t), "data")
		out := walship(append([]string{"restore", "--target-dir", dir}, args...)...)
		if !strings.Contains(out, "timeline  "+wantTLI+"\n") {
			t.Errorf("restore %q planned another timeline than %s:\n%s", args, wantTLI, out)
		}
		r := pgtest.StartDataDir(t, dir, pgtest.Options{Version: version})
		waitFor(t, time.Minute, "promotion", func() bool { return r.Scalar(t, "SELECT pg_is_in_recovery()") == "f" })
		if got := r.Scalar(t, "SELECT string_agg(n || ':' || tli, ',' ORDER BY n) FROM marker"); got != want {
			t.Errorf("restore %q: markers %s, want %s", args, got, want)
		}
	}
	t.Run("latest along timeline 2", func(t *testing.T) { restoreAndCheck(t, final, "2") })
	t.Run("time before the promotion", func(t *testing.T) {
		restoreAndCheck(t, "1:1,2:1", "2", "--to-time", beforePromotion)
	})
	t.Run("a stray timeline 3", func(t *testing.T) {
		// Timeline 3 branches off 2 at its start, as a restore of timeline
		// 2 that promoted and archived its history would leave.
		hist := readHistory(t, repoURL, 2)
		fields := strings.Fields(hist)
		history := hist + fmt.Sprintf("2\t%s\tafter a test restore\n", fields[1])
		f := filepath.Join(pgtest.MkdirOwned(t), "00000003.history")
		if err := os.WriteFile(f, []byte(history), 0o644); err != nil {
			t.Fatal(err)
		}
		pgtest.Own(t, filepath.Dir(f))
		walship("wal-push", f)
		restoreAndCheck(t, final, "2")
	})
}

// readHistory reads timeline tli's history file from a file repository
// through wal-fetch's library path.
func readHistory(t *testing.T, repoURL string, tli int) string {
	t.Helper()
	repo := openFileRepo(t, strings.TrimPrefix(repoURL, "file://"))
	b, err := repo.ReadAll(t.Context(), fmt.Sprintf("wal/%08X.history", tli), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
