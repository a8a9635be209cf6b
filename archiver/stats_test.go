package archiver

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
)

func TestArrivals(t *testing.T) {
	var a arrivals
	ms := int64(time.Millisecond)
	a.add(100, 0, 1*ms)
	a.add(200, 0, 5*ms)  // same window
	a.add(300, 0, 20*ms) // a new one
	a.add(50, 400, 30*ms)
	if got := a.oldest(); got != 1*ms {
		t.Errorf("oldest = %d, want %d", got, 1*ms)
	}
	a.drop(150) // the first window still holds pending WAL
	if got := a.oldest(); got != 1*ms {
		t.Errorf("after drop(150): oldest = %d, want %d", got, 1*ms)
	}
	a.drop(200)
	if got := a.oldest(); got != 20*ms {
		t.Errorf("after drop(200): oldest = %d, want %d", got, 20*ms)
	}
	a.drop(300)
	if got := a.oldest(); got != 0 {
		t.Errorf("caught up: oldest = %d, want 0", got)
	}
	for i := range 2 * maxArrivals {
		a.add(wal.LSN(1000+i), 0, int64(i)*int64(arrivalGrain))
	}
	if len(a.marks) != maxArrivals || a.oldest() != 0 || a.marks[maxArrivals-1].end != wal.LSN(1000+2*maxArrivals-1) {
		t.Errorf("%d marks, oldest %d: want them bounded, the oldest kept", len(a.marks), a.oldest())
	}
}

// TestStats runs an archiver while rows are written: the positions reach
// the server's flush position, the counters move, the lag returns to zero
// and the states follow the run.
func TestStats(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	st := new(Stats)
	cfg := testConfig(t, c)
	cfg.Stats = st
	stop := background(t, repo, cfg)
	waitFor(t, "streaming", func() bool { s := st.Snapshot(); return s.Streaming && s.LeaseHeld })

	// While WAL flows, some of it waits for its upload.
	var sawPending atomic.Bool
	sample, stopSampling := context.WithCancel(t.Context())
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sample.Err() == nil {
			if s := st.Snapshot(); !s.OldestPending.IsZero() && s.Received > s.Shipped {
				sawPending.Store(true)
			}
			time.Sleep(time.Millisecond)
		}
	}()
	start := time.Now()
	workload(t, c, 4000)
	c.Exec(t, "SELECT pg_switch_wal()")
	workload(t, c, 1000)
	target := flushLSN(t, c)
	waitFor(t, "the stats to catch up", func() bool {
		s := st.Snapshot()
		return s.Shipped >= target && s.Acknowledged >= target && s.OldestPending.IsZero()
	})
	stopSampling()
	<-sampled
	s := st.Snapshot()
	if s.Received < s.Shipped || s.ServerFlush < target || s.Timeline != 1 {
		t.Errorf("received %s, shipped %s, server flush %s (want >= %s), timeline %d", s.Received, s.Shipped, s.ServerFlush, target, s.Timeline)
	}
	if s.Segments < 2 || s.Pieces == 0 || s.ShippedBytes < 2<<20 || s.UploadedBytes == 0 {
		t.Errorf("segments %d, pieces %d, shipped %d bytes, uploaded %d: want them counted", s.Segments, s.Pieces, s.ShippedBytes, s.UploadedBytes)
	}
	if s.LastReceived.Before(start) || s.LastShipped.Before(s.LastReceived.Add(-time.Second)) {
		t.Errorf("last received %s, last shipped %s, after %s", s.LastReceived, s.LastShipped, start)
	}
	if s.UploadErrors != 0 || s.UploadRetries != 0 || s.Reconnects != 0 {
		t.Errorf("errors %d, retries %d, reconnects %d on a healthy run", s.UploadErrors, s.UploadRetries, s.Reconnects)
	}
	if !sawPending.Load() {
		t.Error("no WAL was ever seen waiting for its upload")
	}
	res, err := stop()
	if err != nil {
		t.Fatal(err)
	}
	s = st.Snapshot()
	if s.Streaming || s.LeaseHeld || s.Shipped != res.Durable || s.Segments != uint64(res.Segments) || s.Pieces != uint64(res.Pieces) {
		t.Errorf("after the run: %+v; result %+v", s, res)
	}
}

// flakyStore fails the first writes of WAL objects, then works.
type flakyStore struct {
	storage.Store
	fails *atomic.Int32
}

func (f flakyStore) Create(ctx context.Context, key string, r io.Reader) error {
	if strings.HasPrefix(key, "wal/") && f.fails.Add(-1) >= 0 {
		return errors.New("service unavailable (test)")
	}
	return f.Store.(storage.Creator).Create(ctx, key, r)
}

func TestStatsUploadRetries(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	workload(t, c, 2000)
	var fails atomic.Int32
	fails.Store(3)
	repo := catalog.New(flakyStore{Store: fileRepo(t).Store(), fails: &fails}, catalog.Options{})
	st := new(Stats)
	if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Stats: st, Log: testLogger(t), retryBase: time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if s := st.Snapshot(); s.UploadErrors != 3 || s.UploadRetries != 3 || s.Segments == 0 {
		t.Errorf("errors %d, retries %d, segments %d: want 3, 3, > 0", s.UploadErrors, s.UploadRetries, s.Segments)
	}
}

func TestStatsBackup(t *testing.T) {
	c := pgtest.Start(t, pgtest.Options{})
	repo := fileRepo(t)
	st := new(Stats)
	if _, err := Backup(t.Context(), repo, BackupConfig{ConnString: "host=127.0.0.1 port=1 connect_timeout=2", Stats: st, Log: testLogger(t)}); err == nil {
		t.Fatal("a backup of nothing succeeded")
	}
	if s := st.Snapshot(); s.BackupFailures != 1 || s.Backups != 0 || s.BackupRunning || s.LastBackup != nil {
		t.Errorf("after a failed backup: %+v", s)
	}
	start := time.Now()
	b, err := Backup(t.Context(), repo, BackupConfig{ConnString: c.ConnString(), Fast: true, Stats: st, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	s := st.Snapshot()
	if s.Backups != 1 || s.BackupFailures != 1 || s.BackupRunning || s.LastBackup == nil {
		t.Fatalf("after a backup: %+v", s)
	}
	l := s.LastBackup
	if l.ID != b.ID || l.Size != b.RawSize || l.StoredSize != b.StoredSize || l.Size == 0 || l.Finished.Before(start) || l.Duration <= 0 || l.Duration > time.Since(start) {
		t.Errorf("last backup %+v, backup %s of %d bytes (%d stored)", l, b.ID, b.RawSize, b.StoredSize)
	}
}
