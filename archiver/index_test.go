package archiver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/codec"
)

// countingStore counts the objects read under each key.
type countingStore struct {
	storage.Store
	mu   sync.Mutex
	gets map[string]int
}

func (s *countingStore) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key, off)
	if err == nil {
		s.mu.Lock()
		s.gets[key]++
		s.mu.Unlock()
	}
	return rc, err
}

func (s *countingStore) Create(ctx context.Context, key string, r io.Reader) error {
	return s.Store.(storage.Creator).Create(ctx, key, r)
}

// take returns how often key was read since the last take, and forgets.
func (s *countingStore) take(key string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.gets[key]
	delete(s.gets, key)
	return n
}

// commitAcross commits a transaction whose commit record starts left bytes
// before a segment's end, after work if not empty, and returns its xid and
// the segment the commit ends in.
func commitAcross(t *testing.T, c *pgtest.Cluster, conn *pgx.Conn, left int, work string) (uint32, wal.Segment) {
	t.Helper()
	ctx := t.Context()
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if work != "" {
		if _, err := conn.Exec(ctx, work); err != nil {
			t.Fatal(err)
		}
	}
	var xid uint32
	if err := conn.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	at := pgtest.PadWAL(t, c.Conn(t), 1<<20, left)
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	return xid, wal.SegmentOf(1, at, 1<<20)
}

// TestIndexPrimedFromCarry: an archiver that resumes at a segment whose first
// record began in the segment before starts its index reader from that
// segment's index, without reading the segment, and still indexes the
// record in the segment it ends in, with its time. It reads the segment
// before when the record was too long to carry, when the index is of format
// 1 (which it leaves as it is: objects are written once), and when the
// index is missing, which it writes, starting from the carry of the segment
// before that.
func TestIndexPrimedFromCarry(t *testing.T) {
	const segSize = 1 << 20
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"track_commit_timestamp = on", "autovacuum = off"}})
	store := &countingStore{Store: fileRepo(t).Store(), gets: map[string]int{}}
	repo := catalog.New(store, catalog.Options{Codec: codec.Options{Compression: codec.Zstd}})
	run := func() {
		t.Helper()
		if _, err := Run(t.Context(), repo, Config{ConnString: c.ConnString(), UntilCaughtUp: true, Log: testLogger(t)}); err != nil {
			t.Fatal(err)
		}
	}
	run() // creates the slot
	conn := c.Conn(t)
	c.Exec(t, "CREATE UNLOGGED TABLE subs (i int); CREATE TABLE flushed (a int)")

	for _, tc := range []struct {
		name      string
		left      int    // where the commit starts, back from the segment end
		work      string // the transaction's work before it commits
		formatOne bool   // the index before is rewritten as format 1
		noIndex   bool   // the index before is deleted
		reads     []int  // reads of the segment before by three starts
	}{
		{"carried", 16, "", false, false, []int{0, 0, 0}},
		{"too long to carry", 100000, "DO $$ BEGIN FOR i IN 1..30000 LOOP BEGIN INSERT INTO subs VALUES (i); EXCEPTION WHEN others THEN RAISE; END; END LOOP; END $$", false, false, []int{1, 1, 1}},
		{"index of format 1", 24, "", true, false, []int{1, 1, 1}},
		{"index missing", 32, "", false, true, []int{1, 0, 0}},
	} {
		xid, before := commitAcross(t, c, conn, tc.left, tc.work)
		seg := wal.Segment{TLI: 1, No: before.No + 1}
		prevKey, prevIndex := catalog.SegmentKey(before, segSize), catalog.IndexKey(before, segSize)
		prevPrevKey := catalog.SegmentKey(wal.Segment{TLI: 1, No: before.No - 1}, segSize)
		// A commit of nothing but an xid is not flushed at once; this one is.
		c.Exec(t, "INSERT INTO flushed VALUES (1)")
		run() // stores the segment before whole, and pieces of seg
		events, carry, err := repo.ReadIndex(t.Context(), before, segSize)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		switch {
		case tc.noIndex:
			if err := store.Delete(t.Context(), prevIndex); err != nil {
				t.Fatal(err)
			}
		case tc.formatOne:
			v1 := catalog.EncodeIndex(events, walrec.Carry{})
			v1[4] = 1
			if _, err := repo.Put(t.Context(), prevIndex, bytes.NewReader(v1[:len(v1)-1])); err != nil {
				t.Fatal(err)
			}
		case carry.Known() != (tc.left <= walrec.CarryMax):
			t.Errorf("%s: the index of %s has the carry %v", tc.name, before.Name(segSize), carry)
		}
		store.take(prevKey)
		store.take(prevPrevKey)

		for i, want := range tc.reads {
			if i == len(tc.reads)-1 {
				c.Exec(t, "SELECT pg_switch_wal()") // the last start completes seg
			}
			run()
			if got := store.take(prevKey); got != want {
				t.Errorf("%s: start %d at %s read the segment before %d times, want %d", tc.name, i+1, seg.Name(segSize), got, want)
			}
			if got := store.take(prevPrevKey); got != 0 {
				t.Errorf("%s: start %d at %s read the segment two before %d times", tc.name, i+1, seg.Name(segSize), got)
			}
		}
		if tc.noIndex {
			if again, carry, err := repo.ReadIndex(t.Context(), before, segSize); err != nil || !carry.Known() || fmt.Sprint(again) != fmt.Sprint(events) {
				t.Errorf("%s: the index before was rewritten as %v with carry %v, %v", tc.name, again, carry, err)
			}
		}

		events, _, err = repo.ReadIndex(t.Context(), seg, segSize)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var found []walrec.Event
		for _, ev := range events {
			if ev.XID == xid && ev.Kind == walrec.Commit {
				found = append(found, ev)
			}
		}
		if len(found) != 1 {
			t.Fatalf("%s: the index of %s lists the commit of xid %d %d times: %+v", tc.name, seg.Name(segSize), xid, len(found), events)
		}
		ev := found[0]
		if ev.LSN >= seg.Start(segSize) || ev.End <= seg.Start(segSize) {
			t.Errorf("%s: the commit at %s..%s does not run from %s into %s; did other WAL come first?", tc.name, ev.LSN, ev.End, before.Name(segSize), seg.Name(segSize))
		}
		committed, err := time.Parse("2006-01-02 15:04:05.999999-07", c.Scalar(t, fmt.Sprintf("SELECT pg_xact_commit_timestamp('%d'::xid) AT TIME ZONE 'UTC' || '+00'", xid)))
		if err != nil || !committed.Equal(ev.Time) {
			t.Errorf("%s: xid %d committed at %v (%v), the index says %v", tc.name, xid, committed, err, ev.Time)
		}
	}
}

// TestIndexPushCarry: wal-push of a segment whose first record began in the
// segment before, which is no longer in pg_wal, starts from the carry in
// that segment's index and indexes the record.
func TestIndexPushCarry(t *testing.T) {
	const segSize = 1 << 20
	ctx := t.Context()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"autovacuum = off"}})
	c.Exec(t, "CREATE TABLE flushed (a int)")
	xid, before := commitAcross(t, c, c.Conn(t), 16, "")
	c.Exec(t, "INSERT INTO flushed VALUES (1)")
	c.Exec(t, "SELECT pg_switch_wal()")
	seg := wal.Segment{TLI: 1, No: before.No + 1}
	repo, _ := pushTestRepo(t)
	for _, s := range []wal.Segment{before, seg} {
		b, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", s.Name(segSize)))
		if err != nil {
			t.Fatal(err)
		}
		if err := Push(ctx, repo, pushTestFile(t, s.Name(segSize), b), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, carry, err := repo.ReadIndex(ctx, before, segSize); err != nil || !carry.Known() {
		t.Fatalf("the index of %s has the carry %v, %v", before.Name(segSize), carry, err)
	}
	events, _, err := repo.ReadIndex(ctx, seg, segSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range events {
		if ev.XID == xid && ev.Kind == walrec.Commit {
			if ev.LSN >= seg.Start(segSize) || ev.End <= seg.Start(segSize) {
				t.Errorf("the commit at %s..%s does not run into %s; did other WAL come first?", ev.LSN, ev.End, seg.Name(segSize))
			}
			return
		}
	}
	t.Errorf("the index of %s lacks the commit of xid %d: %+v", seg.Name(segSize), xid, events)
}
