package walrec

import (
	"cmp"
	"encoding/binary"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/walship/walship/internal/wal"
)

var update = flag.Bool("update", false, "rewrite testdata/fuzz/FuzzReader from a real server's WAL")

// FuzzReader feeds the Reader WAL whole and in pieces: it must not panic or
// hang, and the pieces must not change what it reports. The WAL's first page
// header decides where it starts and its segment size, which may be smaller
// than PostgreSQL's smallest so that short inputs cross segments.
func FuzzReader(f *testing.F) {
	for _, seed := range syntheticSeeds() {
		f.Add(seed, uint16(7))
	}
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) {
		start, segSize := uint64(0), uint64(1<<20)
		if len(data) >= longPageHeader {
			if s := uint64(binary.LittleEndian.Uint32(data[32:])); s >= 1<<13 && s <= 1<<30 && s&(s-1) == 0 {
				segSize = s
			}
			start = binary.LittleEndian.Uint64(data[8:]) &^ (segSize - 1)
		}
		whole, wholeErr := fuzzRead(start, segSize, data, len(data))
		pieces, piecesErr := fuzzRead(start, segSize, data, 1+int(piece)%4096)
		if !reflect.DeepEqual(whole, pieces) || fmt.Sprint(wholeErr) != fmt.Sprint(piecesErr) {
			t.Fatalf("whole: %+v, %v\npieces of %d: %+v, %v", whole, wholeErr, 1+piece%4096, pieces, piecesErr)
		}
		for i, ev := range whole {
			if ev.End <= ev.LSN || i > 0 && ev.LSN < whole[i-1].End {
				t.Fatalf("events out of order: %+v", whole)
			}
		}
	})
}

func fuzzRead(start, segSize uint64, data []byte, piece int) ([]Event, error) {
	r := newReader(wal.LSN(start), segSize)
	var events []Event
	for off := 0; off < len(data); off += piece {
		p := data[off:min(off+piece, len(data))]
		n, err := r.Write(p)
		events = append(events, r.Events()...)
		if err != nil {
			return events, err
		}
		if n != len(p) || r.Pos() != wal.LSN(start)+wal.LSN(off+n) {
			return events, fmt.Errorf("wrote %d of %d bytes without an error, Pos %s", n, len(p), r.Pos())
		}
	}
	return events, nil
}

// syntheticSeeds are small WAL of small segments with every kind of record
// and page the Reader handles.
func syntheticSeeds() [][]byte {
	small := func() *builder {
		b := newBuilder(1 << 16)
		b.segSize, b.pageSize = 1<<14, 1<<10
		return b
	}
	var seeds [][]byte
	b := small()
	b.commit(1, t0)
	b.restorePoint("seed", t0)
	b.record(rmXact, xactCommitPrepared|xactHasInfo, 0, mainData(xactFull(15, CommitPrepared, t0, 9)))
	b.record(rmXact, xactAbort, 3, mainData(append(pgMicros(t0), make([]byte, 3000)...)))
	b.switchSegment()
	b.commit(4, t0)
	b.record(rmXLOG, xlogBackupEnd, 0, mainData(le64(1<<16)))
	b.record(rmXLOG, xlogEndOfRecovery, 0, mainData(append(pgMicros(t0), 2, 0, 0, 0, 1, 0, 0, 0)))
	b.record(rmXact, xactCommit, 5, blocks(0x05, true))
	b.zeroTo(b.pos() + 100)
	seeds = append(seeds, b.buf)

	b = small()
	b.commit(1, t0)
	b.torn(rmXact, xactCommit, 2, mainData(append(pgMicros(t0), make([]byte, 1500)...)))
	b.record(rmXLOG, 0xD0, 0, mainData(make([]byte, 16)))
	b.filler(1 << 14)
	b.commit(3, t0)
	seeds = append(seeds, b.buf)
	return seeds
}

// writeSeeds writes the first pages of the segments in data, which starts at
// start, that hold the most events there, as FuzzReader's seed corpus.
func writeSeeds(t *testing.T, start wal.LSN, data []byte, events []Event) {
	t.Helper()
	const seeds, size = 4, 3 * 8192
	count := map[wal.LSN]int{}
	for _, ev := range events {
		if seg := ev.LSN &^ (pgSegSize - 1); ev.End <= seg+size {
			count[seg]++
		}
	}
	segs := slices.SortedFunc(maps.Keys(count), func(a, b wal.LSN) int { return cmp.Compare(count[b], count[a]) })
	dir := filepath.Join("testdata", "fuzz", "FuzzReader")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, seg := range segs[:min(seeds, len(segs))] {
		page := data[seg-start : seg-start+size]
		text := "go test fuzz v1\n[]byte(" + strconv.Quote(string(page)) + ")\nuint16(100)\n"
		name := filepath.Join(dir, fmt.Sprintf("pg15-%s-%d-events", strings.ReplaceAll(seg.String(), "/", "-"), count[seg]))
		if err := os.WriteFile(name, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
