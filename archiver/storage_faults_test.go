package archiver

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	mcreds "github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/walship/walship/internal/faultproxy"
	"github.com/walship/walship/internal/miniotest"
	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/minio"
	"github.com/walship/walship/storage/s3"
)

// openS3 opens bucket/pg at endpoint (host:port) with the backend's
// client, as walship would.
func openS3(t *testing.T, backend, endpoint, bucket string, srv *miniotest.Server) storage.Store {
	t.Helper()
	var st storage.Store
	var err error
	switch backend {
	case "s3":
		st, err = s3.New(t.Context(), s3.Config{
			Bucket: bucket, Prefix: "pg", Endpoint: "http://" + endpoint, Region: "us-east-1", PathStyle: true,
			Credentials: credentials.NewStaticCredentialsProvider(srv.AccessKey, srv.SecretKey, ""),
		})
	case "minio":
		st, err = minio.New(minio.Config{
			Endpoint: endpoint, Bucket: bucket, Prefix: "pg", Region: "us-east-1",
			Credentials: mcreds.NewStaticV4(srv.AccessKey, srv.SecretKey, ""),
		})
	default:
		t.Fatalf("backend %q", backend)
	}
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// faultPhase is one stretch of a fault test: rules in force for a while,
// with something done at its start.
type faultPhase struct {
	name  string
	rules []faultproxy.Rule
	// reconnect ends the archiver's replication connection at the start:
	// the new session lists and reads the repository under the faults.
	reconnect bool
	for_      time.Duration
}

// storagePhases are the faults a repository on S3 shows, each on the
// requests it hurts most.
var storagePhases = []faultPhase{
	{name: "put reset", rules: []faultproxy.Rule{{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.Reset, Every: 3}}},
	// The server stored the object, the archiver cannot know: its retry
	// finds the object there and compares it.
	{name: "put reset after storing", rules: []faultproxy.Rule{{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.ResetAfter, Every: 3}}},
	{name: "put 500", rules: []faultproxy.Rule{{Op: faultproxy.Put, Fault: faultproxy.InternalError, Every: 2}}},
	{name: "put 503 SlowDown", rules: []faultproxy.Rule{{Op: faultproxy.Put, Fault: faultproxy.SlowDown, Every: 2}}},
	{name: "put body cut short", rules: []faultproxy.Rule{{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.TruncateRequest, Every: 3}}},
	{name: "put latency", rules: []faultproxy.Rule{{Op: faultproxy.Put, Fault: faultproxy.Delay, Delay: 300 * time.Millisecond}}},
	// Reads happen when a session starts (walship.json, then the pieces of
	// the filling segment, which it checks the re-streamed WAL against)
	// and when a retried write finds its object stored. The clients retry
	// resets and 5xx answers themselves (one in two requests at most
	// here), not a body cut short: that costs the session.
	{name: "get faults", reconnect: true, rules: []faultproxy.Rule{
		{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.ResetAfter, Every: 2},
		{Op: faultproxy.Get, Fault: faultproxy.Truncate, Limit: 1},
		{Op: faultproxy.Get, Cycle: []faultproxy.Fault{faultproxy.Reset, faultproxy.SlowDown, faultproxy.InternalError}, Every: 2, Limit: 6},
	}},
	// Listings happen when a session starts and when the lease renews.
	{name: "list faults", reconnect: true, rules: []faultproxy.Rule{
		{Op: faultproxy.List, Fault: faultproxy.Truncate, Limit: 1},
		{Op: faultproxy.List, Cycle: []faultproxy.Fault{faultproxy.SlowDown, faultproxy.Reset, faultproxy.InternalError}, Limit: 2},
	}},
	// Every write fails for a while: nothing more may be acknowledged,
	// and the archiver goes on once the store is back.
	{name: "put outage", for_: 2 * time.Second, rules: []faultproxy.Rule{{Op: faultproxy.Put, Fault: faultproxy.SlowDown}}},
}

// TestArchiveUnderStorageFaults streams a write load into MinIO through a
// proxy that injects each storage fault in turn (resets before and after
// the server acted, 500, 503 SlowDown, latency, request and response
// bodies cut short, on writes, reads, stats and listings, and an outage of
// every write), with both S3 clients. Throughout, every position the slot
// was acknowledged to must already be in the repository as read directly;
// afterwards the archive must be continuous, parse with pg_waldump, pass
// walship verify, and no key may have been stored with two different
// contents.
func TestArchiveUnderStorageFaults(t *testing.T) {
	srv := miniotest.Start(t)
	for _, backend := range []string{"s3", "minio"} {
		t.Run(backend, func(t *testing.T) {
			start := time.Now()
			archiveUnderStorageFaults(t, srv, backend)
			t.Logf("%s took %s", backend, time.Since(start).Round(time.Millisecond))
		})
	}
}

// proxiedRepos opens a new bucket of srv with backend's client twice: repo
// through a fault proxy, which the test controls, and direct, to check what
// is stored.
func proxiedRepos(t *testing.T, srv *miniotest.Server, backend string) (proxy *faultproxy.Proxy, repo, direct *catalog.Repo) {
	bucket := srv.Bucket(t)
	proxy = faultproxy.Start(t, srv.URL())
	opts := catalog.Options{Codec: codec.Options{Compression: codec.Zstd}}
	repo = catalog.New(openS3(t, backend, proxy.Endpoint(), bucket, srv), opts)
	direct = catalog.New(openS3(t, backend, srv.Endpoint, bucket, srv), opts)
	return proxy, repo, direct
}

func archiveUnderStorageFaults(t *testing.T, srv *miniotest.Server, backend string) {
	proxy, repo, direct := proxiedRepos(t, srv, backend)

	c := pgtest.Start(t, pgtest.Options{})
	created := createSlot(t, c)
	stopLoad := writeLoad(t, c)
	stopWatch := watchAcks(t, c, direct, created)
	cfg := testConfig(t, c)
	cfg.retryBase = 10 * time.Millisecond
	cfg.StatusInterval = 100 * time.Millisecond
	stats := new(Stats)
	cfg.Stats = stats
	arch := runInBackground(t, repo, cfg)
	waitFor(t, "the archiver to stream", func() bool {
		arch.check(t)
		return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming'") == "1"
	})
	time.Sleep(500 * time.Millisecond)

	for _, ph := range storagePhases {
		before := stats.Snapshot()
		acked := slotLSN(t, c)
		proxy.Set(ph.rules...)
		if ph.reconnect {
			pid := c.Scalar(t, "SELECT pid FROM pg_stat_replication WHERE application_name = 'walship'")
			c.Exec(t, "SELECT pg_terminate_backend($1::int)", pid)
			// The faults stay while the new session sets up.
			waitFor(t, "the archiver to stream again", func() bool {
				arch.check(t)
				return c.Scalar(t, "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walship' AND state = 'streaming' AND pid <> $1::int", pid) == "1"
			})
		}
		d := ph.for_
		if d == 0 {
			d = time.Second
		}
		time.Sleep(d)
		// On a loaded machine a phase can pass without the request its
		// fault needs; it lasts until every rule has fired.
		waitFor(t, ph.name+" to fault a request by every rule", func() bool {
			arch.check(t)
			return !slices.Contains(proxy.Injected(), 0)
		})
		injected := proxy.Injected()
		proxy.Clear()
		after := stats.Snapshot()
		t.Logf("%s: faults injected per rule %v; upload errors %d, retries %d, reconnects %d; slot %s → %s",
			ph.name, injected, after.UploadErrors-before.UploadErrors, after.UploadRetries-before.UploadRetries,
			after.Reconnects-before.Reconnects, acked, slotLSN(t, c))
	}

	// The store is healthy again: the archiver catches up.
	committed := stopLoad()
	target := flushLSN(t, c)
	res := stopCaughtUp(t, c, target, arch.stop, arch.check)
	stopWatch().report(t)
	t.Logf("%d inserts committed; %d segments and %d pieces stored to %s; %d keys written",
		committed, res.Segments, res.Pieces, res.Durable, proxy.Written())
	checkArchive(t, c, direct, res.Durable)
	for _, o := range proxy.Overwrites("/locks/") {
		t.Errorf("overwritten: %s", o)
	}
	verifyObjects(t, direct)
}

// TestArchiveStopsOnStorageOutage: a bounded run (--until-caught-up) whose
// every write is answered 503 SlowDown stops after its retries with an
// error that says so, acknowledging nothing it did not store, instead of
// retrying forever.
func TestArchiveStopsOnStorageOutage(t *testing.T) {
	srv := miniotest.Start(t)
	bucket := srv.Bucket(t)
	proxy := faultproxy.Start(t, srv.URL())
	t.Setenv("AWS_MAX_ATTEMPTS", "1") // the archiver's own retries only, to keep this short
	opts := catalog.Options{Codec: codec.Options{Compression: codec.Zstd}}
	repo := catalog.New(openS3(t, "s3", proxy.Endpoint(), bucket, srv), opts)
	direct := catalog.New(openS3(t, "s3", srv.Endpoint, bucket, srv), opts)
	c := pgtest.Start(t, pgtest.Options{})
	created := createSlot(t, c)
	workload(t, c, 3000)
	proxy.Set(faultproxy.Rule{Op: faultproxy.Put, Key: "/wal/", Fault: faultproxy.SlowDown})
	start := time.Now()
	_, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t), retryBase: 10 * time.Millisecond})
	took := time.Since(start)
	if err == nil || !strings.Contains(err.Error(), "SlowDown") || !strings.Contains(err.Error(), "wal/") {
		t.Fatalf("Run under a write outage = %v, want the storage error naming the object", err)
	}
	t.Logf("stopped after %s: %v", took.Round(time.Millisecond), err)
	if took > time.Minute {
		t.Errorf("the bounded run took %s to give up", took)
	}
	if got := slotLSN(t, c); got != created {
		end, _ := storedEnd(t.Context(), direct)
		t.Errorf("the slot moved from %s to %s although no WAL was stored (the repository ends at %s)", created, got, end)
	}
	if n := proxy.Injected()[0]; n < 2 {
		t.Errorf("%d writes faulted", n)
	}
}
