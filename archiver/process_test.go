package archiver

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walship/walship/internal/clitest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/testlog"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
)

// repoEnd is where the repository's WAL of timeline 1 stops being
// continuous: after the run of complete segments from the oldest, plus the
// run of pieces from offset 0 of the segment after it. Above that, a killed
// archiver may have left segments after a hole; those are not counted.
func repoEnd(t *testing.T, repo *catalog.Repo, segSize uint64) wal.LSN {
	complete, pieces := segmentsIn(t, repo, segSize)
	if len(complete) == 0 {
		return 0
	}
	next := complete[0].No
	for _, s := range complete {
		if s.No != next {
			break
		}
		next++
	}
	end := wal.Segment{TLI: 1, No: next}.Start(segSize)
	var off uint32
	for _, p := range pieces {
		if p.Segment.No == next && p.Start <= off && p.End > off {
			off = p.End
		}
	}
	return end + wal.LSN(off)
}

func slotLSN(t *testing.T, c *pgtest.Cluster) wal.LSN {
	lsn, err := wal.ParseLSN(c.Scalar(t, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship'"))
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// loadInBackground inserts rows until the returned stop is called.
func loadInBackground(t *testing.T, c *pgtest.Cluster) (stop func()) {
	c.Exec(t, "CREATE TABLE IF NOT EXISTS load (id bigserial, v text)")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		conn := c.Conn(t)
		for ctx.Err() == nil {
			_, _ = conn.Exec(ctx, "INSERT INTO load (v) SELECT md5(g::text) FROM generate_series(1, 200) g")
		}
	})
	return func() { cancel(); wg.Wait() }
}

func archiveCmd(t *testing.T, c *pgtest.Cluster, dir string, extra ...string) *exec.Cmd {
	args := append([]string{"--repo", "file://" + dir, "--log-format", "json", "archive", "--pg", c.ConnString(),
		"--sync-interval", "100ms", "--lease-ttl", "4s", "--wait"}, extra...)
	cmd := exec.Command(clitest.Binary(t), args...)
	cmd.Stderr = testlog.Writer(t)
	return cmd
}

// TestKillTrials kills the archiver with SIGKILL at random moments under a
// write load: whatever the primary was told is flushed must be in the
// repository, without a gap, every time; and in the end the whole range
// reads cleanly with pg_waldump. WALSHIP_TRIAL_SEED replays a run.
func TestKillTrials(t *testing.T) {
	trials := 20
	if n, err := strconv.Atoi(os.Getenv("WALSHIP_TRIALS")); err == nil && n > 0 {
		trials = n
	}
	seed := uint64(time.Now().UnixNano())
	if s, err := strconv.ParseUint(os.Getenv("WALSHIP_TRIAL_SEED"), 10, 64); err == nil {
		seed = s
	}
	t.Logf("WALSHIP_TRIAL_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	const segSize = 1 << 20
	c := pgtest.Start(t, pgtest.Options{})
	dir := filepath.Join(t.TempDir(), "repo")
	repo := fileRepoAt(t, dir)
	stopLoad := loadInBackground(t, c)
	for i := range trials {
		cmd := archiveCmd(t, c, dir)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// Kill it at a random moment of streaming (not while it waits
		// for the lease its killed predecessor left).
		waitFor(t, "streaming", func() bool {
			return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
		})
		time.Sleep(time.Duration(rng.IntN(1200)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		_ = cmd.Wait()
		// The next trial must see its own walsender streaming, not this
		// one's before the server notices the dead connection.
		waitFor(t, "the killed archiver's walsender to go", func() bool {
			return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication") == "0"
		})
		acked := slotLSN(t, c)
		end := repoEnd(t, repo, segSize)
		t.Logf("trial %d: acknowledged %s, repository continuous to %s", i, acked, end)
		if end < acked {
			t.Fatalf("trial %d: the primary was told %s is flushed, but the repository ends at %s", i, acked, end)
		}
	}
	stopLoad()
	target := flushLSN(t, c)
	cmd := archiveCmd(t, c, dir, "--until-caught-up")
	if out, err := cmd.Output(); err != nil {
		t.Fatalf("final run: %v\n%s", err, out)
	}
	end := repoEnd(t, repo, segSize)
	if end < target {
		t.Fatalf("after the final run the repository ends at %s, before %s", end, target)
	}
	complete, pieces := segmentsIn(t, repo, segSize)
	checkContinuous(t, complete, pieces) // holes filled, stale pieces gone
	waldump(t, fetchAll(t, repo, 1, segSize), 1, complete[0].Start(segSize), target)
}

// TestSignals stops the archiver process with SIGTERM and SIGINT: it exits
// 0 after storing and acknowledging everything it received.
func TestSignals(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	dir := filepath.Join(t.TempDir(), "repo")
	repo := fileRepoAt(t, dir)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd := archiveCmd(t, c, dir, "--sync-interval", "1h", "--status-interval", "200ms")
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			waitFor(t, "streaming", func() bool {
				return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'") == "1"
			})
			workload(t, c, 2000)
			flushed := flushLSN(t, c)
			waitFor(t, "the archiver to receive it", func() bool {
				return c.Scalar(t, "SELECT coalesce(bool_or(write_lsn >= $1::pg_lsn), false) FROM pg_stat_replication", flushed.String()) == "t"
			})
			_ = cmd.Process.Signal(sig)
			if err := cmd.Wait(); err != nil {
				t.Fatalf("after %s: %v, want exit 0", sig, err)
			}
			if acked := slotLSN(t, c); acked < flushed {
				t.Errorf("after %s the slot is at %s, want everything received (%s) acknowledged", sig, acked, flushed)
			}
			if end := repoEnd(t, repo, 1<<20); end < flushed {
				t.Errorf("after %s the repository ends at %s, before %s", sig, end, flushed)
			}
		})
	}
}

// TestBoundedRuns: --until-caught-up and --max-duration exit 0; a second
// archiver on the repository exits 75 naming the holder.
func TestBoundedRuns(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	dir := filepath.Join(t.TempDir(), "repo")
	workload(t, c, 1000)
	if out, err := archiveCmd(t, c, dir, "--until-caught-up").Output(); err != nil {
		t.Fatalf("--until-caught-up: %v\n%s", err, out)
	}
	start := time.Now()
	if err := archiveCmd(t, c, dir, "--max-duration", "2s").Run(); err != nil {
		t.Fatalf("--max-duration: %v", err)
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("--max-duration 2s ended after %s", d)
	}
	holder := archiveCmd(t, c, dir)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Process.Signal(syscall.SIGTERM); _ = holder.Wait() }()
	waitFor(t, "the first archiver", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication") == "1"
	})
	second := exec.Command(clitest.Binary(t), "--repo", "file://"+dir, "archive", "--pg", c.ConnString(), "--slot", "other")
	out, err := second.CombinedOutput()
	if second.ProcessState.ExitCode() != 75 {
		t.Errorf("second archiver: %v, exit %d, want 75\n%s", err, second.ProcessState.ExitCode(), out)
	}
	if want := fmt.Sprintf("/%d/", holder.Process.Pid); !strings.Contains(string(out), want) {
		t.Errorf("second archiver's error does not name the holder (pid %d):\n%s", holder.Process.Pid, out)
	}
}
