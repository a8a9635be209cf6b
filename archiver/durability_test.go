package archiver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// background runs the archiver until the returned stop is called, which
// waits for it and returns its result.
func background(t testing.TB, repo *catalog.Repo, cfg Config) func() (Result, error) {
	ctx, cancel := context.WithCancel(t.Context())
	type out struct {
		res Result
		err error
	}
	done := make(chan out, 1)
	go func() {
		res, err := Run(ctx, repo, cfg)
		done <- out{res, err}
	}()
	return func() (Result, error) {
		cancel()
		o := <-done
		return o.res, o.err
	}
}

// stopCaughtUp waits until the archiver has told the primary that target
// is flushed (calling alive, if not nil, to fail early if it ended), stops
// it with stop, and fails t unless it ended cleanly with target durable.
func stopCaughtUp(t *testing.T, c *pgtest.Cluster, target wal.LSN, stop func() (Result, error), alive func(*testing.T)) Result {
	t.Helper()
	waitFor(t, "the archiver to catch up with "+target.String(), func() bool {
		if alive != nil {
			alive(t)
		}
		return c.Scalar(t, "SELECT coalesce(bool_or(flush_lsn >= $1::pg_lsn), false) FROM pg_stat_replication WHERE application_name = 'walship'", target.String()) == "t"
	})
	res, err := stop()
	if err != nil {
		t.Fatalf("the archiver failed: %v", err)
	}
	if res.Durable < target {
		t.Fatalf("durable %s < %s", res.Durable, target)
	}
	return res
}

// waitFor polls cond until it holds or the test's deadline is near.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fetchAll writes every complete segment of tli and the tip assembled from
// its pieces, zero-padded, into a new directory, as restore_command would
// see them.
func fetchAll(t *testing.T, repo *catalog.Repo, tli wal.TimeLineID, segSize uint64) string {
	complete, pieces := segmentsIn(t, repo, segSize)
	checkContinuous(t, complete, pieces)
	dir := pgtest.MkdirOwned(t)
	for _, seg := range complete {
		b, err := repo.ReadAll(t.Context(), catalog.SegmentKey(seg, segSize), int64(segSize))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, seg.Name(segSize)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if len(pieces) > 0 {
		tip := make([]byte, segSize)
		for _, p := range pieces {
			b, err := repo.ReadAll(t.Context(), p.Key, int64(segSize))
			if err != nil {
				t.Fatal(err)
			}
			copy(tip[p.Start:], b)
		}
		if err := os.WriteFile(filepath.Join(dir, pieces[0].Segment.Name(segSize)), tip, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pgtest.Own(t, dir)
	return dir
}

// TestPrimaryShutdown checks that a primary shutting down does not wait on
// the archiver, and that its shutdown checkpoint reaches the repository: the
// archiver answers reply requests only after storing what it received.
func TestPrimaryShutdown(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	cfg := testConfig(t, c)
	cfg.SyncInterval = time.Hour // only the reply request can ship the tail
	stop := background(t, repo, cfg)
	waitFor(t, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'") == "1"
	})
	workload(t, c, 2000)
	c.Stop(t)
	logb, _ := os.ReadFile(c.LogPath())
	if !bytes.Contains(logb, []byte("database system is shut down")) {
		t.Fatalf("the primary did not finish a fast shutdown:\n%s", logb)
	}
	res, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := pgtest.ClientBin("pg_controldata")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(ctl, "-D", c.DataDir())
	pgtest.RunAs(t, cmd)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pg_controldata: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Latest checkpoint location:\s+(\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("pg_controldata output has no checkpoint location:\n%s", out)
	}
	ckpt, err := wal.ParseLSN(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	if res.Durable <= ckpt {
		t.Errorf("durable %s does not cover the shutdown checkpoint at %s", res.Durable, ckpt)
	}
	dir := fetchAll(t, repo, 1, 1<<20)
	dump := waldump(t, dir, 1, wal.SegmentOf(1, ckpt, 1<<20).Start(1<<20), res.Durable)
	if !strings.Contains(dump, "CHECKPOINT_SHUTDOWN") {
		t.Errorf("the stored WAL lacks the shutdown checkpoint:\n%s", dump)
	}
}

// TestSynchronousCommit names the archiver in synchronous_standby_names:
// a COMMIT returns only once its record is in the repository, so killing
// the primary right after loses nothing.
func TestSynchronousCommit(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"synchronous_standby_names = 'walship_sync'"}})
	repo := fileRepo(t)
	cfg := testConfig(t, c)
	cfg.AppName, cfg.Synchronous = "walship_sync", true
	cfg.SyncInterval = time.Hour // the commit, not the timer, must ship it
	stop := background(t, repo, cfg)
	waitFor(t, "the archiver to become the synchronous standby", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship_sync' AND sync_state = 'sync'") == "1"
	})
	c.Exec(t, "CREATE TABLE marker (v text)")
	conn := c.Conn(t)
	var xid string
	tx, err := conn.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(t.Context(), "INSERT INTO marker VALUES ('committed') RETURNING txid_current()::text").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	c.Kill(t)
	res, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	dir := fetchAll(t, repo, 1, 1<<20)
	complete, pieces := segmentsIn(t, repo, 1<<20)
	first := pieces[0].Segment
	if len(complete) > 0 {
		first = complete[0]
	}
	dump := waldump(t, dir, 1, first.Start(1<<20), res.Durable)
	if !regexp.MustCompile(fmt.Sprintf(`tx:\s+%s, lsn: \S+, prev \S+, desc: COMMIT`, xid)).MatchString(dump) {
		t.Errorf("the repository lacks the commit of transaction %s (durable %s):\n%s", xid, res.Durable, lastLines(dump, 15))
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
