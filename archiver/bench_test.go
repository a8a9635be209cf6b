package archiver

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// benchRepos are a file repository and MinIO through the s3 client.
func benchRepos(b *testing.B) map[string]func(b *testing.B) *catalog.Repo {
	return map[string]func(b *testing.B) *catalog.Repo{
		"file": func(b *testing.B) *catalog.Repo { return fileRepoAt(b, b.TempDir()) },
		"minio": func(b *testing.B) *catalog.Repo {
			return catalog.New(objectStores(b)["s3"], catalog.Options{Codec: codec.Options{Compression: codec.Zstd}})
		},
	}
}

// BenchmarkSynchronousCommit measures what naming the archiver in
// synchronous_standby_names adds to a one-row COMMIT: an iteration is one
// committed INSERT.
func BenchmarkSynchronousCommit(b *testing.B) {
	run := func(b *testing.B, repo *catalog.Repo) {
		conf := []string{"synchronous_commit = on"}
		if repo != nil {
			conf = append(conf, "synchronous_standby_names = 'walship_sync'")
		}
		c := pgtest.Start(b, pgtest.Options{Conf: conf})
		if repo != nil {
			stop := background(b, repo, Config{ConnString: c.ConnString(), AppName: "walship_sync", Synchronous: true})
			defer stop()
			waitFor(b, "sync standby", func() bool {
				return c.Scalar(b, "SELECT count(*) FROM pg_stat_replication WHERE sync_state = 'sync'") == "1"
			})
		}
		c.Exec(b, "CREATE TABLE IF NOT EXISTS bench (v int)")
		conn := c.Conn(b)
		b.ResetTimer()
		for b.Loop() {
			if _, err := conn.Exec(b.Context(), "INSERT INTO bench VALUES (1)"); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("no-standby", func(b *testing.B) { run(b, nil) })
	for name, repo := range benchRepos(b) {
		b.Run(name, func(b *testing.B) { run(b, repo(b)) })
	}
}

// BenchmarkSyncInterval shows what --sync-interval trades: objects written
// per minute against the loss window (the primary's flush_lag for the
// archiver, sampled) under a steady trickle of commits. An iteration is one
// second of load.
func BenchmarkSyncInterval(b *testing.B) {
	for _, iv := range []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second} {
		for name, repo := range benchRepos(b) {
			b.Run(fmt.Sprintf("%s/%s", iv, name), func(b *testing.B) {
				c := pgtest.Start(b, pgtest.Options{Conf: []string{"synchronous_commit = on"}})
				c.Exec(b, "CREATE TABLE IF NOT EXISTS bench (v text)")
				r := repo(b)
				ctx, cancel := context.WithCancel(context.Background())
				var res Result
				var wg sync.WaitGroup
				wg.Go(func() {
					res, _ = Run(ctx, r, Config{ConnString: c.ConnString(), SyncInterval: iv})
				})
				waitFor(b, "streaming", func() bool {
					return c.Scalar(b, "SELECT count(*) FROM pg_stat_replication") == "1"
				})
				conn := c.Conn(b)
				var maxLag time.Duration
				b.ResetTimer()
				start := time.Now()
				for b.Loop() {
					until := time.Now().Add(time.Second)
					for time.Now().Before(until) {
						if _, err := conn.Exec(ctx, "INSERT INTO bench SELECT md5(g::text) FROM generate_series(1, 20) g"); err != nil {
							b.Fatal(err)
						}
						var lag string
						if err := conn.QueryRow(ctx, "SELECT coalesce(extract(epoch FROM flush_lag) * 1000, 0)::text FROM pg_stat_replication").Scan(&lag); err == nil {
							ms, _ := strconv.ParseFloat(lag, 64)
							maxLag = max(maxLag, time.Duration(ms*float64(time.Millisecond)))
						}
						time.Sleep(10 * time.Millisecond)
					}
				}
				elapsed := time.Since(start)
				b.StopTimer()
				cancel()
				wg.Wait()
				b.ReportMetric(float64(res.Pieces+res.Segments)/elapsed.Minutes(), "objects/min")
				b.ReportMetric(float64(maxLag.Milliseconds()), "max-flush-lag-ms")
			})
		}
	}
}
