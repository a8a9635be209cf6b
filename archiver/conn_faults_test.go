package archiver

import (
	"fmt"
	"testing"
	"time"

	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/tcpproxy"
)

// TestArchiveUnderConnectionFaults streams a write load through a TCP proxy
// in front of PostgreSQL into MinIO and breaks the replication connection
// every way a network and a server do: a reset, connections refused for a
// while, a short stall the stream survives, a path that dies without a
// reset (the archiver must notice by itself), a clean restart and a crash
// of the server. After each, the archiver must stream again, quickly, and
// resume without a gap; every acknowledged position must already be in the
// repository; re-streamed WAL must never store different bytes under a key.
func TestArchiveUnderConnectionFaults(t *testing.T) {
	// The proxy injects nothing; it records the writes.
	objects, repo, direct := proxiedRepos(t, miniotest.Start(t), "s3")

	// The server gives up on a silent standby after 4s, as it would after
	// its default minute.
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"wal_sender_timeout = 4s"}})
	pgnet := tcpproxy.Start(t, fmt.Sprintf("127.0.0.1:%d", c.Port()))
	created := createSlot(t, c)
	stopLoad := writeLoad(t, c)
	stopWatch := watchAcks(t, c, direct, created)
	cfg := testConfig(t, c)
	cfg.ConnString = fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", pgnet.Port())
	cfg.retryBase = 10 * time.Millisecond
	cfg.StatusInterval = 100 * time.Millisecond
	cfg.receiveTimeout = 2 * time.Second
	stats := new(Stats)
	cfg.Stats = stats
	arch := runInBackground(t, repo, cfg)

	// streamingAgain waits until a walsender other than old streams, and
	// returns how long that took.
	streamingAgain := func(what, old string, within time.Duration) string {
		t.Helper()
		start := time.Now()
		var pid string
		deadline := start.Add(within)
		for {
			arch.check(t)
			pid = c.Scalar(t, "SELECT coalesce((SELECT pid::text FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'), '')")
			if pid != "" && pid != old {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: the archiver did not stream again within %s", what, within)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: streaming again after %s (reconnects so far %d)", what, time.Since(start).Round(time.Millisecond), stats.Snapshot().Reconnects)
		return pid
	}
	// progress waits until the slot moves past where the server's flush is
	// now.
	progress := func(what string) {
		t.Helper()
		target := flushLSN(t, c)
		waitFor(t, what+": acknowledgement of "+target.String(), func() bool {
			arch.check(t)
			return slotLSN(t, c) >= target
		})
	}
	pid := streamingAgain("start", "", 30*time.Second)
	progress("start")

	// A reset of the replication connection.
	pgnet.Drop()
	pid = streamingAgain("reset", pid, 10*time.Second)
	progress("reset")

	// Connections refused for four seconds: the server seems down, and
	// the archiver's retries back off.
	pgnet.Refuse(true)
	pgnet.Drop()
	time.Sleep(4 * time.Second)
	pgnet.Refuse(false)
	pid = streamingAgain("refused", pid, 15*time.Second)
	progress("refused")

	// After a healthy stretch, one reset: the archiver reconnects at once,
	// not after the backoff its earlier failures built up.
	time.Sleep(time.Second)
	pgnet.Drop()
	start := time.Now()
	pid = streamingAgain("reset after recovery", pid, 10*time.Second)
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("reset after a healthy stretch: streaming again after %s, want the first retry's second or so", d.Round(time.Millisecond))
	}
	progress("reset after recovery")

	// A stall shorter than any timeout: the stream goes on where it was.
	pgnet.Stall()
	time.Sleep(time.Second)
	pgnet.Resume()
	progress("short stall")
	if now := c.Scalar(t, "SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'"); now != pid {
		t.Errorf("short stall: the archiver reconnected (walsender %s, was %s); a stall of 1s is not a dead connection", now, pid)
	}

	// The path dies without a reset: no byte and no end arrives, ever.
	// The archiver must give up on the connection by itself.
	pgnet.Freeze()
	pid = streamingAgain("dead path", pid, 20*time.Second)
	progress("dead path")

	// A clean restart and a crash of the server.
	c.Stop(t)
	time.Sleep(500 * time.Millisecond)
	c.Start(t)
	pid = streamingAgain("restart", pid, 20*time.Second)
	progress("restart")
	c.Kill(t)
	c.Start(t)
	streamingAgain("crash", pid, 20*time.Second)
	progress("crash")

	committed := stopLoad()
	target := flushLSN(t, c)
	res := stopCaughtUp(t, c, target, arch.stop, arch.check)
	stopWatch().report(t)
	t.Logf("%d inserts committed; %d segments and %d pieces stored to %s; %d reconnects",
		committed, res.Segments, res.Pieces, res.Durable, stats.Snapshot().Reconnects)
	checkArchive(t, c, direct, res.Durable)
	verifyObjects(t, direct)
	for _, o := range objects.Overwrites("/locks/") {
		t.Errorf("overwritten: %s", o)
	}
}
