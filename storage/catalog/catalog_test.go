package catalog

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/walship/walship/internal/wal"
	"github.com/walship/walship/storage"
	"github.com/walship/walship/storage/codec"
	"github.com/walship/walship/storage/file"
)

const mb = 1 << 20

func newRepo(t *testing.T) *Repo {
	s, err := file.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return New(s, Options{Codec: codec.Options{Compression: codec.Zstd}})
}

func TestKeys(t *testing.T) {
	seg := wal.Segment{TLI: 2, No: 0x1234}
	cases := []struct {
		key  string
		want WALObject
	}{
		{SegmentKey(seg, 16*mb), WALObject{Kind: Segment, Segment: seg, TLI: 2}},
		{PartialKey(seg, 16*mb), WALObject{Kind: Partial, Segment: seg, TLI: 2}},
		{PieceKey(seg, 16*mb, 0, 0x2000), WALObject{Kind: Piece, Segment: seg, TLI: 2, Start: 0, End: 0x2000}},
		{PieceKey(seg, 16*mb, 0x2000, 16*mb), WALObject{Kind: Piece, Segment: seg, TLI: 2, Start: 0x2000, End: 16 * mb}},
		{HistoryKey(10), WALObject{Kind: History, TLI: 10}},
		{GapKey(seg, 16*mb), WALObject{Kind: Gap, Segment: seg, TLI: 2}},
	}
	for _, c := range cases {
		if err := storage.ValidKey(c.key); err != nil {
			t.Errorf("%s: %v", c.key, err)
		}
		got, err := ParseWALKey(c.key, 16*mb)
		c.want.Key = c.key
		if err != nil || got != c.want {
			t.Errorf("ParseWALKey(%s) = %+v, %v; want %+v", c.key, got, err, c.want)
		}
	}
	if got := SegmentKey(seg, 16*mb); got != "wal/00000002/000000020000001200000034" {
		t.Errorf("SegmentKey = %s", got)
	}
	if got := PieceKey(seg, 16*mb, 0x2000, 0x4000); got != "wal/00000002/000000020000001200000034.pieces/00002000-00004000" {
		t.Errorf("PieceKey = %s", got)
	}
	for _, bad := range []string{
		"walship.json", "wal/", "wal/00000002", "wal/00000003/000000020000001200000034",
		"wal/00000002/000000020000001200000034.pieces/00004000-00002000",
		"wal/00000002/000000020000001200000034.pieces/00000000-01000001",
		"wal/00000002/000000020000001200000034.pieces/0000000-000002000",
		"wal/00000002/000000020000001200000034.pieces/0000000a-00002000",
		"wal/00000002/000000020000001200000034.zst", "wal/00000002/000000020000001200000034.partial/x",
		"wal/2.history", "backups/x",
	} {
		if o, err := ParseWALKey(bad, 16*mb); err == nil {
			t.Errorf("ParseWALKey(%q) = %+v, want an error", bad, o)
		}
	}
}

func TestPutOpen(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	payload := bytes.Repeat([]byte("wal record "), 100000)
	obj, err := r.Put(ctx, "wal/00000001/000000010000000000000001", bytes.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	if obj.Size != int64(len(payload)) || obj.StoredSize >= obj.Size {
		t.Errorf("Put = %+v; want the payload size and a compressed stored size", obj)
	}
	got, err := r.ReadAll(ctx, obj.Key, 2*mb)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("ReadAll: %d bytes, %v", len(got), err)
	}
	if _, err := r.ReadAll(ctx, obj.Key, 1000); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("ReadAll with a small limit = %v", err)
	}
	if _, err := r.Open(ctx, "wal/nothing"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("Open missing = %v", err)
	}
	// A failing source stores nothing and its error comes back.
	boom := errors.New("boom")
	if _, err := r.Put(ctx, "x/y", io.MultiReader(bytes.NewReader(payload), errReader{boom})); !errors.Is(err, boom) {
		t.Errorf("Put from a failing source = %v", err)
	}
	if _, err := r.Store().Stat(ctx, "x/y"); !errors.Is(err, storage.ErrNotExist) {
		t.Errorf("a failed Put left an object: %v", err)
	}
	if _, err := r.Create(ctx, obj.Key, bytes.NewReader(nil)); !errors.Is(err, storage.ErrExist) {
		t.Errorf("Create over an object = %v", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

func TestMeta(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	if _, err := r.ReadMeta(ctx); !errors.Is(err, ErrNoMeta) {
		t.Fatalf("ReadMeta of an empty store = %v", err)
	}
	m := Meta{SystemID: "7441337033001234567", SegmentSize: 16 * mb}
	// Racing first runs: all agree on one description.
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := r.Init(ctx, m); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, err := r.ReadMeta(ctx)
	if err != nil || got.SystemID != m.SystemID || got.Format != FormatVersion || got.Created.IsZero() {
		t.Fatalf("ReadMeta = %+v, %v", got, err)
	}
	other := m
	other.SystemID = "7441337033009999999"
	if _, err := r.Init(ctx, other); err == nil || !strings.Contains(err.Error(), "system identifier 7441337033001234567") {
		t.Errorf("Init for another cluster = %v", err)
	}
	other = m
	other.SegmentSize = 1 * mb
	if _, err := r.Init(ctx, other); err == nil || !strings.Contains(err.Error(), "wal_segment_size") {
		t.Errorf("Init with another segment size = %v", err)
	}
	if _, err := r.Init(ctx, Meta{SystemID: "x", SegmentSize: 16 * mb}); err == nil {
		t.Error("Init with a bad system identifier succeeded")
	}
	for name, body := range map[string]string{
		"not json":     "{",
		"newer format": `{"format": 99, "system_identifier": "1", "wal_segment_size": 16777216}`,
		"no format":    `{"system_identifier": "1", "wal_segment_size": 16777216}`,
		"bad size":     `{"format": 1, "system_identifier": "1", "wal_segment_size": 1000}`,
		"bad sysid":    `{"format": 1, "system_identifier": "-1", "wal_segment_size": 16777216}`,
		"huge":         strings.Repeat(" ", maxMeta+1),
	} {
		if err := r.Store().Put(ctx, MetaKey, strings.NewReader(body)); err != nil {
			t.Fatal(err)
		}
		if _, err := r.ReadMeta(ctx); err == nil || !strings.Contains(err.Error(), MetaKey) {
			t.Errorf("%s: ReadMeta = %v, want an error naming %s", name, err, MetaKey)
		}
	}
}

func TestWALExtents(t *testing.T) {
	r := newRepo(t)
	ctx := context.Background()
	put := func(key string) {
		if err := r.Store().Put(ctx, key, strings.NewReader("x")); err != nil {
			t.Fatal(err)
		}
	}
	for _, no := range []uint64{3, 4, 5, 8, 9, 12} {
		put(SegmentKey(wal.Segment{TLI: 1, No: no}, mb))
	}
	put(GapKey(wal.Segment{TLI: 1, No: 12}, mb))
	put(PieceKey(wal.Segment{TLI: 1, No: 13}, mb, 0, 0x100))
	put(PieceKey(wal.Segment{TLI: 1, No: 13}, mb, 0x100, 0x300))
	put(PieceKey(wal.Segment{TLI: 1, No: 13}, mb, 0x400, 0x500)) // after a hole: not counted
	put(HistoryKey(2))
	put(PieceKey(wal.Segment{TLI: 2, No: 20}, mb, 0, 0x10))
	put("wal/junk")
	ext, err := r.WALExtents(ctx, mb)
	if err != nil {
		t.Fatal(err)
	}
	if len(ext) != 3 || ext[0].TLI != 0 || ext[1].TLI != 1 || ext[2].TLI != 2 {
		t.Fatalf("extents %+v", ext)
	}
	if len(ext[0].Stray) != 1 {
		t.Errorf("stray %v", ext[0].Stray)
	}
	e := ext[1]
	if e.First != 3 || e.Last != 12 || e.Segments != 6 || len(e.Missing) != 1 || e.Missing[0] != (SegmentRange{6, 7}) {
		t.Errorf("timeline 1: %+v (the hole before 12 was accepted)", e)
	}
	if e.TipEnd != (wal.Segment{TLI: 1, No: 13}).Start(mb)+0x300 || e.End(mb) != e.TipEnd {
		t.Errorf("tip end %s", e.TipEnd)
	}
	if !ext[2].History || ext[2].Segments != 0 || ext[2].TipEnd != (wal.Segment{TLI: 2, No: 20}).Start(mb)+0x10 {
		t.Errorf("timeline 2: %+v", ext[2])
	}
}
