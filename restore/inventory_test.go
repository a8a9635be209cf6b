package restore

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/walship/walship/internal/pgtest"
	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/internal/walrec"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/catalog"
	"github.com/walship/walship/storage/file"
)

// readCounter counts the objects read under each key.
type readCounter struct {
	storage.Store
	mu    sync.Mutex
	reads map[string]int
}

func (s *readCounter) Get(ctx context.Context, key string, off int64) (io.ReadCloser, error) {
	rc, err := s.Store.Get(ctx, key, off)
	if err == nil {
		s.mu.Lock()
		s.reads[key]++
		s.mu.Unlock()
	}
	return rc, err
}

func (s *readCounter) Create(ctx context.Context, key string, r io.Reader) error {
	return s.Store.(storage.Creator).Create(ctx, key, r)
}

// TestTipCarry: the tip's events include a commit that began in the segment
// before, which LoadEvents reads from the carry in that segment's index
// without reading the segment, or, from an index of format 1, by reading it.
func TestTipCarry(t *testing.T) {
	const segSize = 1 << 20
	ctx := t.Context()
	c := pgtest.Start(t, pgtest.Options{Conf: []string{"autovacuum = off"}})
	c.Exec(t, "CREATE TABLE after (a int)")
	conn := c.Conn(t)
	var xid uint32
	if _, err := conn.Exec(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT pg_current_xact_id()::text::bigint").Scan(&xid); err != nil {
		t.Fatal(err)
	}
	at := pgtest.PadWAL(t, c.Conn(t), segSize, 16)
	if _, err := conn.Exec(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	// A commit of nothing but an xid is not flushed at once; this one is.
	c.Exec(t, "INSERT INTO after VALUES (1)")
	flush, err := wal.ParseLSN(c.Scalar(t, "SELECT pg_current_wal_flush_lsn()"))
	if err != nil {
		t.Fatal(err)
	}
	before := wal.SegmentOf(1, at, segSize)
	tip := wal.Segment{TLI: 1, No: before.No + 1}
	if wal.SegmentOf(1, flush, segSize) != tip {
		t.Fatalf("flushed up to %s, not into %s", flush, tip.Name(segSize))
	}
	segment := func(seg wal.Segment) []byte {
		b, err := os.ReadFile(filepath.Join(c.DataDir(), "pg_wal", seg.Name(segSize)))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	whole, tipBytes := segment(before), segment(tip)[:flush-tip.Start(segSize)]

	store, err := file.New(filepath.Join(t.TempDir(), "repo"))
	if err != nil {
		t.Fatal(err)
	}
	counter := &readCounter{Store: store, reads: map[string]int{}}
	repo := catalog.New(counter, catalog.Options{})
	if _, err := repo.Init(ctx, catalog.Meta{SystemID: c.Scalar(t, "SELECT system_identifier FROM pg_control_system()"), SegmentSize: segSize}); err != nil {
		t.Fatal(err)
	}
	r := walrec.NewReader(before.Start(segSize), segSize)
	if _, err := r.Write(whole); err != nil {
		t.Fatal(err)
	}
	events, carry := r.Events(), r.Carry()
	if !carry.Known() {
		t.Fatalf("no carry at the end of %s", before.Name(segSize))
	}
	v1 := catalog.EncodeIndex(events, walrec.Carry{})
	v1[4] = 1
	for _, o := range []struct {
		key  string
		data []byte
	}{
		{catalog.SegmentKey(before, segSize), whole},
		{catalog.PieceKey(tip, segSize, 0, uint32(len(tipBytes))), tipBytes},
	} {
		if _, err := repo.Put(ctx, o.key, bytes.NewReader(o.data)); err != nil {
			t.Fatal(err)
		}
	}

	for _, tc := range []struct {
		name  string
		index []byte
		reads int // of the segment before
	}{
		{"carried", catalog.EncodeIndex(events, carry), 0},
		{"index of format 1", v1[:len(v1)-1], 1},
	} {
		if _, err := repo.Put(ctx, catalog.IndexKey(before, segSize), bytes.NewReader(tc.index)); err != nil {
			t.Fatal(err)
		}
		inv, err := LoadInventory(ctx, repo, true)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var found []Event
		for _, ev := range inv.Events {
			if ev.XID == uint64(xid) {
				found = append(found, ev)
			}
		}
		if len(found) != 1 || found[0].LSN >= tip.Start(segSize) || found[0].End <= tip.Start(segSize) {
			t.Errorf("%s: events of xid %d %+v, want one commit from %s into the tip", tc.name, xid, found, before.Name(segSize))
		}
		counter.mu.Lock()
		got := counter.reads[catalog.SegmentKey(before, segSize)]
		clear(counter.reads)
		counter.mu.Unlock()
		if got != tc.reads {
			t.Errorf("%s: read the segment before the tip %d times, want %d", tc.name, got, tc.reads)
		}
	}
}
