package archiver

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// This file holds what the fault tests share: a write load that outlives
// server restarts, a watcher that holds every position the archiver
// acknowledged against what the repository holds, and the final checks.

// running is an archiver run in the background that a test can watch.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	res    Result
	err    error
}

// runInBackground starts Run; stop (or the test's end) stops it.
func runInBackground(t *testing.T, repo *catalog.Repo, cfg Config) *running {
	ctx, cancel := context.WithCancel(t.Context())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.res, r.err = Run(ctx, repo, cfg)
	}()
	t.Cleanup(func() { cancel(); <-r.done })
	return r
}

// check fails t if the run has ended.
func (r *running) check(t *testing.T) {
	t.Helper()
	select {
	case <-r.done:
		t.Fatalf("the archiver stopped on its own: %v", r.err)
	default:
	}
}

// stop stops the run cleanly and returns its result.
func (r *running) stop() (Result, error) {
	r.cancel()
	<-r.done
	return r.res, r.err
}

// writeLoad inserts rows into c's table load from a goroutine until the
// returned stop is called, reconnecting after errors (the server may be
// restarting). stop returns how many inserts committed.
func writeLoad(t *testing.T, c *pgtest.Cluster) (stop func() int) {
	c.Exec(t, "CREATE TABLE IF NOT EXISTS load (id bigserial PRIMARY KEY, v text)")
	var stopping atomic.Bool
	var committed atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for !stopping.Load() {
			if conn == nil {
				var err error
				if conn, err = pgx.Connect(context.Background(), c.ConnString()); err != nil {
					conn = nil
					time.Sleep(50 * time.Millisecond)
					continue
				}
			}
			if _, err := conn.Exec(context.Background(), "INSERT INTO load (v) SELECT md5(g::text) FROM generate_series(1, 100) g"); err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			committed.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	})
	return func() int {
		stopping.Store(true)
		wg.Wait()
		return int(committed.Load())
	}
}

// ackWatch samples the slot's restart_lsn, the position the archiver
// acknowledged, and checks each sample against the repository as read
// directly (not through a faulty path): every byte of WAL before it must
// be stored, in complete segments without a hole or in the pieces that
// continue them.
type ackWatch struct {
	mu         sync.Mutex
	samples    int
	checked    int // samples past the slot's creation point, held against the repository
	max        wal.LSN
	violations []string
}

// watchAcks starts an ackWatch of the slot 'walship', which must exist at
// created. stop ends it and returns it.
func watchAcks(t *testing.T, c *pgtest.Cluster, direct *catalog.Repo, created wal.LSN) (stop func() *ackWatch) {
	w := &ackWatch{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
			if conn == nil {
				var err error
				if conn, err = pgx.Connect(ctx, c.ConnString()); err != nil {
					conn = nil
					continue
				}
			}
			var s string
			if err := conn.QueryRow(ctx, "SELECT coalesce(restart_lsn::text, '0/0') FROM pg_replication_slots WHERE slot_name = 'walship'").Scan(&s); err != nil {
				conn.Close(context.Background())
				conn = nil
				continue
			}
			acked, err := wal.ParseLSN(s)
			if err != nil {
				continue
			}
			w.check(ctx, direct, created, acked)
		}
	})
	return func() *ackWatch {
		cancel()
		wg.Wait()
		return w
	}
}

func (w *ackWatch) check(ctx context.Context, direct *catalog.Repo, created, acked wal.LSN) {
	w.mu.Lock()
	w.samples++
	w.max = max(w.max, acked)
	w.mu.Unlock()
	if acked <= created {
		return
	}
	// A listing may pass a segment's key before the segment is stored and
	// reach its pieces after they were deleted: a second listing, which
	// starts after the segment was stored, tells.
	var end wal.LSN
	var err error
	for range 2 {
		if end, err = storedEnd(ctx, direct); err == nil && end >= acked {
			break
		}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.checked++
	switch {
	case ctx.Err() != nil:
	case err != nil:
		w.violations = append(w.violations, fmt.Sprintf("slot at %s: the repository: %v", acked, err))
	case end < acked:
		w.violations = append(w.violations, fmt.Sprintf("the slot was acknowledged to %s, but the repository holds WAL only to %s", acked, end))
	}
}

// report fails t for every violation and unless enough samples were
// checked.
func (w *ackWatch) report(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	t.Logf("ack watch: %d samples of the slot, %d held against the repository, last %s", w.samples, w.checked, w.max)
	for _, v := range w.violations {
		t.Error(v)
	}
	if w.checked < 10 {
		t.Errorf("only %d positions held against the repository; the watch saw too little", w.checked)
	}
}

// storedEnd is where the WAL of timeline 1 that the repository holds
// without a hole from its first segment ends: complete segments, then the
// contiguous pieces of the next (segments complete in any order, so the
// pieces of one may still stand in for it when the next is complete).
func storedEnd(ctx context.Context, repo *catalog.Repo) (wal.LSN, error) {
	const segSize = 1 << 20
	complete := map[uint64]bool{}
	pieces := map[uint64][]catalog.WALObject{}
	first := uint64(0)
	for oi, err := range repo.Store().List(ctx, catalog.TimelinePrefix(1)) {
		if err != nil {
			return 0, err
		}
		o, err := catalog.ParseWALKey(oi.Key, segSize)
		if err != nil {
			return 0, fmt.Errorf("stray key %s: %w", oi.Key, err)
		}
		switch o.Kind {
		case catalog.Segment:
			complete[o.Segment.No] = true
		case catalog.Piece:
			pieces[o.Segment.No] = append(pieces[o.Segment.No], o)
		default:
			continue
		}
		if first == 0 || o.Segment.No < first {
			first = o.Segment.No
		}
	}
	if first == 0 {
		return 0, nil
	}
	for no := first; ; no++ {
		start := wal.Segment{TLI: 1, No: no}.Start(segSize)
		if complete[no] {
			continue
		}
		// Pieces are listed by start offset.
		var end uint32
		for _, p := range pieces[no] {
			if p.Start <= end {
				end = max(end, p.End)
			}
		}
		return start + wal.LSN(end), nil
	}
}

// createSlot makes the archiver's slot and returns its first restart_lsn,
// before which nothing the archiver acknowledges lies.
func createSlot(t *testing.T, c *pgtest.Cluster) wal.LSN {
	c.Exec(t, "SELECT pg_create_physical_replication_slot('walship', true)")
	lsn, err := wal.ParseLSN(c.Scalar(t, "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'walship'"))
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// verifyObjects reads every object of repo that goes through the codec
// (all but walship.json and the lease) and checks its checksum, as walship
// verify does.
func verifyObjects(t *testing.T, repo *catalog.Repo) {
	t.Helper()
	n := 0
	for oi, err := range repo.Store().List(t.Context(), "") {
		if err != nil {
			t.Fatal(err)
		}
		if oi.Key == catalog.MetaKey || strings.HasPrefix(oi.Key, "locks/") {
			continue
		}
		rc, err := repo.Store().Get(t.Context(), oi.Key, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = codec.Verify(rc, oi.Key)
		rc.Close()
		if err != nil {
			t.Errorf("stored object: %v", err)
		}
		n++
	}
	t.Logf("checksums of %d objects verified", n)
}

// checkArchive checks the repository, read directly, after a run that
// ended at durable: continuous WAL, which pg_waldump parses to durable,
// and a slot that does not run ahead of it.
func checkArchive(t *testing.T, c *pgtest.Cluster, direct *catalog.Repo, durable wal.LSN) {
	t.Helper()
	complete, pieces := segmentsIn(t, direct, 1<<20)
	checkContinuous(t, complete, pieces)
	end, err := storedEnd(t.Context(), direct)
	if err != nil {
		t.Fatal(err)
	}
	if slot := slotLSN(t, c); slot > end {
		t.Errorf("the slot is at %s, past the end of the stored WAL %s", slot, end)
	}
	if end < durable {
		t.Errorf("the run said %s was durable, but the repository holds WAL to %s", durable, end)
	}
	if len(complete) == 0 {
		t.Fatal("no complete segment stored")
	}
	dir := fetchAll(t, direct, 1, 1<<20)
	waldump(t, dir, 1, complete[0].Start(1<<20), durable)
}
