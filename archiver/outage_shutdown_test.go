package archiver

import (
	"testing"
	"time"

	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
)

// TestPrimaryShutdownDuringOutage: while the repository refuses every write,
// the primary's fast shutdown waits for the archiver to confirm the WAL it
// was sent, as for any standby, until the archiver's uploads give up and it
// disconnects; then the shutdown completes. Nothing unstored is ever
// acknowledged, and once the store and the primary are back, everything is
// archived.
func TestPrimaryShutdownDuringOutage(t *testing.T) {
	proxy, repo, direct := proxiedRepos(t, miniotest.Start(t), "s3")

	c := pgtest.Start(t, pgtest.Options{})
	created := createSlot(t, c)
	stopWatch := watchAcks(t, c, direct, created)
	cfg := testConfig(t, c)
	cfg.retryBase = 50 * time.Millisecond // uploads give up after about 6 s
	arch := runInBackground(t, repo, cfg)
	waitFor(t, "the archiver to stream", func() bool {
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'") == "1"
	})
	c.Exec(t, "CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g")

	proxy.Set(faultproxy.Rule{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.SlowDown})
	c.Exec(t, "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(20001, 40000) g")
	start := time.Now()
	c.StopWithin(t, time.Minute)
	t.Logf("the primary shut down in %s while the repository refused writes (%v refused)", time.Since(start).Round(time.Millisecond), proxy.Injected())
	arch.check(t)

	proxy.Clear()
	c.Start(t)
	target := flushLSN(t, c)
	res := stopCaughtUp(t, c, target, arch.stop, arch.check)
	stopWatch().report(t)
	checkArchive(t, c, direct, res.Durable)
}
